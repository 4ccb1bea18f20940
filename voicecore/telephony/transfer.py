"""Handing a live call to another number or SIP URI through the provider's REST API (the ``transfer``
tool): pure request builders and the reading of the answer, like :mod:`voicecore.telephony.dialing`.

- **Twilio** "Update a Call" — ``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json``
  (form, Basic ``AccountSid:AuthToken``) with ``Twiml=<Response><Dial>NUMBER</Dial></Response>``
  (``<Dial><Sip>URI</Sip></Dial>`` for a SIP URI); the new TwiML replaces the running
  ``<Connect><Stream>``, which ends. Answer: 200 with the Call resource.
- **Telnyx** Call Control — ``POST /v2/calls/{call_control_id}/actions/transfer`` (JSON, Bearer API
  key) with ``to`` (an E.164 number or a SIP URI). Answer: 200 ``{"data": {"result": "ok"}}``.
- **Vonage** — ``PUT /v1/calls/{uuid}`` (JSON, Bearer application JWT) with ``action: transfer`` and
  ``destination: {type: ncco, ncco: [{action: connect, endpoint: [{type: phone, number}]}]}``
  (``{type: sip, uri}`` for a SIP URI). Answer: 204.
- **Plivo** "Transfer a call" — ``POST /v1/Account/{auth_id}/Call/{call_uuid}/`` (JSON, Basic) with
  ``legs: aleg``, ``aleg_url`` (a URL serving the Plivo XML ``<Dial>`` for the target; Plivo takes
  no destination in the request) and ``aleg_method``. Answer: 202.
- **Asterisk** ARI — ``POST /ari/channels/{channelId}/redirect?endpoint=PJSIP/<number>@<trunk>``
  (``PJSIP/<trunk>/<sip URI>`` for a SIP URI; Basic ``ari_user:ari_password``). Answer: 204.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlencode
from xml.sax.saxutils import escape

from voicecore.telephony.dialing import (
    DialingError,
    HttpRequest,
    _base,
    _basic,
    _json_object,
    _need,
    _provider_error,
    _short,
    vonage_application_jwt,
)

__all__ = ["TRANSFER_PROVIDERS", "TransferRequest", "TransferResult", "build_transfer", "parse_transfer",
           "twiml_dial"]  # fmt: skip

TRANSFER_PROVIDERS: Final = ("twilio", "telnyx", "vonage", "plivo", "asterisk")
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
SIP_URI = re.compile(r"^sips?:[^\s<>\"']{3,200}$")


@dataclass(frozen=True)
class TransferRequest:
    provider: str
    call_id: str  # the provider's id of the live call (CallSid, call_control_id, uuid, CallUUID, channel id)
    to: str  # E.164 number or sip:/sips: URI
    #: Plivo only: the URL Plivo fetches the call's next XML from (it must serve <Dial> to ``to``).
    plivo_xml_url: str | None = None


@dataclass(frozen=True)
class TransferResult:
    ok: bool
    error_code: str | None = None  # the provider's code, or "timeout", "http_<status>", "credentials", …
    error_message: str | None = None  # the provider's message (credentials never echoed)


def _check(req: TransferRequest) -> None:
    if req.provider not in TRANSFER_PROVIDERS:
        raise DialingError(f"cannot transfer through {req.provider!r}; providers: {', '.join(TRANSFER_PROVIDERS)}")
    if not req.call_id or not re.fullmatch(r"[A-Za-z0-9._:@-]{1,200}", req.call_id):
        raise DialingError("the call's provider id is missing or malformed")
    if not (E164.match(req.to) or SIP_URI.match(req.to)):
        raise DialingError(f"transfer target must be an E.164 number or a sip: URI, got {req.to!r}")


def twiml_dial(to: str) -> str:
    """``<Response><Dial>NUMBER</Dial></Response>`` (a ``<Sip>`` noun for a SIP URI)."""
    target = f"<Sip>{escape(to)}</Sip>" if SIP_URI.match(to) else escape(to)
    return f"<Response><Dial>{target}</Dial></Response>"


def build_transfer(provider: str, credentials: Mapping[str, str], req: TransferRequest, *,
                   api_base: str | None = None, now: float | None = None) -> HttpRequest:  # fmt: skip
    """The provider's request that hands the live call ``req.call_id`` to ``req.to``. Raises
    :class:`DialingError` naming a missing credential or a bad field."""
    if provider != req.provider:
        raise DialingError(f"request is for {req.provider!r}, not {provider!r}")
    _check(req)
    call = quote(req.call_id, safe="")
    if provider == "twilio":
        sid, token = _need(credentials, "twilio", "account_sid"), _need(credentials, "twilio", "auth_token")
        url = f"{_base('twilio', api_base)}/2010-04-01/Accounts/{quote(sid, safe='')}/Calls/{call}.json"
        headers = {"Authorization": _basic(sid, token), "Content-Type": "application/x-www-form-urlencoded",
                   "Accept": "application/json"}  # fmt: skip
        return HttpRequest("POST", url, headers, urlencode({"Twiml": twiml_dial(req.to)}).encode())
    if provider == "telnyx":
        key = _need(credentials, "telnyx", "api_key")
        url = f"{_base('telnyx', api_base)}/v2/calls/{call}/actions/transfer"
        return _json("POST", url, f"Bearer {key}", {"to": req.to})
    if provider == "vonage":
        app_id, key = _need(credentials, "vonage", "application_id"), _need(credentials, "vonage", "private_key")
        endpoint = ({"type": "sip", "uri": req.to} if SIP_URI.match(req.to)
                    else {"type": "phone", "number": req.to.removeprefix("+")})  # fmt: skip
        body = {"action": "transfer",
                "destination": {"type": "ncco", "ncco": [{"action": "connect", "endpoint": [endpoint]}]}}  # fmt: skip
        token = vonage_application_jwt(app_id, key, now=time.time() if now is None else now)
        return _json("PUT", f"{_base('vonage', api_base)}/v1/calls/{call}", f"Bearer {token}", body)
    if provider == "plivo":
        auth_id, token = _need(credentials, "plivo", "auth_id"), _need(credentials, "plivo", "auth_token")
        if not req.plivo_xml_url or not re.match(r"^https?://\S+$", req.plivo_xml_url):
            raise DialingError("plivo transfers fetch the call's next XML from a URL: set tools.transfer.plivo_xml_url "
                               "to one that serves <Dial> to the target")  # fmt: skip
        url = f"{_base('plivo', api_base)}/v1/Account/{quote(auth_id, safe='')}/Call/{call}/"
        return _json("POST", url, _basic(auth_id, token),
                     {"legs": "aleg", "aleg_url": req.plivo_xml_url, "aleg_method": "POST"})  # fmt: skip
    base = api_base or _need(credentials, "asterisk", "ari_url")
    user, password = _need(credentials, "asterisk", "ari_user"), _need(credentials, "asterisk", "ari_password")
    trunk = _need(credentials, "asterisk", "trunk")
    endpoint = f"PJSIP/{trunk}/{req.to}" if SIP_URI.match(req.to) else f"PJSIP/{req.to}@{trunk}"
    url = f"{_base('asterisk', base)}/ari/channels/{call}/redirect?{urlencode({'endpoint': endpoint})}"
    return HttpRequest("POST", url, {"Authorization": _basic(user, password), "Accept": "application/json"}, b"")


def _json(method: str, url: str, authorization: str, body: Mapping[str, Any]) -> HttpRequest:
    headers = {"Authorization": authorization, "Content-Type": "application/json", "Accept": "application/json"}
    return HttpRequest(method, url, headers, json.dumps(body, separators=(",", ":")).encode())


def parse_transfer(provider: str, status: int, body: bytes) -> TransferResult:
    """What the provider's answer to the transfer request means: 2xx → ok (Twilio 200, Telnyx 200,
    Vonage 204, Plivo 202, ARI 204), anything else → the provider's code and message."""
    if 200 <= status < 300:
        return TransferResult(ok=True)
    data = _json_object(body)
    code, message = _provider_error(provider, data) if data is not None else (None, None)
    if status in (401, 403):
        message = message or f"{provider} refused the credentials ({status})"
    if data is None and body.strip() and provider == "asterisk":
        message = _short(body.decode("utf-8", "replace"))
    return TransferResult(ok=False, error_code=code or f"http_{status}",
                          error_message=message or f"{provider} answered {status}")  # fmt: skip
