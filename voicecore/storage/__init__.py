"""Persistent storage: SQLite (one module owns all SQL), encrypted recordings, per-tenant keys.

Start with :class:`Store`::

    store = Store(data_dir)                      # creates data_dir/voicecore.db, keystore.bin, master.key
    api_key = store.create_tenant("acme", "policies/default.yaml")
    tenant = store.authenticate(api_key)         # "acme"
    store.save_call(record)                      # as the tenant policy allows
"""

from voicecore.storage.crypto import (
    MASTER_KEY_ENV,
    CryptoError,
    DecryptionFailed,
    KeystoreError,
    TenantKeyMissing,
    generate_master_key,
)
from voicecore.storage.db import (
    DB_FILENAME,
    EVENT_TYPES,
    ROLES,
    SCHEMA_VERSION,
    ApiKeyInfo,
    AuditCheck,
    AuditEntry,
    ErasureResult,
    OptOutEntry,
    OutboxEvent,
    RecordingNotAllowed,
    StorageError,
    Store,
    StoredCall,
    StoredTurn,
    SweepResult,
    TenantExists,
    TenantInfo,
    UnknownTenant,
    default_data_dir,
)
from voicecore.storage.recording import RecordingError, RecordingWriter, pcm_to_wav

__all__ = [
    "DB_FILENAME",
    "EVENT_TYPES",
    "MASTER_KEY_ENV",
    "ROLES",
    "SCHEMA_VERSION",
    "ApiKeyInfo",
    "AuditCheck",
    "AuditEntry",
    "CryptoError",
    "DecryptionFailed",
    "ErasureResult",
    "KeystoreError",
    "OptOutEntry",
    "OutboxEvent",
    "RecordingError",
    "RecordingNotAllowed",
    "RecordingWriter",
    "StorageError",
    "Store",
    "StoredCall",
    "StoredTurn",
    "SweepResult",
    "TenantExists",
    "TenantInfo",
    "TenantKeyMissing",
    "UnknownTenant",
    "default_data_dir",
    "generate_master_key",
    "pcm_to_wav",
]
