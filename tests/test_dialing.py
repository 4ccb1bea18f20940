"""Placing outbound calls, pure: each provider's create-call request, its answers, its status callbacks.

Vectors follow the providers' documentation (request fields and auth, example responses and
error bodies, callback parameters); nothing here opens a socket.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from voicecore.telephony.dialing import (
    OUTCOMES,
    CallStatusEvent,
    DialingError,
    DialRequest,
    IgnoredStatusEvent,
    asterisk_outbound_dialplan,
    build_create_call,
    outcome_of,
    parse_create_call,
    parse_status_callback,
)
from voicecore.telephony.signatures import check_credentials

TOKEN = "ct" + "0123456789abcdef" * 2 + "01234567"
ATTEMPT = "att_7f3a9c"
NOW = 1_765_000_000.0


def rsa_pem() -> tuple[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()  # fmt: skip
    return pem, key.public_key()


VONAGE_PEM, VONAGE_PUBLIC = rsa_pem()
CREDENTIALS: dict[str, dict[str, str]] = {
    "twilio": {"account_sid": "AC" + "a" * 32, "auth_token": "twilio-auth-token-0123"},
    "telnyx": {"api_key": "KEY0123456789ABCDEF_secretpart", "connection_id": "1494404757140276705",
               "public_key": "unused"},  # fmt: skip
    "vonage": {"application_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab", "private_key": VONAGE_PEM,
               "signature_secret": "unused"},  # fmt: skip
    "plivo": {"auth_id": "MAXXXXXXXXXXXXXXXXXX", "auth_token": "plivo-auth-token-0123"},
    "asterisk": {"ari_url": "http://pbx.example.test:8088", "ari_user": "voicecore", "ari_password": "ari-pass-0123",
                 "trunk": "carrier"},  # fmt: skip
}


def request(provider: str, **changes: Any) -> DialRequest:
    fields: dict[str, Any] = {
        "provider": provider, "to": "+14155550199", "from_": "+14155550100",
        "stream_url": f"wss://voice.example.test/ws/{provider}", "stream_token": TOKEN,
        "status_url": f"https://voice.example.test/providers/{provider}/acme/status?attempt={ATTEMPT}",
        "attempt_id": ATTEMPT,
    } | changes  # fmt: skip
    return DialRequest(**fields)


def basic_user(header: str) -> tuple[str, str]:
    scheme, _, encoded = header.partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    return user, password


# --------------------------------------------------------------------------- create-call requests


def test_twilio_create_call() -> None:
    creds = CREDENTIALS["twilio"]
    http = build_create_call("twilio", creds, request("twilio", timeout_s=25))
    assert http.method == "POST"
    assert http.url == f"https://api.twilio.com/2010-04-01/Accounts/{creds['account_sid']}/Calls.json"
    assert basic_user(http.headers["Authorization"]) == (creds["account_sid"], creds["auth_token"])
    assert http.headers["Content-Type"] == "application/x-www-form-urlencoded"
    form = urllib.parse.parse_qs(http.body.decode(), strict_parsing=True)
    assert form["To"] == ["+14155550199"] and form["From"] == ["+14155550100"]
    assert form["StatusCallback"] == [request("twilio").status_url] and form["StatusCallbackMethod"] == ["POST"]
    assert form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]  # repeated parameter
    assert form["Timeout"] == ["25"] and form["MachineDetection"] == ["Enable"]
    assert form["AsyncAmd"] == ["true"] and form["AsyncAmdStatusCallback"] == form["StatusCallback"]
    stream = ET.fromstring(form["Twiml"][0]).find("./Connect/Stream")
    assert stream is not None and stream.get("url") == "wss://voice.example.test/ws/twilio"
    assert {p.get("name"): p.get("value") for p in stream.findall("Parameter")} == {"token": TOKEN}
    without_amd = urllib.parse.parse_qs(build_create_call("twilio", creds, request("twilio", machine_detection=False)).body.decode())
    assert "MachineDetection" not in without_amd and "AsyncAmd" not in without_amd
    other = build_create_call("twilio", creds, request("twilio"), api_base="http://127.0.0.1:9/")
    assert other.url.startswith("http://127.0.0.1:9/2010-04-01/Accounts/")
    assert TOKEN not in repr(http) and creds["auth_token"] not in repr(http)


def test_telnyx_create_call() -> None:
    creds = CREDENTIALS["telnyx"]
    http = build_create_call("telnyx", creds, request("telnyx"))
    assert http.url == "https://api.telnyx.com/v2/calls"
    assert http.headers["Authorization"] == f"Bearer {creds['api_key']}"
    body = json.loads(http.body)
    assert body["connection_id"] == creds["connection_id"]
    assert (body["to"], body["from"]) == ("+14155550199", "+14155550100")
    assert body["stream_url"] == "wss://voice.example.test/ws/telnyx" and body["stream_auth_token"] == TOKEN
    assert body["stream_bidirectional_mode"] == "rtp" and body["stream_bidirectional_codec"] == "PCMU"
    assert body["stream_track"] == "inbound_track"  # the callee's audio only: our own would echo into STT
    assert body["answering_machine_detection"] == "detect" and body["timeout_secs"] == 30
    assert body["webhook_url"] == request("telnyx").status_url
    assert body["command_id"] == ATTEMPT and base64.b64decode(body["client_state"]).decode() == ATTEMPT
    l16 = json.loads(build_create_call("telnyx", creds, request("telnyx", telnyx_codec="L16", telnyx_sample_rate=16000)).body)
    assert l16["stream_bidirectional_codec"] == "L16" and l16["stream_bidirectional_sampling_rate"] == 16000


def test_vonage_create_call_signs_a_jwt_with_the_application_key() -> None:
    creds = CREDENTIALS["vonage"]
    http = build_create_call("vonage", creds, request("vonage"), now=NOW)
    assert http.url == "https://api.nexmo.com/v1/calls"
    scheme, _, token = http.headers["Authorization"].partition(" ")
    assert scheme == "Bearer"
    claims = jwt.decode(token, VONAGE_PUBLIC, algorithms=["RS256"], options={"verify_exp": False})
    assert claims["application_id"] == creds["application_id"] and claims["iat"] == int(NOW)
    assert claims["exp"] > claims["iat"] and len(claims["jti"]) >= 16
    other = build_create_call("vonage", creds, request("vonage"), now=NOW).headers["Authorization"]
    assert jwt.decode(other.split()[1], VONAGE_PUBLIC, algorithms=["RS256"],
                      options={"verify_exp": False})["jti"] != claims["jti"]  # fmt: skip
    body = json.loads(http.body)
    assert body["to"] == [{"type": "phone", "number": "14155550199"}]
    assert body["from"] == {"type": "phone", "number": "14155550100"}
    [connect] = body["ncco"]
    [endpoint] = connect["endpoint"]
    assert connect["action"] == "connect" and endpoint["type"] == "websocket"
    assert endpoint["uri"] == "wss://voice.example.test/ws/vonage" and endpoint["headers"] == {"token": TOKEN}
    assert endpoint["content-type"] == "audio/l16;rate=16000"
    assert body["event_url"] == [request("vonage").status_url] and body["machine_detection"] == "continue"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, rsa_pem()[1], algorithms=["RS256"], options={"verify_exp": False})


def test_plivo_create_call_answers_at_the_answer_url() -> None:
    creds = CREDENTIALS["plivo"]
    http = build_create_call("plivo", creds, request("plivo", pipeline="receptionist"))
    assert http.url == f"https://api.plivo.com/v1/Account/{creds['auth_id']}/Call/"
    assert basic_user(http.headers["Authorization"]) == (creds["auth_id"], creds["auth_token"])
    body = json.loads(http.body)
    assert (body["from"], body["to"]) == ("14155550100", "14155550199")
    assert body["answer_url"] == (f"https://voice.example.test/providers/plivo/acme/answer?attempt={ATTEMPT}"
                                  "&pipeline=receptionist")  # fmt: skip
    status = request("plivo").status_url
    assert body["hangup_url"] == body["ring_url"] == body["machine_detection_url"] == status
    assert body["machine_detection"] == "true" and body["ring_timeout"] == 30


def test_asterisk_originates_into_the_websocket_dialplan() -> None:
    creds = CREDENTIALS["asterisk"]
    http = build_create_call("asterisk", creds, request("asterisk"))
    url = urllib.parse.urlsplit(http.url)
    assert f"{url.scheme}://{url.netloc}{url.path}" == "http://pbx.example.test:8088/ari/channels"
    query = dict(urllib.parse.parse_qsl(url.query))
    assert query["endpoint"] == "PJSIP/+14155550199@carrier" and query["channelId"] == ATTEMPT
    assert (query["context"], query["extension"], query["priority"]) == ("voicecore-outbound", "s", "1")
    assert query["callerId"] == "+14155550100" and query["timeout"] == "30"
    assert basic_user(http.headers["Authorization"]) == ("voicecore", "ari-pass-0123")
    assert json.loads(http.body)["variables"]["VOICECORE_TOKEN"] == TOKEN
    plan = asterisk_outbound_dialplan("voicecore")
    assert "[voicecore-outbound]" in plan and "Dial(WebSocket/voicecore/c(ulaw)v(token=${VOICECORE_TOKEN}))" in plan


@pytest.mark.parametrize(("provider", "missing"), [
    ("twilio", "account_sid"), ("twilio", "auth_token"), ("telnyx", "api_key"), ("telnyx", "connection_id"),
    ("vonage", "private_key"), ("vonage", "application_id"), ("plivo", "auth_id"), ("asterisk", "trunk"),
    ("asterisk", "ari_password"),
])  # fmt: skip
def test_a_missing_credential_is_named(provider: str, missing: str) -> None:
    creds = {k: v for k, v in CREDENTIALS[provider].items() if k != missing}
    with pytest.raises(DialingError, match=f"'{missing}' is missing") as e:
        build_create_call(provider, creds, request(provider))
    secrets_ = [v for k, v in creds.items() if k in ("auth_token", "api_key", "private_key", "ari_password")]
    assert all(v not in str(e.value) for v in secrets_)


def test_bad_requests_are_refused() -> None:
    with pytest.raises(DialingError, match="E.164"):
        build_create_call("twilio", CREDENTIALS["twilio"], request("twilio", to="call me"))
    with pytest.raises(DialingError, match="query string"):
        build_create_call("twilio", CREDENTIALS["twilio"], request("twilio", stream_url="wss://h/ws/twilio?token=x"))
    with pytest.raises(DialingError, match="cannot dial"):
        build_create_call("exotel", {}, request("exotel"))
    with pytest.raises(DialingError, match="private key"):
        build_create_call("vonage", CREDENTIALS["vonage"] | {"private_key": "not a key"}, request("vonage"))


def test_the_vonage_private_key_is_stored_as_pem_however_it_is_pasted() -> None:
    flattened = " ".join(VONAGE_PEM.split("\n"))  # a one-line form field turned line breaks into blanks
    encoded = base64.b64encode(VONAGE_PEM.encode()).decode()
    for given in (VONAGE_PEM, flattened, encoded):
        stored = check_credentials("vonage", {"private_key": given})["private_key"]
        assert stored == VONAGE_PEM
    with pytest.raises(ValueError, match="vonage private_key"):
        check_credentials("vonage", {"private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"})
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    with pytest.raises(ValueError, match="RSA"):
        check_credentials("vonage", {"private_key": ec_pem})
    with pytest.raises(ValueError, match="printable"):  # other credentials still may not hold blanks
        check_credentials("telnyx", {"api_key": "KEY with blanks"})
    assert check_credentials("asterisk", {"ari_url": "http://pbx:8088", "trunk": "carrier"})
    with pytest.raises(ValueError, match="ari_url"):
        check_credentials("asterisk", {"ari_url": "pbx:8088"})


# --------------------------------------------------------------------------- create-call answers


@pytest.mark.parametrize(("provider", "status", "body", "call_id"), [
    ("twilio", 201, {"sid": "CA" + "b" * 32, "status": "queued", "to": "+14155550199"}, "CA" + "b" * 32),
    ("telnyx", 200, {"data": {"call_control_id": "v3:MdI91X4lWFEs7IgbBEOT9M4AigoY08M0WWZFISt1Yw2axZ_IiE4pqg",
                              "call_leg_id": "2dc6fc34-f9e0-11ea-b68e-02420a0f7768", "is_alive": False,
                              "record_type": "call"}}, "v3:MdI91X4lWFEs7IgbBEOT9M4AigoY08M0WWZFISt1Yw2axZ_IiE4pqg"),
    ("vonage", 201, {"uuid": "63f61863-4a51-4f6b-86e1-46edebcf9356", "status": "started", "direction": "outbound",
                     "conversation_uuid": "CON-f972836a-550f-45fa-956c-12a2ab5b7d22"},
     "63f61863-4a51-4f6b-86e1-46edebcf9356"),
    ("plivo", 201, {"message": "call fired", "request_uuid": "9834029e-58b6-11e1-b8b7-a5bd0e4e126f",
                    "api_id": "97ceeb52-58b6-11e1-86da-77300b68f8bb"}, "9834029e-58b6-11e1-b8b7-a5bd0e4e126f"),
    ("asterisk", 200, {"id": ATTEMPT, "name": "PJSIP/carrier-00000001", "state": "Down"}, ATTEMPT),
])  # fmt: skip
def test_a_placed_call_gives_its_id(provider: str, status: int, body: dict[str, Any], call_id: str) -> None:
    assert parse_create_call(provider, status, json.dumps(body).encode()).provider_call_id == call_id
    assert parse_create_call(provider, status, json.dumps(body).encode()).ok


@pytest.mark.parametrize(("provider", "status", "body", "code", "auth_failed", "retryable"), [
    ("twilio", 401, b'{"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003",'
                    b' "status": 401}', "20003", True, False),
    ("twilio", 400, b'{"code": 21211, "message": "Invalid \'To\' Phone Number: +1415", "status": 400}', "21211",
     False, False),
    ("twilio", 429, b'{"code": 20429, "message": "Too Many Requests", "status": 429}', "20429", False, True),
    ("telnyx", 401, b'{"errors": [{"code": "10009", "title": "Authentication failed",'
                    b' "detail": "The API key is invalid"}]}', "10009", True, False),
    ("telnyx", 422, b'{"errors": [{"code": "10015", "title": "Invalid value", "detail": "to is invalid"}]}', "10015",
     False, False),
    ("vonage", 401, b'{"type": "https://developer.nexmo.com/api-errors#unauthorized", "title": "Unauthorized",'
                    b' "detail": "You did not provide correct credentials.", "instance": "bf0ca0bf"}', "unauthorized",
     True, False),
    ("vonage", 400, b'{"type": "https://developer.nexmo.com/api-errors#bad-request", "title": "Bad Request",'
                    b' "invalid_parameters": [{"name": "to", "reason": "invalid"}]}', "bad-request", False, False),
    ("plivo", 401, b"Could not verify your access level for that URL.", "http_401", True, False),
    ("plivo", 400, b'{"api_id": "x", "error": "invalid destination number"}', "http_400", False, False),
    ("asterisk", 409, b'{"message": "Channel with given unique ID already exists"}', "duplicate", False, False),
    ("twilio", 500, b"<html>Internal Server Error</html>", "http_500", False, True),
    ("telnyx", 503, b"", "http_503", False, True),
])  # fmt: skip
def test_a_refused_call_says_why(provider: str, status: int, body: bytes, code: str, auth_failed: bool,
                                 retryable: bool) -> None:  # fmt: skip
    result = parse_create_call(provider, status, body)
    assert not result.ok and result.provider_call_id is None
    assert (result.error_code, result.auth_failed, result.retryable) == (code, auth_failed, retryable)
    assert result.error_message


@pytest.mark.parametrize("body", [b"{not json", b'{"status": "queued"}', b"[]", b'{"sid": 42}'])
def test_a_success_without_a_call_id_is_malformed_and_not_retried(body: bytes) -> None:
    result = parse_create_call("twilio", 201, body)
    assert not result.ok and result.error_code == "malformed" and not result.retryable and not result.auth_failed


# --------------------------------------------------------------------------- status callbacks


def twilio_form(status: str | None, **extra: str) -> dict[str, str]:
    form = {"CallSid": "CA" + "c" * 32, "AccountSid": "AC" + "a" * 32, "From": "+14155550100", "To": "+14155550199",
            "Direction": "outbound-api", "ApiVersion": "2010-04-01"} | extra  # fmt: skip
    if status:
        form["CallStatus"] = status
    return form


def telnyx_event(event_type: str, **payload: Any) -> dict[str, Any]:
    return {"data": {"event_type": event_type, "id": "0ccc7b54-4df3-4bca-a65a-3da1ecc777f0",
                     "occurred_at": "2018-02-02T22:25:27.521992Z", "record_type": "event",
                     "payload": {"call_control_id": "v3:call-1", "call_leg_id": "428c31b6", "call_session_id": "428c31b6",
                                 "client_state": base64.b64encode(ATTEMPT.encode()).decode(), "connection_id": "7267",
                                 "from": "+14155550100", "to": "+14155550199", **payload}},
            "meta": {"attempt": 1, "delivered_to": "https://voice.example.test/providers/telnyx/acme/status"}}  # fmt: skip


def vonage_event(status: str, **extra: Any) -> dict[str, Any]:
    return {"from": "14155550100", "to": "14155550199", "uuid": "63f61863-4a51-4f6b-86e1-46edebcf9356",
            "conversation_uuid": "CON-f972836a", "status": status, "direction": "outbound",
            "timestamp": "2020-01-01T12:00:00.000Z"} | extra  # fmt: skip


def plivo_form(status: str | None, **extra: str) -> dict[str, str]:
    form = {"CallUUID": "e1e7d4b2-0000", "RequestUUID": "9834029e-58b6-11e1-b8b7-a5bd0e4e126f", "From": "14155550100",
            "To": "14155550199", "Direction": "outbound", "Event": "Hangup"} | extra  # fmt: skip
    if status:
        form["CallStatus"] = status
    return form


@pytest.mark.parametrize(("provider", "params", "status", "answered_by", "outcome", "duration"), [
    ("twilio", twilio_form("initiated"), "initiated", None, None, None),
    ("twilio", twilio_form("ringing"), "ringing", None, None, None),
    ("twilio", twilio_form("in-progress"), "answered", None, None, None),
    ("twilio", twilio_form(None, AnsweredBy="human", MachineDetectionDuration="2500"), "answered", "human", None, None),
    ("twilio", twilio_form(None, AnsweredBy="machine_start"), "machine", "machine", "machine", None),
    ("twilio", twilio_form("completed", CallDuration="42"), "completed", None, "completed", 42.0),
    ("twilio", twilio_form("completed", AnsweredBy="machine_end_beep", CallDuration="9"), "completed", "machine",
     "machine", 9.0),
    ("twilio", twilio_form("busy", CallDuration="0"), "busy", None, "busy", 0.0),
    ("twilio", twilio_form("no-answer"), "no_answer", None, "no_answer", None),
    ("twilio", twilio_form("failed", ErrorCode="32009"), "failed", None, "failed", None),
    ("telnyx", telnyx_event("call.initiated", state="bridging", direction="outgoing"), "initiated", None, None, None),
    ("telnyx", telnyx_event("call.answered", state="answered"), "answered", None, None, None),
    ("telnyx", telnyx_event("call.machine.detection.ended", result="machine"), "machine", "machine", "machine", None),
    ("telnyx", telnyx_event("call.machine.detection.ended", result="human"), "answered", "human", None, None),
    ("telnyx", telnyx_event("call.hangup", hangup_cause="normal_clearing", hangup_source="callee",
                            start_time="2018-02-02T22:20:27.521992Z", end_time="2018-02-02T22:21:07.521992Z"),
     "completed", None, "completed", 40.0),
    ("telnyx", telnyx_event("call.hangup", hangup_cause="user_busy", sip_hangup_cause="486"), "busy", None, "busy", None),
    ("telnyx", telnyx_event("call.hangup", hangup_cause="timeout"), "no_answer", None, "no_answer", None),
    ("telnyx", telnyx_event("call.hangup", hangup_cause="unspecified"), "failed", None, "failed", None),
    ("vonage", vonage_event("started"), "initiated", None, None, None),
    ("vonage", vonage_event("ringing"), "ringing", None, None, None),
    ("vonage", vonage_event("answered", start_time=None, rate=None), "answered", None, None, None),
    ("vonage", vonage_event("machine"), "machine", "machine", "machine", None),
    ("vonage", vonage_event("human"), "answered", "human", None, None),
    ("vonage", vonage_event("completed", duration="38", start_time="2020-01-01T12:00:00.000Z"), "completed", None,
     "completed", 38.0),
    ("vonage", vonage_event("busy"), "busy", None, "busy", None),
    ("vonage", vonage_event("timeout"), "no_answer", None, "no_answer", None),
    ("vonage", vonage_event("unanswered"), "no_answer", None, "no_answer", None),
    ("vonage", vonage_event("rejected"), "failed", None, "failed", None),
    ("plivo", plivo_form("ringing", Event="Ring"), "ringing", None, None, None),
    ("plivo", plivo_form("in-progress", Event="MachineDetection", Machine="true", IfMachine="continue"), "machine",
     "machine", "machine", None),
    ("plivo", plivo_form("completed", Duration="31", BillDuration="60", HangupCause="NORMAL_CLEARING"), "completed",
     None, "completed", 31.0),
    ("plivo", plivo_form("busy", HangupCause="USER_BUSY"), "busy", None, "busy", None),
    ("plivo", plivo_form("no-answer", HangupCause="NO_ANSWER"), "no_answer", None, "no_answer", None),
    ("asterisk", {"type": "ChannelStateChange", "channel": {"id": ATTEMPT, "state": "Ringing"}}, "ringing", None, None,
     None),
    ("asterisk", {"type": "ChannelStateChange", "channel": {"id": ATTEMPT, "state": "Up"}}, "answered", None, None, None),
    ("asterisk", {"type": "ChannelDestroyed", "cause": 17, "cause_txt": "User busy", "channel": {"id": ATTEMPT}},
     "busy", None, "busy", None),
    ("asterisk", {"type": "ChannelDestroyed", "cause": 16, "cause_txt": "Normal Clearing", "channel": {"id": ATTEMPT}},
     "completed", None, "completed", None),
])  # fmt: skip
def test_status_callbacks_become_events_and_outcomes(provider: str, params: dict[str, Any], status: str,
                                                     answered_by: str | None, outcome: str | None,
                                                     duration: float | None) -> None:  # fmt: skip
    event = parse_status_callback(provider, params, attempt_id=ATTEMPT)
    assert (event.status, event.answered_by, event.duration_s) == (status, answered_by, duration)
    assert event.attempt_id == ATTEMPT and event.provider_call_id
    assert outcome_of(event) == outcome and (outcome is None or outcome in OUTCOMES)


def test_call_ids_match_what_the_create_call_answered() -> None:
    assert parse_status_callback("plivo", plivo_form("busy")).provider_call_id == "9834029e-58b6-11e1-b8b7-a5bd0e4e126f"
    assert parse_status_callback("telnyx", telnyx_event("call.answered")).provider_call_id == "v3:call-1"
    # Telnyx carries the attempt in client_state even when the URL's query is lost
    assert parse_status_callback("telnyx", telnyx_event("call.answered")).attempt_id == ATTEMPT
    assert parse_status_callback("twilio", twilio_form("busy")).attempt_id is None


def test_callbacks_that_say_nothing_or_cannot_be_read() -> None:
    with pytest.raises(IgnoredStatusEvent):
        parse_status_callback("telnyx", telnyx_event("call.streaming.started"))
    with pytest.raises(IgnoredStatusEvent):
        parse_status_callback("vonage", {"uuid": "x", "status": "transfer"})
    for provider, params in [("twilio", {"CallStatus": "busy"}), ("twilio", twilio_form("exploded")),
                             ("telnyx", {"data": "nope"}), ("plivo", {"CallStatus": "busy"}),
                             ("asterisk", {"type": "ChannelDestroyed"})]:  # fmt: skip
        with pytest.raises(ValueError) as e:
            parse_status_callback(provider, params)
        assert not isinstance(e.value, IgnoredStatusEvent), (provider, params)
    with pytest.raises(ValueError, match="no status callbacks"):
        parse_status_callback("exotel", {})


def test_outcome_is_none_while_the_call_goes_on() -> None:
    for status in ("initiated", "ringing", "answered"):
        assert outcome_of(CallStatusEvent("id", None, status)) is None
    assert outcome_of(CallStatusEvent("id", None, "answered", answered_by="human")) is None
