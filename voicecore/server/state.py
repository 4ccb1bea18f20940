"""What a ``serve`` worker shares between requests: the store, the models, active calls, call tokens."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicecore.config import PROJECT_ROOT, PipelineConfig, load_pipeline
from voicecore.model_pool import ModelPool
from voicecore.reports import ReportScheduler
from voicecore.server.guard import AuthThrottle
from voicecore.server.metrics import Metrics
from voicecore.session import CallSession
from voicecore.storage import Store

CALL_TOKEN_TTL_S = 120.0


@dataclass(frozen=True)
class CallGrant:
    """What a one-time call token stands for: a call of ``tenant`` (and the answer request's
    pipeline, provider call id, caller and callee, which some providers' streams do not repeat)."""

    tenant: str
    pipeline: str | None
    expires_at: float
    call_id: str | None = None
    provider: str | None = None
    caller: str | None = field(default=None, repr=False)
    callee: str | None = field(default=None, repr=False)


def is_call_token(token: str) -> bool:
    """``ct`` + 40 hex digits: letters and digits only, so every provider can carry it."""
    return len(token) == 42 and token.startswith("ct") and all(c in "0123456789abcdef" for c in token[2:])


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
    call_tokens: dict[str, CallGrant] = field(default_factory=dict)
    announced_calls: dict[str, tuple[str, float]] = field(default_factory=dict)  # provider call id -> tenant
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

    @property
    def active_calls(self) -> int:
        return len(self.calls) + len(self.peer_calls) + self.opening_calls

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
        """A one-time token for one call (bound to the provider and its call id when known)."""
        now = time.monotonic()
        for tok, grant in list(self.call_tokens.items()):
            if grant.expires_at < now:
                del self.call_tokens[tok]
        for cid, (_t, exp) in list(self.announced_calls.items()):
            if exp < now:
                del self.announced_calls[cid]
        token = "ct" + secrets.token_hex(20)
        self.call_tokens[token] = CallGrant(tenant, pipeline, now + CALL_TOKEN_TTL_S, call_id or None, provider,
                                            caller or None, callee or None)  # fmt: skip
        if call_id:
            self.announced_calls[call_id] = (tenant, now + CALL_TOKEN_TTL_S)
        return token

    def redeem_call_token(self, token: str, call_id: str | None = None, provider: str | None = None) -> CallGrant | None:
        """The grant of a one-time token, used up; None if unknown, expired, minted for another
        call id or another provider."""
        grant = self.call_tokens.pop(token, None)
        if grant is None or grant.expires_at < time.monotonic():
            return None
        if grant.call_id is not None and grant.call_id != call_id:
            return None  # minted for another call
        if grant.provider is not None and provider is not None and grant.provider != provider:
            return None  # minted for another provider's stream
        return grant

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
