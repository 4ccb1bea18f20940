"""The do-not-call list: keyed hashes, the outbox event in the same transaction, survival of erasure."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest
from pg import stored_bytes

from voicecore.records import CallRecord, Turn
from voicecore.storage import Store

pytestmark = pytest.mark.usefixtures("database")

TENANTS = {"a": None, "b": None}


def test_add_list_remove(store: Store) -> None:
    assert store.subjects.add_optout("a", "(415) 555-2671", source="cli", actor="ops")
    assert not store.subjects.add_optout("a", "+1 415 555 2671", actor="test")  # same number, any form
    assert store.subjects.is_opted_out("a", "4155552671")
    assert not store.subjects.is_opted_out("b", "+14155552671")  # per tenant
    (entry,) = store.subjects.optouts("a", actor="test")
    assert entry.phone == "+14155552671" and entry.source == "cli" and len(entry.phone_hash) == 64
    assert store.subjects.remove_optout("a", "+14155552671", actor="ops")
    assert not store.subjects.is_opted_out("a", "+14155552671")
    assert not store.subjects.remove_optout("a", "+14155552671", actor="test")
    actions = [e.action for e in store.audit.list("a")]
    assert "optout.added" in actions and "optout.removed" in actions


def test_number_is_stored_as_keyed_hash_and_ciphertext_only(store: Store) -> None:
    store.subjects.add_optout("a", "+14155552671", actor="test")
    store.subjects.add_optout("b", "+14155552671", actor="test")
    raw = stored_bytes(store)  # the SQLite files, or the PostgreSQL cluster's files after a CHECKPOINT
    assert b"4155552671" not in raw
    hashes = [r[0] for r in store.db.fetchall("SELECT phone_hash FROM opt_outs")]
    assert len(set(hashes)) == 2  # keyed per tenant: the same number hashes differently
    assert hashlib.sha256(b"+14155552671").hexdigest() not in hashes  # not a plain (guessable) hash


def test_optout_event_flag_and_row_in_one_transaction(store: Store) -> None:
    rec = CallRecord(tenant="a", caller="+14155552671")
    rec.turns = [Turn("caller", "stop calling me")]
    rec.ended_at = rec.started_at + 3
    store.calls.save(rec)
    store.subjects.add_optout("a", rec.caller, source="call", call_id=rec.call_id, actor="test")  # type: ignore[arg-type]
    events = store.outbox.events("a", actor="test")
    assert [e.type for e in events] == ["call.ended", "optout.requested"]
    assert events[1].payload["data"]["phone"] == "+14155552671"
    assert events[1].payload["data"]["call_id"] == rec.call_id
    assert store.calls.list("a", actor="test")[0].optout  # the call record is flagged


def test_optout_rolls_back_with_its_event(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args: object, **kwargs: object) -> str:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store.outbox, "add_in_tx", failing)
    with pytest.raises(sqlite3.OperationalError):
        store.subjects.add_optout("a", "+14155552671", actor="test")
    monkeypatch.undo()
    assert not store.subjects.is_opted_out("a", "+14155552671")


def test_call_saved_after_optout_is_flagged(store: Store) -> None:
    rec = CallRecord(tenant="a", caller="+14155552671")
    store.subjects.add_optout("a", "+14155552671", call_id=rec.call_id, actor="test")  # matcher fired mid-call
    rec.ended_at = rec.started_at + 1
    store.calls.save(rec)
    assert store.calls.list("a", actor="test")[0].optout


def test_optout_survives_erasure(store: Store) -> None:
    rec = CallRecord(tenant="a", caller="+14155552671")
    rec.ended_at = rec.started_at + 1
    store.calls.save(rec)
    store.subjects.add_optout("a", "+14155552671", call_id=rec.call_id, actor="test")
    store.subjects.erase("a", "+14155552671", actor="dpo")
    assert store.subjects.is_opted_out("a", "+14155552671")
    (entry,) = store.subjects.optouts("a", actor="test")
    assert entry.phone is None  # the number itself is gone
    assert store.db.fetchone("SELECT call_id, phone_enc FROM opt_outs") == (None, None)
