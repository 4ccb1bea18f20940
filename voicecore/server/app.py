"""``voicecore serve``: one ASGI process hosting many calls on the shared models.

Starlette (through FastAPI) on uvicorn with the ``websockets`` protocol backend.
The routes live in :mod:`voicecore.server.calls` (media streams, Twilio's voice
webhook, WebRTC, health and metrics) and :mod:`voicecore.server.api` (the
``/v1`` admin API); this module holds what they share (:class:`ServerState`),
the background work of a worker (the retention sweep, the webhook sender, the
post-call reports) and running it under uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from loguru import logger

from voicecore.config import PROJECT_ROOT, PipelineConfig, load_pipeline
from voicecore.model_pool import ModelPool
from voicecore.pipeline import warm_up
from voicecore.reports import pipeline_engines
from voicecore.server import (
    answers,
    api,
    api_campaigns,
    api_contacts,
    api_providers,
    calls,
)
from voicecore.server.dialer import Dialer
from voicecore.server.guard import AuthThrottle, Guard
from voicecore.server.leases import hold_lease, release_lease
from voicecore.server.logs import install_log_redaction
from voicecore.server.state import ServerState, load_pipelines
from voicecore.server.webhooks import WebhookWorker, worker_settings_from_env
from voicecore.storage import Store
from voicecore.storage.workers import DEFAULT_LEASE_S
from voicecore.telephony import create_protocol
from voicecore.telephony.snippets import check_public_url
from voicecore.telephony.telnyx import TELNYX_CODECS
from voicecore.transports.telephony import WS_MAX_FRAME


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
    allow_insecure_webhooks: bool = False,
    auth_throttle: AuthThrottle | None = None,
    public_url: str | None = None,
    telnyx_codec: str = "PCMU",
    telnyx_sample_rate: int = 8000,
    max_calls: int | None = None,
    drain_timeout_s: float = 60.0,
    database_url: str | None = None,
    lease_s: float = DEFAULT_LEASE_S,
    dialer_poll_s: float = 1.0,
) -> FastAPI:
    """The ASGI app. ``pipeline`` is a name from ``pipelines/`` or a YAML path (the default agent).
    ``allow_insecure_webhooks``: webhooks may go to ``http://`` and private addresses (local
    development; a ``store`` given here keeps its own setting). ``public_url``: the deployment's
    public base URL (every URL given to a provider derives from it; ``ValueError`` if malformed).
    ``telnyx_codec``/``telnyx_sample_rate``: what Telnyx streams take back (PCMU, PCMA or L16).
    ``max_calls``: calls this worker takes at once (None: no limit); ``drain_timeout_s``: how long
    calls in progress may go on after SIGTERM before they are ended.
    ``database_url``: PostgreSQL shared by several workers (default ``VOICECORE_DATABASE_URL``, else
    the data directory's SQLite file); checked before anything else starts. ``lease_s``: this
    worker's lease (renewed every third of it); a worker silent longer is declared lost and its
    open calls are closed as ``worker_lost`` by another."""
    if max_calls is not None and max_calls < 1:
        raise ValueError(f"max_calls must be at least 1, got {max_calls}")
    if drain_timeout_s < 0:
        raise ValueError(f"drain timeout must be 0 or more seconds, got {drain_timeout_s}")
    if not 0.3 <= lease_s <= 3600:
        raise ValueError(f"lease must be between 0.3 and 3600 seconds, got {lease_s}")
    if public_url is not None:
        public_url = check_public_url(public_url)
    if telnyx_codec not in TELNYX_CODECS:
        raise ValueError(f"telnyx codec must be one of {', '.join(TELNYX_CODECS)}, got {telnyx_codec!r}")
    create_protocol("telnyx", outbound_encoding=telnyx_codec, outbound_sample_rate=telnyx_sample_rate)  # checks
    webhook_settings = worker_settings_from_env()  # VOICECORE_WEBHOOK_LEASE_S / _POLL_S, checked here
    configs = dict(pipelines) if pipelines is not None else load_pipelines()
    if pipeline not in configs:
        cfg = load_pipeline(pipeline if Path(pipeline).suffix in (".yaml", ".yml") else PROJECT_ROOT / "pipelines" / f"{pipeline}.yaml")
        configs[cfg.name] = cfg
        pipeline = cfg.name
    state = ServerState(
        data_dir=Path(data_dir),
        store=store or Store(Path(data_dir), allow_insecure_webhooks=allow_insecure_webhooks, database_url=database_url),
        pool=pool or ModelPool(),
        pipelines=configs,
        default_pipeline=pipeline,
        sweep_interval_s=sweep_interval_s,
        ice_servers=list(ice_servers or []),
        public_url=public_url,
        telnyx_codec=telnyx_codec,
        telnyx_sample_rate=telnyx_sample_rate if telnyx_codec == "L16" else 8000,
        max_calls=max_calls,
        drain_timeout_s=drain_timeout_s,
        lease_s=lease_s,
    )
    if auth_throttle is not None:
        state.throttle = auth_throttle

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.store.keys.inside_data_dir and state.store.db.is_sqlite:
            logger.warning(
                f"the encryption keys are inside the data directory ({state.store.keys.keystore}): a copy of the "
                "directory is a copy of the keys, so deleting a tenant does not make its backups unreadable. "
                "Move keystore.bin (and master.key) to a key directory outside it and set VOICECORE_KEY_DIR."
            )
        if state.public_url is None:
            logger.warning(
                "no public URL (serve --public-url https://host or VOICECORE_PUBLIC_URL): the URLs handed to "
                "providers are derived from each request and say ws:// unless a proxy sends X-Forwarded-Proto: "
                "https — Twilio, Telnyx, Vonage, Plivo and Exotel refuse ws://, and signatures are checked "
                "against that derived URL"
            )
        elif not state.public_url.startswith("https://"):
            logger.warning(f"the public URL {state.public_url} is http://: providers refuse the ws:// media URLs")
        lease = asyncio.create_task(hold_lease(state))
        dialer = state.dialer = Dialer(state, poll_s=dialer_poll_s)  # outbound campaigns (idle without one)
        if state.on_call_status is None:  # (a test or an embedding app may have its own)
            state.on_call_status = dialer.on_call_status
        dialing = asyncio.create_task(dialer.run(), name="dialer")
        sweeper = asyncio.create_task(_sweep_periodically(state))
        webhook_worker = WebhookWorker(state.store, **webhook_settings)
        webhooks = asyncio.create_task(webhook_worker.run())
        report_runner = asyncio.create_task(state.reports.run(
            state.store, pipeline_engines(state.pool, state.pipelines, state.default_pipeline), worker_id=state.worker_id,
        ))  # fmt: skip
        if preload:
            await warm_up(state.pool, state.pipelines[state.default_pipeline])  # models, the greeting's audio
        logger.info(f"voicecore serve ready: default pipeline {state.default_pipeline!r}, data in {state.data_dir}, "
                    f"database: {state.store.database}")
        try:
            yield
        finally:
            state.shutting_down = True
            sweeper.cancel()
            dialing.cancel()
            await dialer.stop()
            await dialer.provider_dialer.close()
            await _end_all_calls(state, "server_shutdown")
            lease.cancel()
            await release_lease(state)
            await state.reports.drain(timeout=30)
            report_runner.cancel()  # a report still being made goes back to the database for another worker
            with contextlib.suppress(asyncio.CancelledError):
                await report_runner
            webhook_worker.stop()
            try:
                await asyncio.wait_for(webhooks, timeout=15)
            except (asyncio.TimeoutError, TimeoutError):
                pass  # a delivery in flight is retried after the next start (the outbox keeps it)
            await state.pool.aclose()

    app = FastAPI(title="voicecore", version="0.1.0", lifespan=lifespan, default_response_class=SafeJSONResponse)
    app.include_router(api.router)
    app.include_router(api_providers.router)
    app.include_router(api_contacts.router)
    app.include_router(api_campaigns.router)
    app.include_router(calls.router)
    app.include_router(answers.router)
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_middleware(Guard, store=state.store, throttle=state.throttle)
    app.state.vc = state
    return app


class SafeJSONResponse(JSONResponse):
    """JSON answers as ASCII (``\\uXXXX`` escapes): any string a client sent, a lone surrogate
    included, can be answered without an encoding error."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


async def _validation_error(request: Request, exc: RequestValidationError) -> SafeJSONResponse:
    """422 naming each bad field and why, never echoing what was sent (it may not even encode)."""
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "invalid")), "type": str(e.get("type", "value_error"))}
        for e in exc.errors()[:20]
    ]
    return SafeJSONResponse({"detail": detail}, status_code=422)


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
            result = await asyncio.to_thread(state.store.retention.sweep, None, actor="serve")
            logger.info(f"retention sweep: {result.total} expired item(s) removed")
        except Exception as e:
            logger.error(f"retention sweep failed: {e!r}")
        await asyncio.sleep(state.sweep_interval_s)


class _Server(uvicorn.Server):
    """uvicorn, draining before it stops: the first SIGTERM/SIGINT stops new calls (streams are
    refused with 1013, ``/healthz/ready`` answers 503) and lets the calls in progress finish, up to
    the drain timeout; then (or at once when no call is in progress, or on a second signal) the
    app is told it is shutting down and uvicorn closes what is left."""

    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self._vc_state = state
        self._drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        state = self._vc_state
        if self._drain_deadline is None and state.drain_timeout_s > 0 and not self.should_exit:
            state.draining = True
            self._drain_deadline = time.monotonic() + state.drain_timeout_s
            # (a signal handler: nothing that may block here; the tick below does the rest)
            return
        self._stop_now(sig, frame)

    def _stop_now(self, sig: int | None = None, frame: Any = None) -> None:
        self._vc_state.shutting_down = True
        if sig is None:
            self.should_exit = True
        else:
            super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        state = self._vc_state
        if self._drain_deadline is not None and not self.should_exit:
            if counter % 10 == 0 and state.active_calls:
                logger.info(f"draining: {state.active_calls} call(s) in progress, no new calls taken")
            if not state.active_calls:
                logger.info("drained: no call in progress; stopping")
                self._stop_now()
            elif time.monotonic() >= self._drain_deadline:
                logger.warning(f"drain timeout: ending {state.active_calls} call(s) still in progress")
                self._stop_now()
        return await super().on_tick(counter)


def _uvicorn_config(app: FastAPI, host: str, port: int, log_level: str = "warning") -> uvicorn.Config:
    config = uvicorn.Config(
        app, host=host, port=port, ws="websockets-sansio", ws_max_size=WS_MAX_FRAME, lifespan="on",
        loop="asyncio", http="h11",  # the same everywhere, whatever extras (uvloop, httptools) are installed
        log_level=log_level.lower(), timeout_graceful_shutdown=15, access_log=False,  # URLs may hold numbers
    )
    install_log_redaction()  # after uvicorn set up its loggers: their handlers get the filter too
    return config


@contextlib.asynccontextmanager
async def running_server(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"
) -> AsyncIterator[str]:
    """Run ``app`` in this event loop on an ephemeral port (tests, benchmarks); yields the base URL."""
    state: ServerState = app.state.vc
    server = _Server(_uvicorn_config(app, host, port, log_level=log_level), state)
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


def serve(host: str, port: int, data_dir: Path, pipeline: str, *, log_level: str = "INFO",
          allow_insecure_webhooks: bool = False, public_url: str | None = None, telnyx_codec: str = "PCMU",
          telnyx_sample_rate: int = 8000, max_calls: int | None = None,
          drain_timeout_s: float = 60.0, database_url: str | None = None,
          lease_s: float = DEFAULT_LEASE_S) -> None:  # fmt: skip
    """Run the server until SIGINT/SIGTERM: then it drains (no new calls; the calls in progress
    finish, up to ``drain_timeout_s``) and every call's record is closed before exit. A second
    signal stops at once. ``log_level`` governs voicecore's and uvicorn's logs alike."""
    app = create_app(data_dir=data_dir, pipeline=pipeline, allow_insecure_webhooks=allow_insecure_webhooks,
                     public_url=public_url, telnyx_codec=telnyx_codec, telnyx_sample_rate=telnyx_sample_rate,
                     max_calls=max_calls, drain_timeout_s=drain_timeout_s, database_url=database_url,
                     lease_s=lease_s)
    state: ServerState = app.state.vc
    server = _Server(_uvicorn_config(app, host, port, log_level=log_level), state)
    server.run()
