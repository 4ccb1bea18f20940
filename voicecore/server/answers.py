"""The providers' answer URLs: ``GET|POST /providers/{provider}/{tenant}/answer``.

A provider that fetches call instructions (Twilio TwiML, Telnyx TeXML, Vonage NCCO,
Plivo XML, Exotel's dynamic Voicebot URL) asks here when a call comes in. The
request is checked the provider's way with the tenant's stored credentials
(:mod:`voicecore.telephony.signatures`; Exotel, which signs nothing, with the
tenant's Exotel stream secret as Basic auth); then a one-time call token is minted
for this call and the answer connects the call to ``wss://<public URL>/ws/<provider>``
carrying it. No tenant API key appears in any URL given to a provider.

Refusals are 403 with one generic message (the tenant's name in the path reveals
nothing), a WARNING naming the real reason (never a secret), a count in
``/metrics`` and one spent unit of the address's failed-authentication budget.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from loguru import logger

from voicecore.server.guard import Throttled, client_address
from voicecore.server.state import ServerState
from voicecore.session import outbound_check
from voicecore.telephony.dialing import (
    DIAL_PROVIDERS,
    IgnoredStatusEvent,
    parse_status_callback,
)
from voicecore.telephony.exotel import exotel_bootstrap, exotel_stream_url
from voicecore.telephony.plivo import plivo_stream_xml
from voicecore.telephony.signatures import (
    SignatureError,
    check_plivo_signature,
    check_telnyx_signature,
    check_twilio_signature,
    check_vonage_jwt,
)
from voicecore.telephony.snippets import ANSWER_PROVIDERS, SNIPPET_PROVIDERS, media_url
from voicecore.telephony.telnyx import texml_connect_stream
from voicecore.telephony.twilio import twiml_connect_stream, twiml_hangup
from voicecore.telephony.vonage import ncco_connect

router = APIRouter()

REFUSED = "the request could not be verified as coming from the provider for this tenant"


class Refused(Exception):
    def __init__(self, why: str, detail: str):
        super().__init__(detail)
        self.why = why  # metric label
        self.detail = detail  # logged


def _state(request: Request) -> ServerState:
    return request.app.state.vc  # type: ignore[no-any-return]


def public_base(state: ServerState, request: Request) -> str:
    """The deployment's public base URL: ``serve --public-url``, else what the request says
    (``X-Forwarded-Proto``/``X-Forwarded-Host`` from a proxy, else its own URL)."""
    if state.public_url:
        return state.public_url
    proto = request.headers.get("x-forwarded-proto", request.url.scheme).split(",")[0].strip()
    host = request.headers.get("x-forwarded-host", request.headers.get("host", request.url.netloc)).split(",")[0]
    return f"{'https' if proto in ('https', 'wss') else 'http'}://{host.strip()}"


def requested_url(state: ServerState, request: Request) -> str:
    """The URL the provider requested, as it signed it: public base + path + the raw query."""
    query = request.scope.get("query_string", b"").decode("latin-1")
    return public_base(state, request) + request.url.path + (f"?{query}" if query else "")


async def _parameters(request: Request, body: bytes) -> Mapping[str, Any]:
    """The request's call parameters: the form or JSON body of a POST, else the query."""
    if request.method == "POST" and body:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            try:
                data = json.loads(body)
            except ValueError:
                raise Refused("bad_body", "the JSON body does not parse") from None
            return {str(k): v for k, v in data.items() if isinstance(v, (str, int, float))} if isinstance(data, dict) else {}
        return await request.form()
    return request.query_params


def _field(params: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = params.get(name)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    return None


def _verify(state: ServerState, request: Request, provider: str, tenant: str, body: bytes,
            params: Mapping[str, Any], what: str = "answer") -> None:  # fmt: skip
    """Raise :class:`Refused` unless the request is the provider's, for this tenant (runs in a thread).
    ``what``: which kind of request (``answer``, ``status``), for the log."""
    headers = request.headers
    if provider in ("exotel", "asterisk"):  # they sign nothing: the stream secret as Basic auth
        scheme, _, encoded = headers.get("authorization", "").partition(" ")
        password = ""
        if scheme.lower() == "basic":
            try:
                password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")[2]
            except (binascii.Error, ValueError):
                password = ""
        if not password:
            raise Refused("no_credentials", f"{provider} {what} request without Basic credentials")
        if state.store.providers.authenticate_stream_secret(provider, password) != tenant:
            raise Refused("bad_signature", f"{provider} {what} request for tenant {tenant!r} with a wrong stream secret")
        return
    secrets_ = state.store.providers.secrets(tenant, provider)
    if not secrets_ or not any(k in secrets_ for k in ("auth_token", "public_key", "signature_secret")):
        raise Refused("no_credentials", f"tenant {tenant!r} has no {provider} credentials: store them with "
                                        f"`voicecore providers set {provider} --tenant {tenant} …`")  # fmt: skip
    url = requested_url(state, request)
    try:
        if provider == "twilio":
            check_twilio_signature(
                secrets_["auth_token"], url, params if request.method == "POST" else {},
                headers.get("x-twilio-signature"), signature_settings=headers.get("x-twilio-webhooks-signature-settings"),
            )  # fmt: skip
            sid = secrets_.get("account_sid")
            if sid and _field(params, "AccountSid") != sid:
                raise SignatureError("the webhook is for another Twilio account")
        elif provider == "telnyx":
            check_telnyx_signature(secrets_["public_key"], body, headers.get("telnyx-signature-ed25519"),
                                   headers.get("telnyx-timestamp"), now=time.time())  # fmt: skip
        elif provider == "vonage":
            scheme, _, token = headers.get("authorization", "").partition(" ")
            check_vonage_jwt(secrets_["signature_secret"], token.strip() if scheme.lower() == "bearer" else None,
                             now=time.time(), body=body if request.method == "POST" else None,
                             application_id=secrets_.get("application_id"))  # fmt: skip
        elif provider == "plivo":
            check_plivo_signature(
                secrets_["auth_token"], request.method, url, params if request.method == "POST" else {},
                headers.get("x-plivo-signature-v3-nonce"), headers.get("x-plivo-signature-v3"),
            )  # fmt: skip
    except SignatureError as e:
        raise Refused("bad_signature", f"{provider} {what} request for tenant {tenant!r}: {e.reason}") from None


@router.api_route("/providers/{provider}/{tenant}/answer", methods=["GET", "POST"], include_in_schema=False)
async def provider_answer(request: Request, provider: str, tenant: str) -> Response:
    state = _state(request)
    if provider not in SNIPPET_PROVIDERS:
        return PlainTextResponse(f"unknown provider {provider!r}", status_code=404)
    if provider not in ANSWER_PROVIDERS:
        return PlainTextResponse(f"{provider} does not fetch an answer URL: see `voicecore providers snippet "
                                 f"{provider}`", status_code=404)  # fmt: skip
    address = client_address(request.scope)
    try:
        state.throttle.check(address)
    except Throttled as e:
        return PlainTextResponse(str(e), status_code=429, headers={"Retry-After": str(int(e.retry_after))})
    body = await request.body()
    try:
        params = await _parameters(request, body)
        await asyncio.to_thread(_verify, state, request, provider, tenant, body, params)
    except Refused as e:
        state.throttle.failed(address)
        state.metrics.answer_rejected(provider, e.why)
        logger.warning(f"refused a {provider} answer request: {e.detail}")
        return PlainTextResponse(REFUSED, status_code=403)

    pipeline = request.query_params.get("pipeline")
    if pipeline is not None and pipeline not in state.pipelines:
        return PlainTextResponse(f"unknown pipeline {pipeline!r}", status_code=404)
    caller = from_number = _field(params, "From", "from")
    callee = to_number = _field(params, "To", "to")
    direction = (_field(params, "Direction", "direction") or "").lower()
    if direction.startswith("outbound"):
        # The session's "caller" is the remote party (the data subject): here the person called.
        caller, callee = callee, caller
        try:
            refusal = await asyncio.to_thread(outbound_check, state.store, tenant, caller or "")
        except ValueError as e:
            refusal = f"no valid callee number ({e})"
        if refusal is not None:
            logger.warning(f"{provider} answer: outbound call for tenant {tenant!r} refused: {refusal}")
            return _hang_up(provider)

    call_id = _field(params, "CallSid", "CallUUID") if provider in ("twilio", "plivo") else None
    token = await asyncio.to_thread(state.mint_call_token, tenant, pipeline, call_id, provider=provider, caller=caller,
                                    callee=callee)  # fmt: skip  (in the shared database: any worker takes the stream)
    ws = media_url(public_base(state, request), provider)
    ids = {k: v for k, v in (("from", from_number), ("to", to_number)) if v}
    if provider == "twilio":
        return Response(twiml_connect_stream(ws, {"token": token, **ids}), media_type="application/xml")
    if provider == "telnyx":
        codec = state.telnyx_codec if state.telnyx_codec in ("PCMU", "PCMA") else "PCMU"
        return Response(texml_connect_stream(f"{ws}?token={token}", {"token": token, **ids}, codec=codec),
                        media_type="application/xml")  # fmt: skip
    if provider == "vonage":
        return JSONResponse(ncco_connect(ws, {"token": token, **ids}))
    if provider == "plivo":
        return Response(plivo_stream_xml(ws, {"token": token}), media_type="application/xml")
    return JSONResponse(exotel_bootstrap(exotel_stream_url(ws, parameters={"token": token})))  # exotel


def _hang_up(provider: str) -> Response:
    if provider in ("twilio", "telnyx"):
        return Response(twiml_hangup(), media_type="application/xml")
    if provider == "plivo":
        return Response('<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>',
                        media_type="application/xml")  # fmt: skip
    if provider == "vonage":
        return JSONResponse([])  # an empty NCCO: the call ends at once
    return PlainTextResponse("call refused", status_code=403)


@router.post("/providers/{provider}/{tenant}/status", include_in_schema=False)
async def provider_status(request: Request, provider: str, tenant: str) -> Response:
    """Status callbacks of outbound calls (``StatusCallback``, Telnyx ``webhook_url``, Vonage ``event_url``,
    Plivo ``ring_url``/``hangup_url``/``machine_detection_url``; Asterisk: ARI events relayed with the
    stream secret as Basic auth), checked like the answer URL, then handed to ``ServerState.call_status``.
    A refused request changes nothing."""
    state = _state(request)
    if provider not in DIAL_PROVIDERS:
        return PlainTextResponse(f"no status callbacks for provider {provider!r}", status_code=404)
    address = client_address(request.scope)
    try:
        state.throttle.check(address)
    except Throttled as e:
        return PlainTextResponse(str(e), status_code=429, headers={"Retry-After": str(int(e.retry_after))})
    body = await request.body()
    try:
        params = await _parameters(request, body)
        await asyncio.to_thread(_verify, state, request, provider, tenant, body, params, "status")
    except Refused as e:
        state.throttle.failed(address)
        state.metrics.answer_rejected(provider, e.why)
        logger.warning(f"refused a {provider} status callback: {e.detail}")
        return PlainTextResponse(REFUSED, status_code=403)

    attempt = request.query_params.get("attempt") or None
    try:
        if request.headers.get("content-type", "").startswith("application/json"):
            payload: Any = json.loads(body) if body else {}
        else:
            payload = {k: v for k, v in params.items() if isinstance(v, str)}
        event = parse_status_callback(provider, payload, attempt_id=attempt)
    except IgnoredStatusEvent as e:
        logger.debug(f"{provider} status callback for tenant {tenant!r} ignored: {e}")
        return _status_ack(provider)
    except ValueError as e:
        logger.warning(f"{provider} status callback for tenant {tenant!r} unreadable: {e}")
        return PlainTextResponse("unreadable status callback", status_code=400)
    try:
        await state.call_status(tenant, provider, event)
    except Exception as e:  # the provider may retry; the dialer logs its own details
        logger.error(f"{provider} status {event.status} for attempt {event.attempt_id}: the dialer failed "
                     f"({type(e).__name__})")  # fmt: skip
        return PlainTextResponse("status not recorded", status_code=500)
    return _status_ack(provider)


def _status_ack(provider: str) -> Response:
    """What each provider expects back from a status callback: Telnyx a 200 with a JSON body, the others
    an empty 2xx (Vonage: no body, which it could read as an NCCO)."""
    return JSONResponse({}) if provider == "telnyx" else Response(status_code=204)


@router.post("/twilio/voice", include_in_schema=False)
async def twilio_voice_moved(request: Request) -> Response:
    """The old Twilio webhook took the tenant API key in its URL; it is gone for good."""
    return PlainTextResponse(
        "this webhook moved to /providers/twilio/<tenant>/answer, checked with X-Twilio-Signature; "
        "`voicecore providers snippet twilio --tenant <tenant>` prints what to paste into Twilio",
        status_code=410,
    )
