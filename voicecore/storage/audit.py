"""The audit log: who did what to which tenant's data, and when; hash-chained with HMAC-SHA256.

An entry holds no call content and no clear phone number (subjects appear as
the first 16 hex digits of their keyed hash). Each entry's hash covers its
fields and the previous entry's hash, keyed with an operator key from the
keystore, so a modified, inserted or deleted entry (also at the end) is found by
:meth:`AuditLog.verify`.

Every repository method that reads call content or numbers, and every change,
appends its own entry with the ``actor`` its caller names (``cli``,
``apikey:<key id>``, ``system``, ...): the CLI and the HTTP API cannot drift
apart because neither writes audit entries of its own for those reads.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any, Protocol

from voicecore.storage.crypto import Keystore
from voicecore.storage.database import Database, StorageError

_GENESIS = "0" * 64


class TenantRef(Protocol):
    id: str
    name: str


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    tenant: str | None
    action: str
    object_id: str | None


@dataclass(frozen=True)
class AuditCheck:
    ok: bool
    first_bad_id: int | None
    reason: str | None
    entries: int


class AuditLog:
    """Appends to, reads and verifies the hash-chained audit log."""

    def __init__(self, db: Database, keystore: Keystore):
        self._db = db
        self._keystore = keystore

    @staticmethod
    def _hash(key: bytes, entry_id: int, at: float, actor: str, tenant: str | None, action: str,
              object_id: str | None, prev_hash: str) -> str:  # fmt: skip
        canonical = json.dumps([entry_id, at, actor, tenant, action, object_id, prev_hash], separators=(",", ":"))
        return hmac.new(key, canonical.encode("utf-8"), hashlib.sha256).hexdigest()

    def _tenant(self, tenant: TenantRef | str | None) -> tuple[str | None, str | None]:
        """(name, id) of the tenant an entry is about: entries are kept (and listed) by tenant id,
        so a tenant deleted and created again under the same name starts with an empty log."""
        if tenant is None:
            return None, None
        if isinstance(tenant, str):
            row = self._db.fetchone("SELECT id FROM tenants WHERE name = ?", (tenant,))
            return tenant, (row[0] if row else None)
        return tenant.name, tenant.id

    def append_in_tx(self, actor: str, tenant: TenantRef | str | None, action: str, object_id: str | None) -> int:
        """Inside a write transaction (the change it records): append one chained entry."""
        if not self._db.in_transaction:
            raise StorageError("internal error: audit entry outside a transaction")
        name, tenant_id = self._tenant(tenant)
        key = self._keystore.operator_key("audit")
        # The chain's head row, locked (FOR UPDATE on PostgreSQL; the transaction's BEGIN IMMEDIATE
        # on SQLite): appends from every worker take their turn, each chaining to the one before.
        head = self._db.fetchone(self._db.lock_row("SELECT last_id, last_hash FROM audit_head WHERE id = 1"))
        if head is None:
            self._db.insert_ignore("audit_head", {"id": 1, "last_id": 0, "last_hash": _GENESIS})
            head = self._db.fetchone(self._db.lock_row("SELECT last_id, last_hash FROM audit_head WHERE id = 1"))
            assert head is not None
        last = self._db.fetchone("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
        prev_hash = last[1] if last else _GENESIS
        entry_id = max(last[0] if last else 0, int(head[0])) + 1
        at = self._db.clock()
        digest = self._hash(key, entry_id, at, actor, name, action, object_id, prev_hash)
        self._db.insert(
            "audit_log",
            {
                "id": entry_id,
                "at": at,
                "actor": actor,
                "tenant": name,
                "tenant_id": tenant_id,
                "action": action,
                "object_id": object_id,
                "prev_hash": prev_hash,
                "hash": digest,
            },
        )
        self._db.execute("UPDATE audit_head SET last_id = ?, last_hash = ? WHERE id = 1", (entry_id, digest))
        return entry_id

    def append(self, actor: str, tenant: TenantRef | str | None, action: str, object_id: str | None = None) -> int:
        """Append one entry in its own transaction (a read, or a change made outside storage)."""
        with self._db.tx():
            return self.append_in_tx(actor, tenant, action, object_id)

    def list(self, tenant: str | None = None, *, limit: int = 100) -> list[AuditEntry]:
        """The latest entries (of the tenant named ``tenant`` as it is now, or all), newest first."""
        sql = "SELECT id, at, actor, tenant, action, object_id FROM audit_log"
        params: list[Any] = []
        if tenant is not None:
            _name, tenant_id = self._tenant(tenant)
            if tenant_id is None:
                return []
            sql += " WHERE tenant_id = ?"
            params.append(tenant_id)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(int(limit))
        return [AuditEntry(**r) for r in self._db.rows(sql, params)]

    def verify(self) -> AuditCheck:
        """Check the hash chain: a modified, inserted or deleted entry (also at the end) is found;
        ``first_bad_id`` is the first entry that does not verify (or is missing)."""
        with self._db.lock:
            key = self._keystore.operator_key("audit")
            prev_hash = _GENESIS
            expected_id = 1
            count = 0
            for r in self._db.rows(
                "SELECT id, at, actor, tenant, action, object_id, prev_hash, hash FROM audit_log ORDER BY id"
            ):
                count += 1
                if r["id"] != expected_id:
                    return AuditCheck(False, expected_id, f"entry {expected_id} is missing", count)
                if r["prev_hash"] != prev_hash:
                    return AuditCheck(False, r["id"], f"entry {r['id']} does not chain to the previous entry", count)
                digest = self._hash(
                    key, r["id"], r["at"], r["actor"], r["tenant"], r["action"], r["object_id"], r["prev_hash"]
                )
                if not hmac.compare_digest(digest, r["hash"]):
                    return AuditCheck(False, r["id"], f"entry {r['id']} was modified", count)
                prev_hash = r["hash"]
                expected_id += 1
            head = self._db.one("SELECT last_id FROM audit_head WHERE id = 1")
            if head is not None and head["last_id"] >= expected_id:
                return AuditCheck(False, expected_id, f"entries {expected_id}..{head['last_id']} were deleted", count)
            return AuditCheck(True, None, None, count)
