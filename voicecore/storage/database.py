"""The one connection of a data directory that every repository shares.

One SQLite database per data directory (``<data_dir>/voicecore.db``), WAL mode,
``secure_delete`` on, temp files in memory, schema created and migrated by code
(``PRAGMA user_version``, see :mod:`voicecore.storage.schema`). A
:class:`Database` may be shared by threads: an internal lock serialises access,
and :meth:`Database.tx` is a ``BEGIN IMMEDIATE`` write transaction.

Everything here is synchronous; ``serve`` calls the repositories from worker
threads (``asyncio.to_thread``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger
from sqlite_utils import Database as SqliteUtilsDatabase

from voicecore.storage.schema import MIGRATIONS, SCHEMA_VERSION

DB_FILENAME = "voicecore.db"


class StorageError(Exception):
    """A storage operation could not be done; the message says what and why."""


def epoch(value: datetime | float | None) -> float | None:
    """Epoch seconds of a datetime (naive means UTC) or a number; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    return float(value)


def shred(path: Path) -> bool:
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


class Database:
    """One SQLite connection (through sqlite-utils), its lock, its clock and its transactions."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time):
        self.path = path
        self.clock = clock
        self.lock = threading.RLock()
        new_file = not path.exists()
        conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
        if new_file:
            os.chmod(path, 0o600)
        self.sqlite = SqliteUtilsDatabase(conn)
        self.sqlite.enable_wal()
        for pragma in (
            "PRAGMA secure_delete=ON",
            "PRAGMA foreign_keys=ON",
            "PRAGMA temp_store=MEMORY",
            "PRAGMA synchronous=FULL",
            "PRAGMA busy_timeout=30000",
        ):
            self.sqlite.execute(pragma)
        self._migrate()

    # -- plumbing ------------------------------------------------------------------

    def close(self) -> None:
        with self.lock:
            self.sqlite.close()

    @property
    def in_transaction(self) -> bool:
        return self.sqlite.conn.in_transaction

    @contextlib.contextmanager
    def tx(self) -> Iterator[None]:
        """A write transaction (BEGIN IMMEDIATE: takes the write lock up front)."""
        with self.lock:
            if self.sqlite.conn.in_transaction:
                raise StorageError("internal error: nested write transaction")
            self.sqlite.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self.sqlite.conn.in_transaction:
                    self.sqlite.conn.execute("ROLLBACK")
                raise
            else:
                self.sqlite.conn.execute("COMMIT")

    def rows(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.sqlite.query(sql, list(params)))

    def one(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> dict[str, Any] | None:
        rows = self.rows(sql, params)
        return rows[0] if rows else None

    def exists(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> bool:
        return self.one(sql, params) is not None

    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        with self.lock:
            return int(self.sqlite.execute(sql, list(params)).rowcount)

    def fetchone(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> tuple[Any, ...] | None:
        with self.lock:
            row = self.sqlite.execute(sql, list(params)).fetchone()
            return tuple(row) if row is not None else None

    def insert(self, table: str, row: dict[str, Any]) -> None:
        with self.lock:
            self.sqlite.table(table).insert(row)

    # -- schema --------------------------------------------------------------------

    def _migrate(self) -> None:
        with self.lock:
            version = self.sqlite.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"{self.path}: database schema version {version} is newer than this voicecore "
                    f"understands ({SCHEMA_VERSION}); upgrade voicecore"
                )
            while version < SCHEMA_VERSION:
                with self.tx():
                    for statement in MIGRATIONS[version]:
                        self.sqlite.execute(statement)
                    self.sqlite.execute(f"PRAGMA user_version={version + 1}")
                logger.info("storage schema migrated to version {}", version + 1)
                version += 1

    def schema_version(self) -> int:
        with self.lock:
            return int(self.sqlite.execute("PRAGMA user_version").fetchone()[0])

    # -- files ---------------------------------------------------------------------

    def files(self) -> list[Path]:
        """The database files (main, -wal, -shm) that exist right now."""
        return [p for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")) if p.exists()]

    def compact(self) -> bool:
        """Flush the WAL into the database, rebuild the file without free pages, empty the WAL.
        Returns whether the WAL was fully truncated (another open reader can prevent it)."""
        with self.lock:
            self.sqlite.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.sqlite.conn.execute("VACUUM")
            busy, _log, _done = self.sqlite.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        wal = Path(f"{self.path}-wal")
        truncated = busy == 0 and (not wal.exists() or wal.stat().st_size == 0)
        if not truncated:
            logger.warning(
                "WAL checkpoint was blocked by another connection; deleted bytes may remain until the next sweep"
            )
        return truncated
