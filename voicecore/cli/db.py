"""``voicecore db``: the database schema (Alembic revisions shipped in the package).

- ``db upgrade [--database-url URL | --data-dir DIR]`` brings the database to the revision this
  voicecore needs: creates an empty one, recognises a SQLite file made before Alembic (schema
  version 4 or older) and keeps its data; run it once, before starting the new ``serve`` workers;
- ``db current`` says which revision the database is at and whether it is the one needed.

``serve`` and the other verbs refuse a database at an older revision and name this command.
"""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy.exc import SQLAlchemyError

from voicecore.cli.options import (
    data_dir_option,
    database_url,
    echo_json,
    json_option,
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
