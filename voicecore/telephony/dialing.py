"""Placing outbound calls through each provider's REST API, and reading what comes back.

Pure (no sockets, no event loop; the clock and randomness only where a signed JWT needs them):
:func:`build_create_call` turns a :class:`DialRequest` and the tenant's stored credentials into
the :class:`HttpRequest` the provider documents; :func:`parse_create_call` turns its answer into
a :class:`DialResult`; :func:`parse_status_callback` turns a status callback (form or JSON) into a
:class:`CallStatusEvent`, and :func:`outcome_of` says whether the call is over and how it ended.
The asyncio shell that sends the requests is :mod:`voicecore.transports.dialer`.

The media come back on the inbound paths: the create-call request carries the instructions that
connect the answered call to ``wss://<public>/ws/<provider>`` with a one-time call token.

- **Twilio** — ``POST /2010-04-01/Accounts/{AccountSid}/Calls.json`` (form, Basic
  ``AccountSid:AuthToken``) with inline ``Twiml`` ``<Connect><Stream>``; status callbacks
  (``CallStatus``) for initiated, ringing, answered, completed; answering-machine detection runs
  asynchronously (``AsyncAmd``) so the agent's greeting is not held back, its verdict
  (``AnsweredBy``) arrives at the same status URL.
- **Telnyx** Call Control — ``POST /v2/calls`` (JSON, ``Bearer <API key>``) with ``stream_url``
  and ``stream_auth_token``; ``command_id`` = the attempt id (Telnyx ignores a command whose id it
  saw in the last 60 s: a quick retry does not dial twice); webhooks ``call.initiated``,
  ``call.answered``, ``call.machine.detection.ended``, ``call.hangup`` (``hangup_cause``) carry
  ``client_state`` (base64 of the attempt id). Telnyx may deliver webhooks twice or out of order.
- **Vonage** — ``POST /v1/calls`` (JSON, ``Bearer <JWT>`` signed RS256 with the application's
  private key) with an inline NCCO ``connect`` to a websocket; events (``status``) at
  ``event_url``. Numbers go without the leading ``+``.
- **Plivo** — ``POST /v1/Account/{auth_id}/Call/`` (JSON, Basic ``auth_id:auth_token``); Plivo asks
  our answer URL when the callee picks up (it returns ``<Stream>`` with a fresh call token), and
  posts to ``ring_url``, ``hangup_url`` and ``machine_detection_url`` (all the status URL). The id
  Plivo answers with is the ``request_uuid``; callbacks carry it as ``RequestUUID``.
- **Asterisk** ARI — ``POST /ari/channels`` (Basic ``ari_user:ari_password``) originating
  ``PJSIP/<number>@<trunk>`` into a dialplan context (:func:`asterisk_outbound_dialplan`) that,
  once the callee answers, dials ``WebSocket/<connection>`` (chan_websocket) with the call token
  from a channel variable; ``channelId`` = the attempt id (Asterisk refuses a repeated one, 409).
  Status comes as ARI events (``ChannelStateChange``, ``ChannelDestroyed`` with the Q.850 cause).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import jwt

from voicecore.telephony.signatures import private_key_pem
from voicecore.telephony.telnyx import call_control_stream_parameters
from voicecore.telephony.twilio import twiml_connect_stream
from voicecore.telephony.vonage import ncco_connect

__all__ = [
    "DIAL_PROVIDERS",
    "OUTCOMES",
    "STATUSES",
    "CallStatusEvent",
    "DialRequest",
    "DialResult",
    "DialingError",
    "HttpRequest",
    "IgnoredStatusEvent",
    "asterisk_outbound_dialplan",
    "build_create_call",
    "default_api_base",
    "outcome_of",
    "parse_create_call",
    "parse_status_callback",
]

DIAL_PROVIDERS: Final = ("twilio", "telnyx", "vonage", "plivo", "asterisk")
DEFAULT_API_BASES: Final[dict[str, str]] = {
    "twilio": "https://api.twilio.com",
    "telnyx": "https://api.telnyx.com",
    "vonage": "https://api.nexmo.com",
    "plivo": "https://api.plivo.com",
}
#: What a :class:`CallStatusEvent` says about the call, in the order a call goes through them.
STATUSES: Final = ("initiated", "ringing", "answered", "machine", "completed", "no_answer", "busy", "failed")
#: How an attempt ended (the last two are decided before dialing, by the campaign).
OUTCOMES: Final = ("completed", "no_answer", "busy", "failed", "machine", "refused_by_policy", "opted_out")
#: Asterisk: the dialplan context and the channel variable carrying the call token.
ASTERISK_CONTEXT: Final = "voicecore-outbound"
ASTERISK_TOKEN_VARIABLE: Final = "VOICECORE_TOKEN"
ASTERISK_STATUS_VARIABLE: Final = "VOICECORE_STATUS_URL"
#: Vonage: how long the JWT that places a call is valid.
VONAGE_JWT_TTL_S: Final = 300
_MAX_MESSAGE_CHARS: Final = 300


class DialingError(ValueError):
    """A create-call request cannot be built: a missing or unusable credential (named, never shown) or
    a malformed request field."""


class IgnoredStatusEvent(ValueError):
    """A well-formed callback that says nothing about the call's progress (e.g. Telnyx
    ``call.streaming.started``): answer it, change nothing."""


@dataclass(frozen=True)
class DialRequest:
    provider: str  # twilio | telnyx | vonage | plivo | asterisk
    to: str  # E.164
    from_: str  # E.164 (the tenant's number)
    stream_url: str  # wss://<public>/ws/<provider> (media come back on the inbound path)
    stream_token: str  # one-time call token the stream must present
    status_url: str  # https://<public>/providers/<provider>/<tenant>/status?attempt=<attempt_id>
    attempt_id: str  # voicecore's id of this attempt (the idempotency key where the provider has one)
    machine_detection: bool = True
    pipeline: str | None = None
    timeout_s: int = 30  # ring time
    #: Plivo only: the answer URL Plivo fetches when the callee picks up; None → the status URL's
    #: sibling ``…/answer`` with the same query (and ``pipeline=``).
    answer_url: str | None = None
    #: Telnyx only: what the stream is set up to take back (``serve --telnyx-codec``).
    telnyx_codec: str = "PCMU"
    telnyx_sample_rate: int = 8000
    #: Asterisk only: the websocket_client.conf connection the dialplan dials.
    asterisk_connection: str = "voicecore"


@dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes

    def __repr__(self) -> str:  # the headers hold credentials, the body a call token
        return f"HttpRequest({self.method} {self.url.split('?')[0]}, {len(self.body)} bytes)"


@dataclass(frozen=True)
class DialResult:
    ok: bool
    provider_call_id: str | None = None
    error_code: str | None = None  # the provider's code, or "timeout", "malformed", "http_<status>", …
    error_message: str | None = None  # the provider's message (credentials never echoed)
    auth_failed: bool = False  # wrong credentials: the campaign pauses
    retryable: bool = True


@dataclass(frozen=True)
class CallStatusEvent:
    provider_call_id: str
    attempt_id: str | None  # from the status URL's query (or Telnyx's client_state)
    status: str  # one of STATUSES
    answered_by: str | None = None  # human | machine | unknown
    duration_s: float | None = None
    error_code: str | None = None  # the provider's cause (Telnyx hangup_cause, Twilio SipResponseCode, …)


# --- building the create-call request ----------------------------------------------------


def default_api_base(provider: str) -> str | None:
    return DEFAULT_API_BASES.get(provider)


def _need(credentials: Mapping[str, str], provider: str, name: str) -> str:
    value = credentials.get(name)
    if not isinstance(value, str) or not value.strip():
        raise DialingError(f"{provider} credential {name!r} is missing: store it with "
                           f"`voicecore providers set {provider} --tenant <tenant> {name}=…`")  # fmt: skip
    return value.strip()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _base(provider: str, api_base: str | None) -> str:
    base = (api_base or DEFAULT_API_BASES[provider]).rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DialingError(f"{provider} API base must be http[s]://host[:port], got {base!r}")
    return base


def _digits(number: str, what: str) -> str:
    """E.164 without the ``+`` (Vonage, Plivo)."""
    digits = number.strip().removeprefix("+")
    if not digits.isdigit() or not 7 <= len(digits) <= 15:
        raise DialingError(f"{what} must be an E.164 number, got {number!r}")
    return digits


def _check_request(req: DialRequest) -> None:
    if req.provider not in DIAL_PROVIDERS:
        raise DialingError(f"cannot dial through {req.provider!r}; providers: {', '.join(DIAL_PROVIDERS)}")
    _digits(req.to, "to")
    _digits(req.from_, "from")
    if not req.attempt_id or not req.stream_token:
        raise DialingError("a dial request needs an attempt id and a call token")
    if urlsplit(req.status_url).scheme not in ("http", "https"):
        raise DialingError(f"status URL must be http[s]://…, got {req.status_url!r}")
    if not 5 <= req.timeout_s <= 600:
        raise DialingError(f"ring time must be 5 to 600 s, got {req.timeout_s}")


def build_create_call(
    provider: str,
    credentials: Mapping[str, str],
    req: DialRequest,
    *,
    api_base: str | None = None,
    now: float | None = None,
) -> HttpRequest:
    """The provider's create-call request for ``req``. ``api_base`` replaces the provider's API host
    (a fake in tests; for Asterisk, the stored ``ari_url``). ``now``: epoch seconds for the Vonage
    JWT (default: the clock). Raises :class:`DialingError` naming a missing credential or a bad field."""
    if provider != req.provider:
        raise DialingError(f"request is for {req.provider!r}, not {provider!r}")
    _check_request(req)
    if provider == "twilio":
        return _twilio(credentials, req, api_base)
    if provider == "telnyx":
        return _telnyx(credentials, req, api_base)
    if provider == "vonage":
        return _vonage(credentials, req, api_base, time.time() if now is None else now)
    if provider == "plivo":
        return _plivo(credentials, req, api_base)
    return _asterisk(credentials, req, api_base)


def _twilio(credentials: Mapping[str, str], req: DialRequest, api_base: str | None) -> HttpRequest:
    sid, token = _need(credentials, "twilio", "account_sid"), _need(credentials, "twilio", "auth_token")
    try:
        twiml = twiml_connect_stream(req.stream_url, {"token": req.stream_token})
    except ValueError as e:
        raise DialingError(str(e)) from None
    form: list[tuple[str, str]] = [("To", req.to), ("From", req.from_), ("Twiml", twiml),
                                   ("StatusCallback", req.status_url), ("StatusCallbackMethod", "POST")]  # fmt: skip
    form += [("StatusCallbackEvent", e) for e in ("initiated", "ringing", "answered", "completed")]
    form.append(("Timeout", str(req.timeout_s)))
    if req.machine_detection:
        form += [("MachineDetection", "Enable"), ("AsyncAmd", "true"),
                 ("AsyncAmdStatusCallback", req.status_url), ("AsyncAmdStatusCallbackMethod", "POST")]  # fmt: skip
    url = f"{_base('twilio', api_base)}/2010-04-01/Accounts/{quote(sid, safe='')}/Calls.json"
    headers = {"Authorization": _basic(sid, token), "Content-Type": "application/x-www-form-urlencoded",
               "Accept": "application/json"}  # fmt: skip
    return HttpRequest("POST", url, headers, urlencode(form).encode())


def _json_request(url: str, authorization: str, body: Mapping[str, Any]) -> HttpRequest:
    headers = {"Authorization": authorization, "Content-Type": "application/json", "Accept": "application/json"}
    return HttpRequest("POST", url, headers, json.dumps(body, separators=(",", ":")).encode())


def _telnyx(credentials: Mapping[str, str], req: DialRequest, api_base: str | None) -> HttpRequest:
    key, connection = _need(credentials, "telnyx", "api_key"), _need(credentials, "telnyx", "connection_id")
    try:
        stream = call_control_stream_parameters(req.stream_url, codec=req.telnyx_codec,
                                                sample_rate=req.telnyx_sample_rate, auth_token=req.stream_token)  # fmt: skip
    except ValueError as e:
        raise DialingError(str(e)) from None
    body: dict[str, Any] = {
        "connection_id": connection,
        "to": req.to,
        "from": req.from_,
        **stream,
        "answering_machine_detection": "detect" if req.machine_detection else "disabled",
        "timeout_secs": req.timeout_s,
        "webhook_url": req.status_url,
        "webhook_url_method": "POST",
        "client_state": base64.b64encode(req.attempt_id.encode()).decode("ascii"),
        "command_id": req.attempt_id,
    }
    return _json_request(f"{_base('telnyx', api_base)}/v2/calls", f"Bearer {key}", body)


def vonage_application_jwt(application_id: str, private_key: str, *, now: float, ttl_s: int = VONAGE_JWT_TTL_S) -> str:
    """The JWT Vonage's API takes: RS256 with the application's private key, claims
    ``application_id``, ``iat``, ``exp`` and a fresh ``jti``."""
    try:
        pem = private_key_pem(private_key, "vonage private_key")
    except ValueError as e:
        raise DialingError(str(e)) from None
    claims = {"application_id": application_id, "iat": int(now), "exp": int(now) + ttl_s, "jti": secrets.token_hex(16)}
    return jwt.encode(claims, pem, algorithm="RS256")


def _vonage(credentials: Mapping[str, str], req: DialRequest, api_base: str | None, now: float) -> HttpRequest:
    app_id, key = _need(credentials, "vonage", "application_id"), _need(credentials, "vonage", "private_key")
    try:
        ncco = ncco_connect(req.stream_url, {"token": req.stream_token})
    except ValueError as e:
        raise DialingError(str(e)) from None
    body: dict[str, Any] = {
        "to": [{"type": "phone", "number": _digits(req.to, "to")}],
        "from": {"type": "phone", "number": _digits(req.from_, "from")},
        "ncco": ncco,
        "event_url": [req.status_url],
        "event_method": "POST",
        "ringing_timer": req.timeout_s,
    }
    if req.machine_detection:
        body["machine_detection"] = "continue"  # report the machine, keep the call: the campaign decides
    token = vonage_application_jwt(app_id, key, now=now)
    return _json_request(f"{_base('vonage', api_base)}/v1/calls", f"Bearer {token}", body)


def _plivo_answer_url(req: DialRequest) -> str:
    if req.answer_url:
        return req.answer_url
    parts = urlsplit(req.status_url)
    if not parts.path.endswith("/status"):
        raise DialingError("plivo needs an answer URL (the status URL does not end in /status)")
    query = parts.query + (f"&pipeline={quote(req.pipeline)}" if req.pipeline and "pipeline=" not in parts.query
                           else "")  # fmt: skip
    return urlunsplit((parts.scheme, parts.netloc, parts.path.removesuffix("/status") + "/answer",
                       query.lstrip("&"), ""))  # fmt: skip


def _plivo(credentials: Mapping[str, str], req: DialRequest, api_base: str | None) -> HttpRequest:
    auth_id, token = _need(credentials, "plivo", "auth_id"), _need(credentials, "plivo", "auth_token")
    body: dict[str, Any] = {
        "from": _digits(req.from_, "from"),
        "to": _digits(req.to, "to"),
        "answer_url": _plivo_answer_url(req),
        "answer_method": "POST",
        "ring_url": req.status_url,
        "ring_method": "POST",
        "hangup_url": req.status_url,
        "hangup_method": "POST",
        "ring_timeout": req.timeout_s,
    }
    if req.machine_detection:
        body |= {"machine_detection": "true", "machine_detection_url": req.status_url,
                 "machine_detection_method": "POST"}  # fmt: skip
    url = f"{_base('plivo', api_base)}/v1/Account/{quote(auth_id, safe='')}/Call/"
    return _json_request(url, _basic(auth_id, token), body)


def _asterisk(credentials: Mapping[str, str], req: DialRequest, api_base: str | None) -> HttpRequest:
    base = api_base or _need(credentials, "asterisk", "ari_url")
    user, password = _need(credentials, "asterisk", "ari_user"), _need(credentials, "asterisk", "ari_password")
    trunk = _need(credentials, "asterisk", "trunk")
    query = urlencode({
        "endpoint": f"PJSIP/{req.to}@{trunk}",
        "context": ASTERISK_CONTEXT,
        "extension": "s",
        "priority": "1",
        "callerId": req.from_,
        "timeout": str(req.timeout_s),
        "channelId": req.attempt_id,
    })  # fmt: skip
    body = {"variables": {ASTERISK_TOKEN_VARIABLE: req.stream_token, ASTERISK_STATUS_VARIABLE: req.status_url,
                          "VOICECORE_CONNECTION": req.asterisk_connection}}  # fmt: skip
    url = f"{_base('asterisk', base)}/ari/channels?{query}"
    return _json_request(url, _basic(user, password), body)


def asterisk_outbound_dialplan(connection: str = "voicecore", *, codec: str = "ulaw") -> str:
    """The dialplan context :func:`build_create_call` originates Asterisk calls into: when the callee
    answers, the channel dials voicecore over chan_websocket with the call token as a URI parameter
    (letters and digits: no encoding needed)."""
    if not connection.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"connection name must be letters, digits, '-' or '_', got {connection!r}")
    options = f"c({codec})v(token=${{{ASTERISK_TOKEN_VARIABLE}}})"  # the token's grant names both numbers
    return "\n".join([
        f"[{ASTERISK_CONTEXT}]",
        f"exten => s,1,Dial(WebSocket/{connection}/{options})",
        " same => n,Hangup()",
        "",
    ])  # fmt: skip


# --- the provider's answer --------------------------------------------------------------------


def _short(text: object) -> str | None:
    if text is None:
        return None
    s = " ".join(str(text).split())
    return s[:_MAX_MESSAGE_CHARS] or None


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _provider_error(provider: str, data: dict[str, Any]) -> tuple[str | None, str | None]:
    """(code, message) from a provider's error body."""
    if provider == "twilio":  # {"code": 20003, "message": "Authenticate", "more_info": …, "status": 401}
        return (str(data["code"]) if data.get("code") is not None else None), _short(data.get("message"))
    if provider == "telnyx":  # {"errors": [{"code": "10009", "title": …, "detail": …}]}
        errors = data.get("errors")
        first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
        message = " — ".join(str(first[k]) for k in ("title", "detail") if first.get(k))
        return (str(first["code"]) if first.get("code") is not None else None), _short(message)
    if provider == "vonage":  # {"type": "https://developer.nexmo.com/api-errors#unauthorized", "title", "detail"}
        kind = data.get("type")
        code = kind.rsplit("#", 1)[-1].rsplit("/", 1)[-1] if isinstance(kind, str) and kind else None
        params = data.get("invalid_parameters")
        extra = ("; " + ", ".join(f"{p.get('name')}: {p.get('reason')}" for p in params if isinstance(p, dict))
                 if isinstance(params, list) else "")  # fmt: skip
        message = " — ".join(str(data[k]) for k in ("title", "detail") if data.get(k))
        return code, _short(message + extra)
    if provider == "plivo":  # {"api_id": …, "error": "…"}
        return None, _short(data.get("error") or data.get("message"))
    return None, _short(data.get("message"))  # asterisk: {"message": "…"}


def _call_id(provider: str, data: dict[str, Any]) -> Any:
    if provider == "twilio":
        return data.get("sid")
    if provider == "telnyx":
        inner = data.get("data")
        return inner.get("call_control_id") if isinstance(inner, dict) else None
    if provider == "vonage":
        return data.get("uuid")
    if provider == "plivo":
        return data.get("request_uuid")
    return data.get("id")  # asterisk: the channel


def parse_create_call(provider: str, status: int, body: bytes) -> DialResult:
    """What the provider's answer to a create-call request means for the attempt.

    2xx with the call's id → ok. 401/403 → ``auth_failed`` (the campaign pauses; not retryable).
    408, 429, 5xx → retryable. Other 4xx (a bad number, …) → not retryable. A 2xx without a readable
    id → ``malformed``, not retryable (the call may have been placed: never risk dialing twice)."""
    data = _json_object(body)
    if 200 <= status < 300:
        call_id = _call_id(provider, data) if data is not None else None
        if isinstance(call_id, str) and call_id:
            return DialResult(ok=True, provider_call_id=call_id)
        return DialResult(ok=False, error_code="malformed", retryable=False,
                          error_message=f"{provider} answered {status} without a call id")  # fmt: skip
    code, message = _provider_error(provider, data) if data is not None else (None, None)
    if data is None and body.strip():
        message = message or f"{provider} answered {status} with a body that is not JSON"
    code = code or f"http_{status}"
    if status in (401, 403):
        return DialResult(ok=False, error_code=code, auth_failed=True, retryable=False,
                          error_message=message or f"{provider} refused the credentials ({status})")  # fmt: skip
    if provider == "asterisk" and status == 409:  # channelId already used: this attempt was already dialed
        return DialResult(ok=False, error_code="duplicate", error_message=message, retryable=False)
    retryable = status in (408, 425, 429) or status >= 500
    return DialResult(ok=False, error_code=code, error_message=message or f"{provider} answered {status}",
                      retryable=retryable)  # fmt: skip


# --- status callbacks ------------------------------------------------------------------------------


def _text(params: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = params.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _answered_by(value: str | None) -> str | None:
    """Twilio ``AnsweredBy``/Telnyx ``result`` → human | machine | unknown."""
    if value is None:
        return None
    v = value.lower()
    if v.startswith("human"):
        return "human"
    if v.startswith("machine") or v in ("fax", "fax_detected"):
        return "machine"
    return "unknown"


def parse_status_callback(provider: str, params: Mapping[str, Any], *, attempt_id: str | None = None) -> CallStatusEvent:
    """A provider's status callback → :class:`CallStatusEvent`.

    ``params``: the form (Twilio, Plivo) or the parsed JSON body (Telnyx, Vonage, an ARI event).
    ``attempt_id``: from the status URL's ``?attempt=`` (Telnyx also carries it in ``client_state``).
    Raises :class:`IgnoredStatusEvent` for a callback that says nothing about the call's progress and
    ``ValueError`` for one that cannot be read."""
    parsers = {"twilio": _twilio_status, "telnyx": _telnyx_status, "vonage": _vonage_status,
               "plivo": _plivo_status, "asterisk": _asterisk_status}  # fmt: skip
    if provider not in parsers:
        raise ValueError(f"no status callbacks for provider {provider!r}")
    if not isinstance(params, Mapping):
        raise ValueError(f"{provider} status callback is not an object")
    return parsers[provider](params, attempt_id)


_TWILIO_STATUS: Final = {"queued": "initiated", "initiated": "initiated", "ringing": "ringing",
                         "in-progress": "answered", "answered": "answered", "completed": "completed",
                         "busy": "busy", "no-answer": "no_answer", "failed": "failed", "canceled": "failed"}  # fmt: skip


def _twilio_status(params: Mapping[str, Any], attempt_id: str | None) -> CallStatusEvent:
    sid = _text(params, "CallSid")
    if not sid:
        raise ValueError("twilio status callback without CallSid")
    answered_by = _answered_by(_text(params, "AnsweredBy"))
    raw = (_text(params, "CallStatus") or "").lower()
    if not raw:
        if answered_by is None:  # the asynchronous AMD callback carries AnsweredBy and no CallStatus
            raise ValueError("twilio status callback without CallStatus or AnsweredBy")
        raw = "in-progress"
    if raw not in _TWILIO_STATUS:
        raise ValueError(f"unknown twilio CallStatus {raw!r}")
    status = _TWILIO_STATUS[raw]
    if status == "answered" and answered_by == "machine":
        status = "machine"
    error = _text(params, "ErrorCode", "SipResponseCode") if status in ("failed", "busy", "no_answer") else None
    error = error or ("canceled" if raw == "canceled" else None)
    return CallStatusEvent(sid, attempt_id, status, answered_by, _seconds(_text(params, "CallDuration")), error)


_TELNYX_HANGUP: Final = {"normal_clearing": "completed", "time_limit": "completed", "user_busy": "busy",
                         "no_answer": "no_answer", "timeout": "no_answer", "call_rejected": "no_answer"}  # fmt: skip


def _telnyx_status(params: Mapping[str, Any], attempt_id: str | None) -> CallStatusEvent:
    data = params.get("data", params)
    if not isinstance(data, Mapping):
        raise ValueError("telnyx webhook without a data object")
    event_type = data.get("event_type")
    payload = data.get("payload")
    if not isinstance(event_type, str) or not isinstance(payload, Mapping):
        raise ValueError("telnyx webhook without data.event_type / data.payload")
    call_id = _text(payload, "call_control_id")
    if not call_id:
        raise ValueError("telnyx webhook without payload.call_control_id")
    if attempt_id is None and (state := _text(payload, "client_state")):
        try:
            attempt_id = base64.b64decode(state, validate=True).decode("utf-8") or None
        except (binascii.Error, UnicodeDecodeError, ValueError):
            attempt_id = None
    answered_by = error = duration = None
    if event_type == "call.initiated":
        status = "initiated"
    elif event_type == "call.answered":
        status = "answered"
    elif event_type in ("call.machine.detection.ended", "call.machine.premium.detection.ended"):
        answered_by = _answered_by(_text(payload, "result")) or "unknown"
        status = "machine" if answered_by == "machine" else "answered"
    elif event_type == "call.hangup":
        cause = (_text(payload, "hangup_cause") or "unspecified").lower()
        status = _TELNYX_HANGUP.get(cause, "failed")
        error = None if status == "completed" else cause
        duration = _telnyx_duration(payload)
    else:
        raise IgnoredStatusEvent(f"telnyx {event_type} says nothing about the call's progress")
    return CallStatusEvent(call_id, attempt_id, status, answered_by, duration, error)


def _telnyx_duration(payload: Mapping[str, Any]) -> float | None:
    start, end = _text(payload, "start_time"), _text(payload, "end_time")
    if not start or not end:
        return None
    try:
        seconds = (datetime.fromisoformat(end.replace("Z", "+00:00"))
                   - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()  # fmt: skip
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


_VONAGE_STATUS: Final = {"started": "initiated", "ringing": "ringing", "answered": "answered", "human": "answered",
                         "machine": "machine", "completed": "completed", "busy": "busy", "timeout": "no_answer",
                         "unanswered": "no_answer", "failed": "failed", "rejected": "failed",
                         "cancelled": "failed"}  # fmt: skip


def _vonage_status(params: Mapping[str, Any], attempt_id: str | None) -> CallStatusEvent:
    uuid = _text(params, "uuid")
    raw = (_text(params, "status") or "").lower()
    if not uuid or not raw:
        raise IgnoredStatusEvent("vonage event without uuid/status (not a call status)")
    if raw not in _VONAGE_STATUS:
        raise IgnoredStatusEvent(f"vonage status {raw!r} says nothing about the call's progress")
    status = _VONAGE_STATUS[raw]
    answered_by = {"human": "human", "machine": "machine"}.get(raw)
    error = _text(params, "detail", "reason") if status in ("failed", "busy", "no_answer") else None
    error = error or (raw if status in ("failed", "no_answer") else None)
    return CallStatusEvent(uuid, attempt_id, status, answered_by, _seconds(_text(params, "duration")), error)


_PLIVO_STATUS: Final = {"ringing": "ringing", "in-progress": "answered", "completed": "completed", "busy": "busy",
                        "no-answer": "no_answer", "timeout": "no_answer", "cancel": "failed",
                        "failed": "failed"}  # fmt: skip


def _plivo_status(params: Mapping[str, Any], attempt_id: str | None) -> CallStatusEvent:
    call_id = _text(params, "RequestUUID", "CallUUID")  # RequestUUID: the id the create-call answer gave
    if not call_id:
        raise ValueError("plivo callback without RequestUUID/CallUUID")
    if (_text(params, "Event") or "").lower() == "machinedetection" or _text(params, "Machine") is not None:
        machine = (_text(params, "Machine") or "").lower() == "true"
        return CallStatusEvent(call_id, attempt_id, "machine" if machine else "answered",
                               "machine" if machine else "human")  # fmt: skip
    raw = (_text(params, "CallStatus") or "").lower()
    if raw not in _PLIVO_STATUS:
        raise ValueError(f"unknown plivo CallStatus {raw!r}")
    status = _PLIVO_STATUS[raw]
    error = _text(params, "HangupCauseName", "HangupCause") if status in ("failed", "busy", "no_answer") else None
    duration = _seconds(_text(params, "Duration")) if status == "completed" else None
    return CallStatusEvent(call_id, attempt_id, status, None, duration, error)


#: Q.850 causes (ChannelDestroyed ``cause``) → status.
_Q850: Final = {16: "completed", 17: "busy", 18: "no_answer", 19: "no_answer", 21: "no_answer", 31: "completed"}


def _asterisk_status(params: Mapping[str, Any], attempt_id: str | None) -> CallStatusEvent:
    channel = params.get("channel")
    if not isinstance(channel, Mapping) or not _text(channel, "id"):
        raise ValueError("ARI event without channel.id")
    channel_id = _text(channel, "id") or ""
    kind = _text(params, "type")
    if kind == "ChannelStateChange" or kind == "ChannelCreated":
        state = (_text(channel, "state") or "").lower()
        status = {"ring": "initiated", "ringing": "ringing", "up": "answered"}.get(state)
        if status is None:
            raise IgnoredStatusEvent(f"ARI channel state {state!r}")
        return CallStatusEvent(channel_id, attempt_id or channel_id, status)
    if kind in ("ChannelDestroyed", "ChannelHangupRequest"):
        cause = params.get("cause")
        code = int(cause) if isinstance(cause, (int, str)) and str(cause).isdigit() else 0
        status = _Q850.get(code, "failed")
        error = None if status == "completed" else (_text(params, "cause_txt") or f"cause_{code}")
        return CallStatusEvent(channel_id, attempt_id or channel_id, status, None, None, error)
    raise IgnoredStatusEvent(f"ARI {kind} says nothing about the call's progress")


def outcome_of(event: CallStatusEvent) -> str | None:
    """The attempt's final outcome once ``event`` says the call is over (or that a machine answered:
    that decides the attempt even while the call goes on); None while it is still going."""
    if event.status == "machine" or (event.status == "completed" and event.answered_by == "machine"):
        return "machine"
    if event.status in ("completed", "no_answer", "busy", "failed"):
        return event.status
    return None
