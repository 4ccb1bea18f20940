"""``voicecore contacts``: a tenant's contacts for outbound calls (the same calls as ``/v1/contacts``).

- ``contacts import FILE.csv --tenant T [--map column=field ...] [--segment NAME]``: every good
  line stored once (numbers already there are merged), every bad line named with its number
  and why; exit status 1 only when the file as a whole is unusable (then nothing is stored);
- ``contacts list [--segment NAME]``, ``contacts show PHONE``, ``contacts delete PHONE``,
  ``contacts export [--segment NAME] [-o FILE]``, ``contacts segments``.
"""

from __future__ import annotations

from pathlib import Path

import click

from voicecore.cli.options import (
    ACTOR,
    confirm,
    data_dir_option,
    echo_json,
    json_option,
    open_store,
    tenant_option,
    write_text_output,
)
from voicecore.outbound.contacts_csv import ContactFileError, parse_mapping
from voicecore.views import text_table, utc_text

MAX_SHOWN_REJECTS = 50


@click.group()
def contacts() -> None:
    """Import, list, show, export and delete a tenant's contacts (for outbound campaigns)."""


@contacts.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@tenant_option(required=True)
@click.option("--map", "maps", multiple=True, metavar="COLUMN=FIELD",
              help="Which field a column is: phone, name, first_name, last_name, email, company, or var:NAME. "
                   "Repeatable. Columns named like the fields need none.")
@click.option("--segment", help="Put every contact of the file in this segment (campaigns call a segment).")
@data_dir_option
@json_option
def contacts_import(file: Path, tenant: str, maps: tuple[str, ...], segment: str | None, data_dir: Path | None,
                    as_json: bool) -> None:  # fmt: skip
    """Import the contacts of FILE (CSV: a header line, a phone column; UTF-8 or Latin-1, ',' ';' or tab)."""
    try:
        mapping = parse_mapping(maps)
    except ContactFileError as e:
        raise click.BadParameter(str(e), param_hint="--map") from None
    data = file.read_bytes()
    with open_store(data_dir) as store:
        try:
            result = store.contacts.import_file(tenant, data, mapping=mapping, segment=segment, actor=ACTOR)
        except ContactFileError as e:
            raise click.ClickException(f"{file}: {e}; nothing was imported") from None
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(f"{file}: {result.data_lines} line(s) read; {result.created} contact(s) created, {result.updated} "
               f"updated, {result.merged_lines} line(s) merged into an earlier one with the same number, "
               f"{len(result.rejected)} rejected ({result.seconds:.2f} s)"
               + (f"; segment {segment!r}" if segment else ""))  # fmt: skip
    for r in result.rejected[:MAX_SHOWN_REJECTS]:
        click.echo(f"  {r}")
    if len(result.rejected) > MAX_SHOWN_REJECTS:
        click.echo(f"  ... and {len(result.rejected) - MAX_SHOWN_REJECTS} more (--json lists them all)")


@contacts.command("list")
@tenant_option(required=True)
@click.option("--segment", help="Only the contacts of this segment.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(min=0, max=10_000_000), default=0)
@data_dir_option
@json_option
def contacts_list(tenant: str, segment: str | None, limit: int, offset: int, data_dir: Path | None,
                  as_json: bool) -> None:  # fmt: skip
    """List tenant T's contacts, oldest first."""
    with open_store(data_dir) as store:
        got = store.contacts.list(tenant, segment=segment, limit=limit, offset=offset, actor=ACTOR)
    if as_json:
        echo_json([c.to_dict() for c in got])
        return
    if not got:
        click.echo(f"No contacts for tenant {tenant}" + (f" in segment {segment!r}." if segment else "."))
        return
    click.echo(text_table(["phone", "name", "segments", "added (UTC)"],
                          [[c.phone, c.fields.get("name") or " ".join(filter(None, (c.fields.get("first_name"),
                                                                                    c.fields.get("last_name")))),
                            ",".join(c.segments), utc_text(c.created_at)] for c in got]))  # fmt: skip


@contacts.command("show")
@click.argument("phone")
@tenant_option(required=True)
@data_dir_option
@json_option
def contacts_show(phone: str, tenant: str, data_dir: Path | None, as_json: bool) -> None:
    """Show the contact for PHONE."""
    with open_store(data_dir, phone=phone) as store:
        c = store.contacts.get(tenant, phone, actor=ACTOR)
    if c is None:
        raise click.ClickException(f"tenant {tenant} has no contact for {phone}")
    if as_json:
        echo_json(c.to_dict())
        return
    click.echo(f"{c.phone}  (segments: {', '.join(c.segments) or 'none'}; expires {utc_text(c.expires_at)} UTC)")
    for k, v in c.fields.items():
        click.echo(f"  {k}: {v}")


@contacts.command("delete")
@click.argument("phone")
@tenant_option(required=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@data_dir_option
def contacts_delete(phone: str, tenant: str, yes: bool, data_dir: Path | None) -> None:
    """Delete the contact for PHONE (its calls and opt-out stay; `subjects erase` removes everything)."""
    confirm(yes, f"Delete the contact {phone} of tenant {tenant}?")
    with open_store(data_dir, phone=phone) as store:
        if not store.contacts.delete(tenant, phone, actor=ACTOR):
            raise click.ClickException(f"tenant {tenant} has no contact for {phone}")
    click.echo(f"Contact {phone} deleted.")


@contacts.command("export")
@tenant_option(required=True)
@click.option("--segment", help="Only the contacts of this segment.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here (default: stdout).")
@data_dir_option
def contacts_export(tenant: str, segment: str | None, output: Path | None, data_dir: Path | None) -> None:
    """Export tenant T's contacts as CSV (phone, the known fields, the other columns, segments)."""
    with open_store(data_dir) as store:
        text = store.contacts.export_csv(tenant, segment=segment, actor=ACTOR)
    write_text_output(text, output, "contact(s)")


@contacts.command("segments")
@tenant_option(required=True)
@data_dir_option
@json_option
def contacts_segments(tenant: str, data_dir: Path | None, as_json: bool) -> None:
    """The segments of tenant T's contacts and how many contacts each holds."""
    with open_store(data_dir) as store:
        got = store.contacts.segments(tenant)
    if as_json:
        echo_json(got)
        return
    click.echo(text_table(["segment", "contacts"], [[k, str(v)] for k, v in got.items()]) if got else "No segments.")
