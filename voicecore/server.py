"""``voicecore serve``: one ASGI process hosting many calls on the shared models.

Starlette (through FastAPI) on uvicorn with the ``websockets`` protocol
backend. Routes:

- ``WS /ws/{twilio,telnyx,vonage,plivo,exotel,asterisk}`` — provider media streams;
- ``POST /twilio/voice`` — Twilio's voice webhook, answered with TwiML
  ``<Connect><Stream>`` carrying a one-time call token, ``from`` and ``to``;
- ``GET /healthz`` and ``GET /metrics`` (Prometheus text).

Every stream is authenticated on its first ``start`` before a pipeline starts;
every call runs ``session.open_call`` — the same function the CLI and tests use.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from loguru import logger
from starlette.websockets import WebSocketDisconnect

from voicecore import api
from voicecore.config import PROJECT_ROOT, PipelineConfig, load_pipeline
from voicecore.metrics import Metrics
from voicecore.models import ModelPool
from voicecore.records import CallRecord
from voicecore.reports import drain_reports
from voicecore.session import CallRefused, CallSession, open_call, outbound_check
from voicecore.storage import Store
from voicecore.telephony import CODECS, create_codec
from voicecore.telephony.base import CallStart, Message, ProtocolError
from voicecore.telephony.stream import (
    CallAuth,
    CallRefusedError,
    MediaStreamCall,
    MediaStreamTransport,
    SocketClosed,
)
from voicecore.telephony.twilio import twiml_connect_stream, twiml_hangup
from voicecore.webhooks import WebhookWorker

CALL_TOKEN_TTL_S = 120.0
WS_MAX_FRAME = 1 << 20  # the transport's hard cap; codecs refuse frames over 64 KiB themselves


_TRANSPORT_ERROR_CODES = {
    1002: "WebSocket protocol error",
    1003: "unsupported frame type",
    1007: "invalid frame payload (e.g. text that is not UTF-8)",
    1009: f"frame larger than {WS_MAX_FRAME} bytes",
}


class StarletteMediaSocket:
    """A Starlette WebSocket as the telephony shell's MediaSocket."""

    def __init__(self, ws: WebSocket):
        self.ws = ws

    async def receive(self) -> str | bytes:
        try:
            message = await self.ws.receive()
        except (WebSocketDisconnect, RuntimeError) as e:
            raise SocketClosed(str(e)) from e
        if message["type"] == "websocket.disconnect":
            code = message.get("code")
            if code in _TRANSPORT_ERROR_CODES:
                # The WebSocket layer refused a frame (too big, invalid UTF-8, ...): a protocol error.
                raise ProtocolError(f"{_TRANSPORT_ERROR_CODES[code]} (WebSocket close code {code})", code)
            raise SocketClosed(f"closed by peer ({code})")
        if message.get("text") is not None:
            return message["text"]
        if message.get("bytes") is not None:
            return message["bytes"]
        raise SocketClosed("empty frame")

    async def send(self, message: Message) -> None:
        if isinstance(message, str):
            await self.ws.send_text(message)
        else:
            await self.ws.send_bytes(message)

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, reason=reason)


@dataclass
class ServerState:
    """What the app shares between requests (the only process-wide state besides the model pool)."""

    data_dir: Path
    store: Store
    pool: ModelPool
    pipelines: dict[str, PipelineConfig]
    default_pipeline: str
    metrics: Metrics = field(default_factory=Metrics)
    calls: dict[str, CallSession] = field(default_factory=dict)
    calls_started: int = 0
    call_tokens: dict[str, tuple[str, str | None, float, str | None]] = field(default_factory=dict)
    announced_calls: dict[str, tuple[str, float]] = field(default_factory=dict)  # provider call id -> tenant
    shutting_down: bool = False
    sweep_interval_s: float = 3600.0
    ice_servers: list[dict[str, Any]] = field(default_factory=list)  # none by default: host candidates only
    peer_calls: dict[str, Any] = field(default_factory=dict)

    def mint_call_token(self, tenant: str, pipeline: str | None, call_id: str | None = None) -> str:
        """A one-time token for one call (bound to the provider's call id when known)."""
        now = time.monotonic()
        for tok, entry in list(self.call_tokens.items()):
            if entry[2] < now:
                del self.call_tokens[tok]
        for cid, (_t, exp) in list(self.announced_calls.items()):
            if exp < now:
                del self.announced_calls[cid]
        token = "ct_" + secrets.token_urlsafe(24)
        self.call_tokens[token] = (tenant, pipeline, now + CALL_TOKEN_TTL_S, call_id)
        if call_id:
            self.announced_calls[call_id] = (tenant, now + CALL_TOKEN_TTL_S)
        return token

    def redeem_call_token(self, token: str, call_id: str | None = None) -> tuple[str, str | None] | None:
        entry = self.call_tokens.pop(token, None)
        if entry is None or entry[2] < time.monotonic():
            return None
        if entry[3] is not None and entry[3] != call_id:
            return None  # minted for another call
        return entry[0], entry[1]

    def call_announced_to_other_tenant(self, call_id: str | None, tenant: str) -> bool:
        entry = self.announced_calls.get(call_id or "")
        return entry is not None and entry[1] >= time.monotonic() and entry[0] != tenant


def load_pipelines(folder: Path = PROJECT_ROOT / "pipelines", extra: list[str | Path] | None = None) -> dict[str, PipelineConfig]:
    """Every agent definition a call may name, validated at start-up (a bad file stops the server)."""
    configs: dict[str, PipelineConfig] = {}
    paths = sorted(folder.glob("*.yaml")) if folder.exists() else []
    for p in [*paths, *(Path(e) for e in extra or [])]:
        cfg = load_pipeline(p)
        configs[cfg.name] = cfg
    return configs


def create_app(
    *,
    data_dir: Path,
    pool: ModelPool | None = None,
    pipeline: str = "receptionist",
    store: Store | None = None,
    pipelines: dict[str, PipelineConfig] | None = None,
    preload: bool = True,
    sweep_interval_s: float = 3600.0,
    ice_servers: list[dict[str, Any]] | None = None,
) -> FastAPI:
    """The ASGI app. ``pipeline`` is a name from ``pipelines/`` or a YAML path (the default agent)."""
    configs = dict(pipelines) if pipelines is not None else load_pipelines()
    if pipeline not in configs:
        cfg = load_pipeline(pipeline if Path(pipeline).suffix in (".yaml", ".yml") else PROJECT_ROOT / "pipelines" / f"{pipeline}.yaml")
        configs[cfg.name] = cfg
        pipeline = cfg.name
    state = ServerState(
        data_dir=Path(data_dir),
        store=store or Store(Path(data_dir)),
        pool=pool or ModelPool(),
        pipelines=configs,
        default_pipeline=pipeline,
        sweep_interval_s=sweep_interval_s,
        ice_servers=list(ice_servers or []),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(_sweep_periodically(state))
        webhook_worker = WebhookWorker(state.store)
        webhooks = asyncio.create_task(webhook_worker.run())
        if preload:
            await asyncio.to_thread(state.pool.for_pipeline, state.pipelines[state.default_pipeline])
        logger.info(f"voicecore serve ready: default pipeline {state.default_pipeline!r}, data in {state.data_dir}")
        try:
            yield
        finally:
            state.shutting_down = True
            sweeper.cancel()
            await _end_all_calls(state, "server_shutdown")
            await drain_reports(timeout=30)
            webhook_worker.stop()
            try:
                await asyncio.wait_for(webhooks, timeout=15)
            except (asyncio.TimeoutError, TimeoutError):
                pass  # a delivery in flight is retried after the next start (the outbox keeps it)

    app = FastAPI(title="voicecore", version="0.1.0", lifespan=lifespan)
    app.include_router(api.router)
    app.state.vc = state
    app.state.calls = state.calls

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "active_calls": len(state.calls)}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        return state.metrics.render()

    @app.post("/twilio/voice")
    async def twilio_voice(request: Request) -> Response:
        form = await request.form()
        token = request.query_params.get("token") or str(form.get("token") or "")
        tenant = await asyncio.to_thread(state.store.authenticate, token) if token else None
        if tenant is None:
            logger.warning("twilio voice webhook: missing or invalid API key")
            return PlainTextResponse("missing or invalid API key (pass ?token=KEY on the webhook URL)", status_code=403)
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
        for name, key in (("from", "From"), ("to", "To")):
            value = form.get(key)
            if value:
                params[name] = str(value)
        return Response(twiml_connect_stream(ws_url, params), media_type="application/xml")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return (Path(__file__).parent / "web" / "index.html").read_text(encoding="utf-8")

    @app.get("/webrtc/config")
    async def webrtc_config() -> dict[str, Any]:
        return {
            "pipelines": sorted(state.pipelines),
            "default_pipeline": state.default_pipeline,
            "ice_servers": state.ice_servers,
        }

    @app.post("/webrtc/token")
    async def webrtc_token(request: Request) -> dict[str, Any]:
        tenant = await _bearer_tenant(state, request, allow_call_token=False)
        return {"token": state.mint_call_token(tenant, None), "expires_in": CALL_TOKEN_TTL_S}

    @app.post("/webrtc/offer")
    async def webrtc_offer(request: Request) -> dict[str, Any]:
        from voicecore.webrtc import answer_offer

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
        config = state.pipelines[name]

        async def open_session(record: CallRecord, transport: Any) -> CallSession:
            try:
                session = await open_call(
                    pool=state.pool, store=state.store, tenant=tenant, config=config, transport=transport, record=record
                )
            except CallRefused as e:
                raise HTTPException(403, f"call refused: {e.reason}") from None
            state.calls[session.call_id] = session
            state.calls_started += 1
            state.metrics.call_started("webrtc")
            return session

        def on_end(peer: Any) -> None:
            if peer.session is not None:
                state.calls.pop(peer.session.call_id, None)
                state.peer_calls.pop(peer.session.call_id, None)
                state.metrics.call_ended("webrtc", peer.session.record, peer.session.record.end_reason or "hangup")

        record = CallRecord(tenant=tenant, transport="webrtc")
        try:
            answer, peer = await answer_offer(
                body["sdp"], "offer", open_session=open_session, record=record,
                ice_servers=state.ice_servers, on_end=on_end,
            )
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        state.peer_calls[answer["call_id"]] = peer
        return answer

    @app.websocket("/ws/{provider}")
    async def media_stream(ws: WebSocket, provider: str) -> None:
        if provider not in CODECS:
            await ws.close(code=1008, reason=f"unknown provider {provider!r}")
            return
        await ws.accept()
        await _serve_stream(state, provider, ws)

    return app


async def _bearer_tenant(state: ServerState, request: Request, *, allow_call_token: bool) -> str:
    """The tenant of a request's ``Authorization: Bearer`` API key (or one-time call token); 401 otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "missing API key: send Authorization: Bearer <key>")
    if allow_call_token and token.startswith("ct_"):
        redeemed = state.redeem_call_token(token)
        if redeemed is not None:
            return redeemed[0]
    info = await asyncio.to_thread(state.store.authenticate, token)
    if info is None:
        logger.warning("rejected a request with an invalid API key")
        raise HTTPException(401, "invalid API key")
    return info


async def _serve_stream(state: ServerState, provider: str, ws: WebSocket) -> None:
    codec = create_codec(provider)
    headers = {k.lower(): v for k, v in ws.headers.items()}
    query = dict(ws.query_params)
    started: dict[str, Any] = {}

    async def authenticate(start: CallStart) -> CallAuth | None:
        token = start.auth_token
        if not token:
            state.metrics.call_rejected(provider, "no_token")
            return None
        redeemed = state.redeem_call_token(token, start.call_id) if token.startswith("ct_") else None
        if redeemed is not None:
            tenant, pipeline = redeemed
        else:
            tenant = await asyncio.to_thread(state.store.authenticate, token)
            pipeline = None
        if tenant is None:
            state.metrics.call_rejected(provider, "bad_token")
            return None
        if state.call_announced_to_other_tenant(start.call_id, tenant):
            # The provider announced this call id for another tenant's webhook.
            state.metrics.call_rejected(provider, "foreign_call")
            return None
        wanted = pipeline or start.custom_parameters.get("pipeline")
        if wanted and wanted not in state.pipelines:
            raise CallRefusedError(f"unknown pipeline {wanted!r}")
        return CallAuth(tenant=tenant, pipeline=wanted or state.default_pipeline)

    async def open_session(auth: CallAuth, record: CallRecord, transport: MediaStreamTransport) -> CallSession:
        config = state.pipelines[auth.pipeline or state.default_pipeline]
        try:
            session = await open_call(
                pool=state.pool, store=state.store, tenant=auth.tenant, config=config,
                transport=transport, record=record,
            )
        except CallRefused as e:
            raise CallRefusedError(e.reason) from None
        state.calls[session.call_id] = session
        state.calls_started += 1
        state.metrics.call_started(provider)
        started["session"] = session
        return session

    call = MediaStreamCall(
        codec, StarletteMediaSocket(ws),
        authenticate=authenticate, open_session=open_session, headers=headers, query=query,
    )
    reason = await call.run(shutting_down=lambda: state.shutting_down)
    session = started.get("session")
    if session is not None:
        state.calls.pop(session.call_id, None)
        state.metrics.call_ended(provider, session.record, reason)


async def _end_all_calls(state: ServerState, reason: str) -> None:
    peers = list(state.peer_calls.values())
    if peers:
        await asyncio.gather(*(p.end(reason) for p in peers), return_exceptions=True)
    sessions = list(state.calls.values())
    if sessions:
        logger.info(f"closing {len(sessions)} active call(s): {reason}")
        await asyncio.gather(*(s.end(reason) for s in sessions), return_exceptions=True)


async def _sweep_periodically(state: ServerState) -> None:
    """Run the retention sweep now and then (the store's work runs in a thread)."""
    while True:
        try:
            result = await asyncio.to_thread(state.store.retention_sweep, None, actor="serve")
            logger.info(f"retention sweep: {result.total} expired item(s) removed")
        except Exception as e:
            logger.error(f"retention sweep failed: {e!r}")
        await asyncio.sleep(state.sweep_interval_s)


class _Server(uvicorn.Server):
    """uvicorn, telling the app it is shutting down before connections are closed."""

    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self._vc_state = state

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._vc_state.shutting_down = True
        super().handle_exit(sig, frame)


def _uvicorn_config(app: FastAPI, host: str, port: int, log_level: str = "warning") -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, ws="websockets-sansio", ws_max_size=WS_MAX_FRAME, lifespan="on",
        log_level=log_level, timeout_graceful_shutdown=15, access_log=False,  # URLs may hold numbers
    )


@contextlib.asynccontextmanager
async def running_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run ``app`` in this event loop on an ephemeral port (tests, benchmarks); yields the base URL."""
    state: ServerState = app.state.vc
    server = _Server(_uvicorn_config(app, host, port), state)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.02)
        bound = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{bound}"
    finally:
        state.shutting_down = True
        server.should_exit = True
        await asyncio.wait_for(task, timeout=90)  # calls, then reports (30 s) and webhooks (15 s) drain


def serve(host: str, port: int, data_dir: Path, pipeline: str) -> None:
    """Run the server until SIGINT/SIGTERM; every active call's record is closed before exit."""
    app = create_app(data_dir=data_dir, pipeline=pipeline)
    state: ServerState = app.state.vc
    server = _Server(_uvicorn_config(app, host, port, log_level="info"), state)
    server.run()
