"""Bad input on the media WebSockets: a specific close code, nothing lost, the server keeps going.

Table-driven: every case opens a fresh call from the provider's side (the
clients of ``voicecore.testing.callers``, written from the protocol reference),
sends one kind of malformed or hostile input, and checks

* the close code the server answers with (1002 protocol/order, 1003 binary vs
  text or unsupported format, 1007 bad JSON/base64/types, 1008 policy
  (stream id, flood), 1009 too big) — or, for input a real provider does send
  (out-of-order or duplicated frames, an unknown mark, flow control, an event
  added after this code was written), that the
  call simply goes on and ends normally;
* for calls that had started: the call record is stored, closed, with an end
  reason that names the problem; for input before the start: no pipeline
  started and nothing stored;
* at the end: the server is healthy and a fresh call works.

The cases send no speech, so the agent only plays its (pre-synthesised)
greeting: no STT/LLM work, the whole table runs in about a minute.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from voicecore.testing.callers import (
    CLIENTS,
    ProviderClient,
    TwilioClient,
    b64,
    find_stored_call,
    wait_stored_call,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

TEXT_BYTES = "text-bytes"  # marker: send these bytes as a TEXT frame (invalid UTF-8)
BIG = 70_000  # over the 64 KiB frame limit
Frame = str | bytes | tuple[str, bytes]


@dataclass
class Case:
    id: str
    provider: str
    send: Callable[[Any], list[Frame]]  # the bad input, built from the client's own ids
    close: int | None  # expected close code; None: tolerated, the call goes on
    hint: str | None = None  # word the stored end reason must contain (lower case)
    prestart: bool = False  # sent instead of the normal start: no pipeline may start
    options: dict[str, Any] = field(default_factory=dict)
    opening: Callable[[Any], list[Frame]] | None = None  # replaces the client's opening messages
    unknown_events: int = 0  # events the server must log, count in /metrics and ignore


def j(obj: Any) -> str:
    return json.dumps(obj)


# silence payloads in each wire format
ULAW_20MS = b"\xff" * 160
PCM_20MS_8K = b"\x00" * 320


def tw_media(c: TwilioClient, payload: str | None = None, **kw: Any) -> str:
    return c.media_message(payload if payload is not None else b64(ULAW_20MS), **kw)


def twilio_flood(c: TwilioClient) -> list[Frame]:
    return [tw_media(c) for _ in range(3000)]


def deep_json(depth: int = 20_000) -> str:
    return '{"event":"media","media":' + "[" * depth + "]" * depth + "}"


def oversize_json(c: Any, key: str, sid: str, event: str = "media") -> str:
    return j({"event": event, key: sid, "media": {"payload": "A" * BIG}})


CASES: list[Case] = [
    # ---------------------------------------------------------------- Twilio
    Case("twilio-malformed-json", "twilio", lambda c: ['{"event": "media", "streamSid": '], 1007, "json"),
    Case("twilio-json-array", "twilio", lambda c: ['[{"event": "media"}]'], 1007, "json"),
    Case("twilio-json-string", "twilio", lambda c: ['"media"'], 1007, "json"),
    Case("twilio-empty-text-frame", "twilio", lambda c: [""], 1007, "json"),
    Case("twilio-deeply-nested-json", "twilio", lambda c: [deep_json()], 1007, "json"),
    Case("twilio-missing-event", "twilio", lambda c: [j({"streamSid": c.stream_sid, "media": {"payload": ""}})],
         1007, "event"),
    Case("twilio-event-not-a-string", "twilio", lambda c: [j({"event": 7, "streamSid": c.stream_sid})], 1007, "event"),
    Case("twilio-unknown-event", "twilio", lambda c: [j({"event": "dance", "streamSid": c.stream_sid})], None, unknown_events=1),
    Case("twilio-invalid-base64", "twilio", lambda c: [tw_media(c, "%%%not base64%%%")], 1007, "base64"),
    Case("twilio-base64-bad-padding", "twilio", lambda c: [tw_media(c, "abc")], 1007, "base64"),
    Case("twilio-payload-not-a-string", "twilio",
         lambda c: [j({"event": "media", "sequenceNumber": "5", "streamSid": c.stream_sid,
                       "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": 12345}})],
         1007, "payload"),
    Case("twilio-media-without-media-object", "twilio",
         lambda c: [j({"event": "media", "sequenceNumber": "5", "streamSid": c.stream_sid})], 1007, "media"),
    Case("twilio-sequence-number-garbage", "twilio", lambda c: [tw_media(c, seq="five")], 1007, "sequencenumber"),
    Case("twilio-wrong-streamsid-media", "twilio", lambda c: [tw_media(c, stream_sid="MZ" + "0" * 32)], 1008,
         "streamsid"),
    Case("twilio-wrong-streamsid-mark", "twilio", lambda c: [c.mark_message("m1", stream_sid="MZ" + "1" * 32)],
         1008, "streamsid"),
    Case("twilio-wrong-streamsid-stop", "twilio",
         lambda c: [j({"event": "stop", "sequenceNumber": "9", "streamSid": "MZ" + "2" * 32, "stop": {}})],
         1008, "streamsid"),
    Case("twilio-binary-frame", "twilio", lambda c: [ULAW_20MS], 1003, "binary"),
    Case("twilio-text-frame-over-64k", "twilio", lambda c: [oversize_json(c, "streamSid", c.stream_sid)], 1009,
         "exceeds"),
    Case("twilio-binary-frame-over-transport-cap", "twilio", lambda c: [b"\x00" * (2 << 20)], 1009, None),
    Case("twilio-invalid-utf8-text", "twilio", lambda c: [(TEXT_BYTES, b'{"event":"media","x":"\xff\xfe"}')], 1007,
         None),
    Case("twilio-duplicate-start", "twilio", lambda c: [c.start_message()], 1002, "start"),
    Case("twilio-dtmf-not-a-digit", "twilio", lambda c: [c.dtmf_message("X")], 1007, "dtmf"),
    Case("twilio-message-flood", "twilio", twilio_flood, 1008, "flood"),
    Case("twilio-media-before-start", "twilio", lambda c: [c.connected_message(), tw_media(c)], 1002, "before start",
         prestart=True),
    Case("twilio-dtmf-before-start", "twilio", lambda c: [c.connected_message(), c.dtmf_message("1")], 1002,
         "before start", prestart=True),
    Case("twilio-mark-before-start", "twilio", lambda c: [c.connected_message(), c.mark_message("x")], 1002,
         "before start", prestart=True),
    Case("twilio-start-not-mulaw", "twilio",
         lambda c: [c.connected_message(),
                    c.start_message(mediaFormat={"encoding": "audio/x-l16", "sampleRate": 16000, "channels": 1})],
         1003, "mediaformat", prestart=True),
    Case("twilio-start-custom-parameter-object", "twilio",
         lambda c: [c.start_message(customParameters={"token": c.token, "x": {"nested": True}})], 1007,
         "customparameters", prestart=True),
    # tolerated: what a real provider may do
    Case("twilio-sequence-backwards", "twilio", lambda c: [tw_media(c, seq="100"), tw_media(c, seq="50")], None),
    Case("twilio-sequence-duplicate", "twilio", lambda c: [tw_media(c, seq="77"), tw_media(c, seq="77")], None),
    Case("twilio-outbound-track-media", "twilio", lambda c: [tw_media(c, track="outbound")], None),
    Case("twilio-empty-payload", "twilio", lambda c: [tw_media(c, "")], None),
    Case("twilio-mark-never-sent", "twilio", lambda c: [c.mark_message("never-sent-by-the-server")], None),
    # ---------------------------------------------------------------- Telnyx
    Case("telnyx-malformed-json", "telnyx", lambda c: ['{"event":"media",,}'], 1007, "json"),
    Case("telnyx-unknown-event", "telnyx", lambda c: [j({"event": "rtp", "stream_id": c.stream_id})], None, unknown_events=1),
    Case("telnyx-invalid-base64", "telnyx", lambda c: [c.media_message("****")], 1007, "base64"),
    Case("telnyx-wrong-stream-id", "telnyx", lambda c: [c.media_message(b64(ULAW_20MS), stream_id="other-stream")],
         1008, "stream_id"),
    Case("telnyx-binary-frame", "telnyx", lambda c: [ULAW_20MS], 1003, "binary"),
    Case("telnyx-text-frame-over-64k", "telnyx", lambda c: [oversize_json(c, "stream_id", c.stream_id)], 1009,
         "exceeds"),
    Case("telnyx-media-before-start", "telnyx",
         lambda c: [j({"event": "connected", "version": "1.0.0"}), c.media_message(b64(ULAW_20MS))], 1002,
         "before start", prestart=True),
    Case("telnyx-start-opus", "telnyx",
         lambda c: [c.start_message({"encoding": "OPUS", "sample_rate": 16000, "channels": 1})], 1003, "opus",
         prestart=True),
    Case("telnyx-chunks-out-of-order", "telnyx",
         lambda c: [c.media_message(b64(ULAW_20MS), seq=s, chunk=k) for s, k in ((3, 1), (5, 3), (4, 2), (6, 4))],
         None),
    Case("telnyx-chunk-duplicate", "telnyx",
         lambda c: [c.media_message(b64(ULAW_20MS), seq=s, chunk=k) for s, k in ((3, 1), (4, 2), (5, 2))], None),
    Case("telnyx-error-event", "telnyx",
         lambda c: [j({"event": "error", "stream_id": c.stream_id, "payload": {"code": 100002, "title": "Unknown"}})],
         None),
    # ---------------------------------------------------------------- Vonage
    Case("vonage-binary-before-connected", "vonage", lambda c: [b"\x00" * 640], 1002, "before", prestart=True),
    Case("vonage-first-message-not-json", "vonage", lambda c: ["hello vonage"], 1007, "json", prestart=True),
    Case("vonage-unsupported-rate", "vonage",
         lambda c: [c.connected_message(**{"content-type": "audio/l16;rate=11025"})], 1003, "rate", prestart=True),
    Case("vonage-not-l16", "vonage", lambda c: [c.connected_message(**{"content-type": "audio/opus"})], 1003,
         "content-type", prestart=True),
    Case("vonage-odd-length-frame", "vonage", lambda c: [b"\x00" * 641], 1007, "odd"),
    Case("vonage-binary-over-64k", "vonage", lambda c: [b"\x00" * BIG], 1009, "exceeds"),
    Case("vonage-unknown-text-event", "vonage", lambda c: [j({"event": "websocket:teleport"})], None, unknown_events=1),
    Case("vonage-text-not-json", "vonage", lambda c: ["not json at all"], 1007, "json"),
    Case("vonage-dtmf-not-a-digit", "vonage", lambda c: [c.dtmf_message("Q")], 1007, "digit"),
    Case("vonage-notify-without-payload", "vonage", lambda c: [j({"event": "websocket:notify"})], 1007, "payload"),
    Case("vonage-message-flood", "vonage", lambda c: [b"\x00" * 640] * 3000, 1008, "flood"),
    Case("vonage-short-frame", "vonage", lambda c: [b"\x00" * 100], None),
    Case("vonage-dtmf", "vonage", lambda c: [c.dtmf_message("5")], None),
    # ---------------------------------------------------------------- Plivo (default l16 8 kHz)
    Case("plivo-malformed-json", "plivo", lambda c: ['{"event": "media" "streamId": 1}'], 1007, "json"),
    Case("plivo-unknown-event", "plivo", lambda c: [j({"event": "teleport", "streamId": c.stream_id})], None, unknown_events=1),
    Case("plivo-invalid-base64", "plivo", lambda c: [c.media_message("not base64!")], 1007, "base64"),
    Case("plivo-wrong-stream-id", "plivo", lambda c: [c.media_message(b64(PCM_20MS_8K), stream_id="another")], 1008,
         "streamid"),
    Case("plivo-binary-frame", "plivo", lambda c: [PCM_20MS_8K], 1003, "binary"),
    Case("plivo-text-frame-over-64k", "plivo", lambda c: [oversize_json(c, "streamId", c.stream_id)], 1009,
         "exceeds"),
    Case("plivo-odd-length-l16", "plivo", lambda c: [c.media_message(b64(b"\x00\x01\x02"))], 1007, "odd"),
    Case("plivo-start-unsupported-encoding", "plivo",
         lambda c: [c.start_message({"encoding": "audio/x-opus", "sampleRate": 48000})], 1003, "encoding",
         prestart=True),
    Case("plivo-media-before-start", "plivo", lambda c: [c.media_message(b64(PCM_20MS_8K))], 1002, "before start",
         prestart=True),
    Case("plivo-extra-headers-garbage", "plivo", lambda c: [c.start_message(extra_headers=f"token{c.token}")], 1007,
         "extra_headers", prestart=True),
    Case("plivo-sequence-backwards", "plivo",
         lambda c: [c.media_message(b64(PCM_20MS_8K), seq=40), c.media_message(b64(PCM_20MS_8K), seq=20)], None),
    # ---------------------------------------------------------------- Exotel
    Case("exotel-malformed-json", "exotel", lambda c: ["{'event': 'media'}"], 1007, "json"),
    Case("exotel-unknown-event", "exotel", lambda c: [j({"event": "teleport", "stream_sid": c.stream_sid})], None, unknown_events=1),
    Case("exotel-invalid-base64", "exotel", lambda c: [c.media_message("@@@@")], 1007, "base64"),
    Case("exotel-wrong-stream-sid", "exotel", lambda c: [c.media_message(b64(PCM_20MS_8K * 5), stream_sid="zzz")],
         1008, "stream_sid"),
    Case("exotel-binary-frame", "exotel", lambda c: [PCM_20MS_8K * 5], 1003, "binary"),
    Case("exotel-text-frame-over-64k", "exotel", lambda c: [oversize_json(c, "stream_sid", c.stream_sid)], 1009,
         "exceeds"),
    Case("exotel-media-before-start", "exotel",
         lambda c: [j({"event": "connected"}), c.media_message(b64(PCM_20MS_8K * 5))], 1002, "before start",
         prestart=True),
    Case("exotel-start-8-bit", "exotel",
         lambda c: [c.start_message({"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "8"})], 1003,
         "bit_rate", prestart=True),
    Case("exotel-mark-never-sent", "exotel", lambda c: [c.mark_message("unknown-mark")], None),
    # ---------------------------------------------------------------- Asterisk
    Case("asterisk-binary-before-media-start", "asterisk", lambda c: [ULAW_20MS], 1002, "before", prestart=True),
    Case("asterisk-lowercase-media-start", "asterisk",
         lambda c: [c.media_start().replace("MEDIA_START", "media_start"), ULAW_20MS], 1002, "before", prestart=True,
         unknown_events=1),
    Case("asterisk-format-opus", "asterisk", lambda c: [c.media_start(fmt="opus")], 1003, "format", prestart=True),
    Case("asterisk-unknown-command", "asterisk", lambda c: ["TELEPORT now"], None, unknown_events=1),
    Case("asterisk-blank-control", "asterisk", lambda c: ["   "], 1007, "empty"),
    Case("asterisk-binary-over-64k", "asterisk", lambda c: [b"\xff" * BIG], 1009, "exceeds"),
    Case("asterisk-dtmf-not-a-digit", "asterisk", lambda c: ["DTMF_END digit:Z"], 1007, "digit"),
    Case("asterisk-malformed-json-control", "asterisk", lambda c: ['{"event": "DTMF_END", '], 1007, "json"),
    Case("asterisk-duplicate-media-start", "asterisk", lambda c: [c.media_start()], 1002, "start"),
    Case("asterisk-odd-slin-frame", "asterisk", lambda c: [b"\x00" * 321], 1007, "odd",
         opening=lambda c: [c.media_start(fmt="slin", frame=320)]),
    Case("asterisk-message-flood", "asterisk", lambda c: [ULAW_20MS] * 3000, 1008, "flood"),
    Case("asterisk-queue-drained-unrequested", "asterisk", lambda c: ["QUEUE_DRAINED"], None),
    Case("asterisk-xoff-xon", "asterisk", lambda c: ["MEDIA_XOFF", "MEDIA_XON"], None),
    Case("asterisk-dtmf", "asterisk", lambda c: ["DTMF_END digit:5"], None),
]

async def test_the_table_is_big_enough():
    assert len(CASES) >= 50
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.provider for c in CASES} == set(CLIENTS)


async def _send(client: ProviderClient, frames: list[Frame]) -> None:
    for frame in frames:
        if isinstance(frame, tuple):
            ok = await client.send_raw(frame[1], text=True)
        else:
            ok = await client.send_raw(frame)
        if not ok:  # the server closed the call: the rest cannot go out
            break


async def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def _silence(client: ProviderClient, n: int = 3) -> None:
    """A few frames of valid caller audio (silence): the call is working before the bad input."""
    for _ in range(n):
        for m in client.media_messages(np.zeros(client.sample_rate * client.frame_ms // 1000, dtype=np.int16)):
            await client.send_raw(m)


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c.prestart else pytest.mark.models) for c in CASES],
                         ids=[c.id for c in CASES])  # a call that starts greets the caller: models
async def test_bad_input(case: Case, telephony_server):
    server = telephony_server
    client = CLIENTS[case.provider](server.ws_url(case.provider), token=server.keys["acme"], label=case.id,
                                    **case.options)
    started_before = server.calls_started
    metrics = server.app.state.vc.metrics
    unknown_before = metrics.unknown_events_total[case.provider]
    try:
        assert await client.connect(), f"upgrade refused: HTTP {client.handshake_status}"
        if case.prestart:
            await _send(client, case.send(client))
        else:
            await _send(client, case.opening(client) if case.opening else client.opening_messages())
            assert await _wait(lambda: server.calls_started > started_before, 15), "the call never started"
            if case.opening is None:
                await _silence(client)
            await _send(client, case.send(client))

        if case.close is not None:
            assert await client.wait_closed(10), f"{case.id}: the server did not close the call"
            assert client.close_code == case.close, (
                f"{case.id}: closed with {client.close_code} ({client.close_reason!r}), expected {case.close}"
            )
        else:
            await asyncio.sleep(0.5)
            assert not client.closed.is_set(), (
                f"{case.id}: tolerated input closed the call: {client.close_code} {client.close_reason!r}"
            )
            await _silence(client)
            await client.hangup()
            assert client.closed.is_set()
            if client.close_code is not None and client.close_code != 1000 and client.close_code != 1005:
                pytest.fail(f"{case.id}: normal end closed with {client.close_code} {client.close_reason!r}")
    finally:
        await client.close()

    # reasons are specific but never carry the tenant's secret (they are logged and sent to the provider)
    secret = server.keys["acme"].split("_", 2)[2]
    assert secret[:8] not in (client.close_reason or ""), f"{case.id}: the close reason leaks the API key"

    assert metrics.unknown_events_total[case.provider] - unknown_before == case.unknown_events, (
        f"{case.id}: unknown events counted {metrics.unknown_events_total[case.provider] - unknown_before}, "
        f"expected {case.unknown_events}"
    )
    if case.unknown_events:
        status, text = await asyncio.to_thread(_get, server.base_url + "/metrics")
        assert f'voicecore_unknown_events_total{{transport="{case.provider}"}}' in text

    if case.prestart:
        await asyncio.sleep(0.2)
        assert server.calls_started == started_before, f"{case.id}: a pipeline started for a stream that never did"
        assert await asyncio.to_thread(find_stored_call, server.store, "acme", client.ids) is None
        return

    # the call's record is kept, closed, with a reason that names what happened
    call = await wait_stored_call(server.store, "acme", client.ids, timeout=10)
    assert call is not None, f"{case.id}: the call record was not stored"
    assert call.ended_at is not None, f"{case.id}: the stored call was not closed"
    reason = (call.end_reason or "").lower()
    assert secret[:8].lower() not in reason, f"{case.id}: the stored end reason leaks the API key"
    if case.close is None:
        assert reason in ("stop", "hangup"), f"{case.id}: end_reason {call.end_reason!r} after a normal end"
    else:
        assert reason and reason not in ("stop", "hangup", "completed"), (
            f"{case.id}: end_reason {call.end_reason!r} does not say the call was closed for bad input"
        )
        if case.hint is not None:
            assert case.hint in reason, f"{case.id}: end_reason {call.end_reason!r} does not mention {case.hint!r}"
    assert await _wait(lambda: not any(
        set(getattr(s.record, "provider_ids", {}).values()) & client.ids for s in list(server.active_calls.values())
    ), 5), f"{case.id}: the call is still listed as active after it ended"


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read().decode()


@pytest.mark.models
async def test_server_survives_the_bad_input_and_takes_a_fresh_call(telephony_server):
    server = telephony_server
    status, body = await asyncio.to_thread(_get, server.base_url + "/healthz")
    assert status == 200, body
    status, metrics = await asyncio.to_thread(_get, server.base_url + "/metrics")
    assert status == 200 and metrics.strip()

    client = TwilioClient(server.ws_url("twilio"), token=server.keys["acme"], label="fresh-after-bad-input")
    try:
        assert await client.start()
        assert await client.wait_media_after(0.0, 15) is not None, "no greeting on a fresh call"
        await asyncio.sleep(0.3)
        await client.hangup()
    finally:
        await client.close()
    assert client.close_code == 1000, (client.close_code, client.close_reason)
    assert not client.violations, client.violations[:5]
    call = await wait_stored_call(server.store, "acme", client.ids)
    assert call is not None and call.end_reason == "stop"
    assert await _wait(lambda: not server.active_calls, 5), f"calls still active: {list(server.active_calls)}"


@pytest.mark.models
async def test_bad_input_after_speech_keeps_what_was_said(telephony_server, say):
    """Privacy doc, bad input: a malformed message ends the call with a clear reason and what the
    caller said up to then (and the agent's answer) is stored as the policy allows."""
    server = telephony_server
    client = TwilioClient(server.ws_url("twilio"), token=server.keys["acme"], label="bad-after-speech")
    try:
        assert await client.start(), f"upgrade refused: HTTP {client.handshake_status}"
        assert await client.wait_media_after(0.0, 15) is not None, "no greeting"
        utt = client.speak(say("Can I come in on Friday afternoon at three?", voice="en-us+f3", speed=130))
        await asyncio.wait_for(utt.done.wait(), utt.seconds + 10)
        assert await client.wait_media_after(utt.speech_end_at, 30) is not None, "no reply to the question"
        assert await client.wait_agent_quiet(quiet=1.5, timeout=60), "the reply never finished"
        await _send(client, [tw_media(client, payload="@@not base64@@")])
        assert await client.wait_closed(10), "the server did not close the call"
        assert client.close_code == 1007, (client.close_code, client.close_reason)
    finally:
        await client.close()
    call = await wait_stored_call(server.store, "acme", client.ids, timeout=10)
    assert call is not None and call.ended_at is not None
    assert "base64" in (call.end_reason or "").lower(), call.end_reason
    stored = server.store.calls.get("acme", call.call_id, actor="test")
    heard = " ".join(t.text or "" for t in stored.turns if t.role == "caller").lower()
    assert "friday" in heard or "afternoon" in heard, heard
    assert any(t.role == "agent" and t.kind == "reply" and t.text for t in stored.turns)
