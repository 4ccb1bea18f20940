"""Recordings in PostgreSQL (``recording_chunks``): written on one worker, read on another; the
chunk rows are as tamper-evident as a file; a PostgreSQL restart mid-recording loses nothing;
erasure, tenant deletion and retention leave no chunk row. Real PostgreSQL (``pg_url``)."""

from __future__ import annotations

import io
import math
import struct
import threading
import time
import wave
from pathlib import Path

import pytest
from loguru import logger
from pg import PostgresCluster, RawConnection, wait_until_ready

from voicecore.records import CallRecord, Turn
from voicecore.storage import RecordingError, Store
from voicecore.storage.recording import read_recording_rows

ON = "recording: {mode: on}\nretention: {recordings: 2, transcripts: 5, reports: 5, metadata: 10, contacts: 5}\n"
CALLER = "+14155552671"
DAY = 86400.0


def tone(seconds: float = 2.0, rate: int = 8000, freq: float = 987.0) -> bytes:
    n = int(seconds * rate)
    return struct.pack(f"<{n}h", *(int(11000 * math.sin(2 * math.pi * freq * i / rate)) for i in range(n)))


def worker(tmp_path: Path, name: str, **kw: object) -> Store:
    """One worker: its own data and key directory; the database and master key of ``pg_url``."""
    return Store(tmp_path / name, key_dir=tmp_path / f"{name}-keys", **kw)  # type: ignore[arg-type]


def pcm_of(wav: bytes | None) -> bytes:
    assert wav is not None
    with wave.open(io.BytesIO(wav)) as r:
        return r.readframes(r.getnframes())


def chunk_rows(store: Store, recording_id: str | None = None) -> list[tuple[str, int, bytes]]:
    sql = "SELECT recording_id, idx, data FROM recording_chunks"
    rows = store.db.fetchall(sql + (" WHERE recording_id = ?" if recording_id else "") + " ORDER BY recording_id, idx",
                             (recording_id,) if recording_id else ())  # fmt: skip
    return [(r, i, bytes(d)) for r, i, d in rows]


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def record(store: Store, call_id: str, pcm: bytes, *, caller: str | None = None) -> str:
    """A recording written as the pipeline does it: 20 ms frames, 200 ms chunks."""
    with store.calls.open_recording("acme", call_id, 8000, caller=caller, chunk_bytes=3200) as w:
        for i in range(0, len(pcm), 320):
            w.write(pcm[i : i + 320])
    assert w.complete
    return w.recording_id


@pytest.fixture
def workers(tmp_path: Path, pg_url: str):
    a, b = worker(tmp_path, "a"), worker(tmp_path, "b")
    a.tenants.create("acme", policy_yaml=ON, actor="test")
    yield a, b
    for s in (a, b):
        s.close()


def test_a_recording_written_on_one_worker_is_read_on_another(workers, tmp_path: Path) -> None:
    a, b = workers
    pcm = tone()
    rec_id = record(a, "call-1", pcm)
    row = b.db.one("SELECT location, complete, bytes, path FROM recordings WHERE id = ?", (rec_id,))
    assert row is not None and (row["location"], row["complete"], row["bytes"]) == ("database", 1, len(pcm))
    rows = chunk_rows(b, rec_id)
    assert [i for _, i, _ in rows] == list(range(len(pcm) // 3200 + 1))  # 200 ms chunks and the final one
    stored = b"".join(d for _, _, d in rows)
    assert all(pcm[o : o + 64] not in stored for o in range(0, len(pcm) - 64, 1600))  # ciphertext only
    assert pcm_of(b.calls.read_recording("acme", "call-1", actor="analyst")) == pcm  # worker b reads a's recording
    (entry,) = [e for e in b.audit.list("acme") if e.action == "recording.read"]
    assert entry.actor == "analyst"
    assert files_under(tmp_path / "a" / "recordings") == [] and files_under(tmp_path / "b" / "recordings") == []
    assert not (tmp_path / "a" / "recordings").exists()


def test_swapped_moved_missing_or_changed_chunk_rows_are_detected(workers) -> None:
    a, b = workers
    pcm = tone(1.0)
    rec_id = record(a, "call-1", pcm)
    other_id = record(a, "call-2", tone(1.0, freq=440.0))
    assert pcm_of(b.calls.read_recording("acme", "call-1", actor="t")) == pcm  # intact: reads (so the test can fail)
    with RawConnection(b) as raw:
        (d1,), (d2,) = (raw.execute("SELECT data FROM recording_chunks WHERE recording_id = ? AND idx = ?",
                                    (rec_id, i)).fetchone() for i in (1, 2))  # fmt: skip

        def put(idx: int, data: bytes, rid: str = rec_id) -> None:
            raw.execute("UPDATE recording_chunks SET data = ? WHERE recording_id = ? AND idx = ?", (data, rid, idx))

        put(1, d2), put(2, d1)  # swapped
        with pytest.raises(RecordingError, match="chunk 1 does not authenticate"):
            b.calls.read_recording("acme", "call-1", actor="t")
        put(1, d1), put(2, d2)
        (o1,) = raw.execute("SELECT data FROM recording_chunks WHERE recording_id = ? AND idx = 1", (other_id,)).fetchone()
        put(1, o1)  # the same position of another recording
        with pytest.raises(RecordingError, match="chunk 1 does not authenticate"):
            b.calls.read_recording("acme", "call-1", actor="t")
        put(1, d1)
        raw.execute("UPDATE recordings SET sample_rate = 16000 WHERE id = ?", (rec_id,))  # the derived header changes
        with pytest.raises(RecordingError, match="chunk 0 does not authenticate"):
            b.calls.read_recording("acme", "call-1", actor="t")
        raw.execute("UPDATE recordings SET sample_rate = 8000 WHERE id = ?", (rec_id,))
        assert pcm_of(b.calls.read_recording("acme", "call-1", actor="t")) == pcm  # restored: reads again
        saved = raw.execute("SELECT idx, data FROM recording_chunks WHERE recording_id = ? AND idx = 2",
                            (rec_id,)).fetchone()  # fmt: skip
        raw.execute("DELETE FROM recording_chunks WHERE recording_id = ? AND idx = 2", (rec_id,))  # one from the middle
        with pytest.raises(RecordingError, match="chunk 2 is missing"):
            b.calls.read_recording("acme", "call-1", actor="t")
        raw.execute("INSERT INTO recording_chunks (recording_id, idx, data) VALUES (?, ?, ?)", (rec_id, *saved))
        (last,) = raw.execute("SELECT max(idx) FROM recording_chunks WHERE recording_id = ?", (rec_id,)).fetchone()
        raw.execute("DELETE FROM recording_chunks WHERE recording_id = ? AND idx = ?", (rec_id, last))  # the final one
        with pytest.raises(RecordingError, match="final chunk is missing"):  # the row says it was completed
            b.calls.read_recording("acme", "call-1", actor="t")
    # read as a crash would leave it (no row flag): the audio up to the last chunk, complete=False
    keys = b.tenants.data_keys(b.tenants.row("acme"))
    got = read_recording_rows([(i, d) for _, i, d in chunk_rows(b, rec_id)], keys, rec_id, sample_rate=8000,
                              channels=1, sample_width=2)  # fmt: skip
    assert not got.complete and got.pcm == pcm[: len(pcm) // 3200 * 3200]


def test_a_postgresql_restart_while_recording_loses_no_chunk(tmp_path: Path, pg_url: str, pg_cluster: PostgresCluster) -> None:
    a = worker(tmp_path, "a")
    a.tenants.create("acme", policy_yaml=ON, actor="test")
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    pcm = tone(6.0)
    third = len(pcm) // 3 // 320 * 320
    try:
        w = a.calls.open_recording("acme", "call-1", 8000, chunk_bytes=3200)
        spool = a.calls._spool
        assert spool is not None
        spool.warn_bytes = 8000  # a small limit, so the test sees the warning
        for i in range(0, third, 320):
            w.write(pcm[i : i + 320])
        assert a.calls.flush_recordings(30)
        before = spool.inserted
        assert before == third // 3200  # streamed while the call runs
        pg_cluster.stop_server()
        try:
            started = time.monotonic()
            for i in range(third, 2 * third, 320):  # the call goes on: write() does not touch the database
                w.write(pcm[i : i + 320])
            assert time.monotonic() - started < 5.0, "write() waited for the database"
            assert not a.calls.flush_recordings(1.0)  # the chunks are queued, not lost and not inserted
            assert spool.inserted == before and spool.pending >= third // 3200 - 1
            assert any("waiting for the database" in m and "none dropped" in m for m in warnings), warnings
            assert any("cannot be written (OperationalError)" in m for m in warnings), warnings
        finally:
            pg_cluster.start_server()
            wait_until_ready(pg_cluster)
        for i in range(2 * third, len(pcm), 320):
            w.write(pcm[i : i + 320])
        w.close()  # flushes everything queued and marks the row complete
        assert w.complete and spool.pending == 0 and spool.dropped == 0
    finally:
        logger.remove(sink)
    b = worker(tmp_path, "b")  # another worker, after the restart
    assert pcm_of(b.calls.read_recording("acme", "call-1", actor="t")) == pcm
    assert b.db.fetchone("SELECT complete, bytes FROM recordings") == (1, len(pcm))
    for s in (a, b):
        s.close()


def test_erasure_and_tenant_deletion_leave_no_chunk_row(workers) -> None:
    a, b = workers
    rec = CallRecord(tenant="acme", caller=CALLER)
    rec.turns = [Turn("caller", "hello")]
    rec.ended_at = rec.started_at + 1
    assert a.calls.save(rec)
    subject_rec = record(a, rec.call_id, tone(1.0), caller=CALLER)
    kept = record(a, "call-other", tone(1.0), caller="+14155550199")
    assert len(chunk_rows(b, subject_rec)) == 6 and len(chunk_rows(b, kept)) == 6
    result = b.subjects.erase("acme", CALLER, actor="dpo")  # on worker b
    assert result.recordings == 1
    assert chunk_rows(b, subject_rec) == [] and len(chunk_rows(b, kept)) == 6
    # a recording erased while it is being written: its queued chunks are dropped, never inserted
    w = a.calls.open_recording("acme", "call-live", 8000, caller=CALLER, chunk_bytes=3200)
    w.write(tone(0.5))
    assert a.calls.flush_recordings(30) and len(chunk_rows(a, w.recording_id)) == 2  # 2 of 200 ms
    b.subjects.erase("acme", CALLER, actor="dpo")
    w.write(tone(1.0))
    w.close()
    assert not w.complete and chunk_rows(a, w.recording_id) == [] and a.calls._spool.dropped == 6  # type: ignore[union-attr]
    b.tenants.delete("acme", actor="ops")
    assert chunk_rows(b) == []


def test_retention_sweep_deletes_expired_chunk_rows(tmp_path: Path, pg_url: str) -> None:
    now = [1_800_000_000.0]
    a = worker(tmp_path, "a", clock=lambda: now[0])
    a.tenants.create("acme", policy_yaml=ON, actor="test")
    rec_id = record(a, "call-1", tone(1.0))
    now[0] += 1 * DAY
    assert a.retention.sweep(actor="test").deleted["recording_chunks"] == 0
    assert len(chunk_rows(a, rec_id)) == 6
    now[0] += 1.5 * DAY  # recordings are kept 2 days
    r = a.retention.sweep(actor="test")
    assert r.deleted["recordings"] == 1 and r.deleted["recording_chunks"] == 6 and r.files_removed == 0
    assert chunk_rows(a) == [] and a.calls.read_recording("acme", "call-1", actor="t") is None
    a.close()


def test_write_never_waits_for_the_database_lock(workers) -> None:
    """The event loop's write(): while another thread holds the store's database (a slow query,
    a reconnect), write() still returns at once; the chunks go in when the database is free."""
    a, b = workers
    pcm = tone(2.0)
    w = a.calls.open_recording("acme", "call-1", 8000, chunk_bytes=3200)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with a.db.lock:
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(10)
        done = threading.Event()
        writer = threading.Thread(target=lambda: (w.write(pcm), done.set()))
        writer.start()
        assert done.wait(10), "write() blocked on the database"
    finally:
        release.set()
        t.join()
    writer.join()
    w.close()
    assert pcm_of(b.calls.read_recording("acme", "call-1", actor="t")) == pcm


async def test_worker_b_api_serves_the_recording_worker_a_wrote(tmp_path: Path, pg_url: str, receptionist) -> None:
    """``GET /v1/calls/{id}/recording`` on another serve worker: the WAV of the call worker a recorded."""
    from starlette.routing import NoMatchFound
    from test_api_permissions import AsgiClient

    from voicecore.server import api, create_app

    apps = []
    for name in ("a", "b"):
        app = create_app(data_dir=tmp_path / name, preload=False, pipelines={receptionist.name: receptionist},
                         database_url=pg_url)  # fmt: skip
        try:
            app.url_path_for("me")
        except NoMatchFound:
            app.include_router(api.router)
        apps.append(app)
    a, b = (app.state.vc.store for app in apps)
    key = a.tenants.create("acme", policy_yaml=ON, actor="test")
    rec = CallRecord(tenant="acme", caller=CALLER)
    rec.turns = [Turn("caller", "hello")]
    rec.ended_at = rec.started_at + 1
    assert a.calls.save(rec)
    pcm = tone(1.5)
    record(a, rec.call_id, pcm, caller=CALLER)
    reply = await AsgiClient(apps[1]).request("GET", f"/v1/calls/{rec.call_id}/recording", key=key)
    assert reply.status == 200, reply.body
    assert pcm_of(reply.body) == pcm
    assert [e.action for e in b.audit.list("acme")].count("recording.read") == 1
    assert files_under(tmp_path / "a" / "recordings") == [] and files_under(tmp_path / "b" / "recordings") == []
    for s in (a, b):
        s.close()
