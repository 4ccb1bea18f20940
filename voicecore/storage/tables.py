"""The database schema as SQLAlchemy metadata: one schema for SQLite and PostgreSQL.

The Alembic revisions in :mod:`voicecore.storage.migrations` build exactly these
tables (``0001`` is the schema version 4 that ``PRAGMA user_version`` tracked before
Alembic; later revisions add to it). Ciphertext columns are ``LargeBinary`` (``BLOB``
on SQLite, ``BYTEA`` on PostgreSQL); times are epoch seconds (``Float``: ``REAL`` /
``double precision``); flags are integers 0/1 so the same queries run on both.
See :mod:`voicecore.storage.schema` for what is encrypted and what is in clear.
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()


def _tenant_fk() -> Column:
    return Column("tenant_id", Text, ForeignKey("tenants.id"), nullable=False)


tenants = Table(
    "tenants",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("policy_yaml", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Text, primary_key=True),
    _tenant_fk(),
    Column("role", Text, nullable=False),
    Column("salt", LargeBinary, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    Column("label", Text),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
    CheckConstraint("role IN ('admin', 'agent', 'analyst', 'viewer')", name="api_keys_role"),
    Index("api_keys_tenant", "tenant_id"),
)

calls = Table(
    "calls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _tenant_fk(),
    Column("call_id", Text, nullable=False),
    Column("pipeline", Text, nullable=False),
    Column("transport", Text, nullable=False),
    Column("caller_enc", LargeBinary),
    Column("callee_enc", LargeBinary),
    Column("caller_hash", Text),
    Column("callee_hash", Text),
    Column("provider_ids", Text, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("duration_s", Float),
    Column("end_reason", Text),
    Column("flags", Text, nullable=False),
    Column("turn_count", Integer, nullable=False),
    Column("optout", Integer, nullable=False, server_default="0"),
    Column("transcript_redacted", Integer, nullable=False, server_default="0"),
    Column("stored_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("worker_id", Text),  # revision 0004: the worker that holds the call while it is open
    UniqueConstraint("tenant_id", "call_id"),
    Index("calls_started", "tenant_id", "started_at"),
    Index("calls_open", "worker_id", "ended_at"),
    Index("calls_caller", "tenant_id", "caller_hash"),
    Index("calls_callee", "tenant_id", "callee_hash"),
    Index("calls_expiry", "expires_at"),
)

turns = Table(
    "turns",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _tenant_fk(),
    Column("call_id", Text, nullable=False),
    Column("idx", Integer, nullable=False),
    Column("role", Text, nullable=False),
    Column("kind", Text),
    Column("started_at", Float),
    Column("interrupted", Integer, nullable=False, server_default="0"),
    Column("text_enc", LargeBinary),
    Column("generated_enc", LargeBinary),
    Column("timeline", Text),
    Column("expires_at", Float, nullable=False),
    Column("text_expires_at", Float),
    UniqueConstraint("tenant_id", "call_id", "idx"),
    Index("turns_expiry", "expires_at"),
    Index("turns_text_expiry", "text_expires_at"),
)

recordings = Table(
    "recordings",
    metadata,
    Column("id", Text, primary_key=True),
    _tenant_fk(),
    Column("call_id", Text, nullable=False),
    Column("track", Text, nullable=False),
    Column("subject_hash", Text),
    Column("path", Text, nullable=False),
    Column("sample_rate", Integer, nullable=False),
    Column("channels", Integer, nullable=False),
    Column("sample_width", Integer, nullable=False),
    Column("bytes", Integer, nullable=False, server_default="0"),
    Column("complete", Integer, nullable=False, server_default="0"),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    # revision 0004: "file" (chunks in <data_dir>/<path>) or "database" (rows of recording_chunks)
    Column("location", Text, nullable=False, server_default="file"),
    UniqueConstraint("tenant_id", "call_id", "track"),
    Index("recordings_subject", "tenant_id", "subject_hash"),
    Index("recordings_expiry", "expires_at"),
)

reports = Table(
    "reports",
    metadata,
    Column("id", Text, primary_key=True),
    _tenant_fk(),
    Column("call_id", Text, nullable=False),
    Column("subject_hash", Text),
    Column("status", Text, nullable=False),
    Column("body_enc", LargeBinary),
    Column("error", Text),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    CheckConstraint("status IN ('ready', 'failed')", name="reports_status"),
    Index("reports_call", "tenant_id", "call_id"),
    Index("reports_subject", "tenant_id", "subject_hash"),
    Index("reports_expiry", "expires_at"),
)

contacts = Table(
    "contacts",
    metadata,
    Column("id", Text, primary_key=True),
    _tenant_fk(),
    Column("phone_hash", Text, nullable=False),
    Column("fields_enc", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    UniqueConstraint("tenant_id", "phone_hash"),
    Index("contacts_expiry", "expires_at"),
)

opt_outs = Table(
    "opt_outs",
    metadata,
    _tenant_fk(),
    Column("phone_hash", Text, nullable=False),
    Column("phone_enc", LargeBinary),
    Column("source", Text, nullable=False),
    Column("call_id", Text),
    Column("created_at", Float, nullable=False),
    PrimaryKeyConstraint("tenant_id", "phone_hash"),
)

restrictions = Table(
    "restrictions",
    metadata,
    _tenant_fk(),
    Column("phone_hash", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    PrimaryKeyConstraint("tenant_id", "phone_hash"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", Text, nullable=False),
    Column("tenant", Text),
    Column("action", Text, nullable=False),
    Column("object_id", Text),
    Column("prev_hash", Text, nullable=False),
    Column("hash", Text, nullable=False),
    Column("tenant_id", Text),
    Index("audit_log_tenant", "tenant_id", "id"),
    sqlite_autoincrement=True,
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", Text, nullable=False, unique=True),
    _tenant_fk(),
    Column("type", Text, nullable=False),
    Column("call_id", Text),
    Column("subject_hash", Text),
    Column("payload_enc", LargeBinary, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("delivered_at", Float),
    Column("last_error", Text),
    Column("expires_at", Float, nullable=False),
    Column("dispatched", Integer, nullable=False, server_default="0"),
    CheckConstraint("status IN ('pending', 'delivered', 'dead')", name="outbox_status"),
    Index("outbox_pending", "status", "next_attempt_at"),
    Index("outbox_expiry", "expires_at"),
    Index("outbox_dispatch", "dispatched", "status"),
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", Text, primary_key=True),
    _tenant_fk(),
    Column("url", Text, nullable=False),
    Column("events", Text, nullable=False),
    Column("secret_enc", LargeBinary, nullable=False),
    Column("previous_secret_enc", LargeBinary),
    Column("previous_secret_until", Float),
    Column("secret_rotated_at", Float),
    Column("description", Text),
    Column("active", Integer, nullable=False, server_default="1"),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("webhook_endpoints_tenant", "tenant_id"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Text, primary_key=True),
    _tenant_fk(),
    Column("event_id", Text, nullable=False),
    Column("endpoint_id", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Float, nullable=False),
    Column("last_status", Integer),
    Column("last_error", Text),
    Column("created_at", Float, nullable=False),
    Column("delivered_at", Float),
    Column("expires_at", Float, nullable=False),
    CheckConstraint("status IN ('pending', 'delivered', 'dead')", name="webhook_deliveries_status"),
    UniqueConstraint("event_id", "endpoint_id"),
    Index("webhook_deliveries_due", "status", "next_attempt_at"),
    Index("webhook_deliveries_endpoint", "tenant_id", "endpoint_id"),
)

exports = Table(
    "exports",
    metadata,
    Column("id", Text, primary_key=True),
    _tenant_fk(),
    Column("subject_hash", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Index("exports_subject", "tenant_id", "subject_hash"),
    Index("exports_expiry", "expires_at"),
)

provider_credentials = Table(
    "provider_credentials",
    metadata,
    _tenant_fk(),
    Column("provider", Text, nullable=False),
    Column("secrets_enc", LargeBinary, nullable=False),
    Column("account_id", Text),
    Column("stream_key_id", Text, unique=True),
    Column("stream_salt", LargeBinary),
    Column("stream_hash", LargeBinary),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    PrimaryKeyConstraint("tenant_id", "provider"),
    Index("provider_credentials_account", "provider", "account_id"),
)

# -- revision 0002 -------------------------------------------------------------------

#: The head of the audit hash chain: one row (id 1), locked by every append, so entries are
#: chained in one order whatever the number of writers, and a deletion at the end is found.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_id", Integer, nullable=False),
    Column("last_hash", Text, nullable=False),
)

#: Keys wrapped (AES-GCM) under the master key, shared by every worker of a PostgreSQL
#: deployment: ``tenant:<tenant id>`` (data and hash keys), ``operator:<purpose>`` (the audit
#: chain key). The master key itself is never in the database.
wrapped_keys = Table(
    "wrapped_keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("wrapped", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)

# -- revision 0003 -------------------------------------------------------------------

#: One-time call tokens, shared by every worker (see :mod:`voicecore.storage.call_tokens`): the
#: token's SHA-256, what it grants, the caller/callee numbers encrypted with the tenant key.
call_tokens = Table(
    "call_tokens",
    metadata,
    Column("token_hash", LargeBinary, primary_key=True),
    _tenant_fk(),
    Column("pipeline", Text),
    Column("provider", Text),
    Column("call_id", Text),
    Column("numbers_enc", LargeBinary),
    Column("caller_hash", Text),
    Column("callee_hash", Text),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float),
    Index("call_tokens_call", "call_id"),
    Index("call_tokens_expiry", "expires_at"),
)

# -- revision 0004 -------------------------------------------------------------------

#: Every ``serve`` worker's lease: renewed by its heartbeat; a worker whose lease ran out is
#: ``lost`` and another worker closes its open calls as ``worker_lost``.
workers = Table(
    "workers",
    metadata,
    Column("id", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("lease_expires_at", Float, nullable=False),
    Column("state", Text, nullable=False),
    Column("closed_by", Text),
    Column("closed_at", Float),
    CheckConstraint("state IN ('alive', 'draining', 'stopped', 'lost')", name="workers_state"),
    Index("workers_lease", "state", "lease_expires_at"),
)

#: Post-call reports still to generate, claimed row by row by the workers (``SKIP LOCKED`` on
#: PostgreSQL): a claim lasts until ``claimed_until``; a worker that dies leaves its job to the
#: next claim. ``input_enc`` holds what the report is made from (encrypted with the tenant key),
#: so a report can be made even when the policy keeps no transcript; the row goes when the
#: report is stored, with the subject's erasure, or at ``expires_at``.
report_jobs = Table(
    "report_jobs",
    metadata,
    Column("id", Text, primary_key=True),
    _tenant_fk(),
    Column("call_id", Text, nullable=False),
    Column("subject_hash", Text),
    Column("input_enc", LargeBinary),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("claimed_by", Text),
    Column("claimed_until", Float),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    CheckConstraint("status IN ('pending', 'running')", name="report_jobs_status"),
    UniqueConstraint("tenant_id", "call_id"),
    Index("report_jobs_due", "status", "claimed_until"),
    Index("report_jobs_subject", "tenant_id", "subject_hash"),
    Index("report_jobs_expiry", "expires_at"),
)

#: Encrypted recording chunks kept in the database (``recordings.location = 'database'``, the
#: PostgreSQL mode: every worker reads every recording): the same AES-GCM chunks as a file holds.
recording_chunks = Table(
    "recording_chunks",
    metadata,
    Column(
        "recording_id",
        Text,
        ForeignKey("recordings.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("idx", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("recording_id", "idx"),
)

# -- revision 0005 -------------------------------------------------------------------

#: Segments of a tenant's contacts (``contacts import --segment``): labels the tenant chose,
#: in clear, so a campaign finds its contacts without decrypting every one.
contact_segments = Table(
    "contact_segments",
    metadata,
    _tenant_fk(),
    Column("contact_id", Text, ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False),
    Column("segment", Text, nullable=False),
    PrimaryKeyConstraint("contact_id", "segment"),
    Index("contact_segments_segment", "tenant_id", "segment"),
)

# -- revision 0006 -------------------------------------------------------------------

#: Outbound campaigns: which segment a tenant calls, from which number, through which provider,
#: in which calling window, how often and how many at once (see :mod:`voicecore.storage.campaigns`).
campaigns = Table(
    "campaigns",
    metadata,
    Column("id", Text, primary_key=True),
    _tenant_fk(),
    Column("name", Text, nullable=False),
    Column("pipeline", Text, nullable=False),
    Column("segment", Text, nullable=False),
    Column("from_number", Text, nullable=False),  # the business's own number
    Column("provider", Text, nullable=False),
    Column("window", Text, nullable=False),  # a preset name or a window spec
    Column("max_concurrent", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("retry_after_s", Float, nullable=False),
    Column("start_at", Float),
    Column("machine_action", Text, nullable=False, server_default="hangup"),
    Column("voicemail_enc", LargeBinary),
    Column("status", Text, nullable=False),
    Column("paused_reason", Text),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    CheckConstraint("status IN ('draft', 'running', 'paused', 'done')", name="campaigns_status"),
    UniqueConstraint("tenant_id", "name"),
)

#: Each contact of a campaign and where it stands: claimed row by row by the dialers.
campaign_contacts = Table(
    "campaign_contacts",
    metadata,
    Column("campaign_id", Text, ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
    Column("contact_id", Text, ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False),
    _tenant_fk(),
    Column("phone_hash", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Float, nullable=False),
    Column("outcome", Text),
    Column("last_reason", Text),
    Column("last_attempt_id", Text),
    Column("last_call_id", Text),
    Column("claimed_by", Text),
    Column("claimed_until", Float),
    Column("updated_at", Float, nullable=False),
    CheckConstraint("status IN ('pending', 'dialing', 'done')", name="campaign_contacts_status"),
    PrimaryKeyConstraint("campaign_id", "contact_id"),
    Index("campaign_contacts_due", "status", "next_attempt_at"),
    Index("campaign_contacts_subject", "tenant_id", "phone_hash"),
)

#: Every dial attempt, written before the provider is asked (so a restart never dials twice).
call_attempts = Table(
    "call_attempts",
    metadata,
    Column("id", Text, primary_key=True),
    _tenant_fk(),
    Column("campaign_id", Text, ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
    Column("contact_id", Text, nullable=False),
    Column("phone_hash", Text, nullable=False),
    Column("attempt_no", Integer, nullable=False),
    Column("provider", Text, nullable=False),
    Column("provider_call_id", Text),
    Column("status", Text, nullable=False),
    Column("outcome", Text),
    Column("error_code", Text),
    Column("error_message", Text),
    Column("call_id", Text),
    Column("worker_id", Text),
    Column("created_at", Float, nullable=False),
    Column("answered_at", Float),
    Column("ended_at", Float),
    Column("expires_at", Float, nullable=False),
    CheckConstraint("status IN ('dialing', 'ringing', 'answered', 'done')", name="call_attempts_status"),
    UniqueConstraint("campaign_id", "contact_id", "attempt_no"),
    Index("call_attempts_subject", "tenant_id", "phone_hash", "created_at"),
    Index("call_attempts_provider", "provider", "provider_call_id"),
    Index("call_attempts_open", "campaign_id", "status"),
)

TABLES: dict[str, Table] = dict(metadata.tables)
