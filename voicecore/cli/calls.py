"""``voicecore calls list | show``: the stored calls of a tenant."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from voicecore.cli.options import (
    ACTOR,
    data_dir_option,
    echo_json,
    json_option,
    open_store,
    parse_when,
    tenant_option,
)
from voicecore.views import call_detail, call_text, call_view, calls_table, report_view


@click.group()
def calls() -> None:
    """List stored calls and show one: transcript, per-turn latency, end reason, report."""


@calls.command("list")
@tenant_option(required=False)
@click.option("--since", callback=parse_when, metavar="ISO",
              help="Only calls started at or after this ISO 8601 date/time (UTC unless it has an offset).")
@click.option("--phone", help="Only calls from or to this number.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True, help="At most this many calls.")
@data_dir_option
@json_option
def calls_list(tenant: str, since: datetime | None, phone: str | None, limit: int, data_dir: Path | None,
               as_json: bool) -> None:  # fmt: skip
    """List a tenant's calls, newest first (metadata only, no transcript). Audited."""
    with open_store(data_dir, phone=phone) as store:
        items = store.calls.list(tenant, actor=ACTOR, since=since, phone=phone, limit=limit)
    if as_json:
        echo_json([call_view(c) for c in items])
        return
    if not items:
        click.echo(f"No calls stored for tenant {tenant}.")
        return
    click.echo(calls_table(items))


@calls.command("show")
@click.argument("call_id")
@tenant_option(required=False)
@data_dir_option
@json_option
def calls_show(call_id: str, tenant: str, data_dir: Path | None, as_json: bool) -> None:
    """Show call CALL_ID: transcript (barge-in cuts marked), per-turn latency in ms after the end
    of caller speech (STT final, LLM first token, first clause, first audio out), end reason,
    duration, transport and the post-call report. Reading the transcript is audited."""
    with open_store(data_dir) as store:
        call = store.calls.get(tenant, call_id, actor=ACTOR, include_transcript=True)
        if call is None:
            raise click.ClickException(f"call {call_id} not found for tenant {tenant}")
        stored = store.calls.get_report(tenant, call_id, actor=ACTOR)
    report = report_view(stored) if stored is not None else None
    if as_json:
        echo_json(call_detail(call, report))
        return
    click.echo(call_text(call, report))
