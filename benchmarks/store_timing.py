"""What a database adds per turn: ``voicecore bench concurrency --database-url URL``.

The same calls run twice in this process — on the data directory's SQLite file, then on
the PostgreSQL database at ``URL`` — against the real server app (``create_app`` +
``running_server``), real pipeline, policy layer and storage, with the instant fake
models of ``bench overhead`` (``benchmarks/overhead.py``), so that storage is what
differs. ``calls`` Twilio callers call at once (their starts 0.5 s apart, as calls arrive,
not all in the same instant), ``turns`` utterances each.

Every repository of the :class:`~voicecore.storage.Store` (``tenants``, ``calls``,
``subjects``, ``outbox``, ``providers``, ``call_tokens``, ``audit``, ``retention``) is
wrapped, in this benchmark only, by a proxy that times each method call from outside
(the time a caller of the store waits, locks and transactions included). A call's
store time is attributed to the call whose WebSocket asked for it (a context variable
set by an ASGI middleware for each WebSocket: the call's tasks and the threads of
``asyncio.to_thread`` inherit it); the webhook and report workers' background polling is
left out. Per backend:

- ``per_turn_ms``: a call's store time divided by its turns (p50/p95 over calls);
- ``per_call_ms``: a call's store time; ``ops``: each store method, per invocation;
- the API key check (``tenants.authenticate``: a deliberately slow key hash, ~0.1 s of CPU
  on either database, before the call starts) is left out of those two and shown as
  ``key_check_ms`` (and in ``ops``);
- ``added_per_turn_ms``: PostgreSQL minus SQLite at p50 and p95, held against the target
  (≤ 5 ms at p95).

The calls are written to the PostgreSQL database under a tenant of their own, deleted at
the end (use a scratch database all the same). One warm-up call per backend (connections,
caches) is not counted: as many warm-up calls at once as timed ones, so each backend has
its connections open, as a worker that has been running has.
"""

from __future__ import annotations

import asyncio
import contextvars
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BENCH_POLICY_YAML,
    percentile,
    pyplot,
    save_figure,
    text_table,
)
from benchmarks.corpus import CORPUS, load_corpus
from benchmarks.latency import play_call
from benchmarks.overhead import InstantModelPool
from voicecore.storage import Store
from voicecore.testing.callers import wait_stored_call

TARGET_ADDED_P95_MS = 5.0
KEY_CHECK = "tenants.authenticate"
STAGGER_S = 0.5  # between call starts
REPOSITORIES = ("tenants", "calls", "subjects", "outbox", "providers", "call_tokens", "audit", "retention")

_CURRENT: contextvars.ContextVar[CallTiming | None] = contextvars.ContextVar("voicecore_bench_call", default=None)


@dataclass
class CallTiming:
    """The store calls made for one call (its WebSocket), in seconds."""

    ops: list[tuple[str, float]] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        """Store time of the call, the API key check left out."""
        return sum(s for op, s in self.ops if op != KEY_CHECK)


class TimedRepository:
    """A repository whose public methods are timed into the current call's :class:`CallTiming`."""

    def __init__(self, name: str, repo: Any):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_repo", repo)

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._repo, attr)
        if attr.startswith("_") or not callable(value):
            return value
        op = f"{self._name}.{attr}"

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                timing = _CURRENT.get()
                if timing is not None:
                    timing.ops.append((op, time.perf_counter() - t0))

        return timed

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self._repo, attr, value)


def time_store(store: Store) -> Store:
    """Wrap ``store``'s repositories (before the app is built on it); returns ``store``."""
    for name in REPOSITORIES:
        setattr(store, name, TimedRepository(name, getattr(store, name)))
    return store


class CallTimingMiddleware:
    """ASGI middleware: a fresh :class:`CallTiming` for each WebSocket, kept in ``calls``."""

    def __init__(self, app: Any, calls: list[CallTiming]):
        self.app = app
        self.calls = calls

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "websocket":
            await self.app(scope, receive, send)
            return
        timing = CallTiming()
        self.calls.append(timing)
        token = _CURRENT.set(timing)
        try:
            await self.app(scope, receive, send)
        finally:
            _CURRENT.reset(token)


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None, "mean": None}
    return {"n": len(values), "p50": round(percentile(values, 50), 3), "p95": round(percentile(values, 95), 3),
            "max": round(max(values), 3), "mean": round(sum(values) / len(values), 3)}


async def run_backend(label: str, folder: Path, database_url: str | None, *, calls: int, turns: int,
                      pipeline: str = "receptionist") -> dict[str, Any]:
    """``calls`` simultaneous calls of ``turns`` turns on one database; the store time per call and turn."""
    from voicecore.server import create_app, running_server

    clean = [s.id for s in CORPUS if "," not in s.text]
    corpus = load_corpus(clean)
    data_dir = folder / f"store-timing-{label}"
    store = time_store(Store(data_dir, database_url=database_url or ""))
    tenant = f"bench-{secrets.token_hex(4)}"
    key = store.tenants.create(tenant, policy_yaml=BENCH_POLICY_YAML.replace("  reports: 1", "  reports: 0"),
                               actor="bench")  # no post-call reports: the instant LLM cannot write one
    app = create_app(data_dir=data_dir, pool=InstantModelPool(), store=store, pipeline=pipeline,
                     sweep_interval_s=3600)  # fmt: skip
    timings: list[CallTiming] = []
    app.add_middleware(CallTimingMiddleware, calls=timings)
    results: list[tuple[CallTiming, int]] = []
    answered: list[int] = []
    try:
        async with running_server(app) as base_url:
            ws_url = "ws" + base_url.removeprefix("http") + "/ws/twilio"

            async def one(i: int, n_turns: int) -> int:
                await asyncio.sleep((i % 100) * STAGGER_S)  # calls overlap, their starts do not all coincide
                utts = [corpus[(i * 7 + k) % len(corpus)] for k in range(n_turns)]
                played = await play_call(f"store-{label}", i, ws_url, key, utts, pause=(0.3, 0.6))
                await wait_stored_call(store, tenant, played.caller.ids, timeout=30, actor="bench")
                return sum(1 for t in played.turns if t.answer is not None)

            await asyncio.gather(*(one(100 + i, 1) for i in range(calls)))  # warm-up: connections, caches
            timings.clear()
            answered = await asyncio.gather(*(one(i, turns) for i in range(calls)))
            await asyncio.sleep(0.5)  # the last writes of each call (after its record is stored)
            # every call plays ``turns`` utterances: a call's store time is divided by that many
            results = [(t, turns) for t in timings]
    finally:
        try:
            store.tenants.delete(tenant, actor="bench")
        finally:
            store.close()
    ops: dict[str, list[float]] = {}
    for t, _ in results:
        for op, s in t.ops:
            ops.setdefault(op, []).append(s * 1000)
    return {
        "database": store.database,
        "calls": len(results),
        "turns": sum(n for _, n in results),
        "answered_turns": sum(answered),
        "per_turn_ms": _stats([t.total_s * 1000 / n for t, n in results if n]),
        "per_call_ms": _stats([t.total_s * 1000 for t, _ in results]),
        "key_check_ms": _stats([s * 1000 for t, _ in results for op, s in t.ops if op == KEY_CHECK]),
        "store_calls_per_call": _stats([float(sum(1 for op, _ in t.ops if op != KEY_CHECK)) for t, _ in results]),
        "ops": {op: _stats(v) for op, v in sorted(ops.items())},
    }


async def compare(folder: Path, database_url: str, *, calls: int, turns: int,
                  pipeline: str = "receptionist") -> dict[str, Any]:
    """SQLite, then the PostgreSQL database at ``database_url``; what PostgreSQL adds per turn."""
    sqlite = await run_backend("sqlite", folder, None, calls=calls, turns=turns, pipeline=pipeline)
    postgresql = await run_backend("postgresql", folder, database_url, calls=calls, turns=turns, pipeline=pipeline)
    added = {
        q: None if sqlite["per_turn_ms"][q] is None or postgresql["per_turn_ms"][q] is None
        else round(postgresql["per_turn_ms"][q] - sqlite["per_turn_ms"][q], 3)
        for q in ("p50", "p95")
    }
    return {
        "calls": calls,
        "turns_per_call": turns,
        "sqlite": sqlite,
        "postgresql": postgresql,
        "added_per_turn_ms": added,
        "target_added_p95_ms": TARGET_ADDED_P95_MS,
        "within_target": added["p95"] is not None and added["p95"] <= TARGET_ADDED_P95_MS,
    }


def plot(storage: dict[str, Any], out: Path) -> list[str]:
    """Store time per turn, p50 and p95, on each database, against the target."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    names = ["SQLite", "PostgreSQL"]
    for k, (q, offset) in enumerate((("p50", -0.2), ("p95", 0.2))):
        vals = [storage[b]["per_turn_ms"][q] or 0.0 for b in ("sqlite", "postgresql")]
        ax.bar([i + offset for i in range(2)], vals, width=0.4, label=q)
    base = storage["sqlite"]["per_turn_ms"]["p95"] or 0.0
    ax.axhline(base + storage["target_added_p95_ms"], color="r", linestyle="--", linewidth=1,
               label=f"SQLite p95 + {storage['target_added_p95_ms']:g} ms (target)")
    ax.set_xticks(range(2), names)
    ax.set_ylabel("store time per turn (ms)")
    ax.set_title("What the database adds per turn")
    ax.legend(fontsize=8)
    return [save_figure(fig, out / "concurrency-storage.png")]


def report(storage: dict[str, Any]) -> str:
    header = ["database", "calls", "turns", "per turn p50", "per turn p95", "per call p50", "per call p95",
              "store calls/call", "key check p50"]
    rows = [[name, b["calls"], b["turns"], b["per_turn_ms"]["p50"], b["per_turn_ms"]["p95"], b["per_call_ms"]["p50"],
             b["per_call_ms"]["p95"], b["store_calls_per_call"]["p50"], b["key_check_ms"]["p50"]]
            for name, b in (("SQLite", storage["sqlite"]), ("PostgreSQL", storage["postgresql"]))]
    added = storage["added_per_turn_ms"]
    verdict = "within" if storage["within_target"] else "over"
    return "\n".join([
        f"Store time per call and per turn (ms; {storage['calls']} calls at once, {storage['turns_per_call']} turns "
        "each, instant fake models; the API key check apart)",
        text_table(header, rows),
        f"PostgreSQL adds per turn: {added['p50']} ms at p50, {added['p95']} ms at p95 "
        f"({verdict} the target of {storage['target_added_p95_ms']:g} ms at p95)",
    ])
