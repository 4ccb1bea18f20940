"""Tenants and their API keys; the tenant lookups every other repository builds on.

A tenant has a name (what people type), an id (what rows carry), one policy
(YAML, validated on the way in) and per-tenant keys in the keystore. API keys
(``vck_<key id>_<secret>``) are shown once and stored as scrypt hashes; each has
a role (:data:`~voicecore.storage.schema.ROLES`). :meth:`TenantRepository.authenticate`
runs scrypt (tens of milliseconds): call it from a worker thread in ``serve``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from sqlalchemy.exc import IntegrityError

from voicecore.policy.models import (
    Policy,
    PolicyError,
    load_policy,
    load_policy_text,
    policy_to_yaml,
)
from voicecore.policy.phone import normalize_phone, subject_key
from voicecore.storage.audit import AuditLog
from voicecore.storage.crypto import Keystore, TenantKeys, hash_secret, secret_matches
from voicecore.storage.database import Database, StorageError, shred
from voicecore.storage.schema import ROLES, TENANT_TABLES

RECORDINGS_DIRNAME = "recordings"
EXPORTS_DIRNAME = "exports"

_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_API_KEY = re.compile(r"^vck_([0-9a-f]{12})_([A-Za-z0-9_-]{20,128})$")


class UnknownTenant(StorageError):
    def __init__(self, name: str):
        self.name = name
        super().__init__(f"unknown tenant {name!r}")


class TenantExists(StorageError):
    def __init__(self, name: str):
        super().__init__(f"tenant {name!r} already exists")


@dataclass(frozen=True)
class Tenant:
    """A tenant's row: the id its data carries, its name and its policy text."""

    id: str
    name: str
    policy_yaml: str
    created_at: float


@dataclass(frozen=True)
class Subject:
    """A data subject (a phone number) at a tenant, resolved for a subject-rights request."""

    tenant: Tenant
    policy: Policy
    keys: TenantKeys
    e164: str
    hash: str

    @property
    def audit_id(self) -> str:
        """How audit entries name the subject (never the number)."""
        return f"subject:{self.hash[:16]}"


@dataclass(frozen=True)
class ApiKeyInfo:
    key_id: str
    tenant: str
    role: str
    label: str | None
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True)
class TenantInfo:
    name: str
    policy_name: str
    created_at: float
    active_keys: int


class TenantRepository:
    """Tenants, their policies and API keys; and the lookups other repositories share."""

    def __init__(self, db: Database, keystore: Keystore, audit: AuditLog, data_dir: Path):
        self._db = db
        self._keystore = keystore
        self._audit = audit
        self._data_dir = data_dir
        self._policy_cache: dict[tuple[str, str], Policy] = {}

    # -- lookups shared by the repositories -----------------------------------------

    def row(self, name: str) -> Tenant:
        """The tenant named ``name``; :class:`UnknownTenant` when there is none."""
        r = self._db.one("SELECT id, name, policy_yaml, created_at FROM tenants WHERE name = ?", (name,))
        if r is None:
            raise UnknownTenant(name)
        return Tenant(r["id"], r["name"], r["policy_yaml"], r["created_at"])

    def data_keys(self, tenant: Tenant | str) -> TenantKeys:
        """The tenant's keys (by row, or by tenant id)."""
        return self._keystore.get(tenant if isinstance(tenant, str) else tenant.id)

    def policy_of(self, tenant: Tenant) -> Policy:
        key = (tenant.id, hashlib.sha256(tenant.policy_yaml.encode()).hexdigest())
        policy = self._policy_cache.get(key)
        if policy is None:
            policy = load_policy_text(tenant.policy_yaml, source=f"policy of tenant {tenant.name!r}")
            self._policy_cache[key] = policy
        return policy

    @staticmethod
    def subject_hash_of(keys: TenantKeys, raw: str, region: str) -> str:
        """The keyed hash a number is indexed by (lenient parsing: caller ids as providers send them)."""
        return keys.keyed_hash("subject:" + subject_key(raw, region))

    def subject(self, tenant: str, phone: str) -> Subject:
        """The subject ``phone`` at ``tenant`` for a subject-rights request; strict parsing."""
        t = self.row(tenant)
        policy = self.policy_of(t)
        e164 = normalize_phone(phone, policy.phone_region)
        keys = self.data_keys(t)
        return Subject(t, policy, keys, e164, keys.keyed_hash("subject:" + e164))

    def is_restricted_hash(self, tenant_id: str, h: str | None) -> bool:
        if h is None:
            return False
        return self._db.exists("SELECT 1 AS x FROM restrictions WHERE tenant_id = ? AND phone_hash = ?", (tenant_id, h))

    # -- tenants ---------------------------------------------------------------------

    def exists(self, name: str) -> bool:
        return self._db.exists("SELECT 1 AS x FROM tenants WHERE name = ?", (name,))

    def create(
        self,
        name: str,
        policy_path: str | Path | None = None,
        *,
        actor: str,
        policy_yaml: str | None = None,
        role: str = "admin",
        label: str | None = None,
        with_key: bool = True,
    ) -> str | None:
        """Create a tenant with a policy (file, text, or the privacy-first default) and its first API key.

        Returns the API key, which is shown only this once (only its scrypt hash is
        stored); ``None`` with ``with_key=False``. Raises :class:`TenantExists`,
        :class:`~voicecore.policy.PolicyError`.
        """
        if not _TENANT_NAME.match(name or ""):
            raise StorageError(
                f"invalid tenant name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        if policy_path is not None and policy_yaml is not None:
            raise StorageError("give either policy_path or policy_yaml, not both")
        if policy_path is not None:
            load_policy(policy_path)  # validate, naming the file
            text = Path(policy_path).read_text(encoding="utf-8")
        elif policy_yaml is not None:
            load_policy_text(policy_yaml, source=f"policy for tenant {name!r}")
            text = policy_yaml
        else:
            text = policy_to_yaml(Policy())
        with self._db.lock:
            if self.exists(name):
                raise TenantExists(name)
            tenant_id = secrets.token_hex(8)
            self._keystore.create(tenant_id)
            try:
                with self._db.tx():
                    self._db.insert(
                        "tenants", {"id": tenant_id, "name": name, "policy_yaml": text, "created_at": self._db.clock()}
                    )
                    self._audit.append_in_tx(actor, name, "tenant.created", f"tenant:{name}")
            except IntegrityError:  # another worker created it between the check and the insert
                self._keystore.destroy(tenant_id)
                raise TenantExists(name) from None
            except BaseException:
                self._keystore.destroy(tenant_id)
                raise
            logger.info("tenant {} created", name)
            if not with_key:
                return None
            return self.create_api_key(name, role=role, label=label, actor=actor)

    def ensure(self, name: str, policy_path: str | Path | None = None) -> bool:
        """Create the tenant (without an API key) if it does not exist. Returns whether it was created.
        For local runs (``demo``, ``run``, ``chat``) that store calls under a tenant without auth."""
        with self._db.lock:
            if self.exists(name):
                return False
            self.create(name, policy_path, actor="system", with_key=False)
            return True

    def list(self) -> list[TenantInfo]:
        out: list[TenantInfo] = []
        for r in self._db.rows(
            "SELECT t.id, t.name, t.policy_yaml, t.created_at, "
            "(SELECT COUNT(*) FROM api_keys k WHERE k.tenant_id = t.id AND k.revoked_at IS NULL) AS active_keys "
            "FROM tenants t ORDER BY t.name"
        ):
            try:
                policy_name = self.policy_of(Tenant(r["id"], r["name"], r["policy_yaml"], r["created_at"])).name
            except PolicyError:
                policy_name = "<invalid>"
            out.append(TenantInfo(r["name"], policy_name, r["created_at"], r["active_keys"]))
        return out

    def policy(self, name: str) -> Policy:
        return self.policy_of(self.row(name))

    def policy_yaml(self, name: str) -> str:
        return self.row(name).policy_yaml

    def set_policy(self, name: str, yaml_text: str, *, actor: str) -> Policy:
        """Replace the tenant's policy (validated first; audited). Applies to data written from now on;
        rows already stored keep the expiry they were written with."""
        policy = load_policy_text(yaml_text, source=f"new policy for tenant {name!r}")
        with self._db.lock:
            tenant = self.row(name)
            with self._db.tx():
                self._db.execute("UPDATE tenants SET policy_yaml = ? WHERE id = ?", (yaml_text, tenant.id))
                self._audit.append_in_tx(actor, name, "policy.changed", f"policy:{policy.name}")
        logger.info("policy of tenant {} replaced by {!r}", name, policy.name)
        return policy

    def delete(self, name: str, *, actor: str) -> None:
        """Delete everything of a tenant (rows, recording files) and destroy its keys, so any copy
        of its ciphertexts (backups included) can no longer be decrypted."""
        with self._db.lock:
            tenant = self.row(name)
            tid = tenant.id
            paths = [
                Path(r["path"])
                for table in ("recordings", "exports")
                for r in self._db.rows(f"SELECT path FROM {table} WHERE tenant_id = ?"
                                       + (" AND location = 'file'" if table == "recordings" else ""), (tid,))  # fmt: skip
            ]
            with self._db.tx():
                self._db.execute(  # database recordings' chunks (the foreign key cascades too)
                    "DELETE FROM recording_chunks WHERE recording_id IN (SELECT id FROM recordings WHERE tenant_id = ?)",
                    (tid,),
                )
                for table in TENANT_TABLES:
                    self._db.execute(f"DELETE FROM {table} WHERE tenant_id = ?", (tid,))
                self._db.execute("DELETE FROM tenants WHERE id = ?", (tid,))
                self._audit.append_in_tx(actor, tenant, "tenant.deleted", f"tenant:{name}")
            self._keystore.destroy(tid)
            for rel in paths:
                shred(self._data_dir / rel)
            for folder in (RECORDINGS_DIRNAME, EXPORTS_DIRNAME):
                tenant_dir = self._data_dir / folder / tid
                if tenant_dir.exists():
                    for leftover in tenant_dir.iterdir():
                        shred(leftover)
                    tenant_dir.rmdir()
            self._db.compact(full=True)
        logger.info("tenant {} deleted and its keys destroyed", name)

    # -- API keys --------------------------------------------------------------------

    def create_api_key(self, tenant: str, *, role: str = "admin", label: str | None = None, actor: str) -> str:
        """A new API key for ``tenant`` with ``role`` (admin, analyst, viewer). Shown once; stored as scrypt hash."""
        if role not in ROLES:
            raise StorageError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        salt, digest = hash_secret(secret)
        with self._db.lock:
            t = self.row(tenant)
            with self._db.tx():
                self._db.insert(
                    "api_keys",
                    {
                        "id": key_id,
                        "tenant_id": t.id,
                        "role": role,
                        "salt": salt,
                        "hash": digest,
                        "label": label,
                        "created_at": self._db.clock(),
                        "revoked_at": None,
                    },
                )
                self._audit.append_in_tx(actor, tenant, "apikey.created", f"apikey:{key_id}")
        return f"vck_{key_id}_{secret}"

    def revoke_api_key(self, tenant: str, key_id: str, *, actor: str) -> bool:
        with self._db.lock:
            t = self.row(tenant)
            with self._db.tx():
                n = self._db.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE tenant_id = ? AND id = ? AND revoked_at IS NULL",
                    (self._db.clock(), t.id, key_id),
                )
                if n:
                    self._audit.append_in_tx(actor, tenant, "apikey.revoked", f"apikey:{key_id}")
        return bool(n)

    def api_keys(self, tenant: str) -> list[ApiKeyInfo]:
        """The tenant's API keys (never their secrets), oldest first."""
        t = self.row(tenant)
        return [
            ApiKeyInfo(r["id"], tenant, r["role"], r["label"], r["created_at"], r["revoked_at"])
            for r in self._db.rows(
                "SELECT id, role, label, created_at, revoked_at FROM api_keys WHERE tenant_id = ? ORDER BY created_at",
                (t.id,),
            )
        ]

    def authenticate(self, api_key: str | None) -> ApiKeyInfo | None:
        """The key's tenant and role, or ``None`` for a missing, malformed, unknown or revoked key.
        Constant-time comparison; a scrypt is computed even for unknown key ids."""
        m = _API_KEY.match(api_key or "")
        secret = m.group(2) if m else "x" * 43
        row = (
            self._db.one(
                "SELECT k.id, k.role, k.label, k.salt, k.hash, k.created_at, k.revoked_at, t.name AS tenant "
                "FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.id = ?",
                (m.group(1),),
            )
            if m
            else None
        )
        if not secret_matches(secret, row["salt"] if row else None, row["hash"] if row else None):
            return None
        if row is None or row["revoked_at"] is not None:
            return None
        return ApiKeyInfo(row["id"], row["tenant"], row["role"], row["label"], row["created_at"], None)
