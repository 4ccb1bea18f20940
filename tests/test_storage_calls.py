"""Saving, listing and reading calls: policy-driven storage, encryption at rest, tenant isolation."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from voicecore.records import CallRecord, Turn, TurnTimeline
from voicecore.storage import Store

pytestmark = pytest.mark.usefixtures("database")

POLICIES = Path(__file__).resolve().parent.parent / "policies"
CARD = "4111 1111 1111 1111"



TENANTS = {"a": None, "b": None}


def all_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def make_call(
    tenant: str, caller: str = "+14155552671", text: str = "hello there", started: float = 1_000.0
) -> CallRecord:
    tl = TurnTimeline()
    tl.mark("speech_end", 10.0)
    tl.mark("stt_final", 10.05)
    tl.mark("first_audio_out", 10.6)
    r = CallRecord(tenant=tenant, caller=caller, callee="+14155550000", pipeline="demo", transport="twilio",
                   provider_ids={"streamSid": "MZ123"}, started_at=started)  # fmt: skip
    r.turns = [
        Turn("agent", "Hi, how can I help?", kind="greeting"),
        Turn("caller", text, timeline=tl),
        Turn("agent", "Sure thing, I will", interrupted=True, generated_text="Sure thing, I will book it now."),
        Turn("event", "5", kind="dtmf"),
    ]
    r.ended_at = started + 42.5
    r.end_reason = "hangup"
    return r


def test_save_list_get(store: Store) -> None:
    rec = make_call("a", text="I'd like to book a table")
    assert store.calls.save(rec)
    (listed,) = store.calls.list("a", actor="test")
    assert listed.call_id == rec.call_id and listed.turns is None
    assert listed.caller == "+14155552671" and listed.duration_s == 42.5 and listed.end_reason == "hangup"
    got = store.calls.get("a", rec.call_id, actor="analyst-1")
    assert got is not None and got.turns is not None
    assert [t.role for t in got.turns] == ["agent", "caller", "agent", "event"]
    assert got.turns[1].text == "I'd like to book a table"
    assert got.turns[1].timeline is not None
    assert got.turns[1].timeline["voice_to_voice_ms"] == 600.0
    assert got.turns[2].interrupted and got.turns[2].generated_text == "Sure thing, I will book it now."
    assert got.turns[3].kind == "dtmf"
    assert got.provider_ids == {"streamSid": "MZ123"}


def test_reading_a_transcript_is_audited_metadata_is_not(store: Store) -> None:
    rec = make_call("a")
    store.calls.save(rec)
    store.calls.get("a", rec.call_id, actor="viewer-key", include_transcript=False)
    assert not [e for e in store.audit.list("a") if e.action == "transcript.read"]
    store.calls.get("a", rec.call_id, actor="analyst-key")
    (entry,) = [e for e in store.audit.list("a") if e.action == "transcript.read"]
    assert entry.actor == "analyst-key" and entry.object_id == f"call:{rec.call_id}"


def test_other_tenants_call_is_not_found(store: Store) -> None:
    rec = make_call("a")
    store.calls.save(rec)
    assert store.calls.get("b", rec.call_id, actor="b-key") is None
    assert store.calls.list("b", actor="test") == []
    assert store.calls.list("b", phone="+14155552671", actor="test") == []
    assert store.calls.get_report("b", rec.call_id, actor="b") is None
    assert store.calls.read_recording("b", rec.call_id, actor="b") is None


def test_list_filters(store: Store) -> None:
    store.calls.save(make_call("a", caller="+14155552671", started=1000.0))
    store.calls.save(make_call("a", caller="+442079460958", started=2000.0))
    store.calls.save(make_call("a", caller="+14155552671", started=3000.0))
    assert len(store.calls.list("a", actor="test")) == 3
    assert [c.started_at for c in store.calls.list("a", actor="test")] == [3000.0, 2000.0, 1000.0]
    assert len(store.calls.list("a", phone="(415) 555-2671", actor="test")) == 2
    assert len(store.calls.list("a", since=1500.0, until=2500.0, actor="test")) == 1
    assert len(store.calls.list("a", limit=1, offset=1, actor="test")) == 1


def test_transcript_is_encrypted_and_redacted_per_policy(store: Store) -> None:
    marker = "zebra crossing"
    rec = make_call("a", text=f"{marker}, my card is {CARD}")
    store.calls.save(rec)
    got = store.calls.get("a", rec.call_id, actor="t")
    assert got.turns[1].text == f"{marker}, my card is [card number]"  # type: ignore[index,union-attr]
    raw = all_bytes(store.data_dir)
    assert marker.encode() not in raw
    assert b"+14155552671" not in raw  # caller number is encrypted too
    # the card number in any written form (a bare "4111" can occur by chance in ciphertext or timestamps)
    for form in (CARD, CARD.replace(" ", ""), "1111 1111 1111"):
        assert form.encode() not in raw


def test_verbatim_transcript_when_policy_says_so(store: Store) -> None:
    store.tenants.set_policy("b", "transcripts:\n  store_redacted: false\n", actor="test")
    rec = make_call("b", text=f"card {CARD}")
    store.calls.save(rec)
    got = store.calls.get("b", rec.call_id, actor="t")
    assert got.turns[1].text == f"card {CARD}"  # type: ignore[index,union-attr]
    assert not got.transcript_redacted  # type: ignore[union-attr]
    assert CARD.encode() not in all_bytes(store.data_dir)  # still encrypted at rest


def test_no_storage_policy_keeps_metadata_and_timelines_only(store: Store) -> None:
    store.tenants.set_policy("b", (POLICIES / "no-storage.yaml").read_text(), actor="test")
    rec = make_call("b", text="do not keep this")
    assert store.calls.save(rec)
    got = store.calls.get("b", rec.call_id, actor="t")
    assert got is not None and got.turns is not None
    assert all(t.text is None and t.generated_text is None for t in got.turns)
    assert got.turns[1].timeline is not None
    count = store.db.fetchone(
        "SELECT COUNT(*) FROM turns WHERE text_enc IS NOT NULL OR generated_enc IS NOT NULL"
    )[0]
    assert count == 0
    assert store.calls.save_report("b", rec.call_id, {"summary": "x"}) is None
    assert store.subjects.upsert_contact("b", "+14155552671", {"name": "Ada"}) is None


def test_metadata_retention_zero_stores_nothing(store: Store) -> None:
    store.tenants.set_policy("b", "retention: {recordings: 0, transcripts: 0, reports: 0, metadata: 0, contacts: 0}\n", actor="test")
    assert not store.calls.save(make_call("b"))
    assert store.calls.list("b", actor="test") == []
    assert store.outbox.events("b", actor="test") == []


def test_restricted_subject_is_not_stored(store: Store) -> None:
    store.subjects.restrict("a", "(415) 555-2671", actor="dpo")
    assert store.subjects.is_restricted("a", "+14155552671")
    assert not store.subjects.is_restricted("b", "+14155552671")
    assert not store.calls.save(make_call("a"))
    assert store.calls.list("a", actor="test") == []
    assert store.calls.save(make_call("b"))
    store.subjects.unrestrict("a", "+14155552671", actor="dpo")
    assert store.calls.save(make_call("a"))


def test_call_ended_event_in_the_same_transaction(store: Store) -> None:
    rec = make_call("a")
    store.calls.save(rec)
    (event,) = store.outbox.events("a", actor="test")
    assert event.type == "call.ended" and event.status == "pending"
    assert event.payload["data"]["call_id"] == rec.call_id
    assert event.payload["data"]["duration_s"] == 42.5
    # saving the same call again replaces it and does not announce it twice
    store.calls.save(rec)
    assert len(store.outbox.events("a", actor="test")) == 1
    assert len(store.calls.list("a", actor="test")) == 1
    # a call saved before it ended announces itself when it is saved again, ended
    live = make_call("a")
    live.ended_at = None
    store.calls.save(live)
    assert len(store.outbox.events("a", actor="test")) == 1
    live.ended_at = live.started_at + 3
    store.calls.save(live)
    assert len(store.outbox.events("a", actor="test")) == 2


def test_event_is_rolled_back_with_the_call(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = make_call("a")
    real_insert = store.outbox.add_in_tx

    def failing(*args: object, **kwargs: object) -> str:
        real_insert(*args, **kwargs)  # type: ignore[arg-type]
        raise sqlite3.OperationalError("disk full")

    monkeypatch.setattr(store.outbox, "add_in_tx", failing)
    with pytest.raises(sqlite3.OperationalError):
        store.calls.save(rec)
    monkeypatch.undo()
    assert store.calls.list("a", actor="test") == []
    assert store.outbox.events("a", actor="test") == []


def test_reports_are_encrypted_and_scoped(store: Store) -> None:
    rec = make_call("a")
    store.calls.save(rec)
    rid = store.calls.save_report("a", rec.call_id, {"purpose": "booking", "summary": "wants a quokka tour"})
    assert rid is not None
    assert b"quokka" not in all_bytes(store.data_dir)
    got = store.calls.get_report("a", rec.call_id, actor="analyst")
    assert got is not None and got.body is not None and got.body["purpose"] == "booking"
    assert any(e.action == "report.read" for e in store.audit.list("a"))
    assert [e.type for e in store.outbox.events("a", actor="test")] == ["call.ended", "report.ready"]
    failed = store.calls.save_report("a", rec.call_id, None, status="failed", error="invalid JSON twice")
    assert failed is not None


def test_contacts_round_trip_encrypted(store: Store) -> None:
    store.subjects.upsert_contact("a", "(415) 555-2671", {"name": "Ada Lovelace", "email": "ada@example.com"})
    contact = store.subjects.contact("a", "+14155552671", actor="test")
    assert contact == {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+14155552671"}
    assert store.subjects.contact("b", "+14155552671", actor="test") is None
    assert b"Lovelace" not in all_bytes(store.data_dir)
    store.subjects.upsert_contact("a", "+14155552671", {"name": "Ada King"})
    assert store.subjects.contact("a", "415-555-2671", actor="test")["name"] == "Ada King"  # type: ignore[index]
    assert store.subjects.delete_contact("a", "+14155552671", actor="ops")
    assert store.subjects.contact("a", "+14155552671", actor="test") is None


def test_every_row_carries_an_expiry(store: Store) -> None:
    rec = make_call("a")
    store.calls.save(rec)
    store.calls.save_report("a", rec.call_id, {"x": 1})
    store.subjects.upsert_contact("a", "+14155552671", {"name": "A"})
    for table in ("calls", "turns", "reports", "contacts", "outbox"):
        nulls = store.db.fetchone(f"SELECT COUNT(*) FROM {table} WHERE expires_at IS NULL")[0]
        total = store.db.fetchone(f"SELECT COUNT(*) FROM {table}")[0]
        assert total > 0 and nulls == 0, table
    call_exp = store.db.fetchone("SELECT expires_at - stored_at FROM calls")[0]
    assert call_exp == pytest.approx(365 * 86400)
    text_exp = store.db.fetchone("SELECT MAX(text_expires_at) - MAX(expires_at) FROM turns")[0]
    assert text_exp == pytest.approx((30 - 365) * 86400)
