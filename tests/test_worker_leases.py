"""Worker leases and ``worker_lost`` (issue 12): every ``serve`` worker holds a lease in the
database; the open calls of a worker that died are closed by another as ``worker_lost``, with
what was said kept as the policy allows; a database restart during a call loses nothing said.

The repository tests run on SQLite and PostgreSQL with two :class:`Store` instances standing for
two workers and a clock the test moves. The process tests run ``voicecore serve`` workers for
real on one PostgreSQL, place Twilio calls with spoken turns and kill one worker with SIGKILL.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import pytest
from serve_workers import aget, greeted_call, start_worker, stop_worker

from voicecore.records import CallRecord, Turn
from voicecore.storage import Store
from voicecore.storage.live_calls import LiveCallWriter, database_unreachable

NO_TRANSCRIPTS = """version: 1
name: no-transcripts
retention:
  recordings: 0
  transcripts: 0
  reports: 30
  metadata: 90
  contacts: 0
"""


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def open_call(tenant: str, *said: str) -> CallRecord:
    rec = CallRecord(tenant=tenant, caller="+14155552671", callee="+14155550000", pipeline="receptionist",
                     transport="twilio")  # fmt: skip
    rec.turns = [Turn("agent", "Hello, how can I help?", kind="greeting")] + [Turn("caller", s) for s in said]
    return rec


def call_ended_events(store: Store, tenant: str) -> list[dict]:
    return [e.payload["data"] for e in store.outbox.events(tenant, actor="test") if e.type == "call.ended"]


@pytest.mark.usefixtures("database")
def test_a_dead_workers_open_calls_are_closed_as_worker_lost_by_another_keeping_what_was_said(tmp_path: Path) -> None:
    clock = Clock()
    a = Store(tmp_path / "a", clock=clock, key_dir=tmp_path / "keys")  # one master key, as a deployment
    a.tenants.create("acme", actor="test")
    b = a if a.db.is_sqlite else Store(tmp_path / "b", clock=clock, key_dir=tmp_path / "keys")  # SQLite: one file
    a.workers.register("worker-a", lease_s=10)
    b.workers.register("worker-b", lease_s=10)
    call = open_call("acme", "I would like to book a cleaning")
    assert a.calls.save(call, worker_id="worker-a")  # worker a holds the open call
    assert b.calls.open_calls() == [("acme", call.call_id, "worker-a")]
    assert b.workers.reap("worker-b") == []  # a's lease runs: nothing happens
    clock.now += 6
    assert a.workers.heartbeat("worker-a", lease_s=10)
    clock.now += 6
    assert b.workers.reap("worker-b") == []  # renewed 6 s ago: alive
    last_heartbeat = clock.now - 6
    clock.now += 5  # a stops renewing (killed); b renews
    assert b.workers.heartbeat("worker-b", lease_s=10)
    (lost,) = b.workers.reap("worker-b")
    assert (lost.worker_id, lost.calls) == ("worker-a", (("acme", call.call_id),))
    assert b.workers.reap("worker-b") == []  # reaped once
    stored = b.calls.get("acme", call.call_id, actor="test")
    assert stored is not None and stored.end_reason == "worker_lost"
    assert stored.ended_at == pytest.approx(last_heartbeat)
    assert [t.text for t in stored.turns] == ["Hello, how can I help?", "I would like to book a cleaning"]
    assert stored.flags["worker_lost"] == "worker-a"
    (event,) = call_ended_events(b, "acme")
    assert (event["call_id"], event["end_reason"], event["caller"]) == (call.call_id, "worker_lost", "+14155552671")
    assert event["transcript_stored"] is True
    assert b.report_jobs.pending_for("acme", call.call_id)  # its report is made from what was kept
    assert b.calls.open_calls() == []
    assert not a.workers.heartbeat("worker-a", lease_s=10)  # a comes back: told it was declared lost
    assert {w.id: w.state for w in b.workers.list(include_gone=True)} == {"worker-a": "lost", "worker-b": "alive"}
    assert any(e.action == "worker.lost" for e in b.audit.list())
    assert b.audit.verify().ok
    for s in {id(a): a, id(b): b}.values():
        s.close()


@pytest.mark.usefixtures("database")
def test_what_the_policy_does_not_keep_is_not_kept_when_a_worker_is_lost(tmp_path: Path) -> None:
    clock = Clock()
    s = Store(tmp_path / "d", clock=clock)
    s.tenants.create("acme", actor="test")
    s.tenants.set_policy("acme", NO_TRANSCRIPTS, actor="test")
    s.workers.register("worker-a", lease_s=5)
    call = open_call("acme", "my card is 4111 1111 1111 1111")
    assert s.calls.save(call, worker_id="worker-a")
    clock.now += 6
    (lost,) = s.workers.reap("worker-b")
    stored = s.calls.get("acme", call.call_id, actor="test")
    assert stored.end_reason == "worker_lost" and len(stored.turns) == 2
    assert all(t.text is None for t in stored.turns)  # metadata only, as the policy says
    assert call_ended_events(s, "acme")[0]["transcript_stored"] is False
    s.close()


def test_a_clean_stop_or_a_drain_is_not_a_loss_and_bad_leases_are_refused(tmp_path: Path) -> None:
    from voicecore.storage import StorageError

    clock = Clock()
    s = Store(tmp_path / "d", clock=clock)
    s.workers.register("w1", lease_s=5)
    s.workers.register("w2", lease_s=5)
    s.workers.set_state("w1", "stopped")
    s.workers.set_state("w2", "draining")
    assert s.workers.heartbeat("w2", lease_s=5)  # a draining worker still renews
    clock.now += 3
    assert s.workers.reap("w3") == []
    clock.now += 10
    assert [w.worker_id for w in s.workers.reap("w3")] == ["w2"]  # draining, then silent: lost
    assert s.workers.get("w1").state == "stopped"
    with pytest.raises(StorageError, match="more than 0 seconds"):
        s.workers.register("w4", lease_s=0)
    with pytest.raises(StorageError, match="not 'lost'"):
        s.workers.set_state("w1", "lost")
    s.close()


def test_workers_reaping_at_once_close_each_lost_call_once(tmp_path: Path, pg_url: str) -> None:
    clock = Clock()
    stores = [Store(tmp_path / f"w{i}", clock=clock) for i in range(4)]
    stores[0].tenants.create("acme", actor="test")
    for i in range(3):
        stores[0].workers.register(f"dead-{i}", lease_s=5)
        for j in range(3):
            assert stores[0].calls.save(open_call("acme", f"call {i} {j}"), worker_id=f"dead-{i}")
    clock.now += 10
    results: list[list] = [[] for _ in stores]
    barrier = threading.Barrier(len(stores))

    def reap(i: int) -> None:
        barrier.wait()
        results[i] = stores[i].workers.reap(f"live-{i}")

    threads = [threading.Thread(target=reap, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    reaped = sorted(w.worker_id for r in results for w in r)
    assert reaped == ["dead-0", "dead-1", "dead-2"], reaped
    events = call_ended_events(stores[0], "acme")
    assert len(events) == 9 and len({e["call_id"] for e in events}) == 9  # one call.ended per call
    assert stores[0].audit.verify().ok
    for s in stores:
        s.close()


# --------------------------------------------------------------------------- database outages


def test_only_an_unreachable_database_is_waited_for() -> None:
    from sqlalchemy.exc import IntegrityError, OperationalError

    assert database_unreachable(OperationalError("SELECT 1", {}, Exception("connection refused")))
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    assert database_unreachable(wrapped)
    assert not database_unreachable(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not database_unreachable(ValueError("bad record"))


async def test_checkpoints_held_while_the_database_is_down_land_when_it_is_back(
    tmp_path: Path, pg_url: str, pg_cluster
) -> None:  # fmt: skip
    store = Store(tmp_path / "d")
    store.tenants.create("acme", actor="test")
    record = open_call("acme", "first thing I said")
    writer = LiveCallWriter(store, record, None, "worker-a")
    writer.changed()
    for _ in range(300):  # (the first save comes after the debounce)
        if writer.saves:
            break
        await asyncio.sleep(0.05)
    assert writer.saves == 1
    await asyncio.to_thread(pg_cluster.stop_server)
    try:
        record.turns.append(Turn("caller", "second thing I said while the database was down"))
        writer.changed()
        await asyncio.sleep(5.0)  # (after the debounce) the checkpoint fails and is held
        assert writer.saves == 1
    finally:
        await asyncio.to_thread(pg_cluster.start_server)
    record.turns.append(Turn("caller", "third thing"))
    record.ended_at, record.end_reason = time.time(), "stop"
    assert await writer.finish(record)
    stored = store.calls.get("acme", record.call_id, actor="test")
    assert [t.text for t in stored.turns][1:] == [
        "first thing I said", "second thing I said while the database was down", "third thing"
    ]  # fmt: skip
    assert stored.end_reason == "stop" and store.calls.open_calls() == []
    store.close()


async def test_a_turn_and_its_reply_go_in_one_save(tmp_path: Path) -> None:
    store = Store(tmp_path / "d")
    store.tenants.create("acme", actor="test")
    record = open_call("acme", "first thing I said")
    writer = LiveCallWriter(store, record, None, "worker-a", debounce_s=0.5)
    writer.changed()  # the caller's turn
    await asyncio.sleep(0.2)
    record.turns.append(Turn("agent", "the reply"))
    writer.changed()  # the reply, finished within the debounce
    await asyncio.sleep(1.5)
    assert writer.saves == 1
    stored = store.calls.get("acme", record.call_id, actor="test")
    assert [t.text for t in stored.turns][-2:] == ["first thing I said", "the reply"]
    store.close()


# --------------------------------------------------------------------------- real workers


async def call_over_api(base: str, key: str, client) -> dict | None:  # type: ignore[no-untyped-def]
    """The call a provider client placed, as the admin API shows it (with its transcript's text)."""
    headers = {"Authorization": f"Bearer {key}"}
    status, listing = await aget(f"{base}/v1/calls", headers)
    assert status == 200, listing
    for call in listing["calls"]:
        if set(call["provider_ids"].values()) & client.ids:
            status, transcript = await aget(f"{base}/v1/calls/{call['call_id']}/transcript", headers)
            assert status == 200, transcript
            return {**call, "turns": transcript["turns"]}
    return None


async def wait_for(predicate, timeout: float, what: str, output=None):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout} s\n{output() if output else ''}"
        await asyncio.sleep(0.25)


@pytest.mark.models
async def test_kill_9_during_a_call_the_other_worker_closes_it_as_worker_lost(
    tmp_path: Path, pg_url: str, say
) -> None:  # fmt: skip
    lease = 3.0
    a = await start_worker(tmp_path, "--lease-seconds", str(lease), data_dir=tmp_path / "a", name="a")
    b = await start_worker(tmp_path, "--lease-seconds", str(lease), data_dir=tmp_path / "b", key=a.key, name="b")
    try:
        on_a = await greeted_call(a.ws, a.key, "on-a", a.output)
        on_b = await greeted_call(b.ws, a.key, "on-b", b.output)
        asked = time.monotonic()
        await on_a.say_and_wait(say("I would like to book a cleaning next week."), timeout=30)
        assert await on_a.wait_media_after(asked + 0.5, 30) is not None, f"no reply on a\n{a.output()}"
        assert await on_a.wait_agent_quiet(quiet=0.8, timeout=30)

        async def open_on_a():  # the open call's row (read on b) holds the caller's turn
            body = await call_over_api(b.base, a.key, on_a)
            return body if body and body["status"] == "in_progress" and any(
                t["role"] == "caller" and t["text"] for t in body["turns"]) else None  # fmt: skip

        while_open = await wait_for(open_on_a, 15, "the open call was never saved", a.output)
        said_while_open = [t["text"] for t in while_open["turns"] if t["role"] == "caller"]
        a.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        a.proc.wait(10)

        async def closed():
            body = await call_over_api(b.base, a.key, on_a)
            return body if body and body["end_reason"] == "worker_lost" else None

        body = await wait_for(closed, 3 * lease + 10, "worker b never closed the call as worker_lost", b.output)
        assert time.monotonic() - killed < 3 * lease + 10
        said = [t["text"] for t in body["turns"] if t["role"] == "caller"]
        assert said and said[: len(said_while_open)] == said_while_open, (said, said_while_open)  # kept as it was
        # the call on worker b went on all along
        assert not on_b.closed.is_set()
        asked = time.monotonic()
        await on_b.say_and_wait(say("What time do you open on Saturday?"), timeout=30)
        assert await on_b.wait_media_after(asked + 0.5, 30) is not None, f"no reply on b\n{b.output()}"
        status, metrics = await asyncio.to_thread(_text, f"{b.base}/metrics")
        assert "voicecore_calls_closed_worker_lost_total 1" in metrics
        await on_b.hangup()
        await on_b.close()
        await on_a.close()
    finally:
        stop_worker(a)
        stop_worker(b)
    assert "worker_lost" in b.output() and "lost its lease" in b.output()


def _text(url: str) -> tuple[int, str]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read().decode()


@pytest.mark.models
async def test_a_postgresql_restart_during_a_call_loses_nothing_said(tmp_path: Path, pg_url: str, pg_cluster,
                                                                     say) -> None:  # fmt: skip
    w = await start_worker(tmp_path, data_dir=tmp_path / "w")
    try:
        call = await greeted_call(w.ws, w.key, "restart", w.output)
        asked = time.monotonic()
        await call.say_and_wait(say("Hello, I need a cleaning appointment."), timeout=30)
        assert await call.wait_media_after(asked + 0.5, 30) is not None, f"no first reply\n{w.output()}"
        assert await call.wait_agent_quiet(quiet=0.8, timeout=30)
        await asyncio.to_thread(pg_cluster.stop_server)  # the database goes away mid-call
        try:
            asked = time.monotonic()
            await call.say_and_wait(say("What time do you open on Saturday?"), timeout=30)
            assert await call.wait_media_after(asked + 0.5, 30) is not None, f"no reply while down\n{w.output()}"
            assert await call.wait_agent_quiet(quiet=0.8, timeout=30)
            await call.hangup()  # the call ends while the database is still down
            await asyncio.sleep(1.0)
        finally:
            await asyncio.to_thread(pg_cluster.start_server)

        async def stored():
            body = await call_over_api(w.base, w.key, call)
            return body if body and body["ended_at"] else None

        body = await wait_for(stored, 30, "the call was never stored after the restart", w.output)
        said = [t["text"] for t in body["turns"] if t["role"] == "caller"]
        # (the first utterance may come as two turns: "Hello?" then the rest)
        assert len(said) >= 2 and all(said), said  # said before the restart, then while it was down
        assert "saturday" in said[-1].lower() or "open" in said[-1].lower(), said  # the question asked while down
        assert body["end_reason"] == "stop"
        await call.close()
    finally:
        stop_worker(w)
    assert "the database is unreachable" in w.output()
    assert "the database is back" in w.output()


def test_db_workers_lists_the_leases_and_the_calls_each_holds(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from voicecore.cli import cli

    s = Store(tmp_path / "d")
    s.tenants.create("acme", actor="test")
    s.workers.register("host-1-a", lease_s=30)
    s.workers.register("host-2-b", lease_s=30)
    s.workers.set_state("host-2-b", "stopped")
    assert s.calls.save(open_call("acme", "hello"), worker_id="host-1-a")
    s.close()
    res = CliRunner().invoke(cli, ["db", "workers", "--data-dir", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert "host-1-a  alive" in res.output and "open calls: 1" in res.output
    assert "host-2-b" not in res.output  # stopped: only with --all
    res = CliRunner().invoke(cli, ["db", "workers", "--all", "--json", "--data-dir", str(tmp_path / "d")])
    got = {w["id"]: (w["state"], w["open_calls"]) for w in json.loads(res.output)}
    assert got == {"host-1-a": ("alive", 1), "host-2-b": ("stopped", 0)}


def test_campaign_contacts_a_lost_worker_had_claimed_go_back_at_once(tmp_path: Path) -> None:
    clock = Clock()
    s = Store(tmp_path / "d", clock=clock)
    s.tenants.create("acme", actor="test")
    s.contacts.import_file("acme", b"phone\n+14155552671\n+14155552672\n", segment="leads", actor="test")
    s.campaigns.create("acme", "spring", pipeline="receptionist", segment="leads", from_number="+14155550000",
                       provider="twilio", window="daily 00:00-24:00", max_concurrent=2, actor="test")  # fmt: skip
    s.campaigns.start("acme", "spring", actor="test")
    c = s.campaigns.get("acme", "spring")
    s.workers.register("worker-a", lease_s=5)
    assert len(s.campaigns.claim_due(c, "worker-a", lease_s=600)) == 2  # then worker a dies before dialing
    assert s.campaigns.claim_due(c, "worker-b") == []
    clock.now += 6
    s.workers.reap("worker-b")
    assert len(s.campaigns.claim_due(c, "worker-b")) == 2  # not 10 minutes later
    s.close()
