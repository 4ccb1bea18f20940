"""PostgreSQL as the database of several workers, on a real server (tests/pg.py).

Two :class:`Store` instances on one PostgreSQL database stand for two ``serve`` workers: each
has its own connections and its own lock, so what they do at the same moment really is
concurrent in the database. What is checked is what a deployment needs of it:

* outbox deliveries claimed row by row (``FOR UPDATE SKIP LOCKED``): 200 events, both workers
  claiming at once, each delivery claimed exactly once;
* the audit chain appended in one order by threads of both workers and by another process,
  and ``audit verify`` passing afterwards;
* tenant keys wrapped in the database: a tenant created on one worker is readable on the
  other, and deleting it destroys the key for both at once; the database never holds a key
  in clear;
* a wrong or unreachable URL fails before anything is written, naming host, port and
  database, never the password; an older schema is refused, naming ``voicecore db upgrade``;
* after a subject's erasure, ``VACUUM (FULL)`` and ``CHECKPOINT``, no file of the cluster
  holds any form of the number or a sentence the caller said.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from pg import PostgresCluster, database_files, free_port, stored_bytes

from voicecore.cli import cli
from voicecore.records import CallRecord, Turn
from voicecore.storage import (
    DATABASE_URL_ENV,
    StorageError,
    Store,
    TenantKeyMissing,
    UnknownTenant,
    migrate,
)
from voicecore.storage.database import Database

ROOT = Path(__file__).resolve().parent.parent


def worker(tmp_path: Path, name: str) -> Store:
    """One worker: its own data directory and key directory, the shared database and master key."""
    return Store(tmp_path / name, key_dir=tmp_path / f"{name}-keys", allow_insecure_webhooks=True)


def ended_call(tenant: str, text: str = "hello there") -> CallRecord:
    rec = CallRecord(tenant=tenant, caller="+14155552671")
    rec.turns = [Turn("caller", text)]
    rec.ended_at = rec.started_at + 1
    return rec


# --------------------------------------------------------------------------- work claimed once


def test_two_workers_claim_200_deliveries_each_exactly_once(tmp_path: Path, pg_url: str) -> None:
    a, b = worker(tmp_path, "a"), worker(tmp_path, "b")
    a.tenants.create("acme", actor="test")
    a.outbox.create_webhook("acme", "http://127.0.0.1:9/hook", actor="test")
    tenant = a.tenants.row("acme")
    keys = a.tenants.data_keys(tenant)
    for i in range(200):
        with a.db.tx():
            a.outbox.add_in_tx(tenant, keys, "call.ended", {"n": i})
    claimed: dict[str, list[str]] = {"a": [], "b": []}
    dispatched: list[int] = []
    start = threading.Barrier(4)

    def run(store: Store, name: str) -> None:
        start.wait()
        while True:
            dispatched.append(store.outbox.dispatch(limit=50))
            got = store.outbox.claim(limit=7, lease_s=300)
            for d in got:
                claimed[name].append(d.delivery_id)
                store.outbox.delivered(d.delivery_id, status_code=200)
            if not got and not store.db.exists(
                "SELECT 1 AS x FROM outbox WHERE dispatched = 0 OR status = 'pending' LIMIT 1"
            ):
                return

    threads = [threading.Thread(target=run, args=(s, n)) for s, n in ((a, "a"), (b, "b"), (a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    everything = claimed["a"] + claimed["b"]
    assert len(everything) == 200 and len(set(everything)) == 200  # each delivery claimed exactly once
    assert claimed["a"] and claimed["b"], "both workers took part"
    assert sum(dispatched) == 200  # one delivery per event and endpoint, fanned out once
    assert a.db.fetchone("SELECT COUNT(*) FROM webhook_deliveries")[0] == 200
    assert a.db.fetchone("SELECT COUNT(*) FROM outbox WHERE status = 'delivered'")[0] == 200
    assert a.audit.verify().ok
    a.close()
    b.close()


def test_the_audit_chain_has_one_order_under_concurrent_writers(tmp_path: Path, pg_url: str) -> None:
    a, b = worker(tmp_path, "a"), worker(tmp_path, "b")
    a.tenants.create("acme", actor="test")
    script = textwrap.dedent(f"""
        import sys
        from voicecore.storage import Store
        s = Store({str(tmp_path / "c")!r}, key_dir={str(tmp_path / "c-keys")!r})
        for i in range(40):
            s.audit.append("proc", "acme", "process.appended", f"n:{{i}}")
        s.close()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip

    def append(store: Store, who: str) -> None:
        for i in range(40):
            store.audit.append(who, "acme", "thread.appended", f"n:{i}")
            if i % 10 == 0:
                store.calls.save(ended_call("acme"))  # appends inside a larger transaction too

    threads = [threading.Thread(target=append, args=(s, f"{n}{k}")) for k in range(2) for s, n in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert proc.wait(timeout=120) == 0
    check = b.audit.verify()
    assert check.ok, check.reason
    assert check.entries == 2 + 4 * 40 + 40  # tenant and key created, the threads, the process
    ids = [r[0] for r in a.db.fetchall("SELECT id FROM audit_log ORDER BY id")]
    assert ids == list(range(1, len(ids) + 1))
    # a deleted last entry is still found with several writers
    a.db.execute("DELETE FROM audit_log WHERE id = ?", (ids[-1],))
    assert not b.audit.verify().ok
    a.close()
    b.close()


# --------------------------------------------------------------------------- keys


def test_tenant_keys_are_shared_by_workers_and_deleting_the_tenant_destroys_them_for_all(
    tmp_path: Path, pg_url: str, pg_cluster: PostgresCluster
) -> None:
    a, b = worker(tmp_path, "a"), worker(tmp_path, "b")
    a.tenants.create("acme", actor="test")
    rec = ended_call("acme", "the combination is 4711")
    assert a.calls.save(rec)
    got = b.calls.get("acme", rec.call_id, actor="t")  # worker b reads what worker a wrote
    assert got is not None and got.turns is not None and got.turns[0].text == "the combination is 4711"
    keys = b.tenants.data_keys(b.tenants.row("acme"))
    # wrapped under the master key: the database files never hold the key in clear
    on_disk = stored_bytes(a)
    assert keys.enc_key not in on_disk and keys.hash_key not in on_disk
    assert a.db.fetchone("SELECT COUNT(*) FROM wrapped_keys WHERE key_id LIKE 'tenant:%'")[0] == 1

    a.tenants.delete("acme", actor="ops")
    with pytest.raises(TenantKeyMissing):
        b.tenants.data_keys(keys.tenant_id)  # gone for worker b at once: no worker caches tenant keys
    with pytest.raises(UnknownTenant):
        b.calls.get("acme", rec.call_id, actor="t")
    assert a.db.fetchone("SELECT COUNT(*) FROM wrapped_keys WHERE key_id LIKE 'tenant:%'")[0] == 0
    a.close()
    b.close()


def test_a_worker_with_another_master_key_is_told_so(tmp_path: Path, pg_url: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    a = worker(tmp_path, "a")
    a.tenants.create("acme", actor="test")
    a.close()
    monkeypatch.setenv("VOICECORE_MASTER_KEY", "B" * 43 + "=")
    b = worker(tmp_path, "b")
    with pytest.raises(Exception, match="cannot be unwrapped with the master key from VOICECORE_MASTER_KEY"):
        b.tenants.data_keys(b.tenants.row("acme"))
    b.close()


# --------------------------------------------------------------------------- bad URLs, old schemas


def test_a_wrong_password_fails_before_anything_is_written(tmp_path: Path, pg_cluster: PostgresCluster,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    wrong = "not-the-Password-123"
    url = pg_cluster.url("postgres", password=wrong)
    with pytest.raises(StorageError) as err:
        Store(tmp_path / "data", database_url=url)
    message = str(err.value)
    assert f"'postgres' on 127.0.0.1:{pg_cluster.port}" in message and "password authentication failed" in message
    assert wrong not in message and pg_cluster.password not in message
    assert not (tmp_path / "data").exists() and not (tmp_path / "data-keys").exists()  # nothing written


def test_an_unreachable_server_and_a_bad_url_fail_at_start_from_the_cli(tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    secret = "hunter2-Secret"
    runner = CliRunner()
    res = runner.invoke(cli, ["tenants", "list", "--data-dir", str(tmp_path / "d"),
                              "--database-url", f"postgresql://vc:{secret}@127.0.0.1:{port}/voicecore"])  # fmt: skip
    assert res.exit_code == 1
    assert f"PostgreSQL database 'voicecore' on 127.0.0.1:{port} as user 'vc'" in res.output
    assert "refused" in res.output and secret not in res.output
    res = runner.invoke(cli, ["serve", "--data-dir", str(tmp_path / "d"),
                              "--database-url", f"mysql://vc:{secret}@db/voicecore"])  # fmt: skip
    assert res.exit_code == 1 and "'mysql' is not a supported database" in res.output and secret not in res.output
    res = runner.invoke(cli, ["db", "current", "--database-url", f"postgresql://vc:{secret}@127.0.0.1:{port}/"])
    assert res.exit_code == 1 and "names no database" in res.output and secret not in res.output
    assert not (tmp_path / "d").exists()


def test_an_older_schema_is_refused_until_db_upgrade(tmp_path: Path, pg_url: str, pg_cluster: PostgresCluster) -> None:
    db = Database(pg_url)
    with db.engine.begin() as conn:  # a database a previous voicecore left at the baseline revision
        cfg = migrate.alembic_config()
        cfg.attributes["connection"] = conn
        from alembic import command

        command.upgrade(cfg, migrate.BASELINE)
    db.close()
    with pytest.raises(StorageError) as err:
        Store(tmp_path / "data")
    message = str(err.value)
    assert f"revision {migrate.BASELINE}" in message and "voicecore db upgrade --database-url postgresql+psycopg://" in message
    assert pg_cluster.password not in message and ":***@" in message
    runner = CliRunner()
    res = runner.invoke(cli, ["db", "current"])  # the URL from VOICECORE_DATABASE_URL
    assert res.exit_code == 1 and f"revision {migrate.BASELINE}" in res.output and "(behind)" in res.output
    res = runner.invoke(cli, ["db", "upgrade"])
    assert res.exit_code == 0, res.output
    assert f"upgraded from {migrate.BASELINE} to revision {migrate.head_revision()}" in res.output
    assert pg_cluster.password not in res.output
    s = Store(tmp_path / "data")
    s.tenants.create("acme", actor="test")
    assert s.audit.verify().ok
    s.close()
    assert runner.invoke(cli, ["db", "current"]).exit_code == 0


def test_workers_starting_together_on_an_empty_database_create_it_once(tmp_path: Path, pg_url: str) -> None:
    stores: list[Store] = []
    errors: list[BaseException] = []

    def start(name: str) -> None:
        try:
            stores.append(worker(tmp_path, name))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=start, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(stores) == 4
    assert migrate.current(stores[0].db) == migrate.head_revision()
    for s in stores:
        s.close()


# --------------------------------------------------------------------------- erasure, byte by byte


def test_erasure_leaves_no_form_of_the_number_and_no_sentence_in_the_cluster_files(
    tmp_path: Path, pg_url: str, pg_cluster: PostgresCluster
) -> None:
    import test_erasure_bytes as eb

    store = Store(tmp_path / "data", allow_insecure_webhooks=True)
    eb.plant(store)
    n = eb.needles(store)
    heap = lambda: [p for p in database_files(store, wal=False)]  # noqa: E731 - after a CHECKPOINT
    before = b"".join(p.read_bytes() for p in heap())
    stored = {k: v for k, v in n.gone.items() if not k.startswith(("plaintext", "content of"))}
    assert len(stored) >= 15
    assert len([k for k in stored if k.startswith("recording_chunks.data")]) >= 2  # the recordings are rows here
    for label, needle in stored.items():  # the search can find the subject's stored bytes (so it can fail)
        assert needle in before, f"{label} is not in the cluster's data files before erasure"

    result = store.subjects.erase("a", eb.SUBJECT, actor="dpo")  # VACUUM (FULL) of every table
    assert result.calls == 2 and result.opted_out

    everything = stored_bytes(store)  # WAL included, after CHECKPOINT
    for text in [*eb.FORMS, eb.NAME, eb.SENTENCE]:
        assert text.encode() not in everything, f"{text!r} is in the cluster's files"
    after = b"".join(p.read_bytes() for p in heap())
    left = [label for label, needle in stored.items() if needle in after]
    assert not left, f"the subject's stored bytes are still in the data files: {left}"
    for label, needle in n.kept.items():  # tenant b's copy is still found
        assert needle in after, label
    for rel in n.files:
        assert not (store.data_dir / rel).exists()
    eb.assert_erased_in_store(store)
    store.close()


def test_one_retention_sweep_at_a_time_the_others_skip(tmp_path: Path, pg_url: str) -> None:
    a, b = worker(tmp_path, "a"), worker(tmp_path, "b")
    a.tenants.create("acme", actor="test")
    with a.db.tx():
        assert a.db.try_lock("retention")  # worker a is sweeping
        r = b.retention.sweep(actor="test")
        assert r.skipped and r.total == 0
    r = b.retention.sweep(actor="test")
    assert not r.skipped
    assert [e.action for e in b.audit.list()].count("retention.swept") == 1  # the skipped one left no trace
    a.close()
    b.close()


# --------------------------------------------------------------------------- two serve workers


async def test_two_serve_workers_on_one_database_share_calls_keys_and_opt_outs(
    tmp_path: Path, pg_url: str, receptionist
) -> None:  # fmt: skip
    from starlette.routing import NoMatchFound
    from test_api_permissions import AsgiClient

    from voicecore.server import api, create_app
    from voicecore.session import outbound_check

    apps = []
    for name in ("a", "b"):  # what `serve --database-url` builds, with VOICECORE_KEY_DIR per worker
        app = create_app(data_dir=tmp_path / name, preload=False, pipelines={receptionist.name: receptionist},
                         database_url=pg_url)  # fmt: skip
        try:
            app.url_path_for("me")
        except NoMatchFound:
            app.include_router(api.router)
        apps.append(app)
    a, b = (app.state.vc.store for app in apps)
    assert a is not b and a.database == b.database and "PostgreSQL database" in a.database
    key = a.tenants.create("acme", actor="test")  # created on worker a
    rec = ended_call("acme", "please call me back")
    assert a.calls.save(rec)  # a call that ended on worker a
    reply = await AsgiClient(apps[1]).request("GET", "/v1/calls", key=key)  # worker b's API, a's key
    assert reply.status == 200, reply.body
    assert rec.call_id in reply.body.decode()
    assert outbound_check(b, "acme", "+14155552671") is None
    a.subjects.add_optout("acme", "+14155552671", source="call", actor="test")  # spoken on worker a
    assert outbound_check(b, "acme", "+14155552671") is not None  # worker b refuses the number at once
    for s in (a, b):
        s.close()


def test_a_postgresql_restart_between_writes_costs_no_write(tmp_path: Path, pg_url: str,
                                                            pg_cluster: PostgresCluster) -> None:  # fmt: skip
    s = worker(tmp_path, "a")
    s.tenants.create("acme", actor="test")
    assert s.calls.save(ended_call("acme"))
    pg_cluster.restart()  # every pooled connection is now dead
    assert s.calls.save(ended_call("acme"))  # a dead connection is found (pre-ping) and replaced
    assert len(s.calls.list("acme", actor="test")) == 2
    assert s.audit.verify().ok
    s.close()


def test_a_claim_skips_the_rows_another_worker_holds_instead_of_waiting(tmp_path: Path, pg_url: str) -> None:
    import time


    a, b = worker(tmp_path, "a"), worker(tmp_path, "b")
    a.tenants.create("acme", actor="test")
    a.outbox.create_webhook("acme", "http://127.0.0.1:9/hook", actor="test")
    tenant = a.tenants.row("acme")
    keys = a.tenants.data_keys(tenant)
    for i in range(10):
        with a.db.tx():
            a.outbox.add_in_tx(tenant, keys, "call.ended", {"n": i})
    assert a.outbox.dispatch() == 10
    with a.db.tx():  # worker a is in the middle of claiming 4 deliveries
        held = {r[0] for r in a.db.fetchall(a.db.for_update(
            "SELECT id FROM webhook_deliveries ORDER BY next_attempt_at, created_at LIMIT 4"))}  # fmt: skip
        got: set[str] = set()
        t0 = time.monotonic()
        claiming = threading.Thread(target=lambda: got.update(d.delivery_id for d in b.outbox.claim(limit=10, lease_s=300)))
        claiming.start()
        claiming.join(timeout=5)
        waited, still_waiting = time.monotonic() - t0, claiming.is_alive()
    claiming.join(timeout=30)  # (if it waited for a's rows, it goes on now that a is done)
    assert not still_waiting, f"worker b waited {waited:.1f} s for the rows worker a holds"
    assert len(held) == 4 and len(got) == 6 and not (held & got)  # b took the other six
    a.close()
    b.close()


def test_two_workers_creating_the_same_tenant_at_once_one_is_told_it_exists(tmp_path: Path, pg_url: str) -> None:
    from voicecore.storage import TenantExists

    stores = [worker(tmp_path, n) for n in ("a", "b", "c", "d")]
    outcomes: list[str] = []
    start = threading.Barrier(len(stores))

    def create(s: Store) -> None:
        start.wait()
        try:
            s.tenants.create("acme", actor="test", with_key=False)
            outcomes.append("created")
        except TenantExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=create, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["created", "exists", "exists", "exists"]
    assert stores[0].db.fetchone("SELECT COUNT(*) FROM wrapped_keys WHERE key_id LIKE 'tenant:%'")[0] == 1
    assert stores[1].audit.verify().ok
    for s in stores:
        s.close()
