"""Schema migrations with Alembic: what revision a database is at, and bringing it to head.

The revisions ship inside the package (:mod:`voicecore.storage.migrations`). ``0001`` is the
schema version 4 of the code before Alembic: a SQLite file that code made (``PRAGMA
user_version`` 4, no ``alembic_version`` table) is recognised and stamped at ``0001`` — its
data kept — and one at an older ``user_version`` is first brought to 4 by the old in-code
migrations (:data:`voicecore.storage.schema.MIGRATIONS`).

What opening a store does (:func:`prepare`): an empty database is created at head (so a
fresh machine needs no extra step; on PostgreSQL under an advisory lock, so workers starting
together create it once); a database at head is used as it is; anything older is refused with
a :class:`~voicecore.storage.database.StorageError` naming the command that upgrades it
(``voicecore db upgrade``), so several workers never race a schema change; a database newer
than this code is refused too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from loguru import logger
from sqlalchemy import Connection, inspect

from voicecore.storage.database import Database, StorageError, safe_url
from voicecore.storage.schema import MIGRATIONS, SCHEMA_VERSION

#: The revision a pre-Alembic database at ``PRAGMA user_version`` 4 is stamped at.
BASELINE = "0001"
#: pg_advisory_lock key held while a PostgreSQL schema is created or upgraded ("vcschema").
_PG_SCHEMA_LOCK = 0x7663736368656D61


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("voicecore.storage") / "migrations"))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands: ``empty``, ``legacy`` (pre-Alembic SQLite at ``user_version``
    ``legacy_version``), ``behind``, ``current`` or ``ahead`` of this code's head revision."""

    status: str
    revision: str | None
    head: str
    legacy_version: int | None = None


def _user_version(conn: Connection) -> int:
    return int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)


def _state(conn: Connection) -> SchemaState:
    head = head_revision()
    tables = set(inspect(conn).get_table_names())
    if conn.dialect.name == "sqlite":
        uv = _user_version(conn)
        if uv > SCHEMA_VERSION:
            return SchemaState("ahead", f"user_version {uv}", head, uv)
    if "alembic_version" not in tables:
        if not tables:
            return SchemaState("empty", None, head)
        if conn.dialect.name == "sqlite" and "tenants" in tables:
            return SchemaState("legacy", None, head, _user_version(conn))
        raise StorageError(
            "the database holds tables but no voicecore schema revision (alembic_version); "
            "it is not a voicecore database, or was made by something else"
        )
    rev = MigrationContext.configure(conn).get_current_revision()
    script = ScriptDirectory.from_config(alembic_config())
    if rev == head:
        return SchemaState("current", rev, head)
    if rev is None:
        return SchemaState("empty", None, head)
    try:
        script.get_revision(rev)
    except Exception:  # noqa: BLE001 - alembic raises several kinds for an unknown revision
        return SchemaState("ahead", rev, head)
    return SchemaState("behind", rev, head)


def state(db: Database) -> SchemaState:
    with db.lock, db.engine.connect() as conn:
        return _state(conn)


def current(db: Database) -> str | None:
    """The Alembic revision the database is at (``None``: empty or pre-Alembic)."""
    return state(db).revision


@contextlib.contextmanager
def _schema_connection(db: Database) -> Iterator[Connection]:
    """A connection for schema work, in one transaction: ``BEGIN IMMEDIATE`` on SQLite; on
    PostgreSQL under an advisory lock, so concurrent upgrades run one after the other."""
    with db.lock, db.engine.connect().execution_options(voicecore_write=True) as conn:
        with conn.begin():
            if db.is_postgresql:
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_SCHEMA_LOCK})")
            yield conn


def _run_alembic(conn: Connection, target: str, *, stamp: bool = False) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    if stamp:
        command.stamp(cfg, target)
    else:
        command.upgrade(cfg, target)


def upgrade(db: Database) -> tuple[str | None, str]:
    """Bring the database to head: create an empty one, stamp a pre-Alembic SQLite file at the
    baseline (after the old migrations up to version 4), run the revisions. Returns (from, to)."""
    with _schema_connection(db) as conn:
        st = _state(conn)
        if st.status == "ahead":
            raise StorageError(_newer_message(db, st))
        before = st.revision
        if st.status == "legacy":
            version = st.legacy_version or 0
            if version < 1:
                raise StorageError(f"{db.describe()}: pre-Alembic database without a schema version; not upgraded")
            while version < SCHEMA_VERSION:
                for statement in MIGRATIONS[version]:
                    conn.exec_driver_sql(statement)
                version += 1
                conn.exec_driver_sql(f"PRAGMA user_version={version}")
            logger.info("storage: pre-Alembic schema version {} recognised, stamped at {}", version, BASELINE)
            _run_alembic(conn, BASELINE, stamp=True)
            before = f"user_version {st.legacy_version}"
        if st.status != "current":
            _run_alembic(conn, "head")
            if db.is_sqlite:
                # Older voicecore reads user_version: 4 tells it the tables exist (it must not rebuild them).
                conn.exec_driver_sql(f"PRAGMA user_version={SCHEMA_VERSION}")
        after = MigrationContext.configure(conn).get_current_revision() or st.head
    if before != after:
        logger.info("storage schema at revision {} (was {})", after, before or "empty")
    return before, after


def upgrade_command(db: Database) -> str:
    """The command that upgrades this database, as it may be shown (password masked)."""
    if db.is_sqlite and db.path is not None and db.path.name == "voicecore.db":
        return f"voicecore db upgrade --data-dir {db.path.parent}"
    return f"voicecore db upgrade --database-url {safe_url(db.url)}"


def _newer_message(db: Database, st: SchemaState) -> str:
    return (
        f"{db.describe()}: database schema {st.revision} is newer than this voicecore understands "
        f"(head {st.head}); upgrade voicecore"
    )


def prepare(db: Database) -> SchemaState:
    """Check the schema before a store is used: create an empty database at head; refuse one
    that is older (naming the command to run) or newer than this code."""
    st = state(db)
    if st.status == "current":
        return st
    if st.status == "empty":
        upgrade(db)
        return state(db)
    if st.status == "ahead":
        raise StorageError(_newer_message(db, st))
    was = f"pre-Alembic schema version {st.legacy_version}" if st.status == "legacy" else f"revision {st.revision}"
    raise StorageError(
        f"{db.describe()}: database schema is at {was}, this voicecore needs revision {st.head}; "
        f"run `{upgrade_command(db)}` first (back up the database before)"
    )
