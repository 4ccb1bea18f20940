"""Two ``voicecore serve`` worker processes on one PostgreSQL database (tests/pg.py) deliver the
outbox to one webhook receiver on 127.0.0.1:

* 200 ``call.ended`` events (200 calls stored through the Store API while both workers run):
  each arrives exactly once, and both workers sent some;
* 200 more, and in the middle ``kill -9`` of one worker while the receiver holds one of its
  requests (a delivery in flight: it arrived, the worker never learnt it did): every event
  arrives, the held one again from the other worker once its lease ends, and every event that
  arrives twice is one that was claimed and not yet settled when the worker died.

The receiver tells the two workers apart by the sending connection: the worker process that
holds the socket whose port the request came from (psutil). The workers run with a 4 s lease
and a 0.2 s poll (``VOICECORE_WEBHOOK_LEASE_S``, ``VOICECORE_WEBHOOK_POLL_S``) so the test
ends in seconds, not in the 30 s of the default lease.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from serve_workers import Worker, make_tenant, start_worker, stop_worker

from voicecore.records import CallRecord, Turn
from voicecore.server.webhooks import LEASE_ENV, POLL_ENV
from voicecore.storage import Store

pytestmark = pytest.mark.models  # serve loads the default pipeline's models before it is ready

LEASE_S = 4.0
EVENTS = 200
SETTLING = "SELECT 1 AS x FROM outbox WHERE status <> 'delivered'"  # an event some endpoint has not taken yet


def ended_call(i: int) -> CallRecord:
    rec = CallRecord(tenant="acme", caller="+14155552671")
    rec.turns = [Turn("caller", f"call number {i}")]
    rec.ended_at = rec.started_at + 1
    return rec


class Senders:
    """Which worker process sent each request, found while its connection is open."""

    def __init__(self, workers: dict[str, Worker], receiver_port: int):
        self.pids = {name: w.proc.pid for name, w in workers.items()}
        self.port = receiver_port
        self.by_delivery: dict[tuple[str, str], str] = {}  # (event id, attempt) -> worker name
        self.lock = threading.Lock()

    def sender(self, peer_port: int) -> str:
        for name, pid in self.pids.items():
            try:
                conns = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.Error:  # killed meanwhile
                continue
            if any(c.laddr and c.laddr.port == peer_port and c.raddr and c.raddr.port == self.port for c in conns):
                return name
        return "?"


def event_ids(received: list[Any]) -> list[str]:
    return [r.headers["X-Voicecore-Event-Id"] for r in received]


async def wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def store_calls(store: Store, n: int) -> None:
    for i in range(n):  # each call's record and its call.ended event, in one transaction
        assert await asyncio.to_thread(store.calls.save, ended_call(i))


async def test_two_serve_workers_deliver_each_event_once_and_lose_none_when_one_is_killed(
    tmp_path: Path, pg_url: str, receiver
) -> None:  # fmt: skip
    key = make_tenant(tmp_path / "a")
    store = Store(tmp_path / "test", allow_insecure_webhooks=True)  # the same database and master key
    store.outbox.create_webhook("acme", receiver.url, ["call.ended"], actor="test")
    env = {LEASE_ENV: str(LEASE_S), POLL_ENV: "0.2"}
    workers: dict[str, Worker] = {}
    held = threading.Event()
    release = threading.Event()
    try:
        for name in ("a", "b"):
            workers[name] = await start_worker(tmp_path, "--allow-insecure-webhooks", data_dir=tmp_path / name,
                                               key=key, name=name, env=env)  # fmt: skip
        senders = Senders(workers, int(receiver.url.rsplit(":", 1)[1].split("/")[0]))
        hold: dict[str, Any] = {"from": None, "after": 0, "held": None}

        def before_answer(got) -> None:  # type: ignore[no-untyped-def]
            name = senders.sender(got.peer[1])
            with senders.lock:
                senders.by_delivery[(got.headers["X-Voicecore-Event-Id"], got.headers["X-Voicecore-Attempt"])] = name
                take = hold["from"] == name and hold["held"] is None and len(receiver.received) > hold["after"]
                if take:
                    hold["held"] = got
            if take:  # the worker waits for this answer: the delivery is in flight when it is killed
                held.set()
                release.wait(60)
            else:
                time.sleep(0.01)  # a receiver that takes a moment: both workers have requests in flight

        receiver.before_answer = before_answer

        # -- phase 1: both workers run; every event arrives exactly once
        await store_calls(store, EVENTS)
        await wait_for(lambda: len(receiver.received) >= EVENTS, 120, f"{EVENTS} deliveries")
        await wait_for(lambda: not store.db.exists(SETTLING), 30, "every event settled")
        await asyncio.sleep(LEASE_S + 1)  # a delivery sent twice would have arrived by now
        first = event_ids(receiver.received)
        counts = collections.Counter(first)
        assert len(counts) == EVENTS and max(counts.values()) == 1, [e for e, n in counts.items() if n > 1][:5]
        per_worker = collections.Counter(senders.by_delivery.values())
        assert per_worker["a"] > 0 and per_worker["b"] > 0, per_worker  # both workers delivered
        assert per_worker["?"] == 0, per_worker

        # -- phase 2: kill -9 worker a while the receiver holds one of its deliveries
        hold.update({"from": "a", "after": len(receiver.received) + 60})
        await store_calls(store, EVENTS)
        assert await asyncio.to_thread(held.wait, 120), "worker a sent nothing after the first 60 events"
        workers["a"].proc.kill()  # SIGKILL
        workers["a"].proc.wait(10)
        # what was claimed and not settled when it died (worker b's claims included): an upper bound
        in_flight = {r["event_id"] for r in store.db.rows(
            "SELECT event_id FROM webhook_deliveries WHERE status = 'pending' AND attempts > 0")}  # fmt: skip
        release.set()
        held_event = hold["held"].headers["X-Voicecore-Event-Id"]
        assert held_event in in_flight
        await wait_for(lambda: not store.db.exists(SETTLING), 90, "every event settled")
        await asyncio.sleep(LEASE_S + 1)
        second = event_ids(receiver.received)[len(first):]
        counts = collections.Counter(second)
        assert len(counts) == EVENTS, f"{EVENTS - len(counts)} events lost"  # none lost
        twice = {e for e, n in counts.items() if n > 1}
        assert held_event in twice  # the delivery in flight was sent again ...
        assert senders.by_delivery.get((held_event, "2")) == "b"  # ... by worker b, as its 2nd attempt
        assert twice <= in_flight, sorted(twice - in_flight)[:5]  # duplicates: only what was in flight
        assert max(counts.values()) == 2
        assert workers["b"].proc.poll() is None, workers["b"].output()
    finally:
        release.set()
        for w in workers.values():
            stop_worker(w)
        store.close()
