"""The database every repository shares: an SQLAlchemy engine picked by one URL.

* Default: one SQLite file per data directory (``<data_dir>/voicecore.db``), WAL mode,
  ``secure_delete`` on, foreign keys on, ``synchronous=FULL``, temp files in memory (set on
  every connection by a ``connect`` event); sqlite-utils serves it where SQLite needs its own
  tools (WAL, checkpoint, ``VACUUM``, inspection: :attr:`Database.sqlite`).
* ``postgresql://user:password@host:port/db`` (``VOICECORE_DATABASE_URL`` / ``--database-url``):
  everything in PostgreSQL through psycopg 3; several workers share it.

One schema (:mod:`voicecore.storage.tables`, migrated by Alembic: :mod:`voicecore.storage.migrate`)
and one set of queries for both dialects. :meth:`Database.tx` is a write transaction: ``BEGIN
IMMEDIATE`` on SQLite (the write lock up front), an ordinary transaction on PostgreSQL, where work
several workers take from one table is claimed with ``FOR UPDATE SKIP LOCKED``
(:meth:`Database.for_update`). A :class:`Database` may be shared by threads: an internal lock
serialises its use within the process.

Everything here is synchronous; ``serve`` calls the repositories from worker threads
(``asyncio.to_thread``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger
from sqlalchemy import Connection, Engine, create_engine, event, insert, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import Executable

from voicecore.storage.tables import TABLES

DB_FILENAME = "voicecore.db"
DATABASE_URL_ENV = "VOICECORE_DATABASE_URL"

Params = tuple[Any, ...] | list[Any] | dict[str, Any]


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


# -- URLs --------------------------------------------------------------------------------


def database_url(value: str | URL | Path | None, data_dir: Path | None = None) -> URL:
    """The SQLAlchemy URL a ``--database-url`` names: ``postgresql://`` (and ``postgres://``,
    ``postgresql+psycopg://``) become psycopg 3's dialect; ``sqlite:///path``; nothing (or an empty
    string) means the SQLite file of ``data_dir``. Anything else is a :class:`StorageError`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if data_dir is None:
            raise StorageError("no database: give a database URL or a data directory")
        return URL.create("sqlite", database=str(Path(data_dir) / DB_FILENAME))
    if isinstance(value, Path):
        return URL.create("sqlite", database=str(value))
    try:
        url = make_url(value) if isinstance(value, str) else value
    except ArgumentError:
        # Not echoed: a malformed URL may still hold a password.
        raise StorageError(
            "the database URL is not a URL: use postgresql://user:password@host:port/database "
            "or sqlite:///path/to/voicecore.db"
        ) from None
    backend, _, driver = url.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "psycopg"):
            raise StorageError(
                f"database URL {safe_url(url)}: driver {driver!r} is not supported, use postgresql:// (psycopg 3)"
            )
        url = url.set(drivername="postgresql+psycopg")
        if not url.database:
            raise StorageError(f"database URL {safe_url(url)} names no database (postgresql://host:port/DATABASE)")
        return url
    if backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise StorageError(f"database URL {safe_url(url)}: driver {driver!r} is not supported, use sqlite:///path")
        if not url.database or url.database == ":memory:":
            raise StorageError(f"database URL {safe_url(url)} names no file: use sqlite:///path/to/voicecore.db")
        return url.set(drivername="sqlite")
    raise StorageError(
        f"database URL {safe_url(url)}: {backend!r} is not a supported database; use postgresql://… or sqlite:///…"
    )


def safe_url(url: URL | str) -> str:
    """The URL as it may be shown and logged: the password masked."""
    if isinstance(url, str):
        try:
            url = make_url(url)
        except ArgumentError:
            return "(not a URL)"
    return url.render_as_string(hide_password=True)


def describe_target(url: URL) -> str:
    """Where a URL points, for error messages: host, port and database (never the password)."""
    if url.get_backend_name() == "sqlite":
        return f"SQLite file {url.database}"
    host = url.host or (url.query.get("host") if url.query else None) or "localhost"
    return f"PostgreSQL database {url.database!r} on {host}:{url.port or 5432}" + (
        f" as user {url.username!r}" if url.username else ""
    )


@functools.lru_cache(maxsize=2048)
def _statement(sql: str) -> Any:
    """A ``?``-placeholder SQL string as a dialect-neutral ``text()`` with positional binds
    (``:p0``, ``:p1``, ...); quoted literals are left as they are."""
    out: list[str] = []
    n = 0
    for part in re.split(r"('(?:[^']|'')*')", sql):
        if part.startswith("'"):
            out.append(part.replace(":", "\\:"))
            continue
        pieces = part.replace(":", "\\:").split("?")
        for i, piece in enumerate(pieces):
            if i:
                out.append(f":p{n}")
                n += 1
            out.append(piece)
    return text("".join(out))


def _bind(params: Params) -> dict[str, Any]:
    if isinstance(params, dict):
        return params
    return {f"p{i}": v for i, v in enumerate(params)}


class Database:
    """One database (SQLite file or PostgreSQL), its lock, its clock and its transactions."""

    def __init__(self, url: str | URL | Path, *, clock: Callable[[], float] = time.time, check: bool = True):
        self.url = database_url(url)
        self.dialect = self.url.get_backend_name()  # "sqlite" | "postgresql"
        self.clock = clock
        self.lock = threading.RLock()
        self._tx: Connection | None = None
        self.path: Path | None = Path(self.url.database) if self.dialect == "sqlite" else None
        self.engine: Engine = self._engine()
        # A statement outside tx() is its own transaction: in autocommit on PostgreSQL (no BEGIN and
        # ROLLBACK round trips around a read); SQLite reads already run without BEGIN (see _on_begin).
        self._single: Engine = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT") if self.dialect == "postgresql" else self.engine
        )
        self._sqlite_utils: Any = None
        if check:
            self.check_connection()

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def is_postgresql(self) -> bool:
        return self.dialect == "postgresql"

    def describe(self) -> str:
        return describe_target(self.url)

    def _engine(self) -> Engine:
        if self.is_sqlite:
            assert self.path is not None
            new_file = not self.path.exists()
            if new_file and not self.path.parent.is_dir():
                raise StorageError(f"{describe_target(self.url)}: the directory {self.path.parent} does not exist")
            # One connection shared by the threads (serialised by self.lock), as SQLite wants it.
            engine = create_engine(
                self.url,
                hide_parameters=True,  # an error message never shows a row's values
                poolclass=StaticPool,
                connect_args={"check_same_thread": False, "timeout": 30.0},
            )

            @event.listens_for(engine, "connect")
            def _on_connect(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
                for pragma in (
                    "PRAGMA journal_mode=WAL",
                    "PRAGMA secure_delete=ON",
                    "PRAGMA foreign_keys=ON",
                    "PRAGMA temp_store=MEMORY",
                    "PRAGMA synchronous=FULL",
                    "PRAGMA busy_timeout=30000",
                ):
                    dbapi_conn.execute(pragma)
                if new_file and self.path is not None and self.path.exists():
                    os.chmod(self.path, 0o600)

            @event.listens_for(engine, "begin")
            def _on_begin(conn: Connection) -> None:
                if conn.get_execution_options().get("voicecore_write"):
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                # reads run in autocommit: each statement sees a consistent snapshot

            return engine
        return create_engine(
            self.url,
            hide_parameters=True,  # an error message never shows a row's values
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=5,
            connect_args={"connect_timeout": 10, "application_name": "voicecore"},
        )

    def check_connection(self) -> None:
        """Connect once; an unreachable database or bad credentials is a :class:`StorageError`
        naming host, port and database (never the password)."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except (DBAPIError, SQLAlchemyError, OSError) as exc:
            raise StorageError(f"cannot open the {self.describe()}: {self._reason(exc)}") from None

    def _reason(self, exc: BaseException) -> str:
        orig = getattr(exc, "orig", None) or exc
        reason = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
        if self.url.password:
            reason = reason.replace(str(self.url.password), "***")
        return reason

    # -- plumbing ------------------------------------------------------------------

    def close(self) -> None:
        with self.lock:
            self.engine.dispose()
            if self.is_sqlite:
                # StaticPool keeps its one connection until the pool itself is gone.
                with contextlib.suppress(Exception):
                    self.engine.pool.dispose()

    @property
    def sqlite(self) -> Any:
        """The SQLite connection as a sqlite-utils ``Database`` (SQLite only: WAL, VACUUM, inspection)."""
        if not self.is_sqlite:
            raise StorageError("internal error: sqlite-utils asked for on a PostgreSQL database")
        if self._sqlite_utils is None:
            from sqlite_utils import Database as SqliteUtilsDatabase

            fairy = self.engine.raw_connection()
            conn = fairy.driver_connection
            fairy.close()  # back to the StaticPool, which keeps the one connection open
            self._sqlite_utils = SqliteUtilsDatabase(conn)
        return self._sqlite_utils

    @property
    def in_transaction(self) -> bool:
        return self._tx is not None

    @contextlib.contextmanager
    def tx(self) -> Iterator[None]:
        """A write transaction (BEGIN IMMEDIATE on SQLite: takes the write lock up front)."""
        with self.lock:
            if self._tx is not None:
                raise StorageError("internal error: nested write transaction")
            with self.engine.connect().execution_options(voicecore_write=True) as conn:
                trans = conn.begin()
                self._tx = conn
                try:
                    yield
                except BaseException:
                    self._tx = None
                    if trans.is_active:
                        trans.rollback()
                    raise
                else:
                    self._tx = None
                    trans.commit()

    def _execute(self, stmt: Any, params: Params | None, fetch: Callable[[Any], Any]) -> Any:
        if isinstance(stmt, str):
            stmt, params = _statement(stmt), _bind(params or ())
        with self.lock:
            if self._tx is not None:
                result = self._tx.execute(stmt, params) if params else self._tx.execute(stmt)
                return fetch(result)
            with self._single.connect() as conn:
                result = conn.execute(stmt, params) if params else conn.execute(stmt)
                out = fetch(result)
                conn.commit()
                return out

    def rows(self, sql: str | Executable, params: Params = ()) -> list[dict[str, Any]]:
        return self._execute(sql, params, lambda r: [dict(m) for m in r.mappings().all()])

    def one(self, sql: str | Executable, params: Params = ()) -> dict[str, Any] | None:
        rows = self.rows(sql, params)
        return rows[0] if rows else None

    def exists(self, sql: str | Executable, params: Params = ()) -> bool:
        return self.one(sql, params) is not None

    def execute(self, sql: str | Executable, params: Params = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        return int(self._execute(sql, params, lambda r: r.rowcount))

    def fetchone(self, sql: str | Executable, params: Params = ()) -> tuple[Any, ...] | None:
        def first(r: Any) -> tuple[Any, ...] | None:
            row = r.first()
            return tuple(row) if row is not None else None

        return self._execute(sql, params, first)

    def fetchall(self, sql: str | Executable, params: Params = ()) -> list[tuple[Any, ...]]:
        return self._execute(sql, params, lambda r: [tuple(row) for row in r.all()])

    def insert(self, table: str, row: dict[str, Any]) -> None:
        self._execute(insert(TABLES[table]).values(**row), None, lambda r: None)

    def insert_many(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Insert rows in one statement (executemany: one round trip on PostgreSQL)."""
        if rows:
            self._execute(insert(TABLES[table]), rows, lambda r: None)  # type: ignore[arg-type]

    def insert_ignore(self, table: str, row: dict[str, Any]) -> int:
        """Insert a row unless it conflicts with a unique key; returns 1 if it was inserted."""
        build = pg_insert if self.is_postgresql else sqlite_insert
        table_ = TABLES[table]
        # RETURNING counts what was inserted (psycopg reports no rowcount for ON CONFLICT DO NOTHING).
        stmt = build(table_).values(**row).on_conflict_do_nothing().returning(*table_.primary_key.columns)
        return len(self._execute(stmt, None, lambda r: r.all()))

    def for_update(self, sql: str, *, of: str | None = None) -> str:
        """A ``SELECT`` (inside :meth:`tx`) that claims the rows it returns: ``FOR UPDATE [OF
        of] SKIP LOCKED`` on PostgreSQL (another worker skips them until this transaction ends);
        on SQLite the transaction's ``BEGIN IMMEDIATE`` already excludes every other writer."""
        if not self.is_postgresql:
            return sql
        return f"{sql} FOR UPDATE{f' OF {of}' if of else ''} SKIP LOCKED"

    def try_lock(self, name: str) -> bool:
        """Inside :meth:`tx`: take the named lock for the rest of the transaction unless another
        worker holds it (``pg_try_advisory_xact_lock`` on PostgreSQL; on SQLite the transaction's
        ``BEGIN IMMEDIATE`` already excludes every other writer). Work only one worker should do at
        a time (the retention sweep) is skipped by the others."""
        if not self.is_postgresql:
            return True
        key = int.from_bytes(hashlib.sha256(f"voicecore:{name}".encode()).digest()[:8], "big", signed=True)
        row = self.fetchone("SELECT pg_try_advisory_xact_lock(?)", (key,))
        return bool(row and row[0])

    def lock_row(self, sql: str) -> str:
        """A ``SELECT`` that waits for and locks its rows (``FOR UPDATE`` on PostgreSQL)."""
        return f"{sql} FOR UPDATE" if self.is_postgresql else sql

    # -- schema --------------------------------------------------------------------

    def schema_version(self) -> int:
        """The schema version as the code before Alembic numbered it (4), for old callers."""
        from voicecore.storage.schema import SCHEMA_VERSION

        return SCHEMA_VERSION

    # -- files ---------------------------------------------------------------------

    def files(self) -> list[Path]:
        """The database files (main, -wal, -shm) that exist right now (none for PostgreSQL)."""
        if self.path is None:
            return []
        return [p for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")) if p.exists()]

    def compact(self, *, full: bool = False) -> bool:
        """Leave no deleted bytes behind. SQLite: flush the WAL into the database, rebuild the file
        without free pages, empty the WAL; returns whether the WAL was fully truncated (another
        open reader can prevent it). PostgreSQL: ``VACUUM`` every table (dead row versions pruned),
        with ``full`` (an erasure, a tenant deletion) ``VACUUM (FULL)``, which rewrites each table
        and index into new files, so the deleted rows' bytes leave the data files (not the WAL
        segments that still hold them until they are recycled); returns ``True``."""
        if self.is_postgresql:
            vacuum = "VACUUM (FULL)" if full else "VACUUM"
            with self.lock, self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for name in TABLES:
                    conn.exec_driver_sql(f'{vacuum} "{name}"')
            return True
        with self.lock:
            self.sqlite.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.sqlite.conn.execute("VACUUM")
            busy, _log, _done = self.sqlite.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert self.path is not None
        wal = Path(f"{self.path}-wal")
        truncated = busy == 0 and (not wal.exists() or wal.stat().st_size == 0)
        if not truncated:
            logger.warning(
                "WAL checkpoint was blocked by another connection; deleted bytes may remain until the next sweep"
            )
        return truncated
