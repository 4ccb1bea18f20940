"""The routes that carry calls: provider media streams, Twilio's voice webhook, WebRTC, health.

- ``WS /ws/{twilio,telnyx,vonage,plivo,exotel,asterisk}`` — provider media streams
  (:mod:`voicecore.transports.telephony`), authenticated on their first ``start``
  before any pipeline starts: a one-time call token from an answer URL, a provider
  stream secret (static provider settings), an ``agent``/``admin`` API key, or — Vonage —
  Vonage's own signed JWT checked with the tenant's signature secret;
- (the providers' answer URLs live in :mod:`voicecore.server.answers`);
- ``GET /`` (the browser page), ``POST /webrtc/offer``, ``POST /webrtc/token``,
  ``GET /webrtc/config`` — calls from a browser (:mod:`voicecore.transports.webrtc`);
- ``GET /healthz`` and ``GET /metrics`` (Prometheus text).

Every call runs :func:`voicecore.session.open_call`, the road the CLI and the tests take too.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from loguru import logger

from voicecore.records import CallRecord
from voicecore.server.guard import Throttled, check_key, client_address, query_token
from voicecore.server.state import (
    CALL_TOKEN_TTL_S,
    CallGrant,
    ServerState,
    is_call_token,
)
from voicecore.session import CallSession, open_call
from voicecore.storage import ApiKeyInfo
from voicecore.storage.providers import STREAM_SECRET_PATTERN
from voicecore.storage.schema import CALL_ROLES
from voicecore.telephony import PROTOCOLS, create_protocol
from voicecore.telephony.base import CallStart
from voicecore.telephony.signatures import (
    SignatureError,
    check_vonage_jwt,
    unverified_jwt_claims,
)
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
    not_ready = state.readiness()
    if not_ready is not None:
        state.metrics.call_rejected(record.transport, not_ready)
        why = f"this worker is full ({state.max_calls} calls)" if not_ready == "full" else f"this worker is {not_ready.replace('_', ' ')}"
        raise CallRefused(f"{why}; try another worker", try_again=True)
    state.opening_calls += 1  # holds the place while the call opens (policy, models, greeting)
    try:
        session = await open_call(
            pool=state.pool, store=state.store, tenant=tenant, config=state.pipelines[name], transport=transport,
            record=record, reports=state.reports, worker_id=state.worker_id,
        )  # fmt: skip
    finally:
        state.opening_calls -= 1
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
    """Liveness: the process answers (200 while draining too)."""
    return {"status": "ok", "active_calls": len(_state(request).calls)}


@router.get("/healthz/ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness for a load balancer: 200 while this worker takes new calls, 503 when it is full
    (``serve --max-calls``), draining (SIGTERM) or shutting down."""
    state = _state(request)
    why = state.readiness()
    body = {"status": why or "ready", "active_calls": state.active_calls, "max_calls": state.max_calls}
    return JSONResponse(body, status_code=200 if why is None else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> str:
    return _state(request).metrics.render()


# --------------------------------------------------------------------------- provider media streams


@router.websocket("/ws/{provider}")
async def media_stream(ws: WebSocket, provider: str) -> None:
    if provider not in PROTOCOLS:
        await ws.close(code=1008, reason=f"unknown provider {provider!r}")
        return
    state = _state(ws)
    not_ready = state.readiness()
    if not_ready is not None:
        # Full or draining: refuse the upgrade itself with 503, so a load balancer in front
        # (nginx proxy_next_upstream http_503, HAProxy, ...) hands the stream to another worker.
        state.metrics.call_rejected(provider, not_ready)
        await ws.send_denial_response(JSONResponse({"detail": f"this worker is {not_ready.replace('_', ' ')}; "
                                                              "try another worker"}, 503, {"Retry-After": "5"}))
        return
    await ws.accept()
    options: dict[str, Any] = {}
    if provider == "telnyx":
        options = {"outbound_encoding": state.telnyx_codec, "outbound_sample_rate": state.telnyx_sample_rate}
    protocol = create_protocol(provider, **options)
    address = client_address(ws.scope)
    opened: list[CallSession] = []

    async def authenticate(start: CallStart) -> CallAuth | None:
        token = start.auth_token
        grant: CallGrant | None = None
        if token and is_call_token(token):
            grant = await asyncio.to_thread(state.redeem_call_token, token, start.call_id, provider)
            tenant = grant.tenant if grant else None
        elif token and STREAM_SECRET_PATTERN.match(token):
            try:
                state.throttle.check(address)
            except Throttled:
                state.metrics.call_rejected(provider, "throttled")
                return None
            tenant = await asyncio.to_thread(state.store.providers.authenticate_stream_secret, provider, token)
            if tenant is None:
                state.throttle.failed(address)
        elif token:
            try:
                key = await check_key(state.store, state.throttle, token, address)
            except Throttled:
                state.metrics.call_rejected(provider, "throttled")
                return None
            if key is not None and not may_take_calls(key):
                state.metrics.call_rejected(provider, "role")
                return None
            tenant = key.tenant if key else None
        elif start.provider_jwt:
            tenant = await asyncio.to_thread(_vonage_jwt_tenant, state, start.provider_jwt)
        else:
            state.metrics.call_rejected(provider, "no_token")
            return None
        if tenant is None:
            state.metrics.call_rejected(provider, "bad_token")
            return None
        if start.provider_jwt and token and not await asyncio.to_thread(
            _vonage_jwt_matches, state, tenant, start.provider_jwt
        ):
            state.metrics.call_rejected(provider, "bad_provider_jwt")
            return None
        if await asyncio.to_thread(state.call_announced_to_other_tenant, start.call_id, tenant):
            # The provider announced this call id for another tenant's webhook.
            state.metrics.call_rejected(provider, "foreign_call")
            return None
        wanted = (grant.pipeline if grant else None) or start.custom_parameters.get("pipeline")
        if wanted and wanted not in state.pipelines:
            raise CallRefused(f"unknown pipeline {wanted!r}")
        return CallAuth(tenant=tenant, pipeline=wanted or state.default_pipeline,
                        caller=grant.caller if grant else None, callee=grant.callee if grant else None)  # fmt: skip

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
        on_unknown_event=state.metrics.unknown_event,
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


def _vonage_jwt_tenant(state: ServerState, jwt_token: str) -> str | None:
    """The tenant of a WebSocket signed only with Vonage's JWT: the one whose Vonage application id
    the JWT names, if the JWT checks out with that tenant's signature secret."""
    try:
        application_id = unverified_jwt_claims(jwt_token).get("application_id")
    except SignatureError:
        return None
    if not isinstance(application_id, str) or not application_id:
        return None
    tenants = state.store.providers.tenants_with_account("vonage", application_id)
    if len(tenants) != 1:
        return None  # unknown, or shared by tenants: the JWT alone cannot say whose call it is
    return tenants[0] if _vonage_jwt_matches(state, tenants[0], jwt_token) else None


def _vonage_jwt_matches(state: ServerState, tenant: str, jwt_token: str) -> bool:
    """Whether Vonage's JWT on a stream checks out with ``tenant``'s signature secret (True when the
    tenant stored none: then the voicecore token alone decides)."""
    secrets_ = state.store.providers.secrets(tenant, "vonage")
    if not secrets_ or "signature_secret" not in secrets_:
        return True
    try:
        check_vonage_jwt(secrets_["signature_secret"], jwt_token, now=time.time(),
                         application_id=secrets_.get("application_id"))  # fmt: skip
    except SignatureError as e:
        logger.warning(f"vonage stream for tenant {tenant!r}: {e.reason}")
        return False
    return True


async def _bearer_tenant(state: ServerState, request: Request, *, allow_call_token: bool) -> str:
    """The tenant of a request's ``Authorization: Bearer`` key that may take calls (or of a one-time
    call token); 401 / 403 / 429 otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "missing API key: send Authorization: Bearer <key>")
    if allow_call_token and is_call_token(token):
        grant = await asyncio.to_thread(state.redeem_call_token, token, None, "webrtc")
        if grant is not None:
            return grant.tenant
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
    token = await asyncio.to_thread(state.mint_call_token, tenant, None, provider="webrtc")
    return {"token": token, "expires_in": CALL_TOKEN_TTL_S}


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
            if e.try_again:
                raise HTTPException(503, f"call refused: {e.reason}", {"Retry-After": "5"}) from None
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
