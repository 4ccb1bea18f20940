"""``Store``: one data directory's database, keystore and recordings, and the repositories over them.

    store = Store(data_dir)                      # data_dir/voicecore.db; keys in <data_dir>-keys/
    store = Store(data_dir, database_url="postgresql://vc:…@db.internal/voicecore")  # shared by workers
    api_key = store.tenants.create("acme", "policies/default.yaml", actor="cli")
    key = store.tenants.authenticate(api_key)    # ApiKeyInfo(tenant="acme", role="admin", ...)
    store.calls.save(record)                     # as the tenant policy allows

The repositories: :attr:`Store.tenants` (tenants, policies, API keys),
:attr:`Store.calls` (calls, turns, recordings, reports), :attr:`Store.subjects`
(contacts, opt-outs, restriction, export, erasure), :attr:`Store.outbox`
(webhook events, endpoints, deliveries), :attr:`Store.report_jobs` (post-call report jobs,
claimed by the workers), :attr:`Store.providers` (the tenant's provider
credentials and stream secrets), :attr:`Store.call_tokens` (one-time call tokens, shared by
every worker), :attr:`Store.retention` (the sweep) and
:attr:`Store.audit` (the hash-chained audit log). They share one database; a
Store may be used from several threads.

The database is the SQLite file of the data directory unless ``database_url`` (or
``VOICECORE_DATABASE_URL``) names PostgreSQL; then recordings are kept in the database too
(``recording_chunks``: every worker reads them) and the data directory holds only export files. Tenant keys: in the keystore file of the key directory with
SQLite; wrapped under the master key in the database with PostgreSQL, so every worker sees
them (:class:`~voicecore.storage.crypto.DatabaseKeystore`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

from voicecore.storage import migrate
from voicecore.storage.audit import AuditLog
from voicecore.storage.call_tokens import CallTokens
from voicecore.storage.calls import CallRepository
from voicecore.storage.campaigns import CampaignRepository
from voicecore.storage.contacts import ContactRepository
from voicecore.storage.crypto import (
    DatabaseKeystore,
    Keystore,
    key_locations,
    resolve_master_key,
)
from voicecore.storage.database import DATABASE_URL_ENV, Database
from voicecore.storage.database import database_url as resolve_database_url
from voicecore.storage.outbox import Outbox
from voicecore.storage.providers import ProviderAccounts
from voicecore.storage.report_jobs import ReportJobs
from voicecore.storage.retention import Retention
from voicecore.storage.subjects import SubjectRepository
from voicecore.storage.tenants import RECORDINGS_DIRNAME, TenantRepository
from voicecore.storage.workers import WorkerRepository


def default_data_dir() -> Path:
    """``VOICECORE_DATA_DIR`` or ``./storage``."""
    return Path(os.environ.get("VOICECORE_DATA_DIR") or "storage")


def default_database_url() -> str | None:
    """``VOICECORE_DATABASE_URL`` (``None``: the SQLite file of the data directory)."""
    return os.environ.get(DATABASE_URL_ENV) or None


class Store:
    """All persistent state of one data directory, handed out as repositories."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        master_key: bytes | str | None = None,
        key_dir: str | Path | None = None,
        allow_insecure_webhooks: bool = False,
        clock: Callable[[], float] = time.time,
        database_url: str | None = None,
    ):
        """``key_dir``: where the keystore (and a generated master key file) live; default
        ``VOICECORE_KEY_DIR``, else ``<data_dir>-keys`` next to the data directory
        (see :mod:`voicecore.storage.crypto`). ``allow_insecure_webhooks``: accept ``http://``
        and private addresses for webhook endpoints (local development, tests)."""
        self.data_dir = Path(data_dir)
        url = resolve_database_url(database_url if database_url is not None else default_database_url(), self.data_dir)
        # A PostgreSQL URL is reached before anything is written (a wrong one leaves no trace).
        db = Database(url, clock=clock) if url.get_backend_name() == "postgresql" else None
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.recordings_dir = self.data_dir / RECORDINGS_DIRNAME
            self.keys = key_locations(self.data_dir, key_dir)
            self.keys.key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            key, source = resolve_master_key(self.keys.key_dir, master_key)
            db = db or Database(url, clock=clock)
            migrate.prepare(db)
        except BaseException:
            if db is not None:
                db.close()
            raise
        self.db = db
        self.keystore: Keystore | DatabaseKeystore = (
            DatabaseKeystore(self.db, key, source) if self.db.is_postgresql else Keystore(self.keys.keystore, key, source)
        )
        self.master_key_source = source
        self.audit = AuditLog(self.db, self.keystore)
        self.tenants = TenantRepository(self.db, self.keystore, self.audit, self.data_dir)
        self.outbox = Outbox(self.db, self.tenants, self.audit, allow_insecure_webhooks=allow_insecure_webhooks)
        self.report_jobs = ReportJobs(self.db, self.tenants)
        self.calls = CallRepository(self.db, self.tenants, self.outbox, self.audit, self.data_dir, self.report_jobs)
        self.subjects = SubjectRepository(self.db, self.tenants, self.calls, self.outbox, self.audit, self.data_dir)
        self.retention = Retention(self.db, self.audit, self.data_dir)
        self.providers = ProviderAccounts(self.db, self.tenants, self.audit)
        self.call_tokens = CallTokens(self.db, self.tenants)
        self.workers = WorkerRepository(self.db, self.calls, self.audit, self.report_jobs)
        self.contacts = ContactRepository(self.db, self.tenants, self.audit)
        self.campaigns = CampaignRepository(self.db, self.tenants, self.outbox, self.audit)

    @property
    def db_path(self) -> Path:
        if self.db.path is None:
            raise AttributeError("a PostgreSQL store has no database file")
        return self.db.path

    @property
    def database(self) -> str:
        """Where the data is, as it may be shown: the SQLite file or the PostgreSQL URL, password masked."""
        return str(self.db.path) if self.db.path is not None else self.db.describe()

    def files(self) -> list[Path]:
        """The database files (main, -wal, -shm) that exist right now."""
        return self.db.files()

    def schema_version(self) -> int:
        return self.db.schema_version()

    def close(self) -> None:
        try:
            self.calls.close_recordings()  # database recordings' queued chunks go in first
        finally:
            self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
