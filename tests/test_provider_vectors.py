"""Conformance vectors: the providers' own documented example messages, fed to the protocols, and
the documents voicecore hands the providers, checked against the providers' documented shapes.

Sources (read for this test; see the issue-16 note for versions):
- Telnyx: developers.telnyx.com "Stream call media over WebSocket" (AsyncAPI) and the Call Control
  streaming_start reference (stream_bidirectional_mode/codec defaults mp3/PCMU); TeXML <Stream>.
- Vonage: developer.vonage.com WebSockets guide (websocket:connected, l16 binary frames), the
  NCCO connect reference (vonage-node-sdk Endpoint types: authorization {type: vonage|custom}).
- Plivo: plivo.com audio-streaming reference (start/media/playedStream, playAudio/checkpoint/
  clearAudio) and the <Stream> XML reference (extraHeaders letters and digits only, ≤ 512 bytes).
- Exotel: developer.exotel.com AgentStream WebSocket protocol (connected/start/media/dtmf/mark/
  stop; chunks ≥ 3.2 KB in multiples of 320 B); its examples without stream_sid and "linear16".
"""

from __future__ import annotations

import base64
import json
import time
import xml.etree.ElementTree as ET

import jwt
import pytest

from voicecore.audio.codecs import ulaw_encode
from voicecore.telephony import (
    CallStart,
    Connected,
    Dtmf,
    ExotelProtocol,
    MarkPlayed,
    MediaIn,
    PlivoProtocol,
    TelnyxProtocol,
    VonageProtocol,
)
from voicecore.telephony.exotel import exotel_bootstrap, exotel_stream_url
from voicecore.telephony.plivo import plivo_stream_xml
from voicecore.telephony.telnyx import (
    call_control_stream_parameters,
    texml_connect_stream,
)
from voicecore.telephony.vonage import ncco_connect

CALL_TOKEN = "ct" + "0123456789abcdef0123456789abcdef01234567"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --------------------------------------------------------------------------- Telnyx

TELNYX_CONNECTED = {"event": "connected", "version": "1.0.0"}
TELNYX_START = {
    "event": "start",
    "sequence_number": "1",
    "stream_id": "32DE0DEA-53CB-4B21-89A4-9E1819C043BC",
    "start": {
        "user_id": "3E6F995F-85F7-4705-9741-53B116D28237",
        "call_control_id": "v2:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ",
        "call_session_id": "ff55a038-6f6e-11ed-8a41-02420a0d7f6a",
        "from": "+13122010094",
        "to": "+13122123456",
        "tags": ["TAG1", "TAG2"],
        "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
        "custom_parameters": {"customer_id": "customer_123"},
        "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
    },
}
TELNYX_MEDIA = {"event": "media", "sequence_number": "4", "stream_id": "32DE0DEA-53CB-4B21-89A4-9E1819C043BC",
                "media": {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": b64(b"\xff" * 160)}}  # fmt: skip


def test_telnyx_documented_stream_with_the_auth_token_in_connected() -> None:
    codec = TelnyxProtocol()
    codec.handshake({"x-telnyx-streaming-auth-token": CALL_TOKEN}, {})
    connected = TELNYX_CONNECTED | {"connected": {"x-telnyx-streaming-auth-token": CALL_TOKEN}}
    assert isinstance(codec.receive_text(json.dumps(connected))[0], Connected)
    [start] = codec.receive_text(json.dumps(TELNYX_START))
    assert isinstance(start, CallStart)
    assert (start.call_id, start.caller, start.callee, start.auth_token) == (
        TELNYX_START["start"]["call_control_id"], "+13122010094", "+13122123456", CALL_TOKEN)  # type: ignore[index]
    [media] = codec.receive_text(json.dumps(TELNYX_MEDIA))
    assert isinstance(media, MediaIn) and len(media.pcm16) == 320


@pytest.mark.parametrize(("codec", "encoding", "rate", "wire_bytes"),
                         [("PCMU", "mulaw", 8000, 160), ("PCMA", "alaw", 8000, 160), ("L16", "pcm16be", 16000, 640)])
def test_telnyx_answers_in_the_bidirectional_codec_not_the_callers(codec: str, encoding: str, rate: int,
                                                                  wire_bytes: int) -> None:  # fmt: skip
    """Telnyx plays back stream_bidirectional_codec (PCMU unless set); a G.711 A-law caller must
    still get PCMU unless the deployment said otherwise."""
    start = json.loads(json.dumps(TELNYX_START))
    start["start"]["media_format"]["encoding"] = "PCMA"
    protocol = TelnyxProtocol(outbound_encoding=codec, outbound_sample_rate=rate)  # type: ignore[arg-type]
    protocol.receive_text(json.dumps(start))
    assert (protocol.encoding, protocol.output_encoding, protocol.output_sample_rate) == ("alaw", encoding, rate)
    [out] = protocol.encode_media(bytes(protocol.frame_bytes))
    assert json.loads(out) == {"event": "media", "media": {"payload": json.loads(out)["media"]["payload"]}}
    assert len(base64.b64decode(json.loads(out)["media"]["payload"])) == wire_bytes


def test_telnyx_documents_we_hand_over_set_rtp_mode_and_the_codec() -> None:
    root = ET.fromstring(texml_connect_stream("wss://voice.example.com/ws/telnyx", {"token": CALL_TOKEN}))
    stream = root.find("./Connect/Stream")
    assert stream is not None
    assert stream.get("bidirectionalMode") == "rtp" and stream.get("bidirectionalCodec") == "PCMU"
    assert stream.get("url") == "wss://voice.example.com/ws/telnyx"
    params = call_control_stream_parameters("wss://voice.example.com/ws/telnyx", codec="L16", sample_rate=16000,
                                            auth_token="vcs" + "0" * 60)  # fmt: skip
    assert params["stream_bidirectional_mode"] == "rtp"
    assert params["stream_bidirectional_codec"] == "L16" and params["stream_bidirectional_sampling_rate"] == 16000
    assert params["stream_auth_token"] == "vcs" + "0" * 60
    with pytest.raises(ValueError, match="PCMU or PCMA"):
        texml_connect_stream("wss://voice.example.com/ws/telnyx", {}, codec="L16")  # TeXML has no L16


# --------------------------------------------------------------------------- Vonage


def test_vonage_signed_websocket_jwt_is_not_taken_for_our_key() -> None:
    """With authorization {type: "vonage"} the upgrade carries Vonage's JWT as a Bearer token: it
    must reach the shell as the provider's JWT, while our one-time token rides in the headers."""
    vonage_jwt = jwt.encode({"iat": int(time.time()), "application_id": "app-1"}, "s" * 40, algorithm="HS256")
    codec = VonageProtocol()
    codec.handshake({"Authorization": f"Bearer {vonage_jwt}"}, {})
    assert codec.auth_token is None and codec.provider_jwt == vonage_jwt
    connected = {"event": "websocket:connected", "content-type": "audio/l16;rate=16000", "token": CALL_TOKEN,
                 "from": "447700900000", "to": "447700900001"}  # fmt: skip
    events = codec.receive_text(json.dumps(connected))
    start = events[-1]
    assert isinstance(start, CallStart)
    assert start.auth_token == CALL_TOKEN and start.provider_jwt == vonage_jwt
    assert (start.caller, start.callee) == ("447700900000", "447700900001")
    # Our own token as {type: "custom", value: "Bearer <token>"} is still ours.
    custom = VonageProtocol()
    custom.handshake({"Authorization": f"Bearer {CALL_TOKEN}"}, {})
    assert custom.auth_token == CALL_TOKEN and custom.provider_jwt is None


def test_vonage_documented_first_message_of_the_old_guide() -> None:
    codec = VonageProtocol()
    codec.handshake({}, {"token": CALL_TOKEN})
    # the guide's example has no "event" key: the first message is known by its content-type
    [connected, start] = codec.receive_text(json.dumps({"app": "demo", "content-type": "audio/l16;rate=16000"}))
    assert isinstance(connected, Connected) and isinstance(start, CallStart)
    assert start.custom_parameters["app"] == "demo" and start.sample_rate == 16000
    [media] = codec.receive_bytes(bytes(640))
    assert isinstance(media, MediaIn)


def test_the_ncco_we_answer_with() -> None:
    [action] = ncco_connect("wss://voice.example.com/ws/vonage", {"token": CALL_TOKEN, "from": "447700900000"})
    assert action["action"] == "connect"
    [endpoint] = action["endpoint"]  # type: ignore[misc]
    assert endpoint == {"type": "websocket", "uri": "wss://voice.example.com/ws/vonage",
                        "content-type": "audio/l16;rate=16000",
                        "headers": {"token": CALL_TOKEN, "from": "447700900000"},
                        "authorization": {"type": "vonage"}}  # fmt: skip
    with pytest.raises(ValueError, match="512 bytes"):
        ncco_connect("wss://voice.example.com/ws/vonage", {"x": "y" * 600})


# --------------------------------------------------------------------------- Plivo

PLIVO_START = {
    "event": "start",
    "sequenceNumber": 1,
    "start": {
        "callId": "12345678-90ab-cdef-1234-567890abcdef",
        "streamId": "87654321-fedc-ba09-8765-4321fedcba09",
        "accountId": "MAXXXXXXXXXXXXXXXXXX",
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
    },
    "extra_headers": f"token={CALL_TOKEN}",
}


def test_plivo_documented_start_carries_an_alphanumeric_call_token() -> None:
    codec = PlivoProtocol()
    codec.handshake({}, {})
    [start] = codec.receive_text(json.dumps(PLIVO_START))
    assert isinstance(start, CallStart) and start.auth_token == CALL_TOKEN
    assert start.call_id == "12345678-90ab-cdef-1234-567890abcdef" and start.encoding == "mulaw"
    media = {"event": "media", "sequenceNumber": 2, "streamId": PLIVO_START["start"]["streamId"],  # type: ignore[index]
             "media": {"track": "inbound", "timestamp": "1705312200000", "chunk": 1, "payload": b64(b"\xff" * 160)}}
    assert isinstance(codec.receive_text(json.dumps(media))[0], MediaIn)
    [out] = codec.encode_media(bytes(320))
    assert json.loads(out) == {"event": "playAudio", "media": {"contentType": "audio/x-mulaw", "sampleRate": 8000,
                                                               "payload": b64(ulaw_encode(bytes(320)))}}  # fmt: skip
    [mark] = codec.encode_mark("clause1")
    assert json.loads(mark) == {"event": "checkpoint", "streamId": PLIVO_START["start"]["streamId"],  # type: ignore[index]
                                "name": "clause1"}  # fmt: skip
    played = {"event": "playedStream", "streamId": PLIVO_START["start"]["streamId"], "name": "clause1"}  # type: ignore[index]
    assert codec.receive_text(json.dumps(played)) == [MarkPlayed("clause1")]


def test_the_plivo_xml_we_answer_with_fits_plivos_header_rules() -> None:
    assert CALL_TOKEN.isalnum()  # Plivo's extraHeaders: letters and digits only
    root = ET.fromstring(plivo_stream_xml("wss://voice.example.com/ws/plivo", {"token": CALL_TOKEN}))
    stream = root.find("Stream")
    assert stream is not None and stream.text == "wss://voice.example.com/ws/plivo"
    assert stream.get("bidirectional") == "true" and stream.get("keepCallAlive") == "true"
    assert stream.get("audioTrack") == "inbound" and stream.get("contentType") == "audio/x-l16;rate=16000"
    assert stream.get("extraHeaders") == f"token={CALL_TOKEN}"
    for bad in ({"token": "vck_0123456789ab_abc-def"}, {"from": "+14155550100"}, {"t": "a" * 600}):
        with pytest.raises(ValueError):
            plivo_stream_xml("wss://voice.example.com/ws/plivo", bad)


# --------------------------------------------------------------------------- Exotel

EXOTEL_START = {
    "event": "start",
    "sequence_number": "1",
    "stream_sid": "MZxxxx",
    "start": {"stream_sid": "MZxxxx", "call_sid": "CAxxxx", "account_sid": "ACxxxx", "from": "+919876543210",
              "to": "+918047491899", "custom_parameters": {"key1": "value1"},
              "media_format": {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"}},
}  # fmt: skip


def test_exotel_documented_stream() -> None:
    codec = ExotelProtocol()
    codec.handshake({}, {"sample-rate": "8000", "token": CALL_TOKEN})
    assert isinstance(codec.receive_text(json.dumps({"event": "connected"}))[0], Connected)
    [start] = codec.receive_text(json.dumps(EXOTEL_START))
    assert isinstance(start, CallStart) and start.auth_token == CALL_TOKEN
    assert (start.stream_id, start.call_id, start.encoding, start.sample_rate) == ("MZxxxx", "CAxxxx", "pcm16le", 8000)
    media = {"event": "media", "sequence_number": "3", "stream_sid": "MZxxxx",
             "media": {"chunk": "2", "timestamp": "200", "payload": b64(bytes(3200))}}  # fmt: skip
    assert isinstance(codec.receive_text(json.dumps(media))[0], MediaIn)
    dtmf = {"event": "dtmf", "sequence_number": "7", "stream_sid": "MZxxxx", "dtmf": {"digit": "5", "duration": "100"}}
    assert codec.receive_text(json.dumps(dtmf)) == [Dtmf("5", 100)]
    [out] = codec.encode_media(bytes(codec.frame_bytes))
    body = json.loads(out)
    assert body["stream_sid"] == "MZxxxx" and len(base64.b64decode(body["media"]["payload"])) == 3200


@pytest.mark.parametrize("encoding", ["linear16", "audio/L16;rate=8000", "LINEAR16", "audio/x-raw"])
def test_exotel_examples_without_stream_sid_and_with_linear16(encoding: str) -> None:
    """Exotel's own examples leave stream_sid out and say "linear16": accepted, and answered without
    a stream_sid of our own invention."""
    start = {"event": "start", "sequence_number": "1",
             "start": {"call_sid": "CAxxxx", "from": "+919876543210", "to": "+918047491899",
                       "media_format": {"encoding": encoding, "sample_rate": "8000", "bit_rate": "16"}}}  # fmt: skip
    codec = ExotelProtocol()
    codec.handshake({}, {"token": CALL_TOKEN})
    [begun] = codec.receive_text(json.dumps(start))
    assert isinstance(begun, CallStart) and begun.stream_id is None and begun.encoding == "pcm16le"
    media = {"event": "media", "sequence_number": "2", "media": {"chunk": "1", "timestamp": "100",
                                                                  "payload": b64(bytes(1600))}}  # fmt: skip
    assert isinstance(codec.receive_text(json.dumps(media))[0], MediaIn)
    [out] = codec.encode_media(bytes(codec.frame_bytes))
    assert "stream_sid" not in json.loads(out)
    assert "stream_sid" not in json.loads(codec.encode_mark("m1")[0])
    assert json.loads(codec.encode_clear()[0]) == {"event": "clear"}


def test_the_exotel_bootstrap_answer() -> None:
    url = exotel_stream_url("wss://voice.example.com/ws/exotel", parameters={"token": CALL_TOKEN})
    assert exotel_bootstrap(url) == {"url": f"wss://voice.example.com/ws/exotel?sample-rate=8000&token={CALL_TOKEN}"}
    with pytest.raises(ValueError, match="at most 3"):
        exotel_stream_url("wss://h/ws/exotel", parameters={"a": "1", "b": "2", "c": "3", "d": "4"})
