"""The fake provider REST APIs of ``voicecore.testing.provider_apis``, checked against what the
providers document and against voicecore's own checks.

Create-call requests are sent by hand here, the way each provider's documentation shows them
(not with voicecore's dialer), so these tests say whether the fakes are faithful: wrong
credentials get the provider's 401, an accepted request its documented answer; the status
callbacks arrive at a receiver on 127.0.0.1 and pass the signature checks of
``voicecore.telephony.signatures``; busy / no-answer / machine / failed numbers send their callback
sequence and open no media. The ``models`` tests dial into a real in-process ``serve`` with the
default models: the fake opens the provider's media stream with the tenant's ``agent`` key as the
stream token, and the callee hears the greeting and a reply to its question.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt as pyjwt
import pytest
from aiohttp import web
from multidict import MultiDict

from voicecore.server import create_app, running_server
from voicecore.server.guard import AuthThrottle
from voicecore.storage import Store
from voicecore.telephony.signatures import (
    SignatureError,
    check_telnyx_signature,
    check_twilio_signature,
    check_vonage_jwt,
)
from voicecore.testing.callers import rms, wait_stored_call
from voicecore.testing.provider_apis import (
    FakeTelnyxApi,
    FakeTwilioApi,
    FakeVonageApi,
    Scenario,
)

TENANTS = {"acme": None}
TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-auth-token-for-the-fake-0001"
CALLEE = "+14155550123"
CALLER_ID = "+14155550100"
QUESTION = "What are your opening hours on Saturday?"
SPEECH_RMS = 300.0


# --------------------------------------------------------------------------- a callback receiver


@dataclass
class Hook:
    url: str  # the full URL as requested (path and query)
    headers: dict[str, str]
    body: bytes

    @property
    def form(self) -> MultiDict[str]:
        return MultiDict(urllib.parse.parse_qsl(self.body.decode(), keep_blank_values=True))


@dataclass
class HookReceiver:
    base: str = ""
    hooks: list[Hook] = field(default_factory=list)

    def url(self, path: str = "/status", **query: str) -> str:
        return f"{self.base}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")

    def twilio_events(self) -> list[tuple[str, str]]:
        return [(h.form["CallStatus"], h.form["SequenceNumber"]) for h in self.hooks]


@pytest.fixture
async def hooks() -> AsyncIterator[HookReceiver]:
    receiver = HookReceiver()

    async def take(request: web.Request) -> web.Response:
        receiver.hooks.append(Hook(str(request.url), dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", take)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield receiver
    await runner.cleanup()


# --------------------------------------------------------------------------- Twilio


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def twilio_form(to: str, status_url: str, *, twiml: str | None = None, amd: bool = True) -> list[tuple[str, str]]:
    """A create-call form as Twilio's "Create a Call" documentation shows it (repeated StatusCallbackEvent)."""
    form = [("To", to), ("From", CALLER_ID),
            ("Twiml", twiml or "<Response><Connect><Stream url=\"ws://127.0.0.1:9/ws/twilio\"/></Connect></Response>"),
            ("StatusCallback", status_url), ("StatusCallbackMethod", "POST"), ("Timeout", "30")]  # fmt: skip
    form += [("StatusCallbackEvent", e) for e in ("initiated", "ringing", "answered", "completed")]
    if amd:
        form.append(("MachineDetection", "Enable"))
    return form


async def twilio_create(api: FakeTwilioApi, form: list[tuple[str, str]], *, sid: str = TWILIO_SID,
                        token: str = TWILIO_TOKEN, timeout: float = 10) -> tuple[int, Any]:  # fmt: skip
    url = f"{api.base_url}/2010-04-01/Accounts/{sid}/Calls.json"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        async with http.post(url, data=form, headers={"Authorization": basic(sid, token)}) as resp:
            return resp.status, await resp.json()


def verify_twilio(hook: Hook) -> None:
    check_twilio_signature(TWILIO_TOKEN, hook.url, hook.form, hook.headers.get("X-Twilio-Signature"))


async def test_twilio_wrong_credentials_get_twilios_401_and_place_no_call(hooks: HookReceiver) -> None:
    async with FakeTwilioApi(TWILIO_SID, TWILIO_TOKEN) as api:
        form = twilio_form(CALLEE, hooks.url())
        for sid, token in ((TWILIO_SID, "wrong-token"), ("AC" + "f" * 32, TWILIO_TOKEN)):
            status, body = await twilio_create(api, form, sid=sid, token=token)
            assert status == 401, (status, body)
            assert body["code"] == 20003 and body["status"] == 401 and body["message"] == "Authenticate", body
            assert body["more_info"] == "https://www.twilio.com/docs/errors/20003"
        # no Authorization header at all
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{api.base_url}/2010-04-01/Accounts/{TWILIO_SID}/Calls.json", data=form) as resp:
                assert resp.status == 401 and (await resp.json())["code"] == 20003
        # a missing parameter: 400 with Twilio's code for it
        status, body = await twilio_create(api, [kv for kv in form if kv[0] != "To"])
        assert (status, body["code"]) == (400, 21201), body
        status, body = await twilio_create(api, [kv for kv in form if kv[0] != "From"])
        assert (status, body["code"]) == (400, 21603), body
        await asyncio.sleep(0.2)
        assert not api.calls and api.dials_to(CALLEE) == 0
        assert [r.status for r in api.requests] == [401, 401, 401, 400, 400]
    assert not hooks.hooks, "a refused request sent status callbacks"


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ("busy", [("initiated", None), ("busy", None)]),
        ("no_answer", [("initiated", None), ("ringing", None), ("no-answer", None)]),
        ("failed", [("initiated", None), ("failed", None)]),
        ("machine", [("initiated", None), ("ringing", None), ("in-progress", "machine_start"),
                     ("completed", "machine_start")]),
    ],
)  # fmt: skip
async def test_twilio_unanswered_numbers_send_their_callbacks_and_open_no_media(
    hooks: HookReceiver, outcome: str, expected: list[tuple[str, str | None]]
) -> None:
    async with FakeTwilioApi(TWILIO_SID, TWILIO_TOKEN, scenarios={CALLEE: outcome}) as api:
        status, body = await twilio_create(api, twilio_form(CALLEE, hooks.url(attempt="a-1")))
        assert status == 201, body
        assert body["sid"].startswith("CA") and len(body["sid"]) == 34 and body["status"] == "queued"
        assert (body["to"], body["from"], body["direction"]) == (CALLEE, CALLER_ID, "outbound-api")
        [record] = await api.wait_calls(1, timeout=20)
    assert record.client is None and record.stream_url is None, "media was opened for an unanswered call"
    got = [(h.form["CallStatus"], h.form.get("AnsweredBy")) for h in hooks.hooks]
    assert got == expected, got
    assert [h.form["SequenceNumber"] for h in hooks.hooks] == [str(i) for i in range(len(expected))]
    for hook in hooks.hooks:
        verify_twilio(hook)  # signed over the full URL, query included
        assert hook.form["CallSid"] == body["sid"] and hook.form["AccountSid"] == TWILIO_SID
        assert urllib.parse.urlsplit(hook.url).query == "attempt=a-1"
    assert hooks.hooks[-1].form["CallDuration"] == "0" or outcome == "machine"
    assert api.dials_to(CALLEE) == 1


async def test_twilio_signatures_fail_with_another_token_and_only_subscribed_events_are_sent(
    hooks: HookReceiver,
) -> None:
    async with FakeTwilioApi(TWILIO_SID, TWILIO_TOKEN, scenario="busy") as api:
        form = [kv for kv in twilio_form(CALLEE, hooks.url()) if kv[0] != "StatusCallbackEvent"]
        assert (await twilio_create(api, form))[0] == 201
        assert (await twilio_create(api, form))[0] == 201
        await api.wait_calls(2, timeout=20)
    # no StatusCallbackEvent: only "completed" (Twilio's default)
    assert [h.form["CallStatus"] for h in hooks.hooks] == ["busy", "busy"]
    hook = hooks.hooks[0]
    verify_twilio(hook)
    with pytest.raises(SignatureError):
        check_twilio_signature("another-auth-token", hook.url, hook.form, hook.headers["X-Twilio-Signature"])
    tampered = MultiDict(hook.form)
    tampered["CallStatus"] = "completed"
    with pytest.raises(SignatureError):
        check_twilio_signature(TWILIO_TOKEN, hook.url, tampered, hook.headers["X-Twilio-Signature"])
    assert api.dials_to(CALLEE) == 2 and len({c.call_id for c in api.calls}) == 2


async def test_twilio_500_and_a_request_never_answered() -> None:
    async with FakeTwilioApi(TWILIO_SID, TWILIO_TOKEN, scenarios={CALLEE: "fail_500", "+14155550124": "timeout"}) as api:
        status, body = await twilio_create(api, twilio_form(CALLEE, "http://127.0.0.1:9/status"))
        assert status == 500 and body["status"] == 500 and isinstance(body["code"], int), body
        with pytest.raises(TimeoutError):
            await twilio_create(api, twilio_form("+14155550124", "http://127.0.0.1:9/status"), timeout=1.0)
        assert not api.calls
        assert [r.status for r in api.requests] == [500, 0]  # the second is still held


# --------------------------------------------------------------------------- a real serve


@pytest.fixture
async def serve(store: Store, pool: Any, receptionist: Any, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """An in-process ``serve`` with the default models; yields (ws base URL, acme's agent key)."""
    key = store.tenants.create_api_key("acme", role="agent", actor="test")
    app = create_app(data_dir=tmp_path, store=store, pool=pool, preload=False,
                     pipelines={receptionist.name: receptionist}, auth_throttle=AuthThrottle(burst=1000))  # fmt: skip
    pool.for_pipeline(receptionist)  # loaded before the dial: the greeting is not held up by a load
    async with running_server(app) as base:
        yield base.replace("http", "ws", 1), key


def check_answered_call(record: Any, ws_base: str, provider: str) -> None:
    """The callee's side of an answered call: a clean stream, the greeting, a reply to its question."""
    client = record.client
    assert client is not None and record.stream_error is None, record.stream_error
    assert not client.violations, client.violations[:5]
    assert record.stream_url == f"{ws_base}/ws/{provider}"
    assert record.first_agent_audio_at is not None, "no greeting"
    assert record.received_at < record.stream_started_at < record.first_agent_audio_at
    assert 0 < record.dial_to_greeting_s < 60
    [reply] = record.replies
    greeting = client.agent_audio(until=reply.speech_end_at)
    assert rms(greeting) > SPEECH_RMS, f"greeting is silent (RMS {rms(greeting):.0f})"
    assert reply.first_audio_at is not None, "the agent did not answer the callee"
    answer = client.agent_audio(since=reply.speech_end_at)
    assert answer.size > client.sample_rate * 0.5 and rms(answer) > SPEECH_RMS
    assert record.ended_by == "callee"
    assert time.monotonic() >= record.ended_at


async def check_stored(store: Store, provider_id: str) -> None:
    """The call is stored under the provider's call id, closed, with the callee's words in it."""
    call = await wait_stored_call(store, "acme", {provider_id}, timeout=20, with_turns=True)
    assert call is not None and call.ended_at is not None, "the call was not stored and closed"
    assert any(t.role == "caller" and t.text for t in call.turns), [(t.role, t.text) for t in call.turns]


@pytest.mark.models
async def test_twilio_answered_call_streams_to_serve_and_the_callee_hears_the_agent(
    serve: tuple[str, str], store: Store, hooks: HookReceiver, say: Any
) -> None:
    ws_base, key = serve
    say(QUESTION, voice="en-us+f3", speed=130)  # the log check knows the sentence
    twiml = (f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="{ws_base}/ws/twilio">'
             f'<Parameter name="token" value="{key}"/></Stream></Connect></Response>')  # fmt: skip
    async with FakeTwilioApi(TWILIO_SID, TWILIO_TOKEN, scenarios={CALLEE: Scenario(script=(QUESTION,))}) as api:
        status, body = await twilio_create(api, twilio_form(CALLEE, hooks.url(attempt="a-7"), twiml=twiml))
        assert status == 201, body
        [record] = await api.wait_calls(1, timeout=180)
    # the TwiML's <Parameter> arrived as Twilio's customParameters: the server took the key
    check_answered_call(record, ws_base, "twilio")
    await check_stored(store, body["sid"])
    # the status callbacks: initiated, ringing, answered (human), completed with a duration; all signed
    got = [(h.form["CallStatus"], h.form.get("AnsweredBy")) for h in hooks.hooks]
    assert got == [("initiated", None), ("ringing", None), ("in-progress", "human"), ("completed", "human")], got
    for hook in hooks.hooks:
        verify_twilio(hook)
    assert int(hooks.hooks[-1].form["CallDuration"]) >= 1


# --------------------------------------------------------------------------- Telnyx

TELNYX_KEY = "KEY0123456789ABCDEF_fake-telnyx-api-key"
TELNYX_CONNECTION = "1494404757140276705"


def telnyx_body(to: str, webhook_url: str, **extra: Any) -> dict[str, Any]:
    """A Dial request as Telnyx's API reference shows it."""
    return {"to": to, "from": CALLER_ID, "connection_id": TELNYX_CONNECTION, "webhook_url": webhook_url,
            "client_state": base64.b64encode(b"attempt-1").decode(), "answering_machine_detection": "detect",
            **extra}  # fmt: skip


async def telnyx_dial(api: FakeTelnyxApi, body: Any, *, key: str = TELNYX_KEY, timeout: float = 10) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Accept": "application/json"}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        async with http.post(f"{api.base_url}/v2/calls", data=data, headers=headers) as resp:
            return resp.status, await resp.json()


def telnyx_events(api: FakeTelnyxApi, hooks: HookReceiver) -> list[tuple[str, dict[str, Any]]]:
    """The webhooks received, each checked with voicecore's Ed25519 check and the account's public key."""
    out = []
    for hook in hooks.hooks:
        check_telnyx_signature(api.public_key, hook.body, hook.headers.get("telnyx-signature-ed25519"),
                               hook.headers.get("telnyx-timestamp"), now=time.time())  # fmt: skip
        data = json.loads(hook.body)["data"]
        assert data["record_type"] == "event"
        out.append((data["event_type"], data["payload"]))
    return out


async def test_telnyx_wrong_key_bad_requests_and_command_id_idempotency(hooks: HookReceiver) -> None:
    async with FakeTelnyxApi(TELNYX_KEY, TELNYX_CONNECTION, scenario="busy") as api:
        status, body = await telnyx_dial(api, telnyx_body(CALLEE, hooks.url()), key="wrong-key")
        assert status == 401 and body["errors"][0]["code"] == "10009", body
        assert set(body["errors"][0]) >= {"code", "title", "detail"}
        status, body = await telnyx_dial(api, b"{not json")
        assert status == 400 and body["errors"][0]["code"] == "10023", body
        status, body = await telnyx_dial(api, {k: v for k, v in telnyx_body(CALLEE, hooks.url()).items() if k != "to"})
        assert status == 422 and body["errors"][0]["source"] == {"pointer": "/to"}, body
        status, body = await telnyx_dial(api, telnyx_body("4155550123", hooks.url()))
        assert status == 422 and body["errors"][0]["code"] == "10016", body
        assert not api.calls
        # the same command_id twice: one call, the same ids answered
        first = await telnyx_dial(api, telnyx_body(CALLEE, hooks.url(), command_id="attempt-1"))
        again = await telnyx_dial(api, telnyx_body(CALLEE, hooks.url(), command_id="attempt-1"))
        assert first[0] == again[0] == 200, (first, again)
        assert first[1] == again[1] and first[1]["data"]["call_control_id"].startswith("v3:")
        assert first[1]["data"]["record_type"] == "call" and first[1]["data"]["is_alive"] is False
        other = await telnyx_dial(api, telnyx_body(CALLEE, hooks.url(), command_id="attempt-2"))
        assert other[1]["data"]["call_control_id"] != first[1]["data"]["call_control_id"]
        await api.wait_calls(2, timeout=20)
        assert api.dials_to(CALLEE) == 2 and len(api.requests) == 7


@pytest.mark.parametrize(
    ("outcome", "expected", "cause"),
    [
        ("busy", ["call.initiated", "call.hangup"], "user_busy"),
        ("no_answer", ["call.initiated", "call.hangup"], "timeout"),
        ("machine", ["call.initiated", "call.answered", "call.machine.detection.ended", "call.hangup"],
         "normal_clearing"),
    ],
)  # fmt: skip
async def test_telnyx_unanswered_numbers_send_signed_webhooks_and_open_no_media(
    hooks: HookReceiver, outcome: str, expected: list[str], cause: str
) -> None:
    async with FakeTelnyxApi(TELNYX_KEY, TELNYX_CONNECTION, scenarios={CALLEE: outcome}) as api:
        status, body = await telnyx_dial(api, telnyx_body(CALLEE, hooks.url(attempt="a-2")))
        assert status == 200, body
        [record] = await api.wait_calls(1, timeout=20)
    assert record.client is None, "media was opened for an unanswered call"
    events = telnyx_events(api, hooks)
    assert [e for e, _ in events] == expected
    payloads = dict(events)
    assert payloads["call.hangup"]["hangup_cause"] == cause
    if outcome == "machine":
        assert payloads["call.machine.detection.ended"]["result"] == "machine"
    for _, payload in events:
        assert payload["call_control_id"] == body["data"]["call_control_id"]
        assert base64.b64decode(payload["client_state"]) == b"attempt-1"
    with pytest.raises(SignatureError):  # another account's key does not verify them
        other = FakeTelnyxApi(TELNYX_KEY, TELNYX_CONNECTION)
        hook = hooks.hooks[0]
        check_telnyx_signature(other.public_key, hook.body, hook.headers["telnyx-signature-ed25519"],
                               hook.headers["telnyx-timestamp"], now=time.time())  # fmt: skip


@pytest.mark.models
async def test_telnyx_answered_call_streams_to_serve_and_the_callee_hears_the_agent(
    serve: tuple[str, str], store: Store, hooks: HookReceiver, say: Any
) -> None:
    ws_base, key = serve
    say(QUESTION, voice="en-us+f3", speed=130)
    body = telnyx_body(CALLEE, hooks.url(attempt="a-8"), stream_url=f"{ws_base}/ws/telnyx", stream_auth_token=key,
                       stream_track="both_tracks", stream_bidirectional_mode="rtp",
                       stream_bidirectional_codec="PCMU", command_id="attempt-8")  # fmt: skip
    async with FakeTelnyxApi(TELNYX_KEY, TELNYX_CONNECTION, scenarios={CALLEE: Scenario(script=(QUESTION,))}) as api:
        status, answer = await telnyx_dial(api, body)
        assert status == 200, answer
        [record] = await api.wait_calls(1, timeout=180)
    check_answered_call(record, ws_base, "telnyx")
    await check_stored(store, answer["data"]["call_control_id"])
    events = [e for e, _ in telnyx_events(api, hooks)]
    assert events == ["call.initiated", "call.answered", "call.machine.detection.ended", "streaming.started",
                      "streaming.stopped", "call.hangup"], events  # fmt: skip


# --------------------------------------------------------------------------- Vonage

VONAGE_APP = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
VONAGE_SECRET = "vonage-signature-secret-for-the-fake-0123456789"
VONAGE_CALLEE = "14155550123"  # Vonage's numbers: E.164 without the +


def vonage_app_jwt(private_key_pem: str, application_id: str = VONAGE_APP) -> str:
    """The application JWT of Vonage's authentication guide: RS256 with the application's private key."""
    now = int(time.time())
    claims = {"application_id": application_id, "iat": now, "exp": now + 900, "jti": str(uuid.uuid4())}
    return pyjwt.encode(claims, private_key_pem, algorithm="RS256")


def vonage_body(to: str, event_url: str, ncco: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    """A create-call request as Vonage's Voice API reference shows it."""
    ncco = ncco or [{"action": "talk", "text": "hello"}]
    return {"to": [{"type": "phone", "number": to}], "from": {"type": "phone", "number": CALLER_ID.lstrip("+")},
            "ncco": ncco, "event_url": [event_url], "event_method": "POST", "machine_detection": "continue",
            **extra}  # fmt: skip


async def vonage_create(api: FakeVonageApi, body: Any, *, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token or vonage_app_jwt(api.private_key_pem)}",
               "Content-Type": "application/json"}  # fmt: skip
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.post(f"{api.base_url}/v1/calls", data=json.dumps(body).encode(), headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


def vonage_events(hooks: HookReceiver) -> list[dict[str, Any]]:
    """The event webhooks received, each checked with voicecore's signed-webhook JWT check."""
    out = []
    for hook in hooks.hooks:
        scheme, _, token = hook.headers.get("Authorization", "").partition(" ")
        assert scheme == "Bearer"
        check_vonage_jwt(VONAGE_SECRET, token, now=time.time(), body=hook.body, application_id=VONAGE_APP)
        out.append(json.loads(hook.body))
    return out


async def test_vonage_wrong_jwt_and_bad_bodies_get_vonages_errors(hooks: HookReceiver) -> None:
    async with FakeVonageApi(VONAGE_APP, VONAGE_SECRET) as api:
        other = FakeVonageApi(VONAGE_APP, VONAGE_SECRET)  # another key pair, never started
        body = vonage_body(VONAGE_CALLEE, hooks.url())
        for token in (vonage_app_jwt(other.private_key_pem), vonage_app_jwt(api.private_key_pem, "another-app"),
                      "not-a-jwt"):  # fmt: skip
            status, answer = await vonage_create(api, body, token=token)
            assert status == 401, answer
            assert answer["type"].endswith("#unauthorized") and answer["detail"] and answer["instance"], answer
        status, answer = await vonage_create(api, {k: v for k, v in body.items() if k != "to"})
        assert status == 400 and [p["name"] for p in answer["invalid_parameters"]] == ["to"], answer
        status, answer = await vonage_create(api, {k: v for k, v in body.items() if k != "ncco"})
        assert status == 400 and [p["name"] for p in answer["invalid_parameters"]] == ["ncco"], answer
        assert not api.calls and [r.status for r in api.requests] == [401, 401, 401, 400, 400]
    assert not hooks.hooks


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ("busy", ["started", "busy"]),
        ("no_answer", ["started", "ringing", "timeout"]),
        ("machine", ["started", "ringing", "answered", "machine", "completed"]),
    ],
)
async def test_vonage_unanswered_numbers_send_signed_events_and_open_no_media(
    hooks: HookReceiver, outcome: str, expected: list[str]
) -> None:
    async with FakeVonageApi(VONAGE_APP, VONAGE_SECRET, scenarios={VONAGE_CALLEE: outcome}) as api:
        status, answer = await vonage_create(api, vonage_body(VONAGE_CALLEE, hooks.url(attempt="a-3")))
        assert status == 201, answer
        assert answer["status"] == "started" and answer["direction"] == "outbound"
        assert answer["conversation_uuid"].startswith("CON-") and uuid.UUID(answer["uuid"])
        [record] = await api.wait_calls(1, timeout=20)
    assert record.client is None, "media was opened for an unanswered call"
    events = vonage_events(hooks)
    assert [e["status"] for e in events] == expected
    assert all(e["uuid"] == answer["uuid"] and e["to"] == VONAGE_CALLEE for e in events)
    assert api.dials_to(VONAGE_CALLEE) == 1
    with pytest.raises(SignatureError):
        hook = hooks.hooks[0]
        check_vonage_jwt("another-signature-secret-0123456789", hook.headers["Authorization"].split()[1],
                         now=time.time(), body=hook.body)  # fmt: skip


@pytest.mark.models
async def test_vonage_answered_call_streams_to_serve_and_the_callee_hears_the_agent(
    serve: tuple[str, str], store: Store, hooks: HookReceiver, say: Any
) -> None:
    ws_base, key = serve
    say(QUESTION, voice="en-us+f3", speed=130)
    store.providers.set("acme", "vonage", {"signature_secret": VONAGE_SECRET, "application_id": VONAGE_APP},
                        actor="test")  # the upgrade carries Vonage's JWT, checked with this secret
    ncco = [{"action": "connect", "endpoint": [{"type": "websocket", "uri": f"{ws_base}/ws/vonage",
                                                "content-type": "audio/l16;rate=16000", "headers": {"token": key},
                                                "authorization": {"type": "vonage"}}]}]  # fmt: skip
    async with FakeVonageApi(VONAGE_APP, VONAGE_SECRET, scenarios={VONAGE_CALLEE: Scenario(script=(QUESTION,))}) as api:
        status, answer = await vonage_create(api, vonage_body(VONAGE_CALLEE, hooks.url(attempt="a-9"), ncco))
        assert status == 201, answer
        [record] = await api.wait_calls(1, timeout=180)
    check_answered_call(record, ws_base, "vonage")
    assert record.client.sample_rate == 16000
    await check_stored(store, answer["uuid"])
    events = vonage_events(hooks)
    assert [e["status"] for e in events] == ["started", "ringing", "answered", "human", "completed"], events
    assert int(events[-1]["duration"]) >= 1
