"""What the schema means, and the migrations of the code before Alembic (``PRAGMA user_version``).

The tables themselves are :mod:`voicecore.storage.tables` (SQLAlchemy metadata, one schema for
SQLite and PostgreSQL), built by the Alembic revisions in :mod:`voicecore.storage.migrations`.
:data:`MIGRATIONS` below is kept to bring a SQLite file made before Alembic to version 4, the
baseline revision (:func:`voicecore.storage.migrate.upgrade`).

Every table that holds data about calls carries the owning ``tenant_id`` and
every query is scoped by it; every stored row carries its expiry
(``expires_at``, epoch seconds) computed from the tenant's policy at write time.

What is encrypted with the tenant key (AES-GCM, :mod:`voicecore.storage.crypto`):
transcript text, caller/callee numbers, report bodies, contact fields, opt-out
numbers, outbox payloads, webhook secrets, provider credentials and recording files. What is in
clear: ids, times, durations, end reasons, latency timelines, provider ids,
flags, and keyed hashes (HMAC) of phone numbers used for lookups. The audit log
holds no call content and no clear phone number; it is chained with HMAC-SHA256.
"""

from __future__ import annotations

SCHEMA_VERSION = 4
#: API key roles: ``admin`` (everything in its tenant), ``agent`` (calls only: media streams,
#: WebRTC, provider webhooks), ``analyst`` (calls, transcripts, recordings, reports, exports),
#: ``viewer`` (call metadata only).
ROLES: tuple[str, ...] = ("admin", "agent", "analyst", "viewer")
#: Roles whose keys may open calls.
CALL_ROLES: frozenset[str] = frozenset({"admin", "agent"})

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

# Version 3: the ``agent`` role; audit entries keyed by tenant id (a tenant created again
# under an old name does not inherit the old log); subject exports stored encrypted.
_SCHEMA_V3: tuple[str, ...] = (
    """CREATE TABLE api_keys_v3 (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        role TEXT NOT NULL CHECK (role IN ('admin', 'agent', 'analyst', 'viewer')),
        salt BLOB NOT NULL,
        hash BLOB NOT NULL,
        label TEXT,
        created_at REAL NOT NULL,
        revoked_at REAL
    )""",
    "INSERT INTO api_keys_v3 SELECT id, tenant_id, role, salt, hash, label, created_at, revoked_at FROM api_keys",
    "DROP TABLE api_keys",
    "ALTER TABLE api_keys_v3 RENAME TO api_keys",
    "CREATE INDEX api_keys_tenant ON api_keys(tenant_id)",
    "ALTER TABLE audit_log ADD COLUMN tenant_id TEXT",
    # Entries written before the tenant of that name was created belong to an earlier tenant.
    """UPDATE audit_log SET tenant_id = (
        SELECT t.id FROM tenants t WHERE t.name = audit_log.tenant AND audit_log.at >= t.created_at
    )""",
    "CREATE INDEX audit_log_tenant ON audit_log(tenant_id, id)",
    """CREATE TABLE exports (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        subject_hash TEXT NOT NULL,
        path TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX exports_subject ON exports(tenant_id, subject_hash)",
    "CREATE INDEX exports_expiry ON exports(expires_at)",
)

_SCHEMA_V4: tuple[str, ...] = (
    # A tenant's account at a telephony provider: the secrets that check the provider's
    # signatures (encrypted JSON), a non-secret account/application id to find the tenant by,
    # and a stream secret (scrypt hash) for providers that connect with static credentials.
    """CREATE TABLE provider_credentials (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        provider TEXT NOT NULL,
        secrets_enc BLOB NOT NULL,
        account_id TEXT,
        stream_key_id TEXT UNIQUE,
        stream_salt BLOB,
        stream_hash BLOB,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (tenant_id, provider)
    )""",
    "CREATE INDEX provider_credentials_account ON provider_credentials(provider, account_id)",
)

# MIGRATIONS[i] upgrades a database from user_version i to i + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3, _SCHEMA_V4)
assert len(MIGRATIONS) == SCHEMA_VERSION

# Tables holding tenant data (deleted with the tenant), children first.
TENANT_TABLES: tuple[str, ...] = (
    "call_attempts",
    "campaign_contacts",
    "campaigns",
    "call_tokens",
    "provider_credentials",
    "exports",
    "webhook_deliveries",
    "webhook_endpoints",
    "turns",
    "reports",
    "report_jobs",
    "recordings",
    "contact_segments",
    "contacts",
    "opt_outs",
    "restrictions",
    "outbox",
    "calls",
    "api_keys",
)

