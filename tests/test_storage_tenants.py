"""Tenants, API keys, policies, the keystore and the master key."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from conftest import undo_revisions_after_0003

from voicecore.policy import PolicyError
from voicecore.records import CallRecord, Turn
from voicecore.storage import (
    MASTER_KEY_ENV,
    KeystoreError,
    StorageError,
    Store,
    TenantExists,
    TenantKeyMissing,
    UnknownTenant,
    generate_master_key,
)

pytestmark = pytest.mark.usefixtures("database")

POLICIES = Path(__file__).resolve().parent.parent / "policies"





def all_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def test_create_and_authenticate(store: Store) -> None:
    key = store.tenants.create("acme", actor="test")
    assert key and key.startswith("vck_")
    assert store.tenants.authenticate(key).tenant == "acme"
    info = store.tenants.authenticate(key)
    assert info is not None and info.role == "admin" and info.tenant == "acme"
    for wrong in (key[:-1] + ("A" if key[-1] != "A" else "B"), key + "x", "", None, "vck_000000000000_" + "a" * 43):
        assert store.tenants.authenticate(wrong) is None


def test_api_key_is_stored_hashed_only(store: Store) -> None:
    key = store.tenants.create("acme", actor="test")
    secret = key.split("_", 2)[2]
    raw = all_bytes(store.data_dir)
    assert secret.encode() not in raw
    assert key.encode() not in raw
    # and it still authenticates from a fresh process
    store.close()
    again = Store(store.data_dir)
    assert again.tenants.authenticate(key).tenant == "acme"
    again.close()


def test_keys_of_two_tenants_are_separate_and_roles_are_kept(store: Store) -> None:
    a = store.tenants.create("a", actor="test")
    b = store.tenants.create("b", role="viewer", actor="test")
    analyst = store.tenants.create_api_key("a", role="analyst", label="reporting", actor="test")
    assert store.tenants.authenticate(a).tenant == "a" and store.tenants.authenticate(b).tenant == "b"
    assert store.tenants.authenticate(b).role == "viewer"  # type: ignore[union-attr]
    assert store.tenants.authenticate(analyst).role == "analyst"  # type: ignore[union-attr]
    with pytest.raises(StorageError, match="unknown role"):
        store.tenants.create_api_key("a", role="root", actor="test")


def test_revoked_key_no_longer_authenticates(store: Store) -> None:
    key = store.tenants.create("acme", actor="test")
    key_id = store.tenants.api_keys("acme")[0].key_id
    assert store.tenants.revoke_api_key("acme", key_id, actor="admin")
    assert store.tenants.authenticate(key) is None
    assert not store.tenants.revoke_api_key("acme", key_id, actor="test")


def test_duplicate_and_invalid_tenant_names(store: Store) -> None:
    store.tenants.create("acme", actor="test")
    with pytest.raises(TenantExists):
        store.tenants.create("acme", actor="test")
    for bad in ("", "../etc", "a b", "x" * 65):
        with pytest.raises(StorageError, match="invalid tenant name"):
            store.tenants.create(bad, actor="test")
    with pytest.raises(UnknownTenant):
        store.tenants.policy("nobody")


def test_policy_from_file_default_and_replacement(store: Store, tmp_path: Path) -> None:
    store.tenants.create("consent", POLICIES / "recorded-consent.yaml", actor="test")
    store.tenants.create("plain", actor="test")
    assert store.tenants.policy("consent").recording.mode == "consent"
    assert store.tenants.policy("plain").recording.mode == "off"
    bad = tmp_path / "bad.yaml"
    bad.write_text("retention:\n  transcripts: -3\n")
    with pytest.raises(PolicyError) as info:
        store.tenants.create("bad", bad, actor="test")
    assert info.value.field == "retention.transcripts"
    assert not store.tenants.exists("bad")
    # replacement is validated and audited
    with pytest.raises(PolicyError):
        store.tenants.set_policy("plain", "retention: {metadata: 99999}", actor="ops")
    assert store.tenants.policy("plain").retention.metadata == 365
    store.tenants.set_policy("plain", (POLICIES / "no-storage.yaml").read_text(), actor="ops")
    assert store.tenants.policy("plain").retention.transcripts == 0
    assert any(e.action == "policy.changed" and e.actor == "ops" for e in store.audit.list("plain"))


@pytest.mark.databases("sqlite")  # the keystore file; PostgreSQL keeps keys wrapped in the database
def test_keys_live_outside_the_data_directory_in_private_files(store: Store) -> None:
    store.tenants.create("acme", actor="test")
    key_dir = store.data_dir.parent / "data-keys"
    assert store.keys.key_dir == key_dir and not store.keys.inside_data_dir
    assert not (store.data_dir / "keystore.bin").exists() and not (store.data_dir / "master.key").exists()
    for path in (key_dir / "keystore.bin", key_dir / "master.key", store.data_dir / "voicecore.db"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o600, f"{path.name} has mode {mode:o}"
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    # the keystore is encrypted: no key material in clear JSON
    assert b"tenants" not in (key_dir / "keystore.bin").read_bytes()


@pytest.mark.databases("sqlite")  # the keystore file; PostgreSQL keeps keys wrapped in the database
def test_a_data_directory_with_its_keys_inside_still_opens_and_says_so(tmp_path: Path) -> None:
    """An older layout: keystore.bin and master.key inside the data directory."""
    s = Store(tmp_path / "d")
    key = s.tenants.create("acme", actor="test")
    s.close()
    for name in ("keystore.bin", "master.key"):
        (tmp_path / "d-keys" / name).rename(tmp_path / "d" / name)
    s = Store(tmp_path / "d")
    assert s.keys.inside_data_dir and s.keys.keystore == tmp_path / "d" / "keystore.bin"
    assert s.tenants.authenticate(key).tenant == "acme"  # type: ignore[union-attr]
    s.tenants.policy("acme")
    s.close()


@pytest.mark.databases("sqlite")  # the keystore file; PostgreSQL keeps keys wrapped in the database
def test_the_key_directory_can_be_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICECORE_KEY_DIR", str(tmp_path / "vault"))
    s = Store(tmp_path / "d")
    s.tenants.create("acme", actor="test")
    s.close()
    assert (tmp_path / "vault" / "keystore.bin").exists() and not (tmp_path / "d-keys").exists()


def test_readable_master_key_file_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "d").close()
    os.chmod(tmp_path / "d-keys" / "master.key", 0o644)
    with pytest.raises(KeystoreError, match="chmod 600"):
        Store(tmp_path / "d")


def test_master_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MASTER_KEY_ENV, generate_master_key())
    s = Store(tmp_path / "d")
    key = s.tenants.create("acme", actor="test")
    s.close()
    assert not (tmp_path / "d" / "master.key").exists() and not (tmp_path / "d-keys" / "master.key").exists()
    s = Store(tmp_path / "d")
    assert s.tenants.authenticate(key).tenant == "acme"
    s.tenants.policy("acme")
    s.close()
    # another master key cannot open the keystore, and says so
    monkeypatch.setenv(MASTER_KEY_ENV, generate_master_key())
    s = Store(tmp_path / "d")
    with pytest.raises(KeystoreError, match=MASTER_KEY_ENV):
        s.tenants.create("other", actor="test")
    s.close()
    monkeypatch.setenv(MASTER_KEY_ENV, "too-short")
    with pytest.raises(KeystoreError, match="32 random bytes"):
        Store(tmp_path / "d2")


def _call(tenant: str, text: str) -> CallRecord:
    r = CallRecord(tenant=tenant, caller="+14155552671", pipeline="demo")
    r.turns = [Turn("caller", text), Turn("agent", "noted")]
    r.ended_at = r.started_at + 5
    return r


@pytest.mark.databases("sqlite")  # a copy of the data directory; PostgreSQL: test_postgresql.py
def test_deleting_a_tenant_destroys_its_key_so_backups_cannot_be_read(tmp_path: Path) -> None:
    """Privacy rule 9 (issue 11.4): a full copy of the data directory, taken before the tenant is
    deleted, cannot be decrypted afterwards with anything that remains."""
    data = tmp_path / "data"
    keys = tmp_path / "data-keys"
    s = Store(data)
    s.tenants.create("gone", POLICIES / "default.yaml", actor="test")
    s.tenants.create("stays", actor="test")
    rec = _call("gone", "the secret word is marmalade")
    s.calls.save(rec)
    kept = _call("stays", "hello")
    s.calls.save(kept)
    s.retention.sweep(actor="test")  # compacts: the database file holds everything
    backup = tmp_path / "backup"
    shutil.copytree(data, backup)  # `cp -a data backup`: everything in the data directory

    # Before the deletion the copy opens with the key directory (so the test can fail).
    b = Store(backup, key_dir=keys)
    assert b.calls.get("gone", rec.call_id, actor="t").turns[0].text == "the secret word is marmalade"  # type: ignore[union-attr]
    b.close()

    s.tenants.delete("gone", actor="ops")
    assert not s.tenants.exists("gone")
    assert s.calls.get("stays", kept.call_id, actor="t") is not None
    assert b"marmalade" not in all_bytes(data)
    assert not any(p.name in ("keystore.bin", "master.key") for p in backup.rglob("*"))  # no key in the copy

    # With what remains (the master key and the keystore in the key directory) the copy is unreadable.
    b = Store(backup, key_dir=keys)
    with pytest.raises(TenantKeyMissing):
        b.calls.get("gone", rec.call_id, actor="t")
    assert b.calls.get("stays", kept.call_id, actor="t") is not None
    b.close()
    s.close()


@pytest.mark.databases("sqlite")  # PRAGMAs of the SQLite file
def test_schema_is_versioned_and_reopening_keeps_data(tmp_path: Path) -> None:
    s = Store(tmp_path / "d")
    assert s.schema_version() == 4
    s.tenants.create("acme", actor="test")
    s.close()
    s = Store(tmp_path / "d")
    assert s.tenants.exists("acme")
    assert s.db.sqlite.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.db.sqlite.execute("PRAGMA secure_delete").fetchone()[0] == 1
    s.db.sqlite.execute("PRAGMA user_version=99")
    s.close()
    with pytest.raises(StorageError, match="newer"):
        Store(tmp_path / "d")


def test_ensure_tenant_without_key(store: Store) -> None:
    assert store.tenants.ensure("default")
    assert not store.tenants.ensure("default")
    assert store.tenants.api_keys("default") == []
    assert [t.name for t in store.tenants.list()] == ["default"]


@pytest.mark.databases("sqlite")  # the SQLite file the code before Alembic made
def test_a_file_made_before_alembic_is_refused_then_stamped_by_db_upgrade_keeping_its_data(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from voicecore.cli import cli
    from voicecore.storage import StorageError, migrate

    d = tmp_path / "d"
    s = Store(d)
    s.tenants.create("acme", actor="test")
    rec = CallRecord(tenant="acme", caller="+14155552671")
    rec.turns = [Turn("caller", "keep me")]
    rec.ended_at = rec.started_at + 1
    s.calls.save(rec)
    # What that code left: schema version 4 (user_version), no Alembic tables.
    undo_revisions_after_0003(s.db.sqlite)
    for table in ("alembic_version", "audit_head", "wrapped_keys", "call_tokens"):  # the tables since v4
        s.db.sqlite.execute(f"DROP TABLE {table}")
    assert s.db.sqlite.execute("PRAGMA user_version").fetchone()[0] == 4
    s.close()
    with pytest.raises(StorageError, match=rf"pre-Alembic schema version 4.*`voicecore db upgrade --data-dir {d}`"):
        Store(d)
    res = CliRunner().invoke(cli, ["db", "upgrade", "--data-dir", str(d)])
    assert res.exit_code == 0, res.output
    assert f"upgraded from user_version 4 to revision {migrate.head_revision()}" in res.output
    s = Store(d)  # stamped, not recreated: the data is there and the audit chain goes on
    got = s.calls.get("acme", rec.call_id, actor="t")
    assert got is not None and got.turns is not None and got.turns[0].text == "keep me"
    s.audit.append("test", "acme", "after.upgrade")
    assert s.audit.verify().ok and s.audit.verify().entries == 4
    s.close()
