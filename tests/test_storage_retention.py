"""Retention: expired data is deleted and its bytes are gone from the database, -wal, -shm and recordings."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest

from voicecore.records import CallRecord, Turn, TurnTimeline
from voicecore.storage import Store

pytestmark = pytest.mark.usefixtures("database")

DAY = 86400.0
T0 = 1_800_000_000.0
PHRASE = "PLANTED-OKAPI-PHRASE"
POLICY = """
recording: {mode: on}
retention: {recordings: 2, transcripts: 5, reports: 5, metadata: 10, contacts: 5}
transcripts: {store_redacted: false}
"""


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now



def tone(freq: float = 1234.0, seconds: float = 2.0, rate: int = 16000) -> bytes:
    n = int(seconds * rate)
    return struct.pack(f"<{n}h", *(int(12000 * math.sin(2 * math.pi * freq * i / rate)) for i in range(n)))


def db_and_recording_files(store: Store) -> list[Path]:
    files = list(store.files())
    if store.recordings_dir.exists():
        files += [p for p in store.recordings_dir.rglob("*") if p.is_file()]
    return files


def count_hits(files: list[Path], needles: list[bytes]) -> int:
    return sum(p.read_bytes().count(n) for p in files for n in needles)


def planted_call(tenant: str) -> CallRecord:
    tl = TurnTimeline(speech_end=1.0, stt_final=1.1, first_audio_out=1.5)
    r = CallRecord(tenant=tenant, caller="+14155552671", pipeline=f"pipeline-{PHRASE}", transport="twilio",
                   provider_ids={"callSid": f"CA-{PHRASE}"}, started_at=T0, flags={"note": PHRASE})  # fmt: skip
    r.turns = [Turn("caller", f"the password is {PHRASE}", timeline=tl), Turn("agent", f"you said {PHRASE}")]
    r.ended_at = T0 + 30
    r.end_reason = f"hangup-{PHRASE}"
    return r


@pytest.mark.databases("sqlite")  # the SQLite file and its -wal; PostgreSQL: plain VACUUM (README)
def test_sweep_removes_expired_data_and_leaves_no_bytes(tmp_path: Path) -> None:
    clock = Clock(T0)
    store = Store(tmp_path / "data", clock=clock)
    store.tenants.create("a", policy_yaml=POLICY, actor="test")
    store.tenants.create("keeper", policy_yaml=POLICY.replace("metadata: 10", "metadata: 3000"), actor="test")
    rec = planted_call("a")
    store.calls.save(rec)
    store.calls.save_report("a", rec.call_id, {"summary": PHRASE})
    store.subjects.upsert_contact("a", "+14155552671", {"name": PHRASE})
    pcm = tone()
    with store.calls.open_recording("a", rec.call_id, 16000, caller=rec.caller) as w:
        for i in range(0, len(pcm), 640):
            w.write(pcm[i : i + 640])
    keep = planted_call("keeper")
    keep.end_reason = "hangup"
    keep.pipeline = keep.provider_ids["callSid"] = "kept"
    keep.flags = {}
    store.calls.save(keep)

    # What the encrypted rows look like on disk: these exact bytes must vanish too.
    blobs: list[bytes] = []
    for sql in (
        "SELECT text_enc FROM turns t JOIN tenants n ON n.id = t.tenant_id WHERE n.name = 'a'",
        "SELECT generated_enc FROM turns t JOIN tenants n ON n.id = t.tenant_id WHERE n.name = 'a'",
        "SELECT caller_enc FROM calls c JOIN tenants n ON n.id = c.tenant_id WHERE n.name = 'a'",
        "SELECT body_enc FROM reports",
        "SELECT fields_enc FROM contacts",
        "SELECT payload_enc FROM outbox o JOIN tenants n ON n.id = o.tenant_id WHERE n.name = 'a'",
    ):
        blobs += [row[0][1:40] for row in store.db.sqlite.execute(sql).fetchall() if row[0] is not None]
    assert len(blobs) >= 6
    recording_bytes = [p.read_bytes() for p in store.recordings_dir.rglob("*.vcrec")]
    assert len(recording_bytes) == 1
    needles = [PHRASE.encode(), *blobs, recording_bytes[0][-64:], pcm[3200:3264]]

    # Before the sweep the planted data is on disk: the search below can find it.
    assert count_hits(db_and_recording_files(store), [PHRASE.encode()]) > 0
    assert count_hits(db_and_recording_files(store), blobs) >= len(blobs)

    # Nothing has expired after one day.
    r = store.retention.sweep(datetime.fromtimestamp(T0 + DAY, UTC), actor="test")
    assert r.total == 0
    assert store.calls.read_recording("a", rec.call_id, actor="t") is not None

    # Day 3: the recording (2 days) is gone, file included.
    clock.now = T0 + 3 * DAY
    r = store.retention.sweep(actor="test")
    assert r.deleted["recordings"] == 1 and r.files_removed == 1
    assert list(store.recordings_dir.rglob("*.vcrec")) == []
    assert store.calls.read_recording("a", rec.call_id, actor="t") is None

    # Day 6: transcripts, report and contact are gone; metadata and timelines stay.
    r = store.retention.sweep(T0 + 6 * DAY, actor="test")
    # (both tenants keep transcripts 5 days: 2 turns each)
    assert r.transcripts_cleared == 4 and r.deleted["reports"] == 1 and r.deleted["contacts"] == 1
    call = store.calls.get("a", rec.call_id, actor="t")
    assert call is not None and call.turns is not None
    assert [t.text for t in call.turns] == [None, None]
    assert call.turns[0].timeline is not None
    assert count_hits(db_and_recording_files(store), blobs[:2]) == 0

    # Day 11: everything of tenant a has expired.
    r = store.retention.sweep(T0 + 11 * DAY, actor="test")
    assert r.deleted["calls"] == 1 and r.wal_truncated
    assert store.calls.get("a", rec.call_id, actor="t") is None
    files = db_and_recording_files(store)
    assert any(p.name.endswith("-wal") for p in files)
    for p in files:
        assert count_hits([p], needles) == 0, f"planted data left in {p.name}"
    wal = Path(f"{store.db_path}-wal")
    assert wal.stat().st_size == 0
    for table in ("calls", "turns", "reports", "contacts", "recordings"):
        n = store.db.sqlite.execute(
            f"SELECT COUNT(*) FROM {table} x JOIN tenants t ON t.id = x.tenant_id WHERE t.name = 'a'"
        ).fetchone()[0]
        assert n == 0, table
    # the other tenant's longer-lived metadata is still there
    assert store.calls.get("keeper", keep.call_id, actor="t") is not None
    assert any(e.action == "retention.swept" for e in store.audit.list())
    store.close()


@pytest.mark.databases("sqlite")  # files; a chunk row cannot outlive its recording (foreign key, ON DELETE CASCADE)
def test_sweep_removes_orphaned_recording_files(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", clock=Clock(T0))
    store.tenants.create("a", policy_yaml=POLICY, actor="test")
    w = store.calls.open_recording("a", "call-1", 8000)
    w.write(b"\x01\x02" * 8000)
    w.close()
    # a crash between deleting the row and unlinking the file leaves an orphan
    store.db.execute("DELETE FROM recordings")
    orphan = next(store.recordings_dir.rglob("*.vcrec"))
    r = store.retention.sweep(T0, actor="test")
    assert r.files_removed == 1 and not orphan.exists()
    store.close()


def test_naive_now_is_utc(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", clock=Clock(T0))
    store.tenants.create("a", policy_yaml=POLICY, actor="test")
    store.calls.save(planted_call("a"))
    naive = datetime.fromtimestamp(T0 + 11 * DAY, UTC).replace(tzinfo=None)
    assert store.retention.sweep(naive, actor="test").deleted["calls"] == 1
    store.close()


def test_opt_outs_outlive_every_retention_period_until_the_tenant_removes_them(tmp_path: Path) -> None:
    """Privacy rule 2: opt-outs are kept until the tenant removes them, whatever the lifetimes."""
    clock = Clock(T0)
    store = Store(tmp_path / "data", clock=clock)
    store.tenants.create("a", policy_yaml=POLICY, actor="test")
    rec = planted_call("a")
    store.calls.save(rec)
    assert store.subjects.add_optout("a", rec.caller, call_id=rec.call_id, actor="test")
    ten_years = datetime.fromtimestamp(T0 + 3650 * DAY, UTC)
    store.retention.sweep(ten_years, actor="test")
    assert store.calls.get("a", rec.call_id, actor="test") is None  # the call itself is gone
    assert store.subjects.is_opted_out("a", rec.caller)  # the opt-out is not
    assert store.subjects.remove_optout("a", rec.caller, actor="test")
    assert not store.subjects.is_opted_out("a", rec.caller)
