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
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from loguru import logger

from voicecore.config import PROJECT_ROOT, PipelineConfig, load_pipeline
from voicecore.model_pool import ModelPool
from voicecore.server import api, calls
from voicecore.server.state import ServerState, load_pipelines
from voicecore.server.webhooks import WebhookWorker
from voicecore.storage import Store
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
            await state.reports.drain(timeout=30)
            webhook_worker.stop()
            try:
                await asyncio.wait_for(webhooks, timeout=15)
            except (asyncio.TimeoutError, TimeoutError):
                pass  # a delivery in flight is retried after the next start (the outbox keeps it)

    app = FastAPI(title="voicecore", version="0.1.0", lifespan=lifespan)
    app.include_router(api.router)
    app.include_router(calls.router)
    app.state.vc = state
    return app


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
