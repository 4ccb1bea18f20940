"""What every ``voicecore`` verb shares: options, the data directory's Store, errors as one line, JSON output.

Library errors (unknown tenant, invalid phone number, an invalid policy field, a
database or keystore problem) become one-line messages naming what was wrong,
and exit status 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError

from voicecore.config import (
    ConfigError,
    PipelineConfig,
    load_pipeline,
    resolve_pipeline_path,
)
from voicecore.policy.models import PolicyError
from voicecore.policy.phone import InvalidPhoneNumber
from voicecore.storage import (
    DATABASE_URL_ENV,
    DB_FILENAME,
    CryptoError,
    StorageError,
    Store,
    UnknownTenant,
    default_data_dir,
    safe_url,
)

F = TypeVar("F", bound=Callable[..., Any])

#: Who the audit log names for everything done from the command line.
ACTOR = "cli"


def setup_logging(verbose: int = 0) -> None:
    """INFO by default (model loading progress, call start/end — never call content); keys,
    tokens and secrets are redacted from every line (:mod:`voicecore.server.logs`)."""
    from voicecore.server.logs import setup_logging as setup

    setup(os.environ.get("VOICECORE_LOG_LEVEL") or ("DEBUG" if verbose >= 1 else "INFO"))


def load_pipeline_or_fail(pipeline: str) -> PipelineConfig:
    try:
        return load_pipeline(resolve_pipeline_path(pipeline))
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def model_pool() -> Any:
    from voicecore.model_pool import ModelPool

    try:
        return ModelPool()
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


_DATABASE_URL_KEY = "voicecore.database_url"


def _remember_database_url(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    ctx.meta[_DATABASE_URL_KEY] = value or None


def database_url_option(f: F) -> F:
    """``--database-url URL`` (or ``$VOICECORE_DATABASE_URL``): PostgreSQL (``postgresql://user:password@host:port/db``)
    instead of the data directory's SQLite file. Kept in the click context for :func:`open_store`, so a verb
    that takes ``--data-dir`` takes it too without a parameter of its own."""
    return click.option(
        "--database-url",
        envvar=DATABASE_URL_ENV,
        default=None,
        metavar="URL",
        expose_value=False,
        is_eager=True,
        callback=_remember_database_url,
        help="Database: postgresql://user:password@host:port/db (or $VOICECORE_DATABASE_URL). "
        "Default: the SQLite file in the data directory.",
    )(f)


def database_url() -> str | None:
    """The ``--database-url`` of the running command (``None``: the data directory's SQLite file)."""
    ctx = click.get_current_context(silent=True)
    value = ctx.meta.get(_DATABASE_URL_KEY) if ctx is not None else None
    return value or None


def data_dir_option(f: F) -> F:
    """``--data-dir DIR``: the data directory (default ``$VOICECORE_DATA_DIR``, else ``./storage``);
    with it ``--database-url`` (:func:`database_url_option`)."""
    return database_url_option(click.option(
        "--data-dir",
        "data_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Data directory (database, keystore, recordings). Default: $VOICECORE_DATA_DIR, else ./storage.",
    )(f))  # fmt: skip


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")(f)


def tenant_option(*, required: bool) -> Callable[[F], F]:
    if required:
        return click.option("--tenant", "tenant", required=True, help="Tenant whose data this is.")
    return click.option("--tenant", "tenant", default="default", show_default=True, help="Tenant whose data this is.")


def resolve_data_dir(data_dir: Path | None) -> Path:
    return data_dir if data_dir is not None else default_data_dir()


@contextlib.contextmanager
def open_store(data_dir: Path | None, *, create: bool = False, phone: str | None = None) -> Iterator[Store]:
    """The data directory's Store for one command; library errors become one-line ClickExceptions.

    Without ``create`` a data directory that holds no database is an error (a mistyped
    ``--data-dir`` must not silently create an empty store)."""
    path = resolve_data_dir(data_dir)
    url = database_url()
    if url is None and not create and not (path / DB_FILENAME).exists():
        raise click.ClickException(
            f"no voicecore database in {path} ({DB_FILENAME} not found); create a tenant first with "
            f"`voicecore tenants add NAME --data-dir {path}`, or pass the right --data-dir / VOICECORE_DATA_DIR"
        )
    where = f"the data directory {path}" if url is None else safe_url(url)
    try:
        store = Store(path, database_url=url or "")
    except StorageError as e:
        raise click.ClickException(str(e)) from None
    except (CryptoError, SQLAlchemyError, OSError) as e:
        raise click.ClickException(f"cannot open {where}: {e}") from None
    try:
        with translate_errors(path, phone=phone):
            yield store
    finally:
        store.close()


@contextlib.contextmanager
def translate_errors(data_dir: Path, *, phone: str | None = None) -> Iterator[None]:
    try:
        yield
    except UnknownTenant as e:
        raise click.ClickException(
            f"unknown tenant {e.name!r} in {data_dir}; `voicecore tenants list` shows the tenants there"
        ) from None
    except InvalidPhoneNumber as e:
        raise click.ClickException(f"invalid phone number {phone!r}: {e}") from None
    except PolicyError as e:
        raise click.ClickException(f"invalid policy: {e}") from None
    except (StorageError, CryptoError) as e:
        raise click.ClickException(str(e)) from None
    except SQLAlchemyError as e:
        raise click.ClickException(f"database error in {data_dir}: {getattr(e, 'orig', None) or e}") from None
    except OSError as e:
        raise click.ClickException(str(e)) from None


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def parse_when(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """An ISO 8601 date or date-time (naive means UTC)."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date/time (e.g. 2025-06-01 or 2025-06-01T09:30:00Z)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def confirm(yes: bool, question: str) -> None:
    if not yes:
        click.confirm(question, abort=True)


def write_text_output(text: str, output: Path | None, what: str) -> None:
    """A command's CSV (or other text) to stdout, or to ``output`` (mode 0600: it holds personal data),
    saying on stderr how many ``what`` lines it holds."""
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text, encoding="utf-8")
    output.chmod(0o600)
    click.echo(f"{max(0, text.count(chr(10)) - 1)} {what} written to {output}", err=True)
