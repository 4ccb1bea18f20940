"""The do-not-call list: keyed hashes, the outbox event in the same transaction, survival of erasure."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from voicecore.records import CallRecord, Turn
from voicecore.storage import MASTER_KEY_ENV, Store


@pytest.fixture(autouse=True)
def _no_env_master_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "data")
    s.create_tenant("a")
    s.create_tenant("b")
    yield s
    s.close()


def test_add_list_remove(store: Store) -> None:
    assert store.add_optout("a", "(415) 555-2671", source="cli", actor="ops")
    assert not store.add_optout("a", "+1 415 555 2671")  # same number, any form
    assert store.is_opted_out("a", "4155552671")
    assert not store.is_opted_out("b", "+14155552671")  # per tenant
    (entry,) = store.list_optouts("a")
    assert entry.phone == "+14155552671" and entry.source == "cli" and len(entry.phone_hash) == 64
    assert store.remove_optout("a", "+14155552671", actor="ops")
    assert not store.is_opted_out("a", "+14155552671")
    assert not store.remove_optout("a", "+14155552671")
    actions = [e.action for e in store.audit_list("a")]
    assert "optout.added" in actions and "optout.removed" in actions


def test_number_is_stored_as_keyed_hash_and_ciphertext_only(store: Store) -> None:
    store.add_optout("a", "+14155552671")
    store.add_optout("b", "+14155552671")
    raw = b"".join(p.read_bytes() for p in store.files())
    assert b"4155552671" not in raw
    hashes = [r[0] for r in store.db.execute("SELECT phone_hash FROM opt_outs").fetchall()]
    assert len(set(hashes)) == 2  # keyed per tenant: the same number hashes differently
    assert hashlib.sha256(b"+14155552671").hexdigest() not in hashes  # not a plain (guessable) hash


def test_optout_event_flag_and_row_in_one_transaction(store: Store) -> None:
    rec = CallRecord(tenant="a", caller="+14155552671")
    rec.turns = [Turn("caller", "stop calling me")]
    rec.ended_at = rec.started_at + 3
    store.save_call(rec)
    store.add_optout("a", rec.caller, source="call", call_id=rec.call_id)  # type: ignore[arg-type]
    events = store.outbox_list("a")
    assert [e.type for e in events] == ["call.ended", "optout.requested"]
    assert events[1].payload["data"]["phone"] == "+14155552671"
    assert events[1].payload["data"]["call_id"] == rec.call_id
    assert store.calls_list("a")[0].optout  # the call record is flagged


def test_optout_rolls_back_with_its_event(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args: object, **kwargs: object) -> str:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_outbox_add", failing)
    with pytest.raises(sqlite3.OperationalError):
        store.add_optout("a", "+14155552671")
    monkeypatch.undo()
    assert not store.is_opted_out("a", "+14155552671")


def test_call_saved_after_optout_is_flagged(store: Store) -> None:
    rec = CallRecord(tenant="a", caller="+14155552671")
    store.add_optout("a", "+14155552671", call_id=rec.call_id)  # matcher fired mid-call
    rec.ended_at = rec.started_at + 1
    store.save_call(rec)
    assert store.calls_list("a")[0].optout


def test_optout_survives_erasure(store: Store) -> None:
    rec = CallRecord(tenant="a", caller="+14155552671")
    rec.ended_at = rec.started_at + 1
    store.save_call(rec)
    store.add_optout("a", "+14155552671", call_id=rec.call_id)
    store.erase("a", "+14155552671", actor="dpo")
    assert store.is_opted_out("a", "+14155552671")
    (entry,) = store.list_optouts("a")
    assert entry.phone is None  # the number itself is gone
    assert store.db.execute("SELECT call_id, phone_enc FROM opt_outs").fetchone() == (None, None)
