"""The routes that carry calls: provider media streams, Twilio's voice webhook, WebRTC, health.

- ``WS /ws/{twilio,telnyx,vonage,plivo,exotel,asterisk}`` — provider media streams
  (:mod:`voicecore.transports.telephony`), authenticated on their first ``start``
  before any pipeline starts;
- ``POST /twilio/voice`` — Twilio's voice webhook, answered with TwiML
  ``<Connect><Stream>`` carrying a one-time call token, ``from`` and ``to``;
- ``GET /`` (the browser page), ``POST /webrtc/offer``, ``POST /webrtc/token``,
  ``GET /webrtc/config`` — calls from a browser (:mod:`voicecore.transports.webrtc`);
- ``GET /healthz`` and ``GET /metrics`` (Prometheus text).

Every call runs :func:`voicecore.session.open_call`, the road the CLI and the tests take too.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request, WebSocket
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from loguru import logger

from voicecore.records import CallRecord
from voicecore.server.guard import Throttled, check_key, client_address, query_token
from voicecore.server.state import CALL_TOKEN_TTL_S, ServerState
from voicecore.session import CallSession, open_call, outbound_check
from voicecore.storage import ApiKeyInfo
from voicecore.storage.schema import CALL_ROLES
from voicecore.telephony import PROTOCOLS, create_protocol
from voicecore.telephony.base import CallStart
from voicecore.telephony.twilio import twiml_connect_stream, twiml_hangup
from voicecore.transports.base import CallRefused, CallTransport
from voicecore.transports.telephony import (
    CallAuth,
    MediaStreamCall,
    MediaStreamTransport,
    StarletteMediaSocket,
)

router = APIRouter()


def _state(request: Request | WebSocket) -> ServerState:
    return request.app.state.vc  # type: ignore[no-any-return]


def may_take_calls(key: ApiKeyInfo | None) -> bool:
    """Only ``admin`` and ``agent`` keys open calls (media streams, WebRTC, provider webhooks)."""
    return key is not None and key.role in CALL_ROLES


async def start_call(state: ServerState, tenant: str, pipeline: str | None, record: CallRecord,
                     transport: CallTransport) -> CallSession:  # fmt: skip
    """Open a call for an authenticated stream or peer and count it as active (raises CallRefused)."""
    name = pipeline or state.default_pipeline
    if name not in state.pipelines:
        raise CallRefused(f"unknown pipeline {name!r}")
    session = await open_call(
        pool=state.pool, store=state.store, tenant=tenant, config=state.pipelines[name], transport=transport,
        record=record, reports=state.reports,
    )  # fmt: skip
    state.calls[session.call_id] = session
    state.calls_started += 1
    state.metrics.call_started(record.transport)
    return session


def end_call(state: ServerState, session: CallSession | None, transport: str, reason: str) -> None:
    if session is not None:
        state.calls.pop(session.call_id, None)
        state.metrics.call_ended(transport, session.record, reason)


# --------------------------------------------------------------------------- health


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    return {"status": "ok", "active_calls": len(_state(request).calls)}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> str:
    return _state(request).metrics.render()


# --------------------------------------------------------------------------- Twilio's voice webhook


@router.post("/twilio/voice")
async def twilio_voice(request: Request) -> Response:
    state = _state(request)
    form = await request.form()
    token = query_token(request.scope) or str(form.get("token") or "")
    try:
        key = await check_key(state.store, state.throttle, token, client_address(request.scope))
    except Throttled as e:
        return PlainTextResponse(str(e), status_code=429, headers={"Retry-After": str(int(e.retry_after))})
    if key is None:
        logger.warning("twilio voice webhook: missing or invalid API key")
        return PlainTextResponse("missing or invalid API key (pass ?token=KEY on the webhook URL)", status_code=403)
    if not may_take_calls(key):  # before anything is looked up: a refusal says nothing about a number
        return PlainTextResponse(f"this API key's role ({key.role}) may not take calls (agent or admin)",
                                 status_code=403)  # fmt: skip
    tenant = key.tenant
    pipeline_name = request.query_params.get("pipeline")
    if pipeline_name is not None and pipeline_name not in state.pipelines:
        return PlainTextResponse(f"unknown pipeline {pipeline_name!r}", status_code=404)
    direction = str(form.get("Direction") or "")
    if direction.startswith("outbound"):
        # Twilio asks for instructions when an outbound call is answered: the callee is "To".
        try:
            refusal = await asyncio.to_thread(outbound_check, state.store, tenant, str(form.get("To") or ""))
        except ValueError as e:
            refusal = f"no valid callee number ({e})"
        if refusal is not None:
            logger.warning(f"twilio voice webhook: outbound call for tenant {tenant!r} refused: {refusal}")
            return Response(twiml_hangup(), media_type="application/xml")
    call_token = state.mint_call_token(tenant, pipeline_name, str(form.get("CallSid") or "") or None)
    proto = request.headers.get("x-forwarded-proto", request.url.scheme)
    host = request.headers.get("x-forwarded-host", request.headers.get("host", request.url.netloc))
    ws_url = f"{'wss' if proto == 'https' else 'ws'}://{host}/ws/twilio"
    params = {"token": call_token}
    for name, field in (("from", "From"), ("to", "To")):
        value = form.get(field)
        if value:
            params[name] = str(value)
    return Response(twiml_connect_stream(ws_url, params), media_type="application/xml")


# --------------------------------------------------------------------------- provider media streams


@router.websocket("/ws/{provider}")
async def media_stream(ws: WebSocket, provider: str) -> None:
    if provider not in PROTOCOLS:
        await ws.close(code=1008, reason=f"unknown provider {provider!r}")
        return
    await ws.accept()
    state = _state(ws)
    protocol = create_protocol(provider)
    address = client_address(ws.scope)
    opened: list[CallSession] = []

    async def authenticate(start: CallStart) -> CallAuth | None:
        token = start.auth_token
        if not token:
            state.metrics.call_rejected(provider, "no_token")
            return None
        redeemed = state.redeem_call_token(token, start.call_id) if token.startswith("ct_") else None
        if redeemed is not None:
            tenant, pipeline = redeemed
        else:
            try:
                key = await check_key(state.store, state.throttle, token, address)
            except Throttled:
                state.metrics.call_rejected(provider, "throttled")
                return None
            if key is not None and not may_take_calls(key):
                state.metrics.call_rejected(provider, "role")
                return None
            tenant, pipeline = (key.tenant if key else None), None
        if tenant is None:
            state.metrics.call_rejected(provider, "bad_token")
            return None
        if state.call_announced_to_other_tenant(start.call_id, tenant):
            # The provider announced this call id for another tenant's webhook.
            state.metrics.call_rejected(provider, "foreign_call")
            return None
        wanted = pipeline or start.custom_parameters.get("pipeline")
        if wanted and wanted not in state.pipelines:
            raise CallRefused(f"unknown pipeline {wanted!r}")
        return CallAuth(tenant=tenant, pipeline=wanted or state.default_pipeline)

    async def open_stream_call(auth: CallAuth, record: CallRecord, transport: MediaStreamTransport) -> CallSession:
        session = await start_call(state, auth.tenant, auth.pipeline, record, transport)
        opened.append(session)
        return session

    query = dict(ws.query_params)
    token = query_token(ws.scope)  # taken out of the URL before anything logged it
    if token is not None:
        query["token"] = token
    call = MediaStreamCall(
        protocol, StarletteMediaSocket(ws), authenticate=authenticate, open_call=open_stream_call,
        headers={k.lower(): v for k, v in ws.headers.items()}, query=query,
    )  # fmt: skip
    reason = await call.run(shutting_down=lambda: state.shutting_down)
    end_call(state, opened[0] if opened else None, provider, reason)


# --------------------------------------------------------------------------- WebRTC


@router.get("/", response_class=HTMLResponse)
async def index() -> str:
    return (Path(__file__).parent / "web" / "index.html").read_text(encoding="utf-8")


@router.get("/webrtc/config")
async def webrtc_config(request: Request) -> dict[str, Any]:
    state = _state(request)
    return {"pipelines": sorted(state.pipelines), "default_pipeline": state.default_pipeline,
            "ice_servers": state.ice_servers}  # fmt: skip


async def _bearer_tenant(state: ServerState, request: Request, *, allow_call_token: bool) -> str:
    """The tenant of a request's ``Authorization: Bearer`` key that may take calls (or of a one-time
    call token); 401 / 403 / 429 otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "missing API key: send Authorization: Bearer <key>")
    if allow_call_token and token.startswith("ct_"):
        redeemed = state.redeem_call_token(token)
        if redeemed is not None:
            return redeemed[0]
    try:
        key = await check_key(state.store, state.throttle, token, client_address(request.scope))
    except Throttled as e:
        raise HTTPException(429, str(e), {"Retry-After": str(int(e.retry_after))}) from None
    if key is None:
        logger.warning("rejected a request with an invalid API key")
        raise HTTPException(401, "invalid API key")
    if not may_take_calls(key):
        raise HTTPException(403, f"this API key's role ({key.role}) may not take calls (agent or admin)")
    return key.tenant


@router.post("/webrtc/token")
async def webrtc_token(request: Request) -> dict[str, Any]:
    state = _state(request)
    tenant = await _bearer_tenant(state, request, allow_call_token=False)
    return {"token": state.mint_call_token(tenant, None), "expires_in": CALL_TOKEN_TTL_S}


@router.post("/webrtc/offer")
async def webrtc_offer(request: Request) -> dict[str, Any]:
    from voicecore.transports.webrtc import PeerCall, answer_offer

    state = _state(request)
    tenant = await _bearer_tenant(state, request, allow_call_token=True)
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, "body must be JSON: {sdp, type, pipeline?}") from None
    if not isinstance(body, dict) or not isinstance(body.get("sdp"), str) or body.get("type") != "offer":
        raise HTTPException(400, "body must be JSON with an SDP offer: {\"sdp\": ..., \"type\": \"offer\"}")
    name = body.get("pipeline") or state.default_pipeline
    if name not in state.pipelines:
        raise HTTPException(404, f"unknown pipeline {name!r}")

    async def open_peer_call(record: CallRecord, transport: CallTransport) -> CallSession:
        try:
            return await start_call(state, tenant, name, record, transport)
        except CallRefused as e:
            raise HTTPException(403, f"call refused: {e.reason}") from None

    def on_end(peer: PeerCall) -> None:
        if peer.session is not None:
            state.peer_calls.pop(peer.session.call_id, None)
            end_call(state, peer.session, "webrtc", peer.session.record.end_reason or "hangup")  # type: ignore[arg-type]

    try:
        answer, peer = await answer_offer(
            body["sdp"], "offer", open_call=open_peer_call, record=CallRecord(tenant=tenant, transport="webrtc"),
            ice_servers=state.ice_servers, on_end=on_end,
        )  # fmt: skip
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    state.peer_calls[answer["call_id"]] = peer
    return answer
