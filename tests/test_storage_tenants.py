"""Tenants, API keys, policies, the keystore and the master key."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

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

POLICIES = Path(__file__).resolve().parent.parent / "policies"


@pytest.fixture(autouse=True)
def _no_env_master_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "data")
    yield s
    s.close()


def all_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def test_create_and_authenticate(store: Store) -> None:
    key = store.create_tenant("acme")
    assert key and key.startswith("vck_")
    assert store.authenticate(key) == "acme"
    info = store.authenticate_key(key)
    assert info is not None and info.role == "admin" and info.tenant == "acme"
    for wrong in (key[:-1] + ("A" if key[-1] != "A" else "B"), key + "x", "", None, "vck_000000000000_" + "a" * 43):
        assert store.authenticate(wrong) is None


def test_api_key_is_stored_hashed_only(store: Store) -> None:
    key = store.create_tenant("acme")
    secret = key.split("_", 2)[2]
    raw = all_bytes(store.data_dir)
    assert secret.encode() not in raw
    assert key.encode() not in raw
    # and it still authenticates from a fresh process
    store.close()
    again = Store(store.data_dir)
    assert again.authenticate(key) == "acme"
    again.close()


def test_keys_of_two_tenants_are_separate_and_roles_are_kept(store: Store) -> None:
    a = store.create_tenant("a")
    b = store.create_tenant("b", role="viewer")
    analyst = store.create_api_key("a", role="analyst", label="reporting")
    assert store.authenticate(a) == "a" and store.authenticate(b) == "b"
    assert store.authenticate_key(b).role == "viewer"  # type: ignore[union-attr]
    assert store.authenticate_key(analyst).role == "analyst"  # type: ignore[union-attr]
    with pytest.raises(StorageError, match="unknown role"):
        store.create_api_key("a", role="root")


def test_revoked_key_no_longer_authenticates(store: Store) -> None:
    key = store.create_tenant("acme")
    key_id = store.list_api_keys("acme")[0].key_id
    assert store.revoke_api_key("acme", key_id, actor="admin")
    assert store.authenticate(key) is None
    assert not store.revoke_api_key("acme", key_id)


def test_duplicate_and_invalid_tenant_names(store: Store) -> None:
    store.create_tenant("acme")
    with pytest.raises(TenantExists):
        store.create_tenant("acme")
    for bad in ("", "../etc", "a b", "x" * 65):
        with pytest.raises(StorageError, match="invalid tenant name"):
            store.create_tenant(bad)
    with pytest.raises(UnknownTenant):
        store.get_tenant_policy("nobody")


def test_policy_from_file_default_and_replacement(store: Store, tmp_path: Path) -> None:
    store.create_tenant("consent", POLICIES / "recorded-consent.yaml")
    store.create_tenant("plain")
    assert store.get_tenant_policy("consent").recording.mode == "consent"
    assert store.get_tenant_policy("plain").recording.mode == "off"
    bad = tmp_path / "bad.yaml"
    bad.write_text("retention:\n  transcripts: -3\n")
    with pytest.raises(PolicyError) as info:
        store.create_tenant("bad", bad)
    assert info.value.field == "retention.transcripts"
    assert not store.tenant_exists("bad")
    # replacement is validated and audited
    with pytest.raises(PolicyError):
        store.set_tenant_policy("plain", "retention: {metadata: 99999}", actor="ops")
    assert store.get_tenant_policy("plain").retention.metadata == 365
    store.set_tenant_policy("plain", (POLICIES / "no-storage.yaml").read_text(), actor="ops")
    assert store.get_tenant_policy("plain").retention.transcripts == 0
    assert any(e.action == "policy.changed" and e.actor == "ops" for e in store.audit_list("plain"))


def test_keystore_and_master_key_files_are_private(store: Store) -> None:
    store.create_tenant("acme")
    for name in ("keystore.bin", "master.key", "voicecore.db"):
        mode = stat.S_IMODE((store.data_dir / name).stat().st_mode)
        assert mode == 0o600, f"{name} has mode {mode:o}"
    # the keystore is encrypted: no key material in clear JSON
    assert b"tenants" not in (store.data_dir / "keystore.bin").read_bytes()


def test_readable_master_key_file_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "d").close()
    os.chmod(tmp_path / "d" / "master.key", 0o644)
    with pytest.raises(KeystoreError, match="chmod 600"):
        Store(tmp_path / "d")


def test_master_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MASTER_KEY_ENV, generate_master_key())
    s = Store(tmp_path / "d")
    key = s.create_tenant("acme")
    s.close()
    assert not (tmp_path / "d" / "master.key").exists()
    s = Store(tmp_path / "d")
    assert s.authenticate(key) == "acme"
    s.get_tenant_policy("acme")
    s.close()
    # another master key cannot open the keystore, and says so
    monkeypatch.setenv(MASTER_KEY_ENV, generate_master_key())
    s = Store(tmp_path / "d")
    with pytest.raises(KeystoreError, match=MASTER_KEY_ENV):
        s.create_tenant("other")
    s.close()
    monkeypatch.setenv(MASTER_KEY_ENV, "too-short")
    with pytest.raises(KeystoreError, match="32 random bytes"):
        Store(tmp_path / "d2")


def _call(tenant: str, text: str) -> CallRecord:
    r = CallRecord(tenant=tenant, caller="+14155552671", pipeline="demo")
    r.turns = [Turn("caller", text), Turn("agent", "noted")]
    r.ended_at = r.started_at + 5
    return r


def test_deleting_a_tenant_destroys_its_key_so_backups_cannot_be_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    s = Store(data)
    s.create_tenant("gone", POLICIES / "default.yaml")
    s.create_tenant("stays")
    rec = _call("gone", "the secret word is marmalade")
    s.save_call(rec)
    kept = _call("stays", "hello")
    s.save_call(kept)
    s.retention_sweep()  # compacts: the database file holds everything
    backup = tmp_path / "backup"
    backup.mkdir()
    shutil.copy(data / "voicecore.db", backup / "voicecore.db")

    # With the keys still in the keystore, the backup is readable (so the test can fail).
    shutil.copy(data / "keystore.bin", backup / "keystore.bin")
    shutil.copy(data / "master.key", backup / "master.key")
    b = Store(backup)
    assert b.call_get("gone", rec.call_id, actor="t").turns[0].text == "the secret word is marmalade"  # type: ignore[union-attr]
    b.close()

    s.delete_tenant("gone", actor="ops")
    assert not s.tenant_exists("gone")
    assert s.call_get("stays", kept.call_id, actor="t") is not None
    assert b"marmalade" not in all_bytes(data)

    # The same backup with today's keystore: the tenant's ciphertexts cannot be decrypted.
    shutil.copy(data / "keystore.bin", backup / "keystore.bin")
    b = Store(backup)
    with pytest.raises(TenantKeyMissing):
        b.call_get("gone", rec.call_id, actor="t")
    assert b.call_get("stays", kept.call_id, actor="t") is not None
    b.close()
    s.close()


def test_schema_is_versioned_and_reopening_keeps_data(tmp_path: Path) -> None:
    s = Store(tmp_path / "d")
    assert s.schema_version() == 2
    s.create_tenant("acme")
    s.close()
    s = Store(tmp_path / "d")
    assert s.tenant_exists("acme")
    assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.db.execute("PRAGMA secure_delete").fetchone()[0] == 1
    s.db.execute("PRAGMA user_version=99")
    s.close()
    with pytest.raises(StorageError, match="newer"):
        Store(tmp_path / "d")


def test_ensure_tenant_without_key(store: Store) -> None:
    assert store.ensure_tenant("default")
    assert not store.ensure_tenant("default")
    assert store.list_api_keys("default") == []
    assert [t.name for t in store.list_tenants()] == ["default"]
