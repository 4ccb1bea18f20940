"""SQLite storage: the one module that owns all SQL (through sqlite-utils).

One database per data directory (``<data_dir>/voicecore.db``), WAL mode,
``secure_delete`` on, temp files in memory, schema created and migrated by code
(``PRAGMA user_version``). Every table that holds data about calls carries the
owning ``tenant_id`` and every query is scoped by it; every stored row carries
its expiry (``expires_at``, epoch seconds) computed from the tenant's policy at
write time, and a data class with retention 0 is never written.

What is encrypted with the tenant key (AES-GCM, see :mod:`voicecore.storage.crypto`):
transcript text, caller/callee numbers, report bodies, contact fields, opt-out
numbers, outbox payloads and recording files. What is in clear: ids, times,
durations, end reasons, latency timelines, provider ids, flags, and keyed hashes
(HMAC) of phone numbers used for lookups. The audit log holds no call content
and no clear phone number; it is chained with HMAC-SHA256.

Blocking: everything here is synchronous. ``authenticate`` runs scrypt (tens of
milliseconds) and ``retention_sweep``/``erase`` rewrite the database file; call
those from a worker thread (``asyncio.to_thread``) inside ``serve``. A ``Store``
may be shared by threads (an internal lock serialises access).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from loguru import logger
from sqlite_utils import Database

from voicecore.policy.context import stored_transcript_text
from voicecore.policy.decisions import expires_at as policy_expires_at
from voicecore.policy.decisions import may_record
from voicecore.policy.models import Policy, PolicyError, load_policy, load_policy_text, policy_to_yaml
from voicecore.policy.phone import normalize_phone, subject_key
from voicecore.policy.redaction import scrub_number
from voicecore.records import CallRecord
from voicecore.storage.crypto import (
    KEYSTORE_FILENAME,
    CryptoError,
    Keystore,
    TenantKeys,
    resolve_master_key,
)
from voicecore.storage.recording import RecordingWriter, read_recording_file

DB_FILENAME = "voicecore.db"
RECORDINGS_DIRNAME = "recordings"
SCHEMA_VERSION = 2
ROLES: tuple[str, ...] = ("admin", "analyst", "viewer")
OUTBOX_TTL_DAYS = 7
MAX_WEBHOOK_ENDPOINTS = 20  # per tenant
WEBHOOK_SECRET_OVERLAP_S = 24 * 3600  # a rotated-out secret still signs deliveries this long
EVENT_TYPES: tuple[str, ...] = ("call.ended", "report.ready", "optout.requested", "subject.erased")

_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_API_KEY = re.compile(r"^vck_([0-9a-f]{12})_([A-Za-z0-9_-]{20,128})$")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32, "maxmem": 64 * 1024 * 1024}
_GENESIS = "0" * 64


# --------------------------------------------------------------------------- errors


class StorageError(Exception):
    """A storage operation could not be done; the message says what and why."""


class UnknownTenant(StorageError):
    def __init__(self, name: str):
        self.name = name
        super().__init__(f"unknown tenant {name!r}")


class TenantExists(StorageError):
    def __init__(self, name: str):
        super().__init__(f"tenant {name!r} already exists")


class RecordingNotAllowed(StorageError):
    """The tenant policy (or a restriction) does not allow recording this call."""


# --------------------------------------------------------------------------- data


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _epoch(value: datetime | float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    return float(value)


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


@dataclass
class StoredTurn:
    idx: int
    role: str
    kind: str | None
    started_at: float | None
    interrupted: bool
    text: str | None  # None when not stored, expired, or not requested
    generated_text: str | None
    timeline: dict[str, Any] | None  # relative ms per stage + voice_to_voice_ms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StoredCall:
    call_id: str
    tenant: str
    pipeline: str
    transport: str
    caller: str | None
    callee: str | None
    provider_ids: dict[str, str]
    started_at: float
    ended_at: float | None
    duration_s: float | None
    end_reason: str | None
    flags: dict[str, Any]
    turn_count: int
    optout: bool
    transcript_redacted: bool
    stored_at: float
    expires_at: float
    has_recording: bool = False
    turns: list[StoredTurn] | None = None  # None: transcript not requested

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["started_at_iso"] = _iso(self.started_at)
        d["ended_at_iso"] = _iso(self.ended_at)
        d["expires_at_iso"] = _iso(self.expires_at)
        return d


@dataclass(frozen=True)
class OptOutEntry:
    phone: str | None  # None after the subject was erased (only the keyed hash is left)
    phone_hash: str
    source: str
    created_at: float


@dataclass
class OutboxEvent:
    id: int
    event_id: str
    tenant: str
    type: str
    payload: dict[str, Any]
    status: str  # pending | delivered | dead
    attempts: int
    next_attempt_at: float
    created_at: float
    last_error: str | None = None


@dataclass
class SweepResult:
    at: float
    deleted: dict[str, int] = field(default_factory=dict)
    transcripts_cleared: int = 0
    files_removed: int = 0
    wal_truncated: bool = False

    @property
    def total(self) -> int:
        return sum(self.deleted.values()) + self.transcripts_cleared + self.files_removed


@dataclass
class ErasureResult:
    subject_hash: str
    calls: int = 0
    turns: int = 0
    recordings: int = 0
    reports: int = 0
    contacts: int = 0
    outbox: int = 0
    mentions_scrubbed: int = 0
    opted_out: bool = False
    wal_truncated: bool = False


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


@dataclass(frozen=True)
class WebhookEndpoint:
    """A tenant's webhook receiver (its signing secret is shown only when created or rotated)."""

    id: str
    tenant: str
    url: str
    events: tuple[str, ...]
    description: str | None
    active: bool
    created_at: float
    updated_at: float
    secret_rotated_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["events"] = list(self.events)
        return d


@dataclass
class WebhookDelivery:
    """One claimed delivery attempt of an outbox event to one endpoint (for the webhook worker)."""

    delivery_id: str
    event_id: str
    event_type: str
    tenant: str
    endpoint_id: str
    url: str
    secrets: list[str]  # the current secret first, then one rotated out less than a day ago
    payload: dict[str, Any]
    attempts: int  # including this one
    created_at: float


@dataclass(frozen=True)
class DeliveryInfo:
    """The state of one event's delivery to one endpoint (no payload)."""

    id: str
    event_id: str
    event_type: str
    endpoint_id: str
    status: str  # pending | delivered | dead
    attempts: int
    next_attempt_at: float
    last_status: int | None
    last_error: str | None
    created_at: float
    delivered_at: float | None


@dataclass
class SubjectExport:
    """Everything a tenant holds about one data subject, in memory: the ``export.json`` document
    and the recordings as WAV bytes keyed by their path in the document (``recordings/*.wav``)."""

    document: dict[str, Any]
    recordings: dict[str, bytes] = field(default_factory=dict)


# --------------------------------------------------------------------------- schema

_SCHEMA_V1: tuple[str, ...] = (
    """CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        policy_yaml TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        role TEXT NOT NULL CHECK (role IN ('admin', 'analyst', 'viewer')),
        salt BLOB NOT NULL,
        hash BLOB NOT NULL,
        label TEXT,
        created_at REAL NOT NULL,
        revoked_at REAL
    )""",
    "CREATE INDEX api_keys_tenant ON api_keys(tenant_id)",
    """CREATE TABLE calls (
        id INTEGER PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        call_id TEXT NOT NULL,
        pipeline TEXT NOT NULL,
        transport TEXT NOT NULL,
        caller_enc BLOB,
        callee_enc BLOB,
        caller_hash TEXT,
        callee_hash TEXT,
        provider_ids TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        duration_s REAL,
        end_reason TEXT,
        flags TEXT NOT NULL,
        turn_count INTEGER NOT NULL,
        optout INTEGER NOT NULL DEFAULT 0,
        transcript_redacted INTEGER NOT NULL DEFAULT 0,
        stored_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        UNIQUE (tenant_id, call_id)
    )""",
    "CREATE INDEX calls_started ON calls(tenant_id, started_at)",
    "CREATE INDEX calls_caller ON calls(tenant_id, caller_hash)",
    "CREATE INDEX calls_callee ON calls(tenant_id, callee_hash)",
    "CREATE INDEX calls_expiry ON calls(expires_at)",
    """CREATE TABLE turns (
        id INTEGER PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        call_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        role TEXT NOT NULL,
        kind TEXT,
        started_at REAL,
        interrupted INTEGER NOT NULL DEFAULT 0,
        text_enc BLOB,
        generated_enc BLOB,
        timeline TEXT,
        expires_at REAL NOT NULL,
        text_expires_at REAL,
        UNIQUE (tenant_id, call_id, idx)
    )""",
    "CREATE INDEX turns_expiry ON turns(expires_at)",
    "CREATE INDEX turns_text_expiry ON turns(text_expires_at)",
    """CREATE TABLE recordings (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        call_id TEXT NOT NULL,
        track TEXT NOT NULL,
        subject_hash TEXT,
        path TEXT NOT NULL,
        sample_rate INTEGER NOT NULL,
        channels INTEGER NOT NULL,
        sample_width INTEGER NOT NULL,
        bytes INTEGER NOT NULL DEFAULT 0,
        complete INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        UNIQUE (tenant_id, call_id, track)
    )""",
    "CREATE INDEX recordings_subject ON recordings(tenant_id, subject_hash)",
    "CREATE INDEX recordings_expiry ON recordings(expires_at)",
    """CREATE TABLE reports (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        call_id TEXT NOT NULL,
        subject_hash TEXT,
        status TEXT NOT NULL CHECK (status IN ('ready', 'failed')),
        body_enc BLOB,
        error TEXT,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX reports_call ON reports(tenant_id, call_id)",
    "CREATE INDEX reports_subject ON reports(tenant_id, subject_hash)",
    "CREATE INDEX reports_expiry ON reports(expires_at)",
    """CREATE TABLE contacts (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        phone_hash TEXT NOT NULL,
        fields_enc BLOB NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        UNIQUE (tenant_id, phone_hash)
    )""",
    "CREATE INDEX contacts_expiry ON contacts(expires_at)",
    """CREATE TABLE opt_outs (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        phone_hash TEXT NOT NULL,
        phone_enc BLOB,
        source TEXT NOT NULL,
        call_id TEXT,
        created_at REAL NOT NULL,
        PRIMARY KEY (tenant_id, phone_hash)
    )""",
    """CREATE TABLE restrictions (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        phone_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (tenant_id, phone_hash)
    )""",
    """CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        tenant TEXT,
        action TEXT NOT NULL,
        object_id TEXT,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    """CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        type TEXT NOT NULL,
        call_id TEXT,
        subject_hash TEXT,
        payload_enc BLOB NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        created_at REAL NOT NULL,
        delivered_at REAL,
        last_error TEXT,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX outbox_pending ON outbox(status, next_attempt_at)",
    "CREATE INDEX outbox_expiry ON outbox(expires_at)",
)

# Version 2: webhook endpoints and per-endpoint deliveries of outbox events.
_SCHEMA_V2: tuple[str, ...] = (
    """CREATE TABLE webhook_endpoints (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        url TEXT NOT NULL,
        events TEXT NOT NULL,
        secret_enc BLOB NOT NULL,
        previous_secret_enc BLOB,
        previous_secret_until REAL,
        secret_rotated_at REAL,
        description TEXT,
        active INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    "CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints(tenant_id)",
    """CREATE TABLE webhook_deliveries (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        event_id TEXT NOT NULL,
        endpoint_id TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_status INTEGER,
        last_error TEXT,
        created_at REAL NOT NULL,
        delivered_at REAL,
        expires_at REAL NOT NULL,
        UNIQUE (event_id, endpoint_id)
    )""",
    "CREATE INDEX webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at)",
    "CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries(tenant_id, endpoint_id)",
    # 1 once the event has been fanned out to the endpoints subscribed at that moment.
    "ALTER TABLE outbox ADD COLUMN dispatched INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX outbox_dispatch ON outbox(dispatched, status)",
)

# MIGRATIONS[i] upgrades a database from user_version i to i + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (_SCHEMA_V1, _SCHEMA_V2)
assert len(MIGRATIONS) == SCHEMA_VERSION

# Tables holding tenant data (deleted with the tenant), children first.
_TENANT_TABLES: tuple[str, ...] = (
    "webhook_deliveries",
    "webhook_endpoints",
    "turns",
    "reports",
    "recordings",
    "contacts",
    "opt_outs",
    "restrictions",
    "outbox",
    "calls",
    "api_keys",
)


def _aad(table: str, tenant_id: str, row: str, column: str) -> str:
    return f"vc1|{table}|{tenant_id}|{row}|{column}"


def _shred(path: Path) -> bool:
    """Overwrite a file with zeros, then unlink it. Returns whether a file was removed."""
    try:
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def default_data_dir() -> Path:
    """``VOICECORE_DATA_DIR`` or ``./storage``."""
    return Path(os.environ.get("VOICECORE_DATA_DIR") or "storage")


# --------------------------------------------------------------------------- the store


class Store:
    """All persistent state of one data directory. See the module docstring for the guarantees."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        master_key: bytes | str | None = None,
        keystore_path: str | Path | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.db_path = self.data_dir / DB_FILENAME
        self.recordings_dir = self.data_dir / RECORDINGS_DIRNAME
        self._clock = clock
        self._lock = threading.RLock()
        key, source = resolve_master_key(self.data_dir, master_key)
        self.keystore = Keystore(
            Path(keystore_path) if keystore_path else self.data_dir / KEYSTORE_FILENAME, key, source
        )
        self._policy_cache: dict[tuple[str, str], Policy] = {}
        new_file = not self.db_path.exists()
        conn = sqlite3.connect(str(self.db_path), timeout=30.0, check_same_thread=False)
        if new_file:
            os.chmod(self.db_path, 0o600)
        self.db = Database(conn)
        self.db.enable_wal()
        for pragma in (
            "PRAGMA secure_delete=ON",
            "PRAGMA foreign_keys=ON",
            "PRAGMA temp_store=MEMORY",
            "PRAGMA synchronous=FULL",
            "PRAGMA busy_timeout=30000",
        ):
            self.db.execute(pragma)
        self._migrate()

    # ---------------------------------------------------------------- plumbing

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def files(self) -> list[Path]:
        """The database files (main, -wal, -shm) that exist right now."""
        return [p for p in (self.db_path, Path(f"{self.db_path}-wal"), Path(f"{self.db_path}-shm")) if p.exists()]

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """A write transaction (BEGIN IMMEDIATE: takes the write lock up front)."""
        with self._lock:
            if self.db.conn.in_transaction:
                raise StorageError("internal error: nested write transaction")
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self.db.conn.in_transaction:
                    self.db.conn.execute("ROLLBACK")
                raise
            else:
                self.db.conn.execute("COMMIT")

    def _rows(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.db.query(sql, list(params)))

    def _one(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> dict[str, Any] | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _exec(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> int:
        return self.db.execute(sql, list(params)).rowcount

    def _migrate(self) -> None:
        with self._lock:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"{self.db_path}: database schema version {version} is newer than this voicecore "
                    f"understands ({SCHEMA_VERSION}); upgrade voicecore"
                )
            while version < SCHEMA_VERSION:
                with self._tx():
                    for statement in MIGRATIONS[version]:
                        self.db.execute(statement)
                    self.db.execute(f"PRAGMA user_version={version + 1}")
                logger.info("storage schema migrated to version {}", version + 1)
                version += 1

    def schema_version(self) -> int:
        with self._lock:
            return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _compact(self) -> bool:
        """Flush the WAL into the database, rebuild the file without free pages, empty the WAL.
        Returns whether the WAL was fully truncated (another open reader can prevent it)."""
        with self._lock:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.db.conn.execute("VACUUM")
            busy, _log, _done = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        wal = Path(f"{self.db_path}-wal")
        truncated = busy == 0 and (not wal.exists() or wal.stat().st_size == 0)
        if not truncated:
            logger.warning(
                "WAL checkpoint was blocked by another connection; deleted bytes may remain until the next sweep"
            )
        return truncated

    # ---------------------------------------------------------------- tenants

    def _tenant(self, name: str) -> dict[str, Any]:
        row = self._one("SELECT id, name, policy_yaml, created_at FROM tenants WHERE name = ?", (name,))
        if row is None:
            raise UnknownTenant(name)
        return row

    def _keys(self, tenant_row: dict[str, Any]) -> TenantKeys:
        return self.keystore.get(tenant_row["id"])

    def _policy_of(self, tenant_row: dict[str, Any]) -> Policy:
        text = tenant_row["policy_yaml"]
        key = (tenant_row["id"], hashlib.sha256(text.encode()).hexdigest())
        policy = self._policy_cache.get(key)
        if policy is None:
            policy = load_policy_text(text, source=f"policy of tenant {tenant_row['name']!r}")
            self._policy_cache[key] = policy
        return policy

    def tenant_exists(self, name: str) -> bool:
        return self._one("SELECT 1 AS x FROM tenants WHERE name = ?", (name,)) is not None

    def create_tenant(
        self,
        name: str,
        policy_path: str | Path | None = None,
        *,
        policy_yaml: str | None = None,
        role: str = "admin",
        label: str | None = None,
        actor: str = "cli",
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
        with self._lock:
            if self.tenant_exists(name):
                raise TenantExists(name)
            tenant_id = secrets.token_hex(8)
            self.keystore.create(tenant_id)
            try:
                with self._tx():
                    self.db.table("tenants").insert(
                        {"id": tenant_id, "name": name, "policy_yaml": text, "created_at": self._clock()}
                    )
                    self._audit(actor, name, "tenant.created", f"tenant:{name}")
            except BaseException:
                self.keystore.destroy(tenant_id)
                raise
            logger.info("tenant {} created", name)
            if not with_key:
                return None
            return self.create_api_key(name, role=role, label=label, actor=actor)

    def ensure_tenant(self, name: str, policy_path: str | Path | None = None) -> bool:
        """Create the tenant (without an API key) if it does not exist. Returns whether it was created.
        For local runs (``demo``, ``run``, ``chat``) that store calls under a tenant without auth."""
        with self._lock:
            if self.tenant_exists(name):
                return False
            self.create_tenant(name, policy_path, actor="system", with_key=False)
            return True

    def list_tenants(self) -> list[TenantInfo]:
        out: list[TenantInfo] = []
        for row in self._rows(
            "SELECT t.id, t.name, t.policy_yaml, t.created_at, "
            "(SELECT COUNT(*) FROM api_keys k WHERE k.tenant_id = t.id AND k.revoked_at IS NULL) AS active_keys "
            "FROM tenants t ORDER BY t.name"
        ):
            try:
                policy_name = self._policy_of(row).name
            except PolicyError:
                policy_name = "<invalid>"
            out.append(TenantInfo(row["name"], policy_name, row["created_at"], row["active_keys"]))
        return out

    def get_tenant_policy(self, name: str) -> Policy:
        return self._policy_of(self._tenant(name))

    def get_tenant_policy_yaml(self, name: str) -> str:
        return str(self._tenant(name)["policy_yaml"])

    def set_tenant_policy(self, name: str, yaml_text: str, *, actor: str = "cli") -> Policy:
        """Replace the tenant's policy (validated first; audited). Applies to data written from now on;
        rows already stored keep the expiry they were written with."""
        policy = load_policy_text(yaml_text, source=f"new policy for tenant {name!r}")
        with self._lock:
            tenant = self._tenant(name)
            with self._tx():
                self._exec("UPDATE tenants SET policy_yaml = ? WHERE id = ?", (yaml_text, tenant["id"]))
                self._audit(actor, name, "policy.changed", f"policy:{policy.name}")
        logger.info("policy of tenant {} replaced by {!r}", name, policy.name)
        return policy

    def delete_tenant(self, name: str, *, actor: str = "cli") -> None:
        """Delete everything of a tenant (rows, recording files) and destroy its keys, so any copy
        of its ciphertexts (backups included) can no longer be decrypted."""
        with self._lock:
            tenant = self._tenant(name)
            tid = tenant["id"]
            paths = [Path(r["path"]) for r in self._rows("SELECT path FROM recordings WHERE tenant_id = ?", (tid,))]
            with self._tx():
                for table in _TENANT_TABLES:
                    self._exec(f"DELETE FROM {table} WHERE tenant_id = ?", (tid,))
                self._exec("DELETE FROM tenants WHERE id = ?", (tid,))
                self._audit(actor, name, "tenant.deleted", f"tenant:{name}")
            self.keystore.destroy(tid)
            for rel in paths:
                _shred(self.data_dir / rel)
            tenant_dir = self.recordings_dir / tid
            if tenant_dir.exists():
                for leftover in tenant_dir.iterdir():
                    _shred(leftover)
                tenant_dir.rmdir()
            self._compact()
        logger.info("tenant {} deleted and its keys destroyed", name)

    # ---------------------------------------------------------------- API keys

    def create_api_key(self, tenant: str, *, role: str = "admin", label: str | None = None, actor: str = "cli") -> str:
        """A new API key for ``tenant`` with ``role`` (admin, analyst, viewer). Shown once; stored as scrypt hash."""
        if role not in ROLES:
            raise StorageError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        digest = hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)
        with self._lock:
            t = self._tenant(tenant)
            with self._tx():
                self.db.table("api_keys").insert(
                    {
                        "id": key_id,
                        "tenant_id": t["id"],
                        "role": role,
                        "salt": salt,
                        "hash": digest,
                        "label": label,
                        "created_at": self._clock(),
                        "revoked_at": None,
                    }
                )
                self._audit(actor, tenant, "apikey.created", f"apikey:{key_id}")
        return f"vck_{key_id}_{secret}"

    def revoke_api_key(self, tenant: str, key_id: str, *, actor: str = "cli") -> bool:
        with self._lock:
            t = self._tenant(tenant)
            with self._tx():
                n = self._exec(
                    "UPDATE api_keys SET revoked_at = ? WHERE tenant_id = ? AND id = ? AND revoked_at IS NULL",
                    (self._clock(), t["id"], key_id),
                )
                if n:
                    self._audit(actor, tenant, "apikey.revoked", f"apikey:{key_id}")
        return bool(n)

    def list_api_keys(self, tenant: str) -> list[ApiKeyInfo]:
        t = self._tenant(tenant)
        return [
            ApiKeyInfo(r["id"], tenant, r["role"], r["label"], r["created_at"], r["revoked_at"])
            for r in self._rows(
                "SELECT id, role, label, created_at, revoked_at FROM api_keys WHERE tenant_id = ? ORDER BY created_at",
                (t["id"],),
            )
        ]

    def authenticate_key(self, api_key: str | None) -> ApiKeyInfo | None:
        """The key's tenant and role, or ``None`` for a missing, malformed, unknown or revoked key.
        Constant-time comparison; a scrypt is computed even for unknown key ids."""
        m = _API_KEY.match(api_key or "")
        secret = m.group(2) if m else "x" * 43
        row = (
            self._one(
                "SELECT k.id, k.role, k.label, k.salt, k.hash, k.created_at, k.revoked_at, t.name AS tenant "
                "FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.id = ?",
                (m.group(1),),
            )
            if m
            else None
        )
        salt = row["salt"] if row else b"\0" * 16
        expected = row["hash"] if row else b"\1" * 32
        digest = hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)
        if not hmac.compare_digest(digest, expected) or row is None or row["revoked_at"] is not None:
            return None
        return ApiKeyInfo(row["id"], row["tenant"], row["role"], row["label"], row["created_at"], None)

    def authenticate(self, api_key: str | None) -> str | None:
        """The tenant name an API key belongs to, or ``None``."""
        info = self.authenticate_key(api_key)
        return info.tenant if info else None

    # ---------------------------------------------------------------- subjects (phone numbers)

    def _subject_hash(self, keys: TenantKeys, raw: str, region: str) -> str:
        return keys.keyed_hash("subject:" + subject_key(raw, region))

    def _subject(self, tenant: str, phone: str) -> tuple[dict[str, Any], Policy, TenantKeys, str, str]:
        """(tenant row, policy, keys, E.164, keyed hash) for a subject-rights request; strict parsing."""
        t = self._tenant(tenant)
        policy = self._policy_of(t)
        e164 = normalize_phone(phone, policy.phone_region)
        keys = self._keys(t)
        return t, policy, keys, e164, keys.keyed_hash("subject:" + e164)

    @staticmethod
    def normalize_phone(phone: str, region: str = "US") -> str:
        """E.164 form of ``phone`` (see :func:`voicecore.policy.phone.normalize_phone`)."""
        return normalize_phone(phone, region)

    def subject_hash(self, tenant: str, phone: str) -> str:
        """The keyed hash a tenant's data about ``phone`` is indexed by (also used in audit object ids)."""
        return self._subject(tenant, phone)[4]

    def _is_restricted_hash(self, tenant_id: str, h: str | None) -> bool:
        if h is None:
            return False
        return (
            self._one("SELECT 1 AS x FROM restrictions WHERE tenant_id = ? AND phone_hash = ?", (tenant_id, h))
            is not None
        )

    # ---------------------------------------------------------------- calls

    def save_call(self, record: CallRecord, policy: Policy | None = None) -> bool:
        """Store a call as the policy allows: metadata and timelines (``retention.metadata``), turn text
        encrypted and redacted or not (``retention.transcripts``, ``transcripts.store_redacted``).
        Writes a ``call.ended`` outbox event in the same transaction when the call has ended.

        Idempotent per call id (a later save replaces the earlier one). Returns ``False``
        when nothing was stored: metadata retention 0, or the caller/callee is restricted.
        """
        with self._lock:
            t = self._tenant(record.tenant)
            policy = policy or self._policy_of(t)
            keys = self._keys(t)
            tid = t["id"]
            now = self._clock()
            meta_exp = policy_expires_at(policy, "metadata", now)
            if meta_exp is None:
                logger.debug("call {} not stored: metadata retention is 0", record.call_id)
                return False
            region = policy.phone_region
            caller_hash = self._subject_hash(keys, record.caller, region) if record.caller else None
            callee_hash = self._subject_hash(keys, record.callee, region) if record.callee else None
            if self._is_restricted_hash(tid, caller_hash) or self._is_restricted_hash(tid, callee_hash):
                logger.info("call {} not stored: the data subject is restricted", record.call_id)
                return False
            text_exp = policy_expires_at(policy, "transcripts", now)
            cid = record.call_id
            previous = self._one("SELECT ended_at FROM calls WHERE tenant_id = ? AND call_id = ?", (tid, cid))
            opted_out = bool(record.flags.get("opt_out") or record.flags.get("optout")) or (
                self._one("SELECT 1 AS x FROM opt_outs WHERE tenant_id = ? AND call_id = ?", (tid, cid)) is not None
            )
            caller_e164 = subject_key(record.caller, region) if record.caller else None
            callee_e164 = subject_key(record.callee, region) if record.callee else None
            with self._tx():
                self._exec("DELETE FROM turns WHERE tenant_id = ? AND call_id = ?", (tid, cid))
                self._exec("DELETE FROM calls WHERE tenant_id = ? AND call_id = ?", (tid, cid))
                self.db.table("calls").insert(
                    {
                        "tenant_id": tid,
                        "call_id": cid,
                        "pipeline": record.pipeline,
                        "transport": record.transport,
                        "caller_enc": keys.encrypt_text(caller_e164, _aad("calls", tid, cid, "caller")),
                        "callee_enc": keys.encrypt_text(callee_e164, _aad("calls", tid, cid, "callee")),
                        "caller_hash": caller_hash,
                        "callee_hash": callee_hash,
                        "provider_ids": json.dumps(record.provider_ids, sort_keys=True),
                        "started_at": record.started_at,
                        "ended_at": record.ended_at,
                        "duration_s": record.duration_s,
                        "end_reason": record.end_reason,
                        "flags": json.dumps(record.flags, sort_keys=True, default=str),
                        "turn_count": len(record.turns),
                        "optout": int(opted_out),
                        "transcript_redacted": int(text_exp is not None and policy.transcripts.store_redacted),
                        "stored_at": now,
                        "expires_at": meta_exp,
                    }
                )
                for idx, turn in enumerate(record.turns):
                    row_key = f"{cid}/{idx}"
                    text = stored_transcript_text(policy, turn.text)
                    generated = stored_transcript_text(policy, turn.generated_text)
                    timeline = None
                    if turn.timeline is not None:
                        timeline = {
                            **turn.timeline.relative_ms(),
                            "voice_to_voice_ms": turn.timeline.voice_to_voice_ms(),
                        }
                    self.db.table("turns").insert(
                        {
                            "tenant_id": tid,
                            "call_id": cid,
                            "idx": idx,
                            "role": turn.role,
                            "kind": turn.kind,
                            "started_at": turn.started_at,
                            "interrupted": int(turn.interrupted),
                            "text_enc": keys.encrypt_text(text, _aad("turns", tid, row_key, "text")),
                            "generated_enc": keys.encrypt_text(generated, _aad("turns", tid, row_key, "generated")),
                            "timeline": json.dumps(timeline) if timeline is not None else None,
                            "expires_at": meta_exp,
                            "text_expires_at": text_exp if (text is not None or generated is not None) else None,
                        }
                    )
                if record.ended_at is not None and (previous is None or previous["ended_at"] is None):
                    payload: dict[str, Any] = {
                        "call_id": cid,
                        "transport": record.transport,
                        "pipeline": record.pipeline,
                        "caller": caller_e164,
                        "callee": callee_e164,
                        "started_at": _iso(record.started_at),
                        "ended_at": _iso(record.ended_at),
                        "duration_s": record.duration_s,
                        "end_reason": record.end_reason,
                        "turns": len(record.turns),
                        "optout": opted_out,
                        "transcript_stored": text_exp is not None,
                    }
                    self._outbox_add(
                        t, keys, "call.ended", payload, call_id=cid, subject_hash=caller_hash or callee_hash
                    )
            logger.info("call {} stored for tenant {} ({} turns)", cid, record.tenant, len(record.turns))
            return True

    def _call_from_row(self, r: dict[str, Any], tenant: str, keys: TenantKeys) -> StoredCall:
        tid, cid = r["tenant_id"], r["call_id"]
        return StoredCall(
            call_id=cid,
            tenant=tenant,
            pipeline=r["pipeline"],
            transport=r["transport"],
            caller=keys.decrypt_text(r["caller_enc"], _aad("calls", tid, cid, "caller")),
            callee=keys.decrypt_text(r["callee_enc"], _aad("calls", tid, cid, "callee")),
            provider_ids=json.loads(r["provider_ids"]),
            started_at=r["started_at"],
            ended_at=r["ended_at"],
            duration_s=r["duration_s"],
            end_reason=r["end_reason"],
            flags=json.loads(r["flags"]),
            turn_count=r["turn_count"],
            optout=bool(r["optout"]),
            transcript_redacted=bool(r["transcript_redacted"]),
            stored_at=r["stored_at"],
            expires_at=r["expires_at"],
            has_recording=bool(r.get("has_recording")),
        )

    _CALL_COLUMNS = (
        "c.*, EXISTS (SELECT 1 FROM recordings g WHERE g.tenant_id = c.tenant_id AND g.call_id = c.call_id) "
        "AS has_recording"
    )

    def calls_list(
        self,
        tenant: str,
        *,
        since: datetime | float | None = None,
        until: datetime | float | None = None,
        phone: str | None = None,
        end_reason: str | None = None,
        limit: int = 100,
        offset: int = 0,
        ended: bool | None = None,
    ) -> list[StoredCall]:
        """The tenant's calls, newest first, metadata only (no transcript; not audited).
        ``ended``: only calls that have (``True``) or have not (``False``) ended."""
        with self._lock:
            t = self._tenant(tenant)
            keys = self._keys(t)
            where = ["c.tenant_id = ?"]
            params: list[Any] = [t["id"]]
            if since is not None:
                where.append("c.started_at >= ?")
                params.append(_epoch(since))
            if until is not None:
                where.append("c.started_at < ?")
                params.append(_epoch(until))
            if phone is not None:
                h = self._subject_hash(keys, phone, self._policy_of(t).phone_region)
                where.append("(c.caller_hash = ? OR c.callee_hash = ?)")
                params += [h, h]
            if end_reason is not None:
                where.append("c.end_reason = ?")
                params.append(end_reason)
            if ended is not None:
                where.append("c.ended_at IS NOT NULL" if ended else "c.ended_at IS NULL")
            params += [max(0, min(int(limit), 10000)), max(0, int(offset))]
            rows = self._rows(
                f"SELECT {self._CALL_COLUMNS} FROM calls c WHERE {' AND '.join(where)} "
                "ORDER BY c.started_at DESC, c.id DESC LIMIT ? OFFSET ?",
                params,
            )
            return [self._call_from_row(r, tenant, keys) for r in rows]

    def call_get(
        self, tenant: str, call_id: str, *, actor: str = "system", include_transcript: bool = True
    ) -> StoredCall | None:
        """One call of ``tenant`` (``None`` if it does not exist *for this tenant*). With
        ``include_transcript`` the turns' text is decrypted and the read is audited
        (``transcript.read`` by ``actor``); otherwise turns carry timelines only."""
        with self._lock:
            t = self._tenant(tenant)
            keys = self._keys(t)
            tid = t["id"]
            r = self._one(
                f"SELECT {self._CALL_COLUMNS} FROM calls c WHERE c.tenant_id = ? AND c.call_id = ?",
                (tid, call_id),
            )
            if r is None:
                return None
            call = self._call_from_row(r, tenant, keys)
            turns: list[StoredTurn] = []
            for tr in self._rows(
                "SELECT * FROM turns WHERE tenant_id = ? AND call_id = ? ORDER BY idx", (tid, call_id)
            ):
                row_key = f"{call_id}/{tr['idx']}"
                turns.append(
                    StoredTurn(
                        idx=tr["idx"],
                        role=tr["role"],
                        kind=tr["kind"],
                        started_at=tr["started_at"],
                        interrupted=bool(tr["interrupted"]),
                        text=keys.decrypt_text(tr["text_enc"], _aad("turns", tid, row_key, "text"))
                        if include_transcript
                        else None,
                        generated_text=keys.decrypt_text(tr["generated_enc"], _aad("turns", tid, row_key, "generated"))
                        if include_transcript
                        else None,
                        timeline=json.loads(tr["timeline"]) if tr["timeline"] else None,
                    )
                )
            call.turns = turns
            if include_transcript:
                with self._tx():
                    self._audit(actor, tenant, "transcript.read", f"call:{call_id}")
            return call

    # ---------------------------------------------------------------- recordings

    def open_recording(
        self,
        tenant: str,
        call_id: str,
        sample_rate: int,
        *,
        channels: int = 1,
        sample_width: int = 2,
        track: str = "mixed",
        caller: str | None = None,
        policy: Policy | None = None,
        consent: bool | None = None,
        chunk_bytes: int | None = None,
    ) -> RecordingWriter:
        """Start an encrypted recording that streams to disk as audio is written.

        Refuses (:class:`RecordingNotAllowed`) unless the policy allows it now:
        ``recording.mode`` ``on``, or ``consent`` with ``consent=True``; never with
        ``off`` or a restricted caller. The recording row (with its expiry) is written
        first, so a crash mid-call leaves a file the retention sweep still finds.
        """
        if not re.match(r"^[A-Za-z0-9_.-]{1,32}$", track):
            raise StorageError(f"invalid recording track name {track!r}")
        with self._lock:
            t = self._tenant(tenant)
            policy = policy or self._policy_of(t)
            if not may_record(policy, consent):
                raise RecordingNotAllowed(
                    f"policy {policy.name!r} does not allow recording now (recording.mode={policy.recording.mode!r}, "
                    f"retention.recordings={policy.retention.recordings}, consent={consent})"
                )
            keys = self._keys(t)
            tid = t["id"]
            subject = self._subject_hash(keys, caller, policy.phone_region) if caller else None
            if self._is_restricted_hash(tid, subject):
                raise RecordingNotAllowed("the caller has restricted processing of their data")
            now = self._clock()
            exp = policy_expires_at(policy, "recordings", now)
            assert exp is not None  # may_record checked retention
            rec_id = secrets.token_hex(16)
            rel = Path(RECORDINGS_DIRNAME) / tid / f"{rec_id}.vcrec"
            with self._tx():
                try:
                    self.db.table("recordings").insert(
                        {
                            "id": rec_id,
                            "tenant_id": tid,
                            "call_id": call_id,
                            "track": track,
                            "subject_hash": subject,
                            "path": str(rel),
                            "sample_rate": sample_rate,
                            "channels": channels,
                            "sample_width": sample_width,
                            "bytes": 0,
                            "complete": 0,
                            "created_at": now,
                            "expires_at": exp,
                        }
                    )
                except sqlite3.IntegrityError:
                    raise StorageError(f"call {call_id} already has a {track!r} recording") from None
            (self.recordings_dir / tid).mkdir(parents=True, exist_ok=True, mode=0o700)
            return RecordingWriter(
                path=self.data_dir / rel,
                recording_id=rec_id,
                keys=keys,
                sample_rate=sample_rate,
                channels=channels,
                sample_width=sample_width,
                chunk_bytes=chunk_bytes,
                on_close=self._recording_closed,
            )

    def _recording_closed(self, writer: RecordingWriter) -> None:
        try:
            with self._tx():
                self._exec(
                    "UPDATE recordings SET bytes = ?, complete = ? WHERE id = ?",
                    (writer.bytes_written, int(writer.complete), writer.recording_id),
                )
        except (sqlite3.Error, StorageError) as exc:  # the row may have been erased meanwhile
            logger.warning("could not update recording {} after close: {}", writer.recording_id, exc)

    def _load_recording(self, tid: str, keys: TenantKeys, row: dict[str, Any]) -> bytes | None:
        path = self.data_dir / row["path"]
        if not path.exists():
            logger.warning("recording file of {} is missing", row["id"])
            return None
        return read_recording_file(path, keys, row["id"]).to_wav()

    def read_recording(self, tenant: str, call_id: str, *, actor: str, track: str = "mixed") -> bytes | None:
        """The decrypted recording as WAV bytes (in memory), or ``None``. Audited (``recording.read``)."""
        with self._lock:
            t = self._tenant(tenant)
            row = self._one(
                "SELECT * FROM recordings WHERE tenant_id = ? AND call_id = ? AND track = ?", (t["id"], call_id, track)
            )
            if row is None:
                return None
            wav = self._load_recording(t["id"], self._keys(t), row)
            with self._tx():
                self._audit(actor, tenant, "recording.read", f"recording:{call_id}/{track}")
            return wav

    # ---------------------------------------------------------------- reports

    def save_report(
        self,
        tenant: str,
        call_id: str,
        report: dict[str, Any] | None,
        *,
        status: str = "ready",
        error: str | None = None,
        policy: Policy | None = None,
    ) -> str | None:
        """Store a post-call report (encrypted) with ``retention.reports``; ``status`` is ``ready``
        or ``failed`` (then ``error`` says why). Writes ``report.ready`` to the outbox for ready
        reports. Returns the report id, or ``None`` when reports are not stored."""
        if status not in ("ready", "failed"):
            raise StorageError(f"report status must be 'ready' or 'failed', not {status!r}")
        with self._lock:
            t = self._tenant(tenant)
            policy = policy or self._policy_of(t)
            now = self._clock()
            exp = policy_expires_at(policy, "reports", now)
            if exp is None:
                return None
            keys = self._keys(t)
            tid = t["id"]
            call = self._one(
                "SELECT caller_hash, callee_hash FROM calls WHERE tenant_id = ? AND call_id = ?", (tid, call_id)
            )
            subject = (call["caller_hash"] or call["callee_hash"]) if call else None
            report_id = secrets.token_hex(16)
            with self._tx():
                self.db.table("reports").insert(
                    {
                        "id": report_id,
                        "tenant_id": tid,
                        "call_id": call_id,
                        "subject_hash": subject,
                        "status": status,
                        "body_enc": keys.encrypt_json(report, _aad("reports", tid, report_id, "body"))
                        if report is not None
                        else None,
                        "error": error,
                        "created_at": now,
                        "expires_at": exp,
                    }
                )
                if status == "ready":
                    self._outbox_add(
                        t,
                        keys,
                        "report.ready",
                        {"call_id": call_id, "report_id": report_id, "report": report},
                        call_id=call_id,
                        subject_hash=subject,
                    )
            return report_id

    def _report_dict(self, tid: str, keys: TenantKeys, r: dict[str, Any]) -> dict[str, Any]:
        body = keys.decrypt_json(r["body_enc"], _aad("reports", tid, r["id"], "body")) if r["body_enc"] else None
        return {
            "report_id": r["id"],
            "call_id": r["call_id"],
            "status": r["status"],
            "error": r["error"],
            "report": body,
            "created_at": _iso(r["created_at"]),
            "expires_at": _iso(r["expires_at"]),
        }

    def get_report(self, tenant: str, call_id: str, *, actor: str) -> dict[str, Any] | None:
        """The latest report of a call (decrypted), or ``None``. Audited (``report.read``)."""
        with self._lock:
            t = self._tenant(tenant)
            r = self._one(
                "SELECT * FROM reports WHERE tenant_id = ? AND call_id = ? ORDER BY created_at DESC LIMIT 1",
                (t["id"], call_id),
            )
            if r is None:
                return None
            out = self._report_dict(t["id"], self._keys(t), r)
            with self._tx():
                self._audit(actor, tenant, "report.read", f"report:{r['id']}")
            return out

    # ---------------------------------------------------------------- contacts

    def upsert_contact(
        self, tenant: str, phone: str, fields: dict[str, Any], *, policy: Policy | None = None
    ) -> str | None:
        """Store (or replace) the contact for ``phone`` with ``retention.contacts``; fields encrypted.
        Returns the contact id, or ``None`` when the policy does not store contacts."""
        with self._lock:
            t = self._tenant(tenant)
            policy = policy or self._policy_of(t)
            now = self._clock()
            exp = policy_expires_at(policy, "contacts", now)
            if exp is None:
                return None
            keys = self._keys(t)
            tid = t["id"]
            e164 = normalize_phone(phone, policy.phone_region)
            h = keys.keyed_hash("subject:" + e164)
            existing = self._one("SELECT id, created_at FROM contacts WHERE tenant_id = ? AND phone_hash = ?", (tid, h))
            contact_id = existing["id"] if existing else secrets.token_hex(16)
            body = {**{k: v for k, v in fields.items() if v is not None}, "phone": e164}
            with self._tx():
                self._exec("DELETE FROM contacts WHERE tenant_id = ? AND phone_hash = ?", (tid, h))
                self.db.table("contacts").insert(
                    {
                        "id": contact_id,
                        "tenant_id": tid,
                        "phone_hash": h,
                        "fields_enc": keys.encrypt_json(body, _aad("contacts", tid, contact_id, "fields")),
                        "created_at": existing["created_at"] if existing else now,
                        "updated_at": now,
                        "expires_at": exp,
                    }
                )
            return contact_id

    def get_contact(self, tenant: str, phone: str) -> dict[str, Any] | None:
        """The contact fields for ``phone`` (to pass through ``ContextBuilder``), or ``None``."""
        with self._lock:
            t = self._tenant(tenant)
            keys = self._keys(t)
            e164 = normalize_phone(phone, self._policy_of(t).phone_region)
            h = keys.keyed_hash("subject:" + e164)
            r = self._one("SELECT id, fields_enc FROM contacts WHERE tenant_id = ? AND phone_hash = ?", (t["id"], h))
            if r is None:
                return None
            return dict(keys.decrypt_json(r["fields_enc"], _aad("contacts", t["id"], r["id"], "fields")))

    def delete_contact(self, tenant: str, phone: str, *, actor: str = "cli") -> bool:
        with self._lock:
            t, _policy, _keys, _e164, h = self._subject(tenant, phone)
            with self._tx():
                n = self._exec("DELETE FROM contacts WHERE tenant_id = ? AND phone_hash = ?", (t["id"], h))
                if n:
                    self._audit(actor, tenant, "contact.deleted", f"subject:{h[:16]}")
            return bool(n)

    # ---------------------------------------------------------------- opt-outs and restriction

    def add_optout(
        self, tenant: str, phone: str, *, source: str = "call", call_id: str | None = None, actor: str = "system"
    ) -> bool:
        """Put ``phone`` on the tenant's do-not-call list, flag the call (if stored) and write an
        ``optout.requested`` outbox event, all in one transaction. Returns whether it is new."""
        with self._lock:
            t, _policy, keys, e164, h = self._subject(tenant, phone)
            tid = t["id"]
            with self._tx():
                exists = self._one("SELECT 1 AS x FROM opt_outs WHERE tenant_id = ? AND phone_hash = ?", (tid, h))
                if exists is not None:
                    return False
                self.db.table("opt_outs").insert(
                    {
                        "tenant_id": tid,
                        "phone_hash": h,
                        "phone_enc": keys.encrypt_text(e164, _aad("opt_outs", tid, h, "phone")),
                        "source": source,
                        "call_id": call_id,
                        "created_at": self._clock(),
                    }
                )
                if call_id is not None:
                    self._exec("UPDATE calls SET optout = 1 WHERE tenant_id = ? AND call_id = ?", (tid, call_id))
                self._outbox_add(
                    t,
                    keys,
                    "optout.requested",
                    {"phone": e164, "call_id": call_id, "source": source, "requested_at": _iso(self._clock())},
                    call_id=call_id,
                    subject_hash=h,
                )
                self._audit(actor, tenant, "optout.added", f"subject:{h[:16]}")
            logger.info("opt-out recorded for tenant {} (source {})", tenant, source)
            return True

    def remove_optout(self, tenant: str, phone: str, *, actor: str = "cli") -> bool:
        with self._lock:
            t, _policy, _keys, _e164, h = self._subject(tenant, phone)
            with self._tx():
                n = self._exec("DELETE FROM opt_outs WHERE tenant_id = ? AND phone_hash = ?", (t["id"], h))
                if n:
                    self._audit(actor, tenant, "optout.removed", f"subject:{h[:16]}")
            return bool(n)

    def remove_optout_hash(self, tenant: str, phone_hash: str, *, actor: str = "cli") -> bool:
        """Take the opt-out with keyed hash ``phone_hash`` (as :meth:`list_optouts` shows it) off the list."""
        with self._lock:
            t = self._tenant(tenant)
            with self._tx():
                n = self._exec("DELETE FROM opt_outs WHERE tenant_id = ? AND phone_hash = ?", (t["id"], phone_hash))
                if n:
                    self._audit(actor, tenant, "optout.removed", f"subject:{phone_hash[:16]}")
            return bool(n)

    def is_opted_out(self, tenant: str, phone: str) -> bool:
        """Whether outbound calls to ``phone`` must be refused."""
        with self._lock:
            t, _policy, _keys, _e164, h = self._subject(tenant, phone)
            return (
                self._one("SELECT 1 AS x FROM opt_outs WHERE tenant_id = ? AND phone_hash = ?", (t["id"], h))
                is not None
            )

    def list_optouts(self, tenant: str) -> list[OptOutEntry]:
        with self._lock:
            t = self._tenant(tenant)
            keys = self._keys(t)
            tid = t["id"]
            return [
                OptOutEntry(
                    keys.decrypt_text(r["phone_enc"], _aad("opt_outs", tid, r["phone_hash"], "phone")),
                    r["phone_hash"],
                    r["source"],
                    r["created_at"],
                )
                for r in self._rows(
                    "SELECT phone_hash, phone_enc, source, created_at FROM opt_outs WHERE tenant_id = ? ORDER BY created_at",
                    (tid,),
                )
            ]

    def restrict(self, tenant: str, phone: str, *, actor: str = "cli") -> bool:
        """Restrict processing for ``phone``: calls from it are not stored, recordings refused,
        outbound calls must be refused (check :meth:`is_restricted`). Nothing is deleted."""
        with self._lock:
            t, _policy, _keys, _e164, h = self._subject(tenant, phone)
            with self._tx():
                if self._is_restricted_hash(t["id"], h):
                    return False
                self.db.table("restrictions").insert(
                    {"tenant_id": t["id"], "phone_hash": h, "created_at": self._clock()}
                )
                self._audit(actor, tenant, "subject.restricted", f"subject:{h[:16]}")
            return True

    def unrestrict(self, tenant: str, phone: str, *, actor: str = "cli") -> bool:
        with self._lock:
            t, _policy, _keys, _e164, h = self._subject(tenant, phone)
            with self._tx():
                n = self._exec("DELETE FROM restrictions WHERE tenant_id = ? AND phone_hash = ?", (t["id"], h))
                if n:
                    self._audit(actor, tenant, "subject.unrestricted", f"subject:{h[:16]}")
            return bool(n)

    def is_restricted(self, tenant: str, phone: str) -> bool:
        with self._lock:
            t, _policy, _keys, _e164, h = self._subject(tenant, phone)
            return self._is_restricted_hash(t["id"], h)

    # ---------------------------------------------------------------- subject rights

    def _subject_export(self, tenant: str, phone: str) -> tuple[SubjectExport, str]:
        """Inside the lock: the export of one subject in memory, and its keyed hash."""
        t, _policy, keys, e164, h = self._subject(tenant, phone)
        tid = t["id"]
        calls_out: list[dict[str, Any]] = []
        call_rows = self._rows(
            f"SELECT {self._CALL_COLUMNS} FROM calls c WHERE c.tenant_id = ? AND (c.caller_hash = ? OR "
            "c.callee_hash = ?) ORDER BY c.started_at",
            (tid, h, h),
        )
        call_ids = [r["call_id"] for r in call_rows]
        for r in call_rows:
            call = self._call_from_row(r, tenant, keys)
            d = call.to_dict()
            d["turns"] = []
            for tr in self._rows(
                "SELECT * FROM turns WHERE tenant_id = ? AND call_id = ? ORDER BY idx", (tid, call.call_id)
            ):
                row_key = f"{call.call_id}/{tr['idx']}"
                d["turns"].append(
                    {
                        "idx": tr["idx"],
                        "role": tr["role"],
                        "kind": tr["kind"],
                        "started_at": _iso(tr["started_at"]),
                        "interrupted": bool(tr["interrupted"]),
                        "text": keys.decrypt_text(tr["text_enc"], _aad("turns", tid, row_key, "text")),
                        "generated_text": keys.decrypt_text(
                            tr["generated_enc"], _aad("turns", tid, row_key, "generated")
                        ),
                        "timeline": json.loads(tr["timeline"]) if tr["timeline"] else None,
                    }
                )
            d["recordings"] = []
            calls_out.append(d)
        report_rows = self._rows(
            "SELECT * FROM reports WHERE tenant_id = ? AND (subject_hash = ? OR call_id IN "
            "(SELECT call_id FROM calls WHERE tenant_id = ? AND (caller_hash = ? OR callee_hash = ?))) "
            "ORDER BY created_at",
            (tid, h, tid, h, h),
        )
        reports = [self._report_dict(tid, keys, r) for r in report_rows]
        recordings: list[dict[str, Any]] = []
        files: dict[str, bytes] = {}
        for r in self._rows(
            "SELECT * FROM recordings WHERE tenant_id = ? AND (subject_hash = ? OR call_id IN "
            "(SELECT call_id FROM calls WHERE tenant_id = ? AND (caller_hash = ? OR callee_hash = ?))) "
            "ORDER BY created_at",
            (tid, h, tid, h, h),
        ):
            wav = self._load_recording(tid, keys, r)
            if wav is None:
                continue
            entry = {"call_id": r["call_id"], "track": r["track"], "file": f"recordings/{r['call_id']}-{r['track']}.wav"}
            files[entry["file"]] = wav
            recordings.append(entry)
            for d in calls_out:
                if d["call_id"] == r["call_id"]:
                    d["recordings"].append(entry["file"])
        contacts = [
            keys.decrypt_json(r["fields_enc"], _aad("contacts", tid, r["id"], "fields"))
            for r in self._rows("SELECT id, fields_enc FROM contacts WHERE tenant_id = ? AND phone_hash = ?", (tid, h))
        ]
        document = {
            "format": "voicecore-subject-export/1",
            "tenant": tenant,
            "subject": e164,
            "exported_at": _iso(self._clock()),
            "opted_out": self._one("SELECT 1 AS x FROM opt_outs WHERE tenant_id = ? AND phone_hash = ?", (tid, h))
            is not None,
            "restricted": self._is_restricted_hash(tid, h),
            "calls": calls_out,
            "reports": reports,
            "contacts": contacts,
            "recordings": recordings,
            "call_ids": call_ids,
        }
        return SubjectExport(document, files), h

    def export_data(self, tenant: str, phone: str, *, actor: str) -> SubjectExport:
        """Everything the tenant holds about ``phone``, in memory (what :meth:`export` writes to
        disk; the HTTP API sends it). Audited (``subject.exported``)."""
        with self._lock:
            data, h = self._subject_export(tenant, phone)
            with self._tx():
                self._audit(actor, tenant, "subject.exported", f"subject:{h[:16]}")
        logger.info(
            "subject export for tenant {}: {} calls, {} recordings",
            tenant,
            len(data.document["calls"]),
            len(data.recordings),
        )
        return data

    def export(self, tenant: str, phone: str, out_dir: str | Path, *, actor: str = "cli") -> Path:
        """Write everything the tenant holds about ``phone`` to a new directory under ``out_dir``:
        ``export.json`` (calls with turns, reports, contacts, opt-out and restriction status) and
        ``recordings/*.wav``. Returns the directory (mode 0700). Audited (``subject.exported``)."""
        with self._lock:
            data, h = self._subject_export(tenant, phone)
            stamp = datetime.fromtimestamp(self._clock(), UTC).strftime("%Y%m%dT%H%M%SZ")
            base = Path(out_dir) / f"{tenant}-{h[:12]}-{stamp}"
            target, n = base, 1
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            while True:  # a second export within the same second gets its own folder
                try:
                    target.mkdir(mode=0o700)
                    break
                except FileExistsError:
                    n += 1
                    target = base.with_name(f"{base.name}-{n}")
            for rel, wav in data.recordings.items():
                (target / "recordings").mkdir(exist_ok=True, mode=0o700)
                fd = os.open(target / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(wav)
            fd = os.open(target / "export.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data.document, f, indent=2, ensure_ascii=False)
            with self._tx():
                self._audit(actor, tenant, "subject.exported", f"subject:{h[:16]}")
            logger.info(
                "subject export for tenant {}: {} calls, {} recordings",
                tenant,
                len(data.document["calls"]),
                len(data.recordings),
            )
            return target

    def erase(self, tenant: str, phone: str, *, actor: str = "cli") -> ErasureResult:
        """Erase everything the tenant holds about ``phone``: its calls, turns, recordings (files
        shredded), reports, contact, outbox events, and mentions of the number in other calls'
        transcripts, reports and contacts (replaced by "[erased]"). Only the keyed hash survives
        (opt-out and restriction keep working). Then the database is compacted so no bytes remain.
        Other tenants are untouched. Audited (``subject.erased``); ``subject.erased`` outbox event."""
        with self._lock:
            t, policy, keys, e164, h = self._subject(tenant, phone)
            tid = t["id"]
            res = ErasureResult(subject_hash=h)
            subject_calls = "SELECT call_id FROM calls WHERE tenant_id = ? AND (caller_hash = ? OR callee_hash = ?)"
            sc = (tid, h, h)
            paths: list[Path] = []
            with self._tx():
                for r in self._rows(
                    f"SELECT path FROM recordings WHERE tenant_id = ? AND (subject_hash = ? OR call_id IN ({subject_calls}))",
                    (tid, h, *sc),
                ):
                    paths.append(self.data_dir / r["path"])
                res.recordings = self._exec(
                    f"DELETE FROM recordings WHERE tenant_id = ? AND (subject_hash = ? OR call_id IN ({subject_calls}))",
                    (tid, h, *sc),
                )
                res.turns = self._exec(
                    f"DELETE FROM turns WHERE tenant_id = ? AND call_id IN ({subject_calls})", (tid, *sc)
                )
                res.reports = self._exec(
                    f"DELETE FROM reports WHERE tenant_id = ? AND (subject_hash = ? OR call_id IN ({subject_calls}))",
                    (tid, h, *sc),
                )
                res.outbox = self._exec(
                    f"DELETE FROM outbox WHERE tenant_id = ? AND (subject_hash = ? OR call_id IN ({subject_calls}))",
                    (tid, h, *sc),
                )
                self._exec(
                    "DELETE FROM webhook_deliveries WHERE tenant_id = ? AND event_id NOT IN "
                    "(SELECT event_id FROM outbox WHERE tenant_id = ?)",
                    (tid, tid),
                )
                self._exec(
                    f"UPDATE opt_outs SET call_id = NULL WHERE tenant_id = ? AND call_id IN ({subject_calls})",
                    (tid, *sc),
                )
                res.calls = self._exec(
                    "DELETE FROM calls WHERE tenant_id = ? AND (caller_hash = ? OR callee_hash = ?)", sc
                )
                res.contacts = self._exec("DELETE FROM contacts WHERE tenant_id = ? AND phone_hash = ?", (tid, h))
                res.opted_out = (
                    self._exec("UPDATE opt_outs SET phone_enc = NULL WHERE tenant_id = ? AND phone_hash = ?", (tid, h))
                    > 0
                )
                res.mentions_scrubbed = self._scrub_mentions(tid, keys, e164, policy.phone_region)
                self._outbox_add(
                    t, keys, "subject.erased", {"subject_hash": h, "erased_at": _iso(self._clock())}, subject_hash=None
                )
                self._audit(actor, tenant, "subject.erased", f"subject:{h[:16]}")
            for p in paths:
                _shred(p)
            res.wal_truncated = self._compact()
        logger.info(
            "subject erased for tenant {}: {} calls, {} turns, {} recordings, {} reports, {} contacts, {} mentions",
            tenant,
            res.calls,
            res.turns,
            res.recordings,
            res.reports,
            res.contacts,
            res.mentions_scrubbed,
        )
        return res

    def _scrub_mentions(self, tid: str, keys: TenantKeys, e164: str, region: str) -> int:
        """Inside a transaction: replace mentions of ``e164`` in the tenant's remaining data."""
        count = 0
        for tr in self._rows(
            "SELECT id, call_id, idx, text_enc, generated_enc FROM turns WHERE tenant_id = ? "
            "AND (text_enc IS NOT NULL OR generated_enc IS NOT NULL)",
            (tid,),
        ):
            row_key = f"{tr['call_id']}/{tr['idx']}"
            updates: dict[str, bytes] = {}
            for column, enc in (("text", tr["text_enc"]), ("generated", tr["generated_enc"])):
                text = keys.decrypt_text(enc, _aad("turns", tid, row_key, column))
                if text is None:
                    continue
                new, n = scrub_number(text, e164, region)
                if n:
                    count += n
                    updates[f"{column}_enc"] = keys.encrypt_text(new, _aad("turns", tid, row_key, column))  # type: ignore[assignment]
            for column, value in updates.items():
                self._exec(f"UPDATE turns SET {column} = ? WHERE id = ?", (value, tr["id"]))

        def scrub_json(value: Any) -> tuple[Any, int]:
            if isinstance(value, str):
                return scrub_number(value, e164, region)
            if isinstance(value, list):
                items = [scrub_json(v) for v in value]
                return [v for v, _ in items], sum(n for _, n in items)
            if isinstance(value, dict):
                pairs = {k: scrub_json(v) for k, v in value.items()}
                return {k: v for k, (v, _) in pairs.items()}, sum(n for _, n in pairs.values())
            return value, 0

        for r in self._rows("SELECT id, body_enc FROM reports WHERE tenant_id = ? AND body_enc IS NOT NULL", (tid,)):
            aad = _aad("reports", tid, r["id"], "body")
            body, n = scrub_json(keys.decrypt_json(r["body_enc"], aad))
            if n:
                count += n
                self._exec("UPDATE reports SET body_enc = ? WHERE id = ?", (keys.encrypt_json(body, aad), r["id"]))
        for r in self._rows("SELECT id, fields_enc FROM contacts WHERE tenant_id = ?", (tid,)):
            aad = _aad("contacts", tid, r["id"], "fields")
            body, n = scrub_json(keys.decrypt_json(r["fields_enc"], aad))
            if n:
                count += n
                self._exec("UPDATE contacts SET fields_enc = ? WHERE id = ?", (keys.encrypt_json(body, aad), r["id"]))
        return count

    # ---------------------------------------------------------------- retention

    def retention_sweep(self, now: datetime | float | None = None, *, actor: str = "system") -> SweepResult:
        """Delete every expired row and recording file (and orphaned recording files), clear expired
        transcript text, then checkpoint the WAL (TRUNCATE) and VACUUM so no deleted byte remains in
        the database, ``-wal`` or ``-shm``. ``now`` defaults to the clock; a naive datetime is UTC."""
        ts = _epoch(now) if now is not None else self._clock()
        assert ts is not None
        result = SweepResult(at=ts)
        with self._lock:
            paths: list[Path] = []
            with self._tx():
                expired_calls = "SELECT tenant_id, call_id FROM calls WHERE expires_at <= ?"
                for r in self._rows(
                    f"SELECT path FROM recordings WHERE expires_at <= ? OR (tenant_id, call_id) IN ({expired_calls})",
                    (ts, ts),
                ):
                    paths.append(self.data_dir / r["path"])
                result.deleted["recordings"] = self._exec(
                    f"DELETE FROM recordings WHERE expires_at <= ? OR (tenant_id, call_id) IN ({expired_calls})",
                    (ts, ts),
                )
                result.deleted["turns"] = self._exec(
                    f"DELETE FROM turns WHERE expires_at <= ? OR (tenant_id, call_id) IN ({expired_calls})",
                    (ts, ts),
                )
                result.deleted["reports"] = self._exec(
                    f"DELETE FROM reports WHERE expires_at <= ? OR (tenant_id, call_id) IN ({expired_calls})",
                    (ts, ts),
                )
                result.deleted["calls"] = self._exec("DELETE FROM calls WHERE expires_at <= ?", (ts,))
                result.deleted["contacts"] = self._exec("DELETE FROM contacts WHERE expires_at <= ?", (ts,))
                result.deleted["outbox"] = self._exec("DELETE FROM outbox WHERE expires_at <= ?", (ts,))
                self._exec(
                    "DELETE FROM webhook_deliveries WHERE expires_at <= ? OR event_id NOT IN (SELECT event_id FROM outbox)",
                    (ts,),
                )
                result.transcripts_cleared = self._exec(
                    "UPDATE turns SET text_enc = NULL, generated_enc = NULL, text_expires_at = NULL "
                    "WHERE text_expires_at IS NOT NULL AND text_expires_at <= ?",
                    (ts,),
                )
                summary = ",".join(f"{k}={v}" for k, v in result.deleted.items() if v)
                self._audit(
                    actor,
                    None,
                    "retention.swept",
                    f"rows:{sum(result.deleted.values())};texts:{result.transcripts_cleared}"
                    + (f";{summary}" if summary else ""),
                )
            for p in paths:
                result.files_removed += int(_shred(p))
            result.files_removed += self._remove_orphan_recordings()
            result.wal_truncated = self._compact()
        logger.info(
            "retention sweep: {} rows deleted, {} transcripts cleared, {} files removed",
            sum(result.deleted.values()),
            result.transcripts_cleared,
            result.files_removed,
        )
        return result

    def _remove_orphan_recordings(self) -> int:
        if not self.recordings_dir.exists():
            return 0
        known = {str(r["path"]) for r in self._rows("SELECT path FROM recordings")}
        removed = 0
        for tenant_dir in self.recordings_dir.iterdir():
            if not tenant_dir.is_dir():
                continue
            for f in tenant_dir.iterdir():
                rel = str(f.relative_to(self.data_dir))
                if rel not in known:
                    removed += int(_shred(f))
        return removed

    # ---------------------------------------------------------------- outbox

    def _outbox_add(
        self,
        tenant_row: dict[str, Any],
        keys: TenantKeys,
        event_type: str,
        data: dict[str, Any],
        *,
        call_id: str | None = None,
        subject_hash: str | None = None,
    ) -> str:
        """Inside a transaction: queue an event for the tenant's webhooks (payload encrypted)."""
        if event_type not in EVENT_TYPES:
            raise StorageError(f"unknown event type {event_type!r}")
        now = self._clock()
        event_id = secrets.token_hex(16)
        tid = tenant_row["id"]
        payload = {
            "event_id": event_id,
            "type": event_type,
            "tenant": tenant_row["name"],
            "created_at": _iso(now),
            "data": data,
        }
        self.db.table("outbox").insert(
            {
                "event_id": event_id,
                "tenant_id": tid,
                "type": event_type,
                "call_id": call_id,
                "subject_hash": subject_hash,
                "payload_enc": keys.encrypt_json(payload, _aad("outbox", tid, event_id, "payload")),
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "delivered_at": None,
                "last_error": None,
                "expires_at": now + OUTBOX_TTL_DAYS * 86400,
            }
        )
        return event_id

    def _outbox_events(self, where: str, params: tuple[Any, ...], limit: int = 10000) -> list[OutboxEvent]:
        events: list[OutboxEvent] = []
        for r in self._rows(
            f"SELECT o.*, t.name AS tenant FROM outbox o JOIN tenants t ON t.id = o.tenant_id WHERE {where} "
            "ORDER BY o.id LIMIT ?",
            (*params, int(limit)),
        ):
            keys = self.keystore.get(r["tenant_id"])
            payload = keys.decrypt_json(r["payload_enc"], _aad("outbox", r["tenant_id"], r["event_id"], "payload"))
            events.append(
                OutboxEvent(
                    r["id"],
                    r["event_id"],
                    r["tenant"],
                    r["type"],
                    payload,
                    r["status"],
                    r["attempts"],
                    r["next_attempt_at"],
                    r["created_at"],
                    r["last_error"],
                )
            )
        return events

    def outbox_pending(self, *, limit: int = 50, now: float | None = None) -> list[OutboxEvent]:
        """Events due for delivery (all tenants), oldest first, payload decrypted."""
        ts = self._clock() if now is None else now
        with self._lock:
            return self._outbox_events("o.status = 'pending' AND o.next_attempt_at <= ?", (ts,), limit)

    def outbox_list(self, tenant: str, *, status: str | None = None) -> list[OutboxEvent]:
        with self._lock:
            t = self._tenant(tenant)
            if status is None:
                return self._outbox_events("o.tenant_id = ?", (t["id"],))
            return self._outbox_events("o.tenant_id = ? AND o.status = ?", (t["id"], status))

    def outbox_mark_delivered(self, event_id: str) -> None:
        with self._tx():
            self._exec(
                "UPDATE outbox SET status = 'delivered', delivered_at = ?, attempts = attempts + 1 WHERE event_id = ?",
                (self._clock(), event_id),
            )

    def outbox_mark_failed(self, event_id: str, error: str, *, retry_at: float | None) -> None:
        """Record a failed delivery; ``retry_at=None`` moves the event to ``dead``."""
        with self._tx():
            if retry_at is None:
                self._exec(
                    "UPDATE outbox SET status = 'dead', attempts = attempts + 1, last_error = ? WHERE event_id = ?",
                    (error[:500], event_id),
                )
            else:
                self._exec(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE event_id = ?",
                    (error[:500], retry_at, event_id),
                )

    # ---------------------------------------------------------------- webhooks

    def _endpoint_from_row(self, r: dict[str, Any], tenant: str) -> WebhookEndpoint:
        return WebhookEndpoint(
            id=r["id"],
            tenant=tenant,
            url=r["url"],
            events=tuple(json.loads(r["events"])),
            description=r["description"],
            active=bool(r["active"]),
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            secret_rotated_at=r["secret_rotated_at"],
        )

    @staticmethod
    def _check_webhook(url: str | None, events: list[str] | tuple[str, ...] | None) -> tuple[str | None, list[str] | None]:
        from voicecore.webhooks import check_webhook_url  # the URL rules live with the delivery code

        checked_url = check_webhook_url(url) if url is not None else None
        checked_events: list[str] | None = None
        if events is not None:
            unknown = [e for e in events if e not in EVENT_TYPES]
            if unknown:
                raise StorageError(f"unknown event type {unknown[0]!r}; known: {', '.join(EVENT_TYPES)}")
            checked_events = [e for e in EVENT_TYPES if e in events]
            if not checked_events:
                raise StorageError("subscribe the endpoint to at least one event type")
        return checked_url, checked_events

    def webhook_create(
        self,
        tenant: str,
        url: str,
        events: list[str] | tuple[str, ...] = EVENT_TYPES,
        *,
        description: str | None = None,
        actor: str = "cli",
    ) -> tuple[WebhookEndpoint, str]:
        """Add a webhook endpoint (HTTPS; plain HTTP only to the loopback) subscribed to ``events``.
        Returns the endpoint and its signing secret, which is shown this once (stored encrypted)."""
        checked_url, checked_events = self._check_webhook(url, events)
        if description is not None and len(description) > 200:
            raise StorageError("description is longer than 200 characters")
        secret = "whsec_" + secrets.token_urlsafe(32)
        endpoint_id = "wh_" + secrets.token_hex(8)
        with self._lock:
            t = self._tenant(tenant)
            tid = t["id"]
            count = self._one("SELECT COUNT(*) AS n FROM webhook_endpoints WHERE tenant_id = ?", (tid,))
            if count and count["n"] >= MAX_WEBHOOK_ENDPOINTS:
                raise StorageError(f"a tenant may have at most {MAX_WEBHOOK_ENDPOINTS} webhook endpoints")
            now = self._clock()
            keys = self._keys(t)
            with self._tx():
                self.db.table("webhook_endpoints").insert(
                    {
                        "id": endpoint_id,
                        "tenant_id": tid,
                        "url": checked_url,
                        "events": json.dumps(checked_events),
                        "secret_enc": keys.encrypt_text(secret, _aad("webhook_endpoints", tid, endpoint_id, "secret")),
                        "previous_secret_enc": None,
                        "previous_secret_until": None,
                        "secret_rotated_at": None,
                        "description": description,
                        "active": 1,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                self._audit(actor, tenant, "webhook.created", f"webhook:{endpoint_id}")
            row = self._one("SELECT * FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
            assert row is not None
            return self._endpoint_from_row(row, tenant), secret

    def webhook_list(self, tenant: str) -> list[WebhookEndpoint]:
        with self._lock:
            t = self._tenant(tenant)
            return [
                self._endpoint_from_row(r, tenant)
                for r in self._rows("SELECT * FROM webhook_endpoints WHERE tenant_id = ? ORDER BY created_at", (t["id"],))
            ]

    def webhook_get(self, tenant: str, endpoint_id: str) -> WebhookEndpoint | None:
        """The endpoint, or ``None`` if it does not exist *for this tenant*."""
        with self._lock:
            t = self._tenant(tenant)
            r = self._one("SELECT * FROM webhook_endpoints WHERE tenant_id = ? AND id = ?", (t["id"], endpoint_id))
            return None if r is None else self._endpoint_from_row(r, tenant)

    def webhook_update(
        self,
        tenant: str,
        endpoint_id: str,
        *,
        url: str | None = None,
        events: list[str] | tuple[str, ...] | None = None,
        description: str | None = None,
        active: bool | None = None,
        rotate_secret: bool = False,
        actor: str = "cli",
    ) -> tuple[WebhookEndpoint, str | None] | None:
        """Change an endpoint; ``None`` if it does not exist for this tenant. With ``rotate_secret``
        a new secret is returned (shown once); the old one keeps signing for a day beside it."""
        checked_url, checked_events = self._check_webhook(url, events)
        if description is not None and len(description) > 200:
            raise StorageError("description is longer than 200 characters")
        with self._lock:
            t = self._tenant(tenant)
            tid = t["id"]
            r = self._one("SELECT * FROM webhook_endpoints WHERE tenant_id = ? AND id = ?", (tid, endpoint_id))
            if r is None:
                return None
            now = self._clock()
            changes: dict[str, Any] = {"updated_at": now}
            if checked_url is not None:
                changes["url"] = checked_url
            if checked_events is not None:
                changes["events"] = json.dumps(checked_events)
            if description is not None:
                changes["description"] = description
            if active is not None:
                changes["active"] = int(active)
            new_secret: str | None = None
            if rotate_secret:
                keys = self._keys(t)
                aad = _aad("webhook_endpoints", tid, endpoint_id, "secret")
                new_secret = "whsec_" + secrets.token_urlsafe(32)
                changes["previous_secret_enc"] = keys.encrypt_text(keys.decrypt_text(r["secret_enc"], aad), aad + "|previous")
                changes["previous_secret_until"] = now + WEBHOOK_SECRET_OVERLAP_S
                changes["secret_enc"] = keys.encrypt_text(new_secret, aad)
                changes["secret_rotated_at"] = now
            assignments = ", ".join(f"{k} = ?" for k in changes)
            with self._tx():
                self._exec(f"UPDATE webhook_endpoints SET {assignments} WHERE id = ?", (*changes.values(), endpoint_id))
                self._audit(
                    actor, tenant, "webhook.secret_rotated" if rotate_secret else "webhook.updated", f"webhook:{endpoint_id}"
                )
            row = self._one("SELECT * FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
            assert row is not None
            return self._endpoint_from_row(row, tenant), new_secret

    def webhook_delete(self, tenant: str, endpoint_id: str, *, actor: str = "cli") -> bool:
        """Remove an endpoint and its undelivered deliveries; events it alone was waiting on are settled."""
        with self._lock:
            t = self._tenant(tenant)
            tid = t["id"]
            with self._tx():
                n = self._exec("DELETE FROM webhook_endpoints WHERE tenant_id = ? AND id = ?", (tid, endpoint_id))
                if not n:
                    return False
                events = [
                    r["event_id"]
                    for r in self._rows(
                        "SELECT DISTINCT event_id FROM webhook_deliveries WHERE tenant_id = ? AND endpoint_id = ?",
                        (tid, endpoint_id),
                    )
                ]
                self._exec("DELETE FROM webhook_deliveries WHERE tenant_id = ? AND endpoint_id = ?", (tid, endpoint_id))
                for event_id in events:
                    self._settle_event(event_id)
                self._audit(actor, tenant, "webhook.deleted", f"webhook:{endpoint_id}")
            return True

    def webhook_dispatch(self, *, limit: int = 500) -> int:
        """Fan new outbox events out to the endpoints subscribed to them right now (one pending
        delivery per endpoint). An event no active endpoint wants is settled as delivered (to
        nobody). Returns the number of deliveries created."""
        with self._lock:
            rows = self._rows(
                "SELECT event_id, tenant_id, type, expires_at FROM outbox WHERE dispatched = 0 AND status = 'pending' "
                "ORDER BY id LIMIT ?",
                (int(limit),),
            )
            if not rows:
                return 0
            endpoints: dict[str, list[tuple[str, list[str]]]] = {}
            for e in self._rows("SELECT id, tenant_id, events FROM webhook_endpoints WHERE active = 1 ORDER BY created_at"):
                endpoints.setdefault(e["tenant_id"], []).append((e["id"], json.loads(e["events"])))
            now = self._clock()
            created = 0
            with self._tx():
                for r in rows:
                    targets = [eid for eid, types in endpoints.get(r["tenant_id"], []) if r["type"] in types]
                    for eid in targets:
                        created += self._exec(
                            "INSERT OR IGNORE INTO webhook_deliveries (id, tenant_id, event_id, endpoint_id, status, "
                            "attempts, next_attempt_at, created_at, expires_at) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
                            ("dl_" + secrets.token_hex(10), r["tenant_id"], r["event_id"], eid, now, now, r["expires_at"]),
                        )
                    if targets:
                        self._exec("UPDATE outbox SET dispatched = 1 WHERE event_id = ?", (r["event_id"],))
                    else:
                        self._exec(
                            "UPDATE outbox SET dispatched = 1, status = 'delivered', delivered_at = ?, "
                            "last_error = 'no endpoint subscribed' WHERE event_id = ?",
                            (now, r["event_id"]),
                        )
            return created

    def webhook_claim(self, *, limit: int = 20, lease_s: float = 30.0, now: float | None = None) -> list[WebhookDelivery]:
        """Claim due deliveries for sending (all tenants), oldest first: each counts one attempt and is
        leased for ``lease_s`` seconds, so a worker that dies mid-delivery leaves it to be retried
        when the lease ends (by the next worker, after a restart)."""
        ts = self._clock() if now is None else now
        out: list[WebhookDelivery] = []
        with self._lock:
            rows = self._rows(
                "SELECT d.id, d.event_id, d.endpoint_id, d.attempts, d.created_at, d.tenant_id, o.type, o.payload_enc, "
                "t.name AS tenant, e.url, e.secret_enc, e.previous_secret_enc, e.previous_secret_until "
                "FROM webhook_deliveries d JOIN outbox o ON o.event_id = d.event_id "
                "JOIN webhook_endpoints e ON e.id = d.endpoint_id JOIN tenants t ON t.id = d.tenant_id "
                "WHERE d.status = 'pending' AND d.next_attempt_at <= ? AND e.active = 1 "
                "ORDER BY d.next_attempt_at, d.created_at LIMIT ?",
                (ts, int(limit)),
            )
            if not rows:
                return out
            with self._tx():
                for r in rows:
                    claimed = self._exec(
                        "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = ? "
                        "WHERE id = ? AND status = 'pending' AND next_attempt_at <= ?",
                        (ts + lease_s, r["id"], ts),
                    )
                    if not claimed:
                        continue
                    tid = r["tenant_id"]
                    aad = _aad("webhook_endpoints", tid, r["endpoint_id"], "secret")
                    try:
                        keys = self.keystore.get(tid)
                        secrets_ = [keys.decrypt_text(r["secret_enc"], aad)]
                        if r["previous_secret_enc"] is not None and (r["previous_secret_until"] or 0) > ts:
                            secrets_.append(keys.decrypt_text(r["previous_secret_enc"], aad + "|previous"))
                        payload = keys.decrypt_json(r["payload_enc"], _aad("outbox", tid, r["event_id"], "payload"))
                    except CryptoError:
                        self._exec(
                            "UPDATE webhook_deliveries SET status = 'dead', last_error = ? WHERE id = ?",
                            ("the event or the endpoint secret cannot be decrypted", r["id"]),
                        )
                        self._settle_event(r["event_id"])
                        continue
                    out.append(
                        WebhookDelivery(
                            delivery_id=r["id"],
                            event_id=r["event_id"],
                            event_type=r["type"],
                            tenant=r["tenant"],
                            endpoint_id=r["endpoint_id"],
                            url=r["url"],
                            secrets=[x for x in secrets_ if x],
                            payload=payload,
                            attempts=r["attempts"] + 1,
                            created_at=r["created_at"],
                        )
                    )
        return out

    def _settle_event(self, event_id: str) -> None:
        """Inside a transaction: once no delivery of the event is pending, mark the outbox event
        delivered (every endpoint took it) or dead (some endpoint never did)."""
        r = self._one(
            "SELECT SUM(status = 'pending') AS pending, SUM(status = 'dead') AS dead, COUNT(*) AS n "
            "FROM webhook_deliveries WHERE event_id = ?",
            (event_id,),
        )
        if r is None or (r["pending"] or 0) > 0:
            return
        if (r["dead"] or 0) > 0:
            self._exec(
                "UPDATE outbox SET status = 'dead', last_error = 'not delivered to every endpoint' WHERE event_id = ?",
                (event_id,),
            )
        else:
            self._exec(
                "UPDATE outbox SET status = 'delivered', delivered_at = ? WHERE event_id = ? AND status = 'pending'",
                (self._clock(), event_id),
            )

    def webhook_delivered(self, delivery_id: str, *, status_code: int | None = None) -> None:
        with self._tx():
            r = self._one("SELECT event_id FROM webhook_deliveries WHERE id = ?", (delivery_id,))
            if r is None:  # erased or expired meanwhile
                return
            self._exec(
                "UPDATE webhook_deliveries SET status = 'delivered', delivered_at = ?, last_status = ?, last_error = NULL "
                "WHERE id = ?",
                (self._clock(), status_code, delivery_id),
            )
            self._settle_event(r["event_id"])

    def webhook_failed(
        self, delivery_id: str, error: str, *, status_code: int | None = None, retry_at: float | None
    ) -> None:
        """Record a failed attempt: retry at ``retry_at``, or (``None``) move the delivery to ``dead``.
        ``error`` says what went wrong (no response body, no call content)."""
        with self._tx():
            r = self._one("SELECT event_id FROM webhook_deliveries WHERE id = ?", (delivery_id,))
            if r is None:
                return
            if retry_at is None:
                self._exec(
                    "UPDATE webhook_deliveries SET status = 'dead', last_status = ?, last_error = ? WHERE id = ?",
                    (status_code, error[:300], delivery_id),
                )
                self._settle_event(r["event_id"])
            else:
                self._exec(
                    "UPDATE webhook_deliveries SET next_attempt_at = ?, last_status = ?, last_error = ? WHERE id = ?",
                    (retry_at, status_code, error[:300], delivery_id),
                )

    def webhook_deliveries(
        self, tenant: str, endpoint_id: str, *, status: str | None = None, limit: int = 100
    ) -> list[DeliveryInfo] | None:
        """An endpoint's deliveries, newest first (``None`` if the endpoint is not this tenant's)."""
        with self._lock:
            t = self._tenant(tenant)
            tid = t["id"]
            if self._one("SELECT 1 AS x FROM webhook_endpoints WHERE tenant_id = ? AND id = ?", (tid, endpoint_id)) is None:
                return None
            sql = (
                "SELECT d.*, o.type AS event_type FROM webhook_deliveries d JOIN outbox o ON o.event_id = d.event_id "
                "WHERE d.tenant_id = ? AND d.endpoint_id = ?"
            )
            params: list[Any] = [tid, endpoint_id]
            if status is not None:
                sql += " AND d.status = ?"
                params.append(status)
            sql += " ORDER BY d.created_at DESC, d.id LIMIT ?"
            params.append(max(1, min(int(limit), 1000)))
            return [
                DeliveryInfo(
                    r["id"], r["event_id"], r["event_type"], r["endpoint_id"], r["status"], r["attempts"],
                    r["next_attempt_at"], r["last_status"], r["last_error"], r["created_at"], r["delivered_at"],
                )  # fmt: skip
                for r in self._rows(sql, params)
            ]

    def webhook_redeliver(self, tenant: str, endpoint_id: str, delivery_id: str, *, actor: str = "cli") -> bool:
        """Queue a delivery again now (a dead one gets a fresh set of attempts). ``False`` if there is
        no such delivery for this tenant and endpoint (or its event expired)."""
        with self._lock:
            t = self._tenant(tenant)
            tid = t["id"]
            r = self._one(
                "SELECT d.event_id FROM webhook_deliveries d JOIN outbox o ON o.event_id = d.event_id "
                "WHERE d.tenant_id = ? AND d.endpoint_id = ? AND d.id = ?",
                (tid, endpoint_id, delivery_id),
            )
            if r is None:
                return False
            with self._tx():
                self._exec(
                    "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?, "
                    "delivered_at = NULL WHERE id = ?",
                    (self._clock(), delivery_id),
                )
                self._exec("UPDATE outbox SET status = 'pending' WHERE event_id = ?", (r["event_id"],))
                self._audit(actor, tenant, "webhook.redelivered", f"delivery:{delivery_id}")
            return True

    # ---------------------------------------------------------------- audit log

    def _audit_hash(self, key: bytes, entry_id: int, at: float, actor: str, tenant: str | None, action: str,
                    object_id: str | None, prev_hash: str) -> str:  # fmt: skip
        canonical = json.dumps([entry_id, at, actor, tenant, action, object_id, prev_hash], separators=(",", ":"))
        return hmac.new(key, canonical.encode("utf-8"), hashlib.sha256).hexdigest()

    def _audit(self, actor: str, tenant: str | None, action: str, object_id: str | None) -> int:
        """Inside a write transaction: append one chained entry. No call content, no clear numbers."""
        if not self.db.conn.in_transaction:
            raise StorageError("internal error: audit entry outside a transaction")
        key = self.keystore.operator_key("audit")
        last = self.db.execute("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
        seq = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'").fetchone()
        prev_hash = last[1] if last else _GENESIS
        entry_id = max(last[0] if last else 0, seq[0] if seq else 0) + 1
        at = self._clock()
        digest = self._audit_hash(key, entry_id, at, actor, tenant, action, object_id, prev_hash)
        self.db.table("audit_log").insert(
            {
                "id": entry_id,
                "at": at,
                "actor": actor,
                "tenant": tenant,
                "action": action,
                "object_id": object_id,
                "prev_hash": prev_hash,
                "hash": digest,
            }
        )
        return entry_id

    def audit_append(self, actor: str, tenant: str | None, action: str, object_id: str | None = None) -> int:
        """Append an audit entry (for reads/changes done outside this module, e.g. an API route)."""
        with self._tx():
            return self._audit(actor, tenant, action, object_id)

    def audit_list(self, tenant: str | None = None, *, limit: int = 100) -> list[AuditEntry]:
        """The latest audit entries (of one tenant, or all), newest first."""
        sql = "SELECT id, at, actor, tenant, action, object_id FROM audit_log"
        params: list[Any] = []
        if tenant is not None:
            sql += " WHERE tenant = ?"
            params.append(tenant)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(int(limit))
        return [AuditEntry(**r) for r in self._rows(sql, params)]

    def audit_verify(self) -> AuditCheck:
        """Check the hash chain: a modified, inserted or deleted entry (also at the end) is found;
        ``first_bad_id`` is the first entry that does not verify (or is missing)."""
        with self._lock:
            key = self.keystore.operator_key("audit")
            prev_hash = _GENESIS
            expected_id = 1
            count = 0
            for r in self._rows(
                "SELECT id, at, actor, tenant, action, object_id, prev_hash, hash FROM audit_log ORDER BY id"
            ):
                count += 1
                if r["id"] != expected_id:
                    return AuditCheck(False, expected_id, f"entry {expected_id} is missing", count)
                if r["prev_hash"] != prev_hash:
                    return AuditCheck(False, r["id"], f"entry {r['id']} does not chain to the previous entry", count)
                digest = self._audit_hash(
                    key, r["id"], r["at"], r["actor"], r["tenant"], r["action"], r["object_id"], r["prev_hash"]
                )
                if not hmac.compare_digest(digest, r["hash"]):
                    return AuditCheck(False, r["id"], f"entry {r['id']} was modified", count)
                prev_hash = r["hash"]
                expected_id += 1
            seq = self._one("SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'")
            if seq is not None and seq["seq"] >= expected_id:
                return AuditCheck(False, expected_id, f"entries {expected_id}..{seq['seq']} were deleted", count)
            return AuditCheck(True, None, None, count)
