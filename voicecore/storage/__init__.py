"""Persistent storage: repositories over one database (SQLite by default, or PostgreSQL), encrypted recordings, per-tenant keys.

Start with :class:`Store` (see :mod:`voicecore.storage.store`)::

    store = Store(data_dir)
    api_key = store.tenants.create("acme", "policies/default.yaml", actor="cli")
    store.calls.save(record)
"""

from voicecore.storage.audit import AuditCheck, AuditEntry, AuditLog
from voicecore.storage.calls import (
    CallRepository,
    RecordingNotAllowed,
    StoredCall,
    StoredReport,
    StoredTurn,
)
from voicecore.storage.crypto import (
    MASTER_KEY_ENV,
    CryptoError,
    DecryptionFailed,
    KeystoreError,
    TenantKeyMissing,
    generate_master_key,
)
from voicecore.storage.database import (
    DATABASE_URL_ENV,
    DB_FILENAME,
    StorageError,
    safe_url,
)
from voicecore.storage.outbox import (
    EVENT_TYPES,
    DeliveryInfo,
    InvalidWebhookUrl,
    Outbox,
    OutboxEvent,
    WebhookDelivery,
    WebhookEndpoint,
    check_webhook_url,
)
from voicecore.storage.providers import ProviderAccountInfo, ProviderAccounts
from voicecore.storage.recording import (
    RecordingError,
    RecordingStream,
    RecordingWriter,
    pcm_to_wav,
)
from voicecore.storage.retention import Retention, SweepResult
from voicecore.storage.schema import ROLES, SCHEMA_VERSION
from voicecore.storage.store import Store, default_data_dir, default_database_url
from voicecore.storage.subjects import (
    ErasureResult,
    OptOutEntry,
    SubjectExport,
    SubjectRepository,
)
from voicecore.storage.tenants import (
    ApiKeyInfo,
    TenantExists,
    TenantInfo,
    TenantRepository,
    UnknownTenant,
)

__all__ = [
    "DATABASE_URL_ENV",
    "DB_FILENAME",
    "EVENT_TYPES",
    "MASTER_KEY_ENV",
    "ROLES",
    "SCHEMA_VERSION",
    "ApiKeyInfo",
    "AuditCheck",
    "AuditEntry",
    "AuditLog",
    "RecordingStream",
    "CallRepository",
    "CryptoError",
    "DecryptionFailed",
    "DeliveryInfo",
    "ErasureResult",
    "InvalidWebhookUrl",
    "KeystoreError",
    "OptOutEntry",
    "Outbox",
    "OutboxEvent",
    "ProviderAccountInfo",
    "ProviderAccounts",
    "RecordingError",
    "RecordingNotAllowed",
    "RecordingWriter",
    "Retention",
    "StorageError",
    "Store",
    "StoredCall",
    "StoredReport",
    "StoredTurn",
    "SubjectExport",
    "SubjectRepository",
    "SweepResult",
    "TenantExists",
    "TenantInfo",
    "TenantKeyMissing",
    "TenantRepository",
    "UnknownTenant",
    "WebhookDelivery",
    "WebhookEndpoint",
    "check_webhook_url",
    "default_data_dir",
    "default_database_url",
    "safe_url",
    "generate_master_key",
    "pcm_to_wav",
]
