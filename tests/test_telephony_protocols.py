"""Message vectors for the telephony provider codecs.

Inbound vectors are written from ../shared/docs/telephony-protocols.md (message
shapes as the providers send them); outbound messages are checked field by
field against the same reference, and audio against the G.711 tables.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
import pytest

from voicecore.audio.codecs import alaw_encode, ulaw_decode, ulaw_encode
from voicecore.telephony import (
    MAX_FRAME_BYTES,
    PROTOCOLS,
    AsteriskProtocol,
    CallStart,
    CallStop,
    Cleared,
    Connected,
    Dtmf,
    ExotelProtocol,
    Ignored,
    MarkPlayed,
    MediaIn,
    PlivoProtocol,
    ProtocolError,
    ProviderProtocol,
    TelnyxProtocol,
    TwilioProtocol,
    UnknownEvent,
    VonageProtocol,
    create_protocol,
    twiml_connect_stream,
)
from voicecore.telephony.base import ReorderBuffer


def j(obj: Any) -> str:
    return json.dumps(obj)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pcm(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}h", *values)


def tone(rate: int, seconds: float, freq: float = 440.0, amplitude: int = 8000) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype("<i2").tobytes()


def feed(codec: ProviderProtocol, frame: str | bytes) -> list:
    return codec.receive_text(frame) if isinstance(frame, str) else codec.receive_bytes(frame)


# --- Twilio ------------------------------------------------------------------------

TWILIO_CONNECTED = j({"event": "connected", "protocol": "Call", "version": "1.0.0"})
TWILIO_START = j(
    {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": "MZ0001",
        "start": {
            "accountSid": "AC0001",
            "streamSid": "MZ0001",
            "callSid": "CA0001",
            "tracks": ["inbound"],
            "customParameters": {"token": "tenant-key-1", "from": "+15550100", "to": "+15550199"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
)


def twilio_media(payload: str, seq: str = "3", sid: str = "MZ0001", **media: Any) -> str:
    return j(
        {
            "event": "media",
            "sequenceNumber": seq,
            "streamSid": sid,
            "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": payload, **media},
        }
    )


@pytest.fixture
def twilio() -> TwilioProtocol:
    codec = TwilioProtocol()
    codec.handshake({"Host": "example.test"}, {})
    assert feed(codec, TWILIO_CONNECTED) == [Connected({"event": "connected", "protocol": "Call", "version": "1.0.0"})]
    feed(codec, TWILIO_START)
    return codec


def test_twilio_start_gives_call_start():
    codec = TwilioProtocol()
    codec.handshake({}, {})
    [start] = codec.receive_text(TWILIO_START)
    assert isinstance(start, CallStart)
    assert (start.provider, start.stream_id, start.call_id) == ("twilio", "MZ0001", "CA0001")
    assert (start.caller, start.callee) == ("+15550100", "+15550199")
    assert start.auth_token == "tenant-key-1"
    assert (start.sample_rate, start.encoding) == (8000, "mulaw")
    assert start.custom_parameters == {"token": "tenant-key-1", "from": "+15550100", "to": "+15550199"}
    assert start.raw["start"]["accountSid"] == "AC0001"
    assert codec.auth_token == "tenant-key-1"
    assert codec.auth_source == "start.customParameters.token"
    assert codec.started and codec.sample_rate == 8000 and codec.frame_duration_ms == 20
    # Secrets and phone numbers stay out of repr().
    assert "tenant-key-1" not in repr(start) and "+1555" not in repr(start)


def test_twilio_bare_start_from_pipecat_test_client():
    codec = TwilioProtocol()
    [start] = codec.receive_text(
        j({"event": "start", "streamSid": "MZ9", "start": {"streamSid": "MZ9", "callSid": "CA9"}})
    )
    assert start.auth_token is None and start.custom_parameters == {} and start.sample_rate == 8000
    [media] = codec.receive_text(j({"event": "media", "streamSid": "MZ9", "media": {"payload": "/4AA"}}))
    assert media == MediaIn(pcm(0, 32124, -32124), None, None)


def test_twilio_media_decodes_mulaw(twilio: TwilioProtocol):
    [media] = twilio.receive_text(twilio_media("/4AA"))  # μ-law 0xFF 0x80 0x00
    assert isinstance(media, MediaIn)
    assert media.pcm16 == pcm(0, 32124, -32124)
    assert (media.sequence, media.timestamp_ms) == (3, 5)
    payload = ulaw_encode(tone(8000, 0.02))
    [media] = twilio.receive_text(twilio_media(b64(payload), seq="4"))
    assert media.pcm16 == ulaw_decode(payload) and len(media.pcm16) == 320


def test_twilio_dtmf_mark_stop(twilio: TwilioProtocol):
    assert twilio.receive_text(
        j(
            {
                "event": "dtmf",
                "sequenceNumber": "5",
                "streamSid": "MZ0001",
                "dtmf": {"track": "inbound_track", "digit": "1"},
            }
        )
    ) == [Dtmf("1", None)]
    assert twilio.encode_mark("utt-7") == [
        j({"event": "mark", "streamSid": "MZ0001", "mark": {"name": "utt-7"}}).replace(" ", "")
    ]
    assert twilio.pending_marks == ("utt-7",)
    assert twilio.receive_text(
        j({"event": "mark", "sequenceNumber": "6", "streamSid": "MZ0001", "mark": {"name": "utt-7"}})
    ) == [MarkPlayed("utt-7", cleared=False)]
    assert twilio.pending_marks == ()
    stop = j(
        {
            "event": "stop",
            "sequenceNumber": "9",
            "streamSid": "MZ0001",
            "stop": {"accountSid": "AC0001", "callSid": "CA0001"},
        }
    )
    assert twilio.receive_text(stop) == [CallStop("stop")]
    assert twilio.stopped
    [late] = twilio.receive_text(twilio_media("/4AA", seq="10"))
    assert isinstance(late, Ignored)


def test_twilio_outbound_media_one_second(twilio: TwilioProtocol):
    audio = tone(8000, 1.0)
    messages = twilio.encode_media(audio)
    assert len(messages) == 50 and all(isinstance(m, str) for m in messages)
    payloads = []
    for text in messages:
        msg = json.loads(text)
        assert set(msg) == {"event", "streamSid", "media"}
        assert msg["event"] == "media" and msg["streamSid"] == "MZ0001" and set(msg["media"]) == {"payload"}
        payloads.append(base64.b64decode(msg["media"]["payload"]))
    assert {len(p) for p in payloads} == {160}
    assert b"".join(payloads) == ulaw_encode(audio)


def test_twilio_outbound_audio_is_whole_frames_one_message_each(twilio: TwilioProtocol):
    assert twilio.frame_bytes == 320 and twilio.frame_duration_ms == 20
    [m1, m2] = twilio.encode_media(pcm(*[1000] * 160, *[2000] * 160))
    assert base64.b64decode(json.loads(m1)["media"]["payload"]) == ulaw_encode(pcm(*[1000] * 160))
    assert base64.b64decode(json.loads(m2)["media"]["payload"]) == ulaw_encode(pcm(*[2000] * 160))
    with pytest.raises(ValueError, match="not whole 320-byte frames"):
        twilio.encode_media(pcm(*[1000] * 100))  # the sender cuts frames; a part of one is a bug


def test_twilio_clear_flags_returned_marks(twilio: TwilioProtocol):
    twilio.encode_media(pcm(*[500] * 160))
    twilio.encode_mark("clause-1")
    twilio.encode_mark("clause-2")
    assert twilio.encode_clear() == ['{"event":"clear","streamSid":"MZ0001"}']
    assert TwilioProtocol.marks_returned_on_clear is True
    # Twilio returns both pending marks because of the clear: not heard.
    for name in ("clause-1", "clause-2"):
        assert twilio.receive_text(j({"event": "mark", "streamSid": "MZ0001", "mark": {"name": name}})) == [
            MarkPlayed(name, cleared=True)
        ]
    twilio.encode_mark("clause-3")
    assert twilio.receive_text(j({"event": "mark", "streamSid": "MZ0001", "mark": {"name": "clause-3"}})) == [
        MarkPlayed("clause-3")
    ]
    assert twilio.encode_hangup() == []


def test_twilio_out_of_order_media_is_dropped_not_fatal(twilio: TwilioProtocol):
    assert isinstance(twilio.receive_text(twilio_media("/4AA", seq="7"))[0], MediaIn)
    [dup] = twilio.receive_text(twilio_media("/4AA", seq="7"))
    [old] = twilio.receive_text(twilio_media("/4AA", seq="5"))
    assert isinstance(dup, Ignored) and "sequenceNumber 7" in dup.reason
    assert isinstance(old, Ignored) and "5" in old.reason
    assert isinstance(twilio.receive_text(twilio_media("/4AA", seq="8"))[0], MediaIn)


def test_twilio_encode_before_start_is_a_programming_error():
    with pytest.raises(RuntimeError, match="before CallStart"):
        TwilioProtocol().encode_media(pcm(0))


def test_twiml_connect_stream_escapes_and_parses():
    xml = twiml_connect_stream(
        "wss://voice.example.com/ws/twilio", {"token": "a&b<c>\"d'", "from": "+15550100", "to": "+15550199"}
    )
    assert xml.startswith(
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://voice.example.com/ws/twilio">'
    )
    root = ET.fromstring(xml.split("?>", 1)[1])
    stream = root.find("./Connect/Stream")
    assert stream is not None and stream.get("url") == "wss://voice.example.com/ws/twilio"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params == {"token": "a&b<c>\"d'", "from": "+15550100", "to": "+15550199"}
    assert "&amp;" in xml and "&lt;" in xml


@pytest.mark.parametrize(
    ("url", "params", "match"),
    [
        ("wss://h.example/ws?token=x", {}, "31922"),
        ("https://h.example/ws", {}, "wss://"),
        ("wss:///nohost", {}, "wss://"),
        ("wss://h.example/ws", {"token": "x" * 500}, "500"),
        ("wss://h.example/ws", {"n" * 250: "v" * 250}, "500"),
    ],
)
def test_twiml_connect_stream_rejects(url: str, params: dict[str, str], match: str):
    with pytest.raises(ValueError, match=match):
        twiml_connect_stream(url, params)


def test_twiml_accepts_parameter_just_under_limit():
    assert 'value="' + "x" * 494 in twiml_connect_stream("wss://h.example/ws", {"token": "x" * 494})


# --- Telnyx ------------------------------------------------------------------------


def telnyx_start(encoding: str = "PCMU", rate: int = 8000, params: dict[str, str] | None = None) -> str:
    return j(
        {
            "event": "start",
            "sequence_number": "1",
            "stream_id": "32DE0001",
            "start": {
                "user_id": "u-1",
                "call_control_id": "v3:cc-1",
                "call_session_id": "cs-1",
                "from": "+15550101",
                "to": "+15550102",
                "client_state": "aGk=",
                "custom_parameters": params if params is not None else {"k": "v"},
                "media_format": {"encoding": encoding, "sample_rate": rate, "channels": 1},
            },
        }
    )


def telnyx_media(payload: bytes, seq: int, chunk: int | None = None, sid: str = "32DE0001") -> str:
    media: dict[str, Any] = {"track": "inbound", "timestamp": str(seq * 20), "payload": b64(payload)}
    if chunk is not None:
        media["chunk"] = str(chunk)
    return j({"event": "media", "sequence_number": str(seq), "stream_id": sid, "media": media})


def started_telnyx(**opts: Any) -> TelnyxProtocol:
    codec = TelnyxProtocol(**opts)
    codec.handshake({"X-Telnyx-Streaming-Auth-Token": "tx-key"}, {})
    codec.receive_text(j({"event": "connected", "version": "1.0.0"}))
    codec.receive_text(telnyx_start())
    return codec


def test_telnyx_start_and_header_token():
    codec = TelnyxProtocol()
    codec.handshake({"x-telnyx-streaming-auth-token": "tx-key"}, {})
    assert codec.auth_token == "tx-key"  # known before start: the shell may reject early
    [start] = codec.receive_text(telnyx_start())
    assert (start.stream_id, start.call_id, start.caller, start.callee) == (
        "32DE0001",
        "v3:cc-1",
        "+15550101",
        "+15550102",
    )
    assert (start.sample_rate, start.encoding, start.auth_token) == (8000, "mulaw", "tx-key")
    assert codec.auth_source == "x-telnyx-streaming-auth-token header"
    assert start.custom_parameters == {"k": "v"}


def test_telnyx_token_from_custom_parameters_and_agreement():
    codec = TelnyxProtocol()
    codec.handshake({}, {})
    [start] = codec.receive_text(telnyx_start(params={"token": "cp-key"}))
    assert start.auth_token == "cp-key" and codec.auth_source == "start.custom_parameters.token"
    same = TelnyxProtocol()
    same.handshake({"x-telnyx-streaming-auth-token": "cp-key"}, {})
    assert same.receive_text(telnyx_start(params={"token": "cp-key"}))[0].auth_token == "cp-key"


def test_telnyx_pcmu_and_pcma_media():
    codec = started_telnyx()
    [m] = codec.receive_text(telnyx_media(b"\xff\x80", 2, chunk=1))
    assert m.pcm16 == pcm(0, 32124)
    alaw = TelnyxProtocol()
    alaw.receive_text(telnyx_start("PCMA"))
    [m] = alaw.receive_text(telnyx_media(bytes([0xD5, 0xAA]), 2, chunk=1))
    assert m.pcm16 == pcm(8, 32256)
    # Telnyx plays back what stream_bidirectional_codec says (PCMU unless set), not the caller's codec
    [out] = alaw.encode_media(pcm(*[8] * 160))
    assert base64.b64decode(json.loads(out)["media"]["payload"]) == ulaw_encode(pcm(*[8] * 160))
    configured = TelnyxProtocol(outbound_encoding="PCMA")
    configured.receive_text(telnyx_start("PCMA"))
    [out] = configured.encode_media(pcm(*[8] * 160))
    assert base64.b64decode(json.loads(out)["media"]["payload"]) == alaw_encode(pcm(*[8] * 160))


def test_telnyx_l16_is_big_endian_by_default():
    codec = TelnyxProtocol(outbound_encoding="L16", outbound_sample_rate=16000)
    [start] = codec.receive_text(telnyx_start("L16", 16000))
    assert (start.encoding, start.sample_rate, codec.output_sample_rate) == ("pcm16be", 16000, 16000)
    [m] = codec.receive_text(telnyx_media(struct.pack(">3h", 1, -2, 300), 2, chunk=1))
    assert m.pcm16 == pcm(1, -2, 300)
    audio = tone(16000, 0.02)
    [out] = codec.encode_media(audio)
    wire = base64.b64decode(json.loads(out)["media"]["payload"])
    assert len(wire) == 640
    assert wire == np.frombuffer(audio, "<i2").astype(">i2").tobytes()


def test_telnyx_l16_little_endian_option():
    codec = TelnyxProtocol(l16_byte_order="little")
    codec.receive_text(telnyx_start("L16", 8000))
    [m] = codec.receive_text(telnyx_media(pcm(1, -2, 300), 2, chunk=1))
    assert m.pcm16 == pcm(1, -2, 300)


def test_telnyx_outbound_defaults_to_pcmu_8k_whatever_the_caller_codec():
    codec = TelnyxProtocol()
    codec.receive_text(telnyx_start("L16", 16000))
    assert (codec.sample_rate, codec.output_sample_rate, codec.output_encoding) == (16000, 8000, "mulaw")
    messages = codec.encode_media(tone(8000, 0.1))
    assert len(messages) == 5
    assert all(len(base64.b64decode(json.loads(m)["media"]["payload"])) == 160 for m in messages)


def test_telnyx_outbound_options_are_checked():
    with pytest.raises(ValueError, match="PCMU, PCMA or L16"):
        TelnyxProtocol(outbound_encoding="OPUS")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not valid for PCMU"):
        TelnyxProtocol(outbound_encoding="PCMU", outbound_sample_rate=16000)


def test_telnyx_token_in_the_connected_message_and_query():
    codec = TelnyxProtocol()
    codec.handshake({}, {"token": "q-tok"})
    codec.receive_text(j({"event": "connected", "version": "1.0.0",
                          "connected": {"x-telnyx-streaming-auth-token": "q-tok"}}))  # fmt: skip
    [start] = codec.receive_text(telnyx_start())
    assert start.auth_token == "q-tok"
    other = TelnyxProtocol()
    other.handshake({}, {})
    other.receive_text(j({"event": "connected", "connected": {"x-telnyx-streaming-auth-token": "c-tok"}}))
    [start] = other.receive_text(telnyx_start())
    assert start.auth_token == "c-tok" and other.auth_source == "connected.x-telnyx-streaming-auth-token"
    clash = TelnyxProtocol()
    clash.handshake({"x-telnyx-streaming-auth-token": "h-tok"}, {})
    clash.receive_text(j({"event": "connected", "connected": {"x-telnyx-streaming-auth-token": "c-tok"}}))
    with pytest.raises(ProtocolError, match="conflicting auth tokens") as info:
        clash.receive_text(telnyx_start())
    assert info.value.close_code == 1008


def test_telnyx_outbound_shapes():
    codec = started_telnyx()
    [media] = codec.encode_media(pcm(*[0] * 160))
    assert json.loads(media) == {"event": "media", "media": {"payload": b64(b"\xff" * 160)}}
    assert codec.encode_mark("m1") == ['{"event":"mark","mark":{"name":"m1"}}']
    assert codec.encode_clear() == ['{"event":"clear"}']
    assert TelnyxProtocol.marks_returned_on_clear is True


def _seqs(events: list) -> list[int | None]:
    return [e.sequence for e in events if isinstance(e, MediaIn)]


def test_telnyx_reorders_out_of_order_frames():
    codec = started_telnyx()
    frame = b"\xff" * 160
    assert _seqs(codec.receive_text(telnyx_media(frame, 2, chunk=1))) == [2]
    assert _seqs(codec.receive_text(telnyx_media(frame, 4, chunk=3))) == []  # waits for chunk 2
    assert _seqs(codec.receive_text(telnyx_media(frame, 3, chunk=2))) == [3, 4]
    assert _seqs(codec.receive_text(telnyx_media(frame, 5, chunk=4))) == [5]


def test_telnyx_gives_up_a_gap_after_the_window():
    codec = started_telnyx(reorder_window=3)
    frame = b"\xff" * 160
    codec.receive_text(telnyx_media(frame, 2, chunk=1))
    # chunk 2 is lost; 3, 4, 5 are held, the 4th held frame releases them all
    for seq, chunk in ((4, 3), (5, 4), (6, 5)):
        assert codec.receive_text(telnyx_media(frame, seq, chunk=chunk)) == []
    assert _seqs(codec.receive_text(telnyx_media(frame, 7, chunk=6))) == [4, 5, 6, 7]
    [late] = codec.receive_text(telnyx_media(frame, 3, chunk=2))
    assert isinstance(late, Ignored) and "late" in late.reason
    [dup] = codec.receive_text(telnyx_media(frame, 7, chunk=6))
    assert isinstance(dup, Ignored)


def test_telnyx_sorts_by_sequence_number_without_chunk_and_drains_on_stop():
    codec = started_telnyx()
    frame = b"\xff" * 160
    assert _seqs(codec.receive_text(telnyx_media(frame, 2))) == [2]
    assert codec.receive_text(telnyx_media(frame, 4)) == []
    # dtmf between media is processed at once and does not disturb the media order
    assert codec.receive_text(j({"event": "dtmf", "stream_id": "32DE0001", "dtmf": {"digit": "#"}})) == [Dtmf("#")]
    events = codec.receive_text(j({"event": "stop", "sequence_number": "9", "stream_id": "32DE0001", "stop": {}}))
    assert _seqs(events) == [4] and events[-1] == CallStop("stop")


def test_telnyx_receive_close_releases_held_frames():
    codec = started_telnyx()
    frame = b"\xff" * 160
    codec.receive_text(telnyx_media(frame, 2, chunk=1))
    codec.receive_text(telnyx_media(frame, 5, chunk=4))
    codec.receive_text(telnyx_media(frame, 4, chunk=3))
    assert _seqs(codec.receive_close()) == [4, 5]
    assert codec.receive_close() == []


def test_telnyx_error_event_is_ignored_and_marks_return():
    codec = started_telnyx()
    [ignored] = codec.receive_text(j({"event": "error", "payload": {"code": 100002, "title": "Unknown error"}}))
    assert isinstance(ignored, Ignored) and "100002" in ignored.reason
    codec.encode_mark("x")
    assert codec.receive_text(j({"event": "mark", "stream_id": "32DE0001", "mark": {"name": "x"}})) == [MarkPlayed("x")]


def test_reorder_buffer_unit():
    buf: ReorderBuffer[str] = ReorderBuffer(2)
    assert buf.push(10, "a") == ["a"]
    assert buf.push(12, "c") == []
    assert buf.push(13, "d") == []
    assert buf.held == 2
    assert buf.push(14, "e") == ["c", "d", "e"]
    assert buf.push(11, "b") is None
    assert buf.drain() == []


# --- Vonage ------------------------------------------------------------------------

VONAGE_CONNECTED = j(
    {
        "event": "websocket:connected",
        "content-type": "audio/l16;rate=16000",
        "token": "vg-key",
        "from": "+15550103",
        "to": "+15550104",
        "uuid": "call-uuid-1",
    }
)


@pytest.fixture
def vonage() -> VonageProtocol:
    codec = VonageProtocol()
    codec.handshake({}, {})
    codec.receive_text(VONAGE_CONNECTED)
    return codec


def test_vonage_connected_is_call_start():
    codec = VonageProtocol()
    codec.handshake({}, {})
    connected, start = codec.receive_text(VONAGE_CONNECTED)
    assert isinstance(connected, Connected) and isinstance(start, CallStart)
    assert (start.sample_rate, start.encoding, start.auth_token) == (16000, "pcm16le", "vg-key")
    assert (start.caller, start.callee, start.call_id, start.stream_id) == (
        "+15550103",
        "+15550104",
        "call-uuid-1",
        None,
    )
    assert "token" not in start.custom_parameters and start.custom_parameters["uuid"] == "call-uuid-1"
    assert codec.frame_bytes == 640 and codec.frame_duration_ms == 20


def test_vonage_token_in_headers_object_or_query():
    codec = VonageProtocol()
    codec.handshake({}, {})
    _, start = codec.receive_text(
        j(
            {
                "event": "websocket:connected",
                "content-type": "audio/l16;rate=8000",
                "headers": {"token": "h-key", "from": "+1"},
            }
        )
    )
    assert (start.auth_token, start.sample_rate, start.caller) == ("h-key", 8000, "+1")
    assert codec.auth_source == "websocket:connected headers.token"
    q = VonageProtocol()
    q.handshake({}, {"token": "q-key", "from": "+2"})
    _, start = q.receive_text(j({"event": "websocket:connected", "content-type": "audio/l16;rate=16000"}))
    assert (start.auth_token, start.caller) == ("q-key", "+2")


def test_vonage_binary_media_and_exact_outbound_frames(vonage: VonageProtocol):
    frame = tone(16000, 0.02)
    assert vonage.receive_bytes(frame) == [MediaIn(frame, None, None)]
    out = vonage.encode_media(tone(16000, 1.0))
    assert len(out) == 50 and all(isinstance(m, bytes) and len(m) == 640 for m in out)
    assert vonage.encode_media(b"\x01\x00" * 320) == [(b"\x01\x00" * 320)]  # one 640 B frame, as it is


def test_vonage_8k_frames_are_320_bytes():
    codec = VonageProtocol()
    codec.receive_text(j({"event": "websocket:connected", "content-type": "audio/l16;rate=8000"}))
    out = codec.encode_media(tone(8000, 0.5))
    assert len(out) == 25 and {len(m) for m in out} == {320}


def test_vonage_commands_and_events(vonage: VonageProtocol):
    assert vonage.encode_mark("clause-1") == ['{"action":"notify","payload":{"name":"clause-1"}}']
    assert vonage.receive_text(j({"event": "websocket:notify", "payload": {"name": "clause-1"}})) == [
        MarkPlayed("clause-1")
    ]
    assert vonage.encode_clear() == ['{"action":"clear"}']
    assert vonage.receive_text(j({"event": "websocket:cleared"})) == [Cleared()]
    assert vonage.receive_text(j({"event": "websocket:dtmf", "digit": "5", "duration": 260})) == [Dtmf("5", 260)]
    assert vonage.receive_text(j({"event": "websocket:dtmf", "dtmf": {"digit": "*", "duration": 100}})) == [
        Dtmf("*", 100)
    ]
    assert vonage.encode_hangup() == []


def test_vonage_without_content_type_uses_configured_rate():
    codec = VonageProtocol(sample_rate=8000)
    _, start = codec.receive_text(j({"event": "websocket:connected"}))
    assert start.sample_rate == 8000


# --- Plivo -------------------------------------------------------------------------


def plivo_start(media_format: dict[str, Any] | None = None, extra_headers: Any = "token=pl-key,from=+15550105") -> str:
    start: dict[str, Any] = {
        "callId": "pl-call-1",
        "streamId": "pl-stream-1",
        "accountId": "MA1",
        "tracks": ["inbound"],
    }
    if media_format is not None:
        start["mediaFormat"] = media_format
    return j({"event": "start", "sequenceNumber": 1, "start": start, "extra_headers": extra_headers})


def plivo_media(payload: bytes, seq: int = 2, sid: str = "pl-stream-1") -> str:
    return j(
        {
            "event": "media",
            "sequenceNumber": seq,
            "streamId": sid,
            "media": {"track": "inbound", "timestamp": "1700000000000", "chunk": seq - 1, "payload": b64(payload)},
        }
    )


def test_plivo_mulaw_start_media_and_outbound():
    codec = PlivoProtocol()
    codec.handshake({}, {})
    [start] = codec.receive_text(plivo_start({"encoding": "audio/x-mulaw", "sampleRate": 8000}))
    assert (start.stream_id, start.call_id, start.encoding, start.sample_rate) == (
        "pl-stream-1",
        "pl-call-1",
        "mulaw",
        8000,
    )
    assert (start.auth_token, start.caller) == ("pl-key", "+15550105")
    assert codec.auth_source == "extra_headers token"
    [m] = codec.receive_text(plivo_media(b"\xff\x80"))
    assert m.pcm16 == pcm(0, 32124) and m.timestamp_ms == 1700000000000
    [play] = codec.encode_media(pcm(*[0] * 160))
    assert json.loads(play) == {
        "event": "playAudio",
        "media": {"contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": b64(b"\xff" * 160)},
    }
    assert json.loads(codec.encode_mark("cp-1")[0]) == {
        "event": "checkpoint",
        "streamId": "pl-stream-1",
        "name": "cp-1",
    }
    assert codec.receive_text(j({"event": "playedStream", "streamId": "pl-stream-1", "name": "cp-1"})) == [
        MarkPlayed("cp-1")
    ]
    assert json.loads(codec.encode_clear()[0]) == {"event": "clearAudio", "streamId": "pl-stream-1"}
    assert codec.receive_text(j({"event": "clearedAudio", "streamId": "pl-stream-1"})) == [Cleared()]
    assert codec.receive_text(j({"event": "dtmf", "streamId": "pl-stream-1", "dtmf": {"digit": "9"}})) == [Dtmf("9")]


def test_plivo_defaults_to_l16_8k_and_accepts_16k():
    codec = PlivoProtocol()
    [start] = codec.receive_text(plivo_start(None, extra_headers=""))
    assert (start.encoding, start.sample_rate, start.auth_token) == ("pcm16le", 8000, None)
    wide = PlivoProtocol()
    wide.receive_text(plivo_start({"encoding": "audio/x-l16", "sampleRate": 16000}))
    [m] = wide.receive_text(plivo_media(pcm(5, -5)))
    assert m.pcm16 == pcm(5, -5)
    out = wide.encode_media(tone(16000, 0.1))
    assert len(out) == 5
    first = json.loads(out[0])["media"]
    assert (first["contentType"], first["sampleRate"], len(base64.b64decode(first["payload"]))) == (
        "audio/x-l16",
        16000,
        640,
    )


def test_plivo_played_alias_and_object_extra_headers():
    codec = PlivoProtocol()
    codec.handshake({}, {"token": "pl-key"})
    [start] = codec.receive_text(plivo_start(None, extra_headers={"token": "pl-key"}))
    assert start.auth_token == "pl-key"
    codec.encode_mark("a")
    assert codec.receive_text(j({"event": "played", "streamId": "pl-stream-1", "name": "a"})) == [MarkPlayed("a")]


# --- Exotel ------------------------------------------------------------------------


def exotel_start(media_format: dict[str, Any] | None = None, params: dict[str, str] | None = None) -> str:
    start: dict[str, Any] = {
        "stream_sid": "ex-stream-1",
        "call_sid": "ex-call-1",
        "account_sid": "ex-acct",
        "from": "+915550106",
        "to": "+915550107",
        "custom_parameters": params if params is not None else {"lang": "en"},
    }
    if media_format is not None:
        start["media_format"] = media_format
    return j({"event": "start", "sequence_number": "1", "stream_sid": "ex-stream-1", "start": start})


EXOTEL_FORMAT = {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_exotel_start_with_basic_auth():
    codec = ExotelProtocol()
    codec.handshake({"Authorization": basic("tenant", "ex-key")}, {"lang": "hi"})
    assert codec.auth_token == "ex-key"
    assert codec.receive_text(j({"event": "connected"})) == [Connected({"event": "connected"})]
    [start] = codec.receive_text(exotel_start(EXOTEL_FORMAT))
    assert (start.stream_id, start.call_id, start.caller, start.callee) == (
        "ex-stream-1",
        "ex-call-1",
        "+915550106",
        "+915550107",
    )
    assert (start.encoding, start.sample_rate, start.auth_token) == ("pcm16le", 8000, "ex-key")
    assert start.custom_parameters == {"lang": "en"}  # start's parameters win over the query's
    assert codec.auth_source == "authorization header"


def test_exotel_chunks_obey_size_rules():
    codec = ExotelProtocol()
    codec.receive_text(exotel_start(EXOTEL_FORMAT))
    out = codec.encode_media(tone(8000, 1.0))  # 16000 B
    sizes = [len(base64.b64decode(json.loads(m)["media"]["payload"])) for m in out]
    assert sizes == [3200] * 5
    assert all(s >= 3200 and s % 320 == 0 for s in sizes)
    assert codec.frame_duration_ms == 200 and codec.frame_bytes == 3200
    msg = json.loads(out[0])
    assert msg["event"] == "media" and msg["stream_sid"] == "ex-stream-1"
    with pytest.raises(ValueError, match="not whole 3200-byte frames"):
        codec.encode_media(pcm(*[7] * 500))  # 1000 B: below the minimum message


def test_exotel_16k_from_query_and_mark_clear_dtmf_stop():
    codec = ExotelProtocol()
    codec.handshake({}, {"sample-rate": "16000", "token": "q-key"})
    [start] = codec.receive_text(exotel_start(None, params={}))
    assert (start.sample_rate, start.auth_token) == (16000, "q-key")
    sizes = [len(base64.b64decode(json.loads(m)["media"]["payload"])) for m in codec.encode_media(tone(16000, 0.5))]
    assert sizes == [3200] * 5 and codec.frame_duration_ms == 100
    assert json.loads(codec.encode_mark("e1")[0]) == {
        "event": "mark",
        "stream_sid": "ex-stream-1",
        "mark": {"name": "e1"},
    }
    assert codec.receive_text(j({"event": "mark", "stream_sid": "ex-stream-1", "mark": {"name": "e1"}})) == [
        MarkPlayed("e1")
    ]
    assert json.loads(codec.encode_clear()[0]) == {"event": "clear", "stream_sid": "ex-stream-1"}
    assert codec.receive_text(
        j(
            {
                "event": "dtmf",
                "sequence_number": "4",
                "stream_sid": "ex-stream-1",
                "dtmf": {"digit": "5", "duration": "260"},
            }
        )
    ) == [Dtmf("5", 260)]
    [m] = codec.receive_text(
        j(
            {
                "event": "media",
                "sequence_number": "5",
                "stream_sid": "ex-stream-1",
                "media": {"chunk": "1", "timestamp": "100", "payload": b64(pcm(3, 4))},
            }
        )
    )
    assert m.pcm16 == pcm(3, 4) and m.sequence == 5
    assert codec.receive_text(
        j({"event": "stop", "stream_sid": "ex-stream-1", "stop": {"call_sid": "ex-call-1", "reason": "callended"}})
    ) == [CallStop("callended")]


def test_exotel_24k_chunks():
    codec = ExotelProtocol()
    codec.receive_text(exotel_start({"encoding": "audio/x-raw", "sample_rate": "24000", "bit_rate": "16"}))
    sizes = {len(base64.b64decode(json.loads(m)["media"]["payload"])) for m in codec.encode_media(tone(24000, 0.5))}
    assert sizes == {4800}


# --- Asterisk ------------------------------------------------------------------------

ASTERISK_START = (
    "MEDIA_START connection_id:e226e283-c90a-4ea9-9e37-389000b9ef47 channel:WebSocket/connectionid "
    "channel_id:pbx1-123456789.999 format:ulaw optimal_frame_size:160 ptime:20"
)


def started_asterisk(**opts: Any) -> AsteriskProtocol:
    codec = AsteriskProtocol(**opts)
    codec.handshake({}, {"token": "ast-key", "from": "+15550108", "to": "600"})
    codec.receive_text(ASTERISK_START)
    return codec


def test_asterisk_media_start_plain_text():
    codec = AsteriskProtocol()
    codec.handshake({}, {"token": "ast-key", "from": "+15550108", "to": "600", "lang": "en"})
    [start] = codec.receive_text(ASTERISK_START)
    assert start.stream_id == "e226e283-c90a-4ea9-9e37-389000b9ef47"
    assert start.call_id == "pbx1-123456789.999"
    assert (start.encoding, start.sample_rate, start.auth_token) == ("mulaw", 8000, "ast-key")
    assert (start.caller, start.callee) == ("+15550108", "600")
    assert start.custom_parameters == {"from": "+15550108", "to": "600", "lang": "en"}
    assert codec.control_format == "plain-text"
    assert codec.frame_bytes == 320 and codec.frame_duration_ms == 20


def test_asterisk_media_start_json_switches_commands_to_json():
    codec = AsteriskProtocol()
    [start] = codec.receive_text(
        j(
            {
                "event": "MEDIA_START",
                "connection_id": "media_connection1",
                "channel": "WebSocket/media_connection1/0x5140001a0040",
                "channel_id": "1761245643.1",
                "format": "slin16",
                "optimal_frame_size": 640,
                "ptime": 20,
                "channel_variables": {"DIALEDPEERNUMBER": "media_connection1/c(slin16)"},
            }
        )
    )
    assert (start.encoding, start.sample_rate, start.call_id) == ("pcm16le", 16000, "1761245643.1")
    assert start.custom_parameters == {"DIALEDPEERNUMBER": "media_connection1/c(slin16)"}
    assert codec.control_format == "json"
    assert codec.encode_clear() == ['{"command":"FLUSH_MEDIA"}']
    assert codec.encode_hangup() == ['{"command":"HANGUP"}']
    out = codec.encode_media(tone(16000, 1.0))
    assert len(out) == 50 and {len(m) for m in out} == {640} and all(isinstance(m, bytes) for m in out)
    assert codec.receive_text(j({"event": "DTMF_END", "channel_id": "1761245643.1", "digit": "7"})) == [Dtmf("7")]


def test_asterisk_binary_media_both_directions():
    codec = started_asterisk()
    assert codec.receive_bytes(b"\xff" * 160) == [MediaIn(bytes(320), None, None)]
    audio = tone(8000, 1.0)
    out = codec.encode_media(audio)
    assert len(out) == 50 and all(isinstance(m, bytes) and len(m) == 160 for m in out)
    assert b"".join(out) == ulaw_encode(audio)


def test_asterisk_frames_per_message_never_exceed_65500():
    codec = AsteriskProtocol(frames_per_message=10_000)
    codec.receive_text("MEDIA_START connection_id:c1 channel:WebSocket/c1 format:slin optimal_frame_size:320")
    assert codec.frame_bytes == 65280  # 204 frames of 320 B
    assert all(len(m) <= 65500 for m in codec.encode_media(bytes(65280 * 3)))


def test_asterisk_queue_drained_reports_all_pending_marks_in_order():
    codec = started_asterisk()
    assert codec.encode_mark("clause-1") == ["REPORT_QUEUE_DRAINED"]
    assert codec.encode_mark("clause-2") == ["REPORT_QUEUE_DRAINED"]
    assert codec.receive_text("QUEUE_DRAINED") == [MarkPlayed("clause-1"), MarkPlayed("clause-2")]
    [extra] = codec.receive_text("QUEUE_DRAINED")
    assert isinstance(extra, Ignored)


def test_asterisk_flush_returns_cleared_marks_once():
    codec = started_asterisk()
    codec.encode_mark("old")
    assert codec.encode_clear() == ["FLUSH_MEDIA"]
    codec.encode_mark("new")
    assert codec.receive_text("QUEUE_DRAINED") == [MarkPlayed("old", cleared=True)]
    assert codec.receive_text("QUEUE_DRAINED") == [MarkPlayed("new")]


def test_asterisk_mark_media_mode_and_hangup():
    codec = started_asterisk(use_mark_media=True)
    assert codec.encode_mark("m-1") == ["MARK_MEDIA m-1"]
    assert codec.receive_text("MEDIA_MARK_PROCESSED correlation_id:m-1") == [MarkPlayed("m-1")]
    codec.encode_mark("m-2")
    assert codec.receive_text("MEDIA_MARK_PROCESSED m-2") == [MarkPlayed("m-2")]
    with pytest.raises(ValueError, match="whitespace"):
        codec.encode_mark("has space")
    assert codec.receive_text("DTMF_END digit:5") == [Dtmf("5")]
    assert isinstance(codec.receive_text("MEDIA_XOFF")[0], Ignored)
    assert isinstance(codec.receive_text("STATUS queue_length:3 xon_level:800 xoff_level:900")[0], Ignored)
    assert codec.encode_hangup() == ["HANGUP"]
    assert codec.receive_text("HANGUP") == [CallStop("hangup")]


# --- registry and shared pieces ---------------------------------------------------------


def test_registry_and_create_protocol():
    assert set(PROTOCOLS) == {"twilio", "telnyx", "vonage", "plivo", "exotel", "asterisk"}
    for name, cls in PROTOCOLS.items():
        assert cls.name == name and issubclass(cls, ProviderProtocol)
    codec = create_protocol("telnyx", reorder_window=5)
    assert isinstance(codec, TelnyxProtocol)
    with pytest.raises(ValueError, match="unknown telephony provider"):
        create_protocol("skype")
    with pytest.raises(TypeError):
        create_protocol("twilio", bogus=1)


def test_codecs_keep_no_shared_state():
    a, b = TwilioProtocol(), TwilioProtocol()
    a.receive_text(TWILIO_START)
    assert not b.started and b.auth_token is None
    a.encode_mark("only-a")
    b.receive_text(TWILIO_START)
    assert b.pending_marks == ()


@pytest.mark.parametrize("name", ["twilio", "telnyx", "plivo", "exotel"])
def test_json_providers_reject_partial_frames_to_encode(name: str):
    codec = create_protocol(name)
    codec.receive_text(
        {"twilio": TWILIO_START, "telnyx": telnyx_start(), "plivo": plivo_start(), "exotel": exotel_start()}[name]
    )
    with pytest.raises(ValueError, match="not whole"):
        codec.encode_media(b"\x00\x00\x00")


# --- malformed input: each raises ProtocolError with a sensible close code ---------------

BIG = "x" * (MAX_FRAME_BYTES + 10)
T_MEDIA_OK = {"event": "media", "sequenceNumber": "3", "streamSid": "MZ0001", "media": {"payload": "/4AA"}}
TX_MEDIA = {"event": "media", "stream_id": "32DE0001", "media": {"payload": "/w=="}}


def _with(base: dict[str, Any], **changes: Any) -> str:
    out = json.loads(json.dumps(base))
    for dotted, value in changes.items():
        target = out
        *parents, last = dotted.split("__")
        for key in parents:
            target = target[key]
        if value is ...:
            del target[last]
        else:
            target[last] = value
    return j(out)


# (id, provider, handshake query, prelude frames, bad frame, close code, text the reason must contain)
MALFORMED: list[tuple[str, str, dict[str, str], list[str | bytes], str | bytes, int, str]] = [
    ("tw-binary", "twilio", {}, [TWILIO_START], b"\x00\x01", 1003, "binary frame"),
    ("tw-bad-json", "twilio", {}, [], '{"event": "media",', 1007, "malformed JSON"),
    ("tw-array", "twilio", {}, [], "[1, 2]", 1007, "array"),
    ("tw-string-json", "twilio", {}, [], '"media"', 1007, "a string"),
    ("tw-no-event", "twilio", {}, [], '{"streamSid": "MZ0001"}', 1007, "missing event"),
    ("tw-event-not-str", "twilio", {}, [], '{"event": 5}', 1007, "event must be a string"),
    ("tw-media-before-start", "twilio", {}, [TWILIO_CONNECTED], j(T_MEDIA_OK), 1002, "media before start"),
    (
        "tw-bad-base64",
        "twilio",
        {},
        [TWILIO_START],
        _with(T_MEDIA_OK, media__payload="!!not base64!!"),
        1007,
        "invalid base64 in media.payload",
    ),
    (
        "tw-payload-int",
        "twilio",
        {},
        [TWILIO_START],
        _with(T_MEDIA_OK, media__payload=42),
        1007,
        "media.payload must be a string",
    ),
    (
        "tw-wrong-sid",
        "twilio",
        {},
        [TWILIO_START],
        _with(T_MEDIA_OK, streamSid="MZ-other"),
        1008,
        "streamSid 'MZ-other' does not match 'MZ0001'",
    ),
    ("tw-seq-not-int", "twilio", {}, [TWILIO_START], _with(T_MEDIA_OK, sequenceNumber="three"), 1007, "sequenceNumber"),
    ("tw-media-missing", "twilio", {}, [TWILIO_START], _with(T_MEDIA_OK, media=...), 1007, "missing media"),
    (
        "tw-media-not-object",
        "twilio",
        {},
        [TWILIO_START],
        _with(T_MEDIA_OK, media=[1]),
        1007,
        "media must be an object",
    ),
    ("tw-timestamp", "twilio", {}, [TWILIO_START], _with(T_MEDIA_OK, media__timestamp="soon"), 1007, "media.timestamp"),
    ("tw-start-missing", "twilio", {}, [], '{"event": "start", "streamSid": "MZ1"}', 1007, "missing start"),
    ("tw-start-no-sid", "twilio", {}, [], '{"event": "start", "start": {"callSid": "CA1"}}', 1007, "missing streamSid"),
    (
        "tw-alaw-format",
        "twilio",
        {},
        [],
        _with(json.loads(TWILIO_START), start__mediaFormat__encoding="audio/x-alaw"),
        1003,
        "start.mediaFormat",
    ),
    (
        "tw-params-not-object",
        "twilio",
        {},
        [],
        _with(json.loads(TWILIO_START), start__customParameters="token=x"),
        1007,
        "start.customParameters must be an object",
    ),
    (
        "tw-param-value-object",
        "twilio",
        {},
        [],
        _with(json.loads(TWILIO_START), start__customParameters__token={"a": 1}),
        1007,
        "start.customParameters.token",
    ),
    ("tw-duplicate-start", "twilio", {}, [TWILIO_START], TWILIO_START, 1002, "duplicate start"),
    (
        "tw-dtmf-digit",
        "twilio",
        {},
        [TWILIO_START],
        j({"event": "dtmf", "streamSid": "MZ0001", "dtmf": {"digit": "X"}}),
        1007,
        "dtmf.digit",
    ),
    ("tw-dtmf-before-start", "twilio", {}, [], j({"event": "dtmf", "dtmf": {"digit": "1"}}), 1002, "dtmf before start"),
    (
        "tw-mark-no-name",
        "twilio",
        {},
        [TWILIO_START],
        j({"event": "mark", "streamSid": "MZ0001", "mark": {}}),
        1007,
        "missing mark.name",
    ),
    (
        "tw-too-big",
        "twilio",
        {},
        [TWILIO_START],
        BIG,
        1009,
        f"frame of {MAX_FRAME_BYTES + 10} bytes exceeds {MAX_FRAME_BYTES}",
    ),
    ("tx-g722", "telnyx", {}, [], telnyx_start("G722", 16000), 1003, "start.media_format.encoding 'G722'"),
    ("tx-pcmu-16k", "telnyx", {}, [], telnyx_start("PCMU", 16000), 1003, "sample_rate 16000"),
    ("tx-token-conflict", "telnyx", {}, [], telnyx_start(params={"token": "other"}), 1008, "conflicting auth tokens"),
    (
        "tx-wrong-stream",
        "telnyx",
        {},
        [telnyx_start()],
        _with(TX_MEDIA, stream_id="nope"),
        1008,
        "stream_id 'nope' does not match",
    ),
    ("tx-binary", "telnyx", {}, [telnyx_start()], b"\xff" * 160, 1003, "binary frame"),
    ("tx-chunk-bad", "telnyx", {}, [telnyx_start()], _with(TX_MEDIA, media__chunk="first"), 1007, "media.chunk"),
    (
        "tx-l16-odd",
        "telnyx",
        {},
        [telnyx_start("L16", 16000)],
        _with(TX_MEDIA, media__payload=b64(b"\x00\x01\x02")),
        1007,
        "odd",
    ),
    ("vg-binary-first", "vonage", {}, [], b"\x00" * 640, 1002, "before websocket:connected"),
    ("vg-odd-binary", "vonage", {}, [VONAGE_CONNECTED], b"\x00" * 641, 1007, "binary frame has 641 bytes"),
    (
        "vg-bad-content-type",
        "vonage",
        {},
        [],
        j({"event": "websocket:connected", "content-type": "audio/pcmu;rate=8000"}),
        1003,
        "content-type",
    ),
    (
        "vg-bad-rate",
        "vonage",
        {},
        [],
        j({"event": "websocket:connected", "content-type": "audio/l16;rate=44100"}),
        1003,
        "rate 44100",
    ),
    (
        "vg-notify-no-payload",
        "vonage",
        {},
        [VONAGE_CONNECTED],
        j({"event": "websocket:notify"}),
        1007,
        "missing payload",
    ),
    (
        "vg-dtmf-before",
        "vonage",
        {},
        [],
        j({"event": "websocket:dtmf", "digit": "1"}),
        1002,
        "websocket:dtmf before start",
    ),
    ("vg-too-big", "vonage", {}, [VONAGE_CONNECTED], b"\x00" * 70000, 1009, "frame of 70000 bytes exceeds 65536"),
    (
        "vg-token-conflict",
        "vonage",
        {"token": "a"},
        [],
        j({"event": "websocket:connected", "token": "b"}),
        1008,
        "conflicting auth tokens",
    ),
    (
        "vg-headers-token-int",
        "vonage",
        {},
        [],
        j({"event": "websocket:connected", "headers": {"token": 5}}),
        1007,
        "headers.token",
    ),
    (
        "pl-wrong-stream",
        "plivo",
        {},
        [plivo_start()],
        plivo_media(b"\x00\x00", sid="other"),
        1008,
        "streamId 'other' does not match",
    ),
    ("pl-extra-headers-number", "plivo", {}, [], plivo_start(extra_headers=12), 1007, "extra_headers"),
    ("pl-extra-headers-pair", "plivo", {}, [], plivo_start(extra_headers="token"), 1007, "key=value"),
    ("pl-odd-l16", "plivo", {}, [plivo_start()], plivo_media(b"\x00\x00\x00"), 1007, "media.payload has 3 bytes"),
    (
        "pl-opus",
        "plivo",
        {},
        [],
        plivo_start({"encoding": "audio/opus", "sampleRate": 48000}),
        1003,
        "start.mediaFormat.encoding",
    ),
    (
        "pl-seq-bool",
        "plivo",
        {},
        [plivo_start()],
        _with(json.loads(plivo_media(b"\x00\x00")), sequenceNumber=True),
        1007,
        "sequenceNumber must be an integer",
    ),
    (
        "ex-rate",
        "exotel",
        {},
        [],
        exotel_start({"encoding": "audio/x-raw", "sample_rate": "11025", "bit_rate": "16"}),
        1003,
        "sample_rate 11025",
    ),
    (
        "ex-bits",
        "exotel",
        {},
        [],
        exotel_start({"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "8"}),
        1003,
        "bit_rate",
    ),
    (
        "ex-wrong-stream",
        "exotel",
        {},
        [exotel_start()],
        j({"event": "media", "stream_sid": "zzz", "media": {"payload": ""}}),
        1008,
        "stream_sid 'zzz'",
    ),
    (
        "ex-payload-missing",
        "exotel",
        {},
        [exotel_start()],
        j({"event": "media", "stream_sid": "ex-stream-1", "media": {"chunk": "1"}}),
        1007,
        "missing media.payload",
    ),
    (
        "ex-dtmf-duration",
        "exotel",
        {},
        [exotel_start()],
        j({"event": "dtmf", "stream_sid": "ex-stream-1", "dtmf": {"digit": "1", "duration": "long"}}),
        1007,
        "dtmf.duration",
    ),
    ("as-binary-first", "asterisk", {}, [], b"\xff" * 160, 1002, "media before MEDIA_START"),
    ("as-lowercase-then-media", "asterisk", {}, [ASTERISK_START.lower()], b"\xff" * 160, 1002, "media before"),
    (
        "as-opus",
        "asterisk",
        {},
        [],
        "MEDIA_START connection_id:c channel:x format:opus optimal_frame_size:80",
        1003,
        "MEDIA_START.format 'opus'",
    ),
    (
        "as-frame-size",
        "asterisk",
        {},
        [],
        "MEDIA_START connection_id:c format:ulaw optimal_frame_size:abc",
        1007,
        "MEDIA_START.optimal_frame_size",
    ),
    (
        "as-frame-odd-slin",
        "asterisk",
        {},
        [],
        "MEDIA_START connection_id:c format:slin optimal_frame_size:321",
        1007,
        "optimal_frame_size 321",
    ),
    (
        "as-no-format",
        "asterisk",
        {},
        [],
        "MEDIA_START connection_id:c optimal_frame_size:160",
        1007,
        "missing MEDIA_START.format",
    ),
    ("as-dtmf-first", "asterisk", {}, [], "DTMF_END digit:1", 1002, "DTMF_END before start"),
    ("as-dtmf-bad", "asterisk", {}, [ASTERISK_START], "DTMF_END digit:Z", 1007, "DTMF_END.digit"),
    (
        "as-odd-slin",
        "asterisk",
        {},
        ["MEDIA_START connection_id:c format:slin16 optimal_frame_size:640"],
        b"\x00" * 641,
        1007,
        "binary frame has 641 bytes",
    ),
    ("as-empty", "asterisk", {}, [], "   ", 1007, "empty control message"),
    ("as-json-no-event", "asterisk", {}, [], '{"command": "MEDIA_START"}', 1007, "missing event"),
    ("as-json-broken", "asterisk", {}, [], '{"event": "MEDIA_START"', 1007, "malformed JSON"),
]


@pytest.mark.parametrize(
    ("provider", "query", "prelude", "bad", "code", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in MALFORMED],
)
def test_malformed_input_raises_protocol_error(
    provider: str, query: dict[str, str], prelude: list[str | bytes], bad: str | bytes, code: int, reason: str
):
    codec = create_protocol(provider)
    codec.handshake({"x-telnyx-streaming-auth-token": "tx-key"} if provider == "telnyx" else {}, query)
    for frame in prelude:
        feed(codec, frame)
    with pytest.raises(ProtocolError) as info:
        feed(codec, bad)
    assert info.value.close_code == code
    assert reason in info.value.reason
    assert "tx-key" not in info.value.reason  # tokens never appear in reasons


UNKNOWN_EVENTS: list[tuple[str, list[str], str]] = [
    ("twilio", [TWILIO_START], '{"event": "hello", "streamSid": "MZ0001"}'),
    ("telnyx", [], '{"event": "transcription", "stream_id": "s"}'),
    ("vonage", [VONAGE_CONNECTED], '{"event": "websocket:surprise"}'),
    ("plivo", [], '{"event": "streamStats", "streamId": "s"}'),
    ("exotel", [], '{"event": "teleport", "stream_sid": "s"}'),
    ("asterisk", [ASTERISK_START], "CHANNEL_TELEPORTED channel_id:x"),
    ("asterisk", [ASTERISK_START], '{"event": "SOMETHING_NEW", "channel_id": "x"}'),
]


@pytest.mark.parametrize(("provider", "prelude", "frame"), UNKNOWN_EVENTS, ids=[f"{c[0]}-{i}" for i, c in
                                                                                   enumerate(UNKNOWN_EVENTS)])
def test_an_unknown_event_is_reported_not_fatal(provider: str, prelude: list[str], frame: str):
    """Providers add events over time: a well-formed message with an event we do not know
    becomes ``UnknownEvent`` (the shell logs and counts it) and the stream goes on."""
    codec = create_protocol(provider)
    codec.handshake({}, {})
    for message in prelude:
        feed(codec, message)
    events = feed(codec, frame)
    assert len(events) == 1 and isinstance(events[0], UnknownEvent), events
    assert events[0].name and len(events[0].name) <= 40
    assert not codec.stopped


def test_at_least_fifty_distinct_malformed_vectors():
    assert len({case[0] for case in MALFORMED}) == len(MALFORMED) >= 50


@pytest.mark.parametrize(
    ("provider", "headers", "query", "code", "reason"),
    [
        ("exotel", {}, {"sample-rate": "44100"}, 1007, "sample-rate"),
        ("exotel", {"authorization": "Digest abc"}, {}, 1008, "unsupported scheme"),
        ("exotel", {"authorization": "Basic " + b64(b"no-colon")}, {}, 1008, "':'"),
        ("vonage", {"authorization": "Basic ###"}, {}, 1008, "not valid base64"),
        ("asterisk", {"x-voicecore-token": "a"}, {"token": "b"}, 1008, "conflicting auth tokens"),
    ],
)
def test_bad_handshakes(provider: str, headers: dict[str, str], query: dict[str, str], code: int, reason: str):
    with pytest.raises(ProtocolError) as info:
        create_protocol(provider).handshake(headers, query)
    assert info.value.close_code == code and reason in info.value.reason


def test_frame_exactly_at_limit_is_accepted_by_size_check():
    codec = VonageProtocol()
    codec.receive_text(VONAGE_CONNECTED)
    assert len(codec.receive_bytes(bytes(MAX_FRAME_BYTES))[0].pcm16) == MAX_FRAME_BYTES
