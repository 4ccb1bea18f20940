"""``voicecore db``: the database schema (Alembic revisions shipped in the package).

- ``db upgrade [--database-url URL | --data-dir DIR]`` brings the database to the revision this
  voicecore needs: creates an empty one, recognises a SQLite file made before Alembic (schema
  version 4 or older) and keeps its data; run it once, before starting the new ``serve`` workers;
- ``db current`` says which revision the database is at and whether it is the one needed;
- ``db workers`` lists the ``serve`` workers holding a lease, and the calls each holds open.

``serve`` and the other verbs refuse a database at an older revision and name this command.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import click
from sqlalchemy.exc import SQLAlchemyError

from voicecore.cli.options import (
    data_dir_option,
    database_url,
    echo_json,
    json_option,
    open_store,
    resolve_data_dir,
)
from voicecore.storage import StorageError, migrate
from voicecore.storage.database import Database
from voicecore.storage.database import database_url as resolve_url


def _database(data_dir: Path | None) -> Database:
    url = database_url()
    path = resolve_data_dir(data_dir)
    if url is None:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        return Database(resolve_url(url, path))
    except StorageError as e:
        raise click.ClickException(str(e)) from None


@click.group()
def db() -> None:
    """Database schema: `db upgrade` before starting a new version, `db current` to check."""


@db.command("upgrade")
@data_dir_option
@json_option
def upgrade(data_dir: Path | None, as_json: bool) -> None:
    """Upgrade the database schema to this voicecore's revision (data kept)."""
    database = _database(data_dir)
    try:
        before, after = migrate.upgrade(database)
    except (StorageError, SQLAlchemyError) as e:
        raise click.ClickException(f"{database.describe()}: upgrade failed: {getattr(e, 'orig', None) or e}") from None
    finally:
        database.close()
    if as_json:
        echo_json({"database": database.describe(), "from": before, "to": after})
    elif before == after:
        click.echo(f"{database.describe()}: already at revision {after}")
    else:
        click.echo(f"{database.describe()}: upgraded from {before or 'an empty database'} to revision {after}")


@db.command("current")
@data_dir_option
@json_option
def current(data_dir: Path | None, as_json: bool) -> None:
    """The database's schema revision and this voicecore's (exit status 1 if an upgrade is needed)."""
    database = _database(data_dir)
    try:
        st = migrate.state(database)
    except (StorageError, SQLAlchemyError) as e:
        raise click.ClickException(f"{database.describe()}: {getattr(e, 'orig', None) or e}") from None
    finally:
        database.close()
    revision = st.revision or (f"pre-Alembic schema version {st.legacy_version}" if st.status == "legacy" else None)
    if as_json:
        echo_json({"database": database.describe(), "revision": revision, "head": st.head, "status": st.status})
    else:
        click.echo(f"{database.describe()}: revision {revision or '(empty)'}, this voicecore needs {st.head} ({st.status})")
    if st.status not in ("current",):
        raise SystemExit(1)


@db.command("workers")
@data_dir_option
@click.option("--all", "include_gone", is_flag=True, help="Also the workers that stopped or were lost.")
@json_option
def workers(data_dir: Path | None, include_gone: bool, as_json: bool) -> None:
    """The `serve` workers holding a lease on this database, and the calls each holds open."""
    with open_store(data_dir) as store:
        leases = store.workers.list(include_gone=include_gone)
        open_calls = store.calls.open_calls()
    held = {w.id: sum(1 for _t, _c, wid in open_calls if wid == w.id) for w in leases}
    now = time.time()
    if as_json:
        echo_json([{**dataclasses.asdict(w), "open_calls": held[w.id]} for w in leases])
        return
    if not leases:
        click.echo("no worker holds a lease" + ("" if include_gone else " (--all: also stopped and lost ones)"))
    for w in leases:
        expiry = w.lease_expires_at - now
        lease = f"lease {expiry:.0f} s left" if expiry >= 0 else f"lease ran out {-expiry:.0f} s ago"
        closed = f", {w.state} by {w.closed_by}" if w.state == "lost" else ""
        click.echo(f"{w.id}  {w.state:<8}  {w.host} pid {w.pid}  {lease}{closed}  open calls: {held[w.id]}")
