"""Data-subject rights: export, erasure (every form of the number, every file), restriction."""

from __future__ import annotations

import io
import json
import math
import stat
import struct
import wave
from pathlib import Path

import pytest
from pg import database_files, stored_bytes

from voicecore.policy import InvalidPhoneNumber
from voicecore.records import CallRecord, Turn
from voicecore.storage import Store
from voicecore.views import call_view

pytestmark = pytest.mark.usefixtures("database")

E164 = "+14155552671"
NATIONAL = "(415) 555-2671"
SPOKEN = "four one five five five five two six seven one"
FORMS = [E164, NATIONAL, SPOKEN, "4155552671", "415-555-2671", "415 555 2671"]
POLICY = """
recording: {mode: on}
retention: {recordings: 30, transcripts: 90, reports: 90, metadata: 365, contacts: 90}
transcripts: {store_redacted: false}
"""



def tone(freq: float, seconds: float = 1.0, rate: int = 8000) -> bytes:
    n = int(seconds * rate)
    return struct.pack(f"<{n}h", *(int(9000 * math.sin(2 * math.pi * freq * i / rate)) for i in range(n)))


def every_file(store: Store) -> list[Path]:
    """The data directory's files and the database's (on PostgreSQL the cluster's data files,
    after a CHECKPOINT; its WAL is searched for the number only: see the erasure test)."""
    files = {p for p in store.data_dir.rglob("*") if p.is_file()}
    return sorted(files | set(database_files(store, wal=False)))


def raw_hits(store: Store, needles: list[bytes]) -> int:
    return sum(p.read_bytes().count(n) for p in every_file(store) for n in needles)


def subject_call(tenant: str, marker: str, caller: str = NATIONAL) -> CallRecord:
    r = CallRecord(tenant=tenant, caller=caller, callee="+14155550000", pipeline="demo", transport="twilio",
                   provider_ids={"callSid": f"CA-{marker}"})  # fmt: skip
    r.turns = [
        Turn("agent", "Hello, what number can we reach you on?"),
        Turn("caller", f"It's {SPOKEN}, or {E164}."),
        Turn("agent", f"So that's {NATIONAL}?"),
    ]
    r.ended_at = r.started_at + 20
    r.end_reason = "hangup"
    return r


@pytest.fixture
def populated(tmp_path: Path) -> Store:
    s = Store(tmp_path / "data")
    for tenant in ("a", "b"):
        s.tenants.create(tenant, policy_yaml=POLICY, actor="test")
        for n in range(2):
            rec = subject_call(tenant, f"{tenant.upper()}-SUBJECT-{n}", caller=[E164, NATIONAL][n])
            s.calls.save(rec)
            with s.calls.open_recording(tenant, rec.call_id, 8000, caller=rec.caller) as w:
                w.write(tone(700.0 + n))
            s.calls.save_report(tenant, rec.call_id, {"contact": {"phone": NATIONAL}, "summary": f"call back on {E164}"})
        s.subjects.upsert_contact(tenant, E164, {"name": "Ada", "alt": SPOKEN})
        # another caller mentions the subject's number
        other = subject_call(tenant, f"{tenant.upper()}-OTHER", caller="+14155550199")
        other.turns[1] = Turn("caller", f"my friend's number is {NATIONAL}, mine is 415 555 0199")
        s.calls.save(other)
        s.subjects.upsert_contact(tenant, "+14155550199", {"name": "Bob", "note": f"friend of {E164}"})
    s.subjects.add_optout("a", E164, source="call", actor="test")
    yield s
    s.close()


def subject_ciphertexts(store: Store, tenant: str) -> list[bytes]:
    tid = store.db.fetchone("SELECT id FROM tenants WHERE name = ?", [tenant])[0]
    h = store.subjects.hash(tenant, E164)
    blobs: list[bytes] = []
    queries = [
        ("SELECT caller_enc FROM calls WHERE tenant_id = ? AND caller_hash = ?", (tid, h)),
        ("SELECT text_enc FROM turns WHERE tenant_id = ? AND call_id IN (SELECT call_id FROM calls WHERE caller_hash = ?)",
         (tid, h)),
        ("SELECT body_enc FROM reports WHERE tenant_id = ? AND subject_hash = ?", (tid, h)),
        ("SELECT fields_enc FROM contacts WHERE tenant_id = ? AND phone_hash = ?", (tid, h)),
        ("SELECT phone_enc FROM opt_outs WHERE tenant_id = ? AND phone_hash = ?", (tid, h)),
        ("SELECT payload_enc FROM outbox WHERE tenant_id = ? AND subject_hash = ?", (tid, h)),
        # PostgreSQL: the recordings' chunks are rows (SQLite: files, searched as such)
        ("SELECT c.data FROM recording_chunks c JOIN recordings r ON r.id = c.recording_id "
         "WHERE r.tenant_id = ? AND r.subject_hash = ?", (tid, h)),
    ]  # fmt: skip
    for sql, params in queries:
        blobs += [row[0][1:33] for row in store.db.fetchall(sql, params) if row[0]]
    return blobs


def test_erasure_removes_every_form_everywhere_and_leaves_other_tenant_intact(populated: Store) -> None:
    s = populated
    a_blobs = subject_ciphertexts(s, "a")
    b_blobs = subject_ciphertexts(s, "b")
    assert len(a_blobs) >= 10
    vcrec = [p for p in every_file(s) if p.suffix == ".vcrec"]
    in_db = s.db.fetchone("SELECT count(DISTINCT recording_id) FROM recording_chunks")[0]
    assert (len(vcrec), in_db) == ((4, 0) if s.db.is_sqlite else (0, 4))  # 2 at A, 2 at B: files or chunk rows
    markers = [b"CA-A-SUBJECT-0", b"CA-A-SUBJECT-1"]
    s.retention.sweep(actor="test")  # compact first: every byte is in the main db file
    assert raw_hits(s, markers) == 2  # the search can find A's data before erasure
    assert raw_hits(s, a_blobs) >= len(a_blobs)
    a_call_ids = [c.call_id for c in s.calls.list("a", phone=E164, actor="test")]
    assert len(a_call_ids) == 2
    a_rec_files = [
        s.data_dir / row[0]
        for row in s.db.fetchall(
            "SELECT path FROM recordings r JOIN tenants t ON t.id = r.tenant_id WHERE t.name = 'a'"
        )
    ]

    result = s.subjects.erase("a", "415.555.2671", actor="dpo")

    assert (result.calls, result.turns, result.recordings, result.reports, result.contacts) == (2, 6, 2, 2, 1)
    assert result.mentions_scrubbed >= 2 and result.opted_out and result.wal_truncated
    # every form of the number, A's clear markers and A's ciphertexts: 0 hits in any file
    needles = [f.encode() for f in FORMS] + markers + a_blobs
    for p in every_file(s):
        data = p.read_bytes()
        for n in needles:
            assert n not in data, f"{n[:20]!r} left in {p.name}"
    everything = stored_bytes(s)  # with PostgreSQL's WAL too: the number was never written in clear
    for form in FORMS:
        assert form.encode() not in everything
    for p in a_rec_files:
        assert not p.exists()
    assert s.db.fetchone("SELECT count(DISTINCT recording_id) FROM recording_chunks")[0] == (0 if s.db.is_sqlite else 2)
    # nothing of the subject is left at A, decrypted
    assert s.calls.list("a", phone=E164, actor="test") == []
    for cid in a_call_ids:
        assert s.calls.get("a", cid, actor="t") is None
    assert s.subjects.contact("a", E164, actor="test") is None
    for call in s.calls.list("a", actor="test"):
        full = s.calls.get("a", call.call_id, actor="t")
        text = json.dumps(call_view(full))
        for form in FORMS:
            assert form not in text
        assert "[erased]" in text and "415 555 0199" in text
    assert E164 not in json.dumps(s.subjects.contact("a", "+14155550199", actor="test"))
    # only the keyed hash is left: the opt-out still works
    assert s.subjects.is_opted_out("a", E164)
    (entry,) = s.subjects.optouts("a", actor="test")
    assert entry.phone is None
    # tenant B untouched
    assert len(s.calls.list("b", phone=E164, actor="test")) == 2
    assert raw_hits(s, b_blobs) >= len(b_blobs)
    b_call = s.calls.get("b", s.calls.list("b", phone=E164, actor="test")[0].call_id, actor="t")
    assert SPOKEN in b_call.turns[1].text  # type: ignore[index,union-attr]
    assert s.calls.read_recording("b", b_call.call_id, actor="t") is not None  # type: ignore[union-attr]
    assert s.subjects.contact("b", E164, actor="test") == {"name": "Ada", "alt": SPOKEN, "phone": E164}
    # audited without the number; announced to the tenant
    (audit,) = [e for e in s.audit.list("a") if e.action == "subject.erased"]
    assert audit.actor == "dpo" and E164 not in str(audit) and "2671" not in str(audit)
    assert [e.type for e in s.outbox.events("a", actor="test")][-1] == "subject.erased"
    assert s.audit.verify().ok


def test_export_contains_everything_for_the_number_and_nothing_else(populated: Store, tmp_path: Path) -> None:
    s = populated
    out = s.subjects.export("a", NATIONAL, tmp_path / "exports", actor="dpo")
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    doc = json.loads((out / "export.json").read_text())
    assert doc["subject"] == E164 and doc["tenant"] == "a"
    assert doc["opted_out"] is True and doc["restricted"] is False
    assert len(doc["calls"]) == 2
    assert {c["provider_ids"]["callSid"] for c in doc["calls"]} == {"CA-A-SUBJECT-0", "CA-A-SUBJECT-1"}
    assert all(len(c["turns"]) == 3 for c in doc["calls"])
    assert SPOKEN in doc["calls"][0]["turns"][1]["text"]
    assert len(doc["reports"]) == 2 and doc["reports"][0]["report"]["contact"]["phone"] == NATIONAL
    assert doc["contacts"] == [{"name": "Ada", "alt": SPOKEN, "phone": E164}]
    assert len(doc["recordings"]) == 2
    for rec in doc["recordings"]:
        with wave.open(io.BytesIO((out / rec["file"]).read_bytes())) as w:
            assert w.getframerate() == 8000 and w.getnframes() == 8000
    # the other caller's call and tenant B's data are not in A's export
    text = json.dumps(doc)
    assert "CA-A-OTHER" not in text and "CA-B" not in text
    assert any(e.action == "subject.exported" for e in s.audit.list("a"))


def test_subject_requests_need_a_real_number(populated: Store, tmp_path: Path) -> None:
    with pytest.raises(InvalidPhoneNumber):
        populated.subjects.erase("a", "not a number", actor="test")
    with pytest.raises(InvalidPhoneNumber):
        populated.subjects.export("a", "12", tmp_path, actor="test")


def test_restriction_blocks_storage_without_deleting(populated: Store) -> None:
    s = populated
    before = len(s.calls.list("b", phone=E164, actor="test"))
    assert s.subjects.restrict("b", NATIONAL, actor="dpo")
    assert not s.subjects.restrict("b", E164, actor="test")
    assert s.subjects.is_restricted("b", "+1 415 555 2671")
    assert not s.calls.save(subject_call("b", "B-NEW"))
    assert len(s.calls.list("b", phone=E164, actor="test")) == before  # nothing deleted, nothing added
    assert any(e.action == "subject.restricted" for e in s.audit.list("b"))
