"""The audit log: chained entries; a modified, deleted or forged entry is detected."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pg import RawConnection

from voicecore.records import CallRecord, Turn
from voicecore.storage import Store

pytestmark = pytest.mark.usefixtures("database")

TENANTS = {"acme": None}  # tenant.created, apikey.created


@pytest.fixture(autouse=True)
def _activity(request: pytest.FixtureRequest) -> None:
    """Three more audited actions in the log of every test that uses the store."""
    if "store" not in request.fixturenames:
        return
    s: Store = request.getfixturevalue("store")
    rec = CallRecord(tenant="acme", caller="+14155552671")
    rec.turns = [Turn("caller", "my secret is tangerine")]
    rec.ended_at = rec.started_at + 1
    s.calls.save(rec)
    s.calls.get("acme", rec.call_id, actor="analyst")  # transcript.read
    s.subjects.add_optout("acme", "+14155552671", actor="test")  # optout.added
    s.audit.append("api:key1", "acme", "webhook.created", "webhook:1")


def raw(store: Store) -> RawConnection:
    """A second, plain connection: what someone with file (or database) access could do."""
    return RawConnection(store)


def test_intact_log_verifies(store: Store) -> None:
    check = store.audit.verify()
    assert check.ok and check.first_bad_id is None and check.entries == 5
    actions = [e.action for e in reversed(store.audit.list())]
    assert actions == ["tenant.created", "apikey.created", "transcript.read", "optout.added", "webhook.created"]


def test_log_holds_no_content_and_no_clear_number(store: Store) -> None:
    text = json.dumps([e.__dict__ for e in store.audit.list()])
    assert "tangerine" not in text
    assert "4155552671" not in text and "2671" not in text


def test_modified_entry_is_detected(store: Store) -> None:
    with raw(store) as c:
        c.execute("UPDATE audit_log SET action = 'transcript.listed' WHERE id = 3")
    check = store.audit.verify()
    assert not check.ok and check.first_bad_id == 3 and "modified" in (check.reason or "")


def test_modified_entry_with_recomputed_sha256_is_still_detected(store: Store) -> None:
    # Rewriting the chain needs the audit key from the keystore, not only database access.
    with raw(store) as c:
        prev = c.execute("SELECT prev_hash FROM audit_log WHERE id = 3").fetchone()[0]
        forged = hashlib.sha256((prev + "3|forged").encode()).hexdigest()
        c.execute("UPDATE audit_log SET actor = 'nobody', hash = ? WHERE id = 3", (forged,))
    check = store.audit.verify()
    assert not check.ok and check.first_bad_id == 3


def test_deleted_entry_in_the_middle_is_detected(store: Store) -> None:
    with raw(store) as c:
        c.execute("DELETE FROM audit_log WHERE id = 2")
    check = store.audit.verify()
    assert not check.ok and check.first_bad_id == 2 and "missing" in (check.reason or "")


def test_deleted_last_entry_is_detected(store: Store) -> None:
    with raw(store) as c:
        c.execute("DELETE FROM audit_log WHERE id = 5")
    check = store.audit.verify()
    assert not check.ok and check.first_bad_id == 5


def test_renumbered_entries_are_detected(store: Store) -> None:
    with raw(store) as c:
        c.execute("DELETE FROM audit_log WHERE id = 2")
        c.execute("UPDATE audit_log SET id = id - 1 WHERE id > 2")
    assert not store.audit.verify().ok


def test_appending_after_verification_keeps_the_chain(store: Store) -> None:
    store.audit.append("cli", "acme", "subject.exported", "subject:abc")
    store.close()
    again = Store(store.data_dir)
    again.audit.append("cli", None, "retention.swept", "rows:0")
    assert again.audit.verify().ok
    again.close()


def test_entries_record_actor_tenant_what_and_when(tmp_path: Path) -> None:
    """Privacy rule 7: who, for which tenant, what and when — the time from the store's clock."""
    now = [1_800_000_000.0]
    s = Store(tmp_path / "d", clock=lambda: now[0])
    s.tenants.create("acme", actor="test")
    now[0] += 3600.0
    s.audit.append("analyst-key-1", "acme", "transcript.read", "call-42")
    entry = next(e for e in s.audit.list("acme") if e.action == "transcript.read")
    assert (entry.actor, entry.tenant, entry.action, entry.object_id) == ("analyst-key-1", "acme", "transcript.read", "call-42")
    assert entry.at == pytest.approx(1_800_003_600.0)
    s.close()
