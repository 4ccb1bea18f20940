"""What a ``serve`` worker shares between requests: the store, the models, active calls, call tokens."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from voicecore.config import PROJECT_ROOT, PipelineConfig, load_pipeline
from voicecore.model_pool import ModelPool
from voicecore.reports import ReportScheduler
from voicecore.server.guard import AuthThrottle
from voicecore.server.metrics import Metrics
from voicecore.session import CallSession
from voicecore.storage import Store
from voicecore.storage.call_tokens import CALL_TOKEN_TTL_S, CallGrant, is_call_token
from voicecore.storage.workers import DEFAULT_LEASE_S
from voicecore.telephony.dialing import CallStatusEvent

#: ``ServerState.on_call_status``: (tenant, provider, event) → None.
CallStatusHook = Callable[[str, str, CallStatusEvent], Awaitable[None]]

__all__ = ["CALL_TOKEN_TTL_S", "CallGrant", "CallStatusHook", "ServerState", "is_call_token", "load_pipelines", "new_worker_id"]


def new_worker_id() -> str:
    """This worker's name in the database (its lease, the calls it holds, the work it claims):
    host, process id and a random suffix, so a restarted process is a new worker."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class ServerState:
    """What the app shares between requests (the only process-wide state besides the model pool)."""

    data_dir: Path
    store: Store
    pool: ModelPool
    pipelines: dict[str, PipelineConfig]
    default_pipeline: str
    metrics: Metrics = field(default_factory=Metrics)
    throttle: AuthThrottle = field(default_factory=AuthThrottle)
    reports: ReportScheduler = field(default_factory=ReportScheduler)
    calls: dict[str, CallSession] = field(default_factory=dict)
    calls_started: int = 0
    shutting_down: bool = False
    sweep_interval_s: float = 3600.0
    ice_servers: list[dict[str, Any]] = field(default_factory=list)  # none by default: host candidates only
    peer_calls: dict[str, Any] = field(default_factory=dict)
    #: The deployment's public base URL (``serve --public-url``); every URL given to a provider
    #: derives from it. None: derived from each request (local use; providers need https/wss).
    public_url: str | None = None
    #: What Telnyx streams are set up to take back (``stream_bidirectional_codec`` / sampling rate).
    telnyx_codec: str = "PCMU"
    telnyx_sample_rate: int = 8000
    #: ``serve --max-calls``: calls this worker takes at once (None: no limit). Beyond it a new
    #: stream is refused before any model runs and ``/healthz/ready`` answers 503.
    max_calls: int | None = None
    #: SIGTERM received: no new calls, the ones in progress finish (up to ``drain_timeout_s``).
    draining: bool = False
    drain_timeout_s: float = 60.0
    opening_calls: int = 0  # calls being opened (counted against max_calls before they are active)
    #: This worker's id (:func:`new_worker_id`): the lease it holds, the calls and work it claims.
    worker_id: str = field(default_factory=new_worker_id)
    #: ``serve --lease-seconds``: a worker silent this long is dead; another closes its calls.
    lease_s: float = DEFAULT_LEASE_S
    #: Who hears the verified status callbacks of outbound calls (the campaign dialer sets it);
    #: None: they are acknowledged and dropped.
    on_call_status: CallStatusHook | None = None
    #: The campaign dialer (:class:`voicecore.server.dialer.Dialer`), set when the app starts.
    dialer: Any = None

    @property
    def active_calls(self) -> int:
        return len(self.calls) + self.opening_calls  # (a WebRTC call is in calls too, not only in peer_calls)

    def readiness(self) -> str | None:
        """Why this worker should get no new call now (``draining``, ``shutting_down``, ``full``),
        or None when it is ready."""
        if self.shutting_down:
            return "shutting_down"
        if self.draining:
            return "draining"
        if self.max_calls is not None and self.active_calls >= self.max_calls:
            return "full"
        return None

    def mint_call_token(
        self,
        tenant: str,
        pipeline: str | None,
        call_id: str | None = None,
        *,
        provider: str | None = None,
        caller: str | None = None,
        callee: str | None = None,
    ) -> str:
        """A one-time token for one call (bound to the provider and its call id when known), in the
        shared database: any worker's media stream may present it, once. Blocking: call it from a thread."""
        return self.store.call_tokens.mint(tenant, pipeline, call_id, provider=provider, caller=caller, callee=callee)

    def redeem_call_token(self, token: str, call_id: str | None = None, provider: str | None = None) -> CallGrant | None:
        """The grant of a one-time token, used up on every worker; None if unknown, used, expired,
        minted for another call id or another provider. Blocking: call it from a thread."""
        return self.store.call_tokens.redeem(token, call_id, provider)

    async def call_status(self, tenant: str, provider: str, event: CallStatusEvent) -> None:
        """Hand a verified status callback to :attr:`on_call_status` (or drop it, logged at DEBUG)."""
        hook = self.on_call_status
        if hook is None:
            logger.debug("{} status {} for attempt {}: no dialer listens", provider, event.status, event.attempt_id)
            return
        await hook(tenant, provider, event)

    def call_announced_to_other_tenant(self, call_id: str | None, tenant: str) -> bool:
        return self.store.call_tokens.announced_to_other_tenant(call_id, tenant)


def load_pipelines(folder: Path = PROJECT_ROOT / "pipelines", extra: list[str | Path] | None = None) -> dict[str, PipelineConfig]:
    """Every agent definition a call may name, validated at start-up (a bad file stops the server)."""
    configs: dict[str, PipelineConfig] = {}
    paths = sorted(folder.glob("*.yaml")) if folder.exists() else []
    for p in [*paths, *(Path(e) for e in extra or [])]:
        cfg = load_pipeline(p)
        configs[cfg.name] = cfg
    return configs
