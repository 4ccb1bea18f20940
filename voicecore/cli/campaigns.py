"""``voicecore campaigns``: outbound campaigns (the same calls as ``/v1/campaigns``).

``create NAME --tenant T --pipeline P --segment S --from NUMBER --provider twilio|telnyx|vonage|plivo|asterisk
[--window "mon-fri 10:00-13:00,14:00-20:00" | --window fr-prospecting | --window us-tcpa] [--max-concurrent N]
[--max-attempts N] [--retry-after 2h] [--start ISO] [--machine hangup|voicemail --voicemail TEXT]``, then
``start``, ``pause``, ``resume``, ``status``, ``export``, ``list``. The dialer runs inside ``serve``.
"""

from __future__ import annotations

import re
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
    write_text_output,
)
from voicecore.storage.campaigns import DIAL_PROVIDERS, MACHINE_ACTIONS
from voicecore.views import text_table, utc_text

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d)?\s*$")


def parse_duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """``90s``, ``15m``, ``2h``, ``1d`` (a bare number is seconds)."""
    if value is None:
        return None
    m = _DURATION.match(value)
    if not m:
        raise click.BadParameter(f"{value!r}: a duration like 90s, 15m, 2h or 1d", ctx=ctx, param=param)
    return float(m.group(1)) * {"s": 1, None: 1, "m": 60, "min": 60, "h": 3600, "d": 86400}[m.group(2)]


@click.group()
def campaigns() -> None:
    """Outbound campaigns: a segment of contacts called through a provider within a calling window."""


@campaigns.command("create")
@click.argument("name")
@tenant_option(required=True)
@click.option("--pipeline", required=True, help="The agent that talks (a pipeline name).")
@click.option("--segment", required=True, help="The contacts to call (contacts import --segment).")
@click.option("--from", "from_number", required=True, help="The number the calls come from (yours, at the provider).")
@click.option("--provider", type=click.Choice(DIAL_PROVIDERS), required=True)
@click.option("--window", default="us-tcpa", show_default=True,
              help="When the callee may be called, in their own time zone(s): a spec like "
                   "'mon-fri 10:00-13:00,14:00-20:00; no-holidays' or a preset (fr-prospecting, us-tcpa).")
@click.option("--max-concurrent", type=click.IntRange(1, 1000), default=1, show_default=True)
@click.option("--max-attempts", type=click.IntRange(1, 50), default=3, show_default=True)
@click.option("--retry-after", callback=parse_duration, default="2h", show_default=True,
              help="Wait after a busy, unanswered or failed attempt (90s, 15m, 2h, 1d).")
@click.option("--start", "start_at", callback=parse_when, help="Dial nobody before this time (ISO 8601).")
@click.option("--machine", "machine_action", type=click.Choice(MACHINE_ACTIONS), default="hangup", show_default=True,
              help="What to do when a machine answers.")
@click.option("--voicemail", help="The message left on a machine (--machine voicemail).")
@data_dir_option
@json_option
def campaigns_create(name: str, tenant: str, pipeline: str, segment: str, from_number: str, provider: str,
                     window: str, max_concurrent: int, max_attempts: int, retry_after: float,
                     start_at: datetime | None, machine_action: str, voicemail: str | None, data_dir: Path | None,
                     as_json: bool) -> None:  # fmt: skip
    """Create campaign NAME (a draft: `campaigns start NAME` dials)."""
    with open_store(data_dir) as store:
        c = store.campaigns.create(
            tenant, name, pipeline=pipeline, segment=segment, from_number=from_number, provider=provider,
            window=window, max_concurrent=max_concurrent, max_attempts=max_attempts, retry_after_s=retry_after,
            start_at=start_at.timestamp() if start_at else None, machine_action=machine_action, voicemail=voicemail,
            actor=ACTOR,
        )  # fmt: skip
    if as_json:
        echo_json(c.to_dict())
        return
    click.echo(f"Campaign {name} created for tenant {tenant} (draft): segment {segment}, {provider} from "
               f"{c.from_number}, window {window!r}. Start it with: voicecore campaigns start {name} --tenant {tenant}")


def _simple(verb: str, help_text: str):  # type: ignore[no-untyped-def]
    @campaigns.command(verb, help=help_text)
    @click.argument("name")
    @tenant_option(required=True)
    @data_dir_option
    def command(name: str, tenant: str, data_dir: Path | None) -> None:
        with open_store(data_dir) as store:
            if verb == "pause":
                store.campaigns.pause(tenant, name, actor=ACTOR)
                click.echo(f"Campaign {name} paused (calls in progress go on).")
            else:
                joined = store.campaigns.start(tenant, name, actor=ACTOR)
                click.echo(f"Campaign {name} running: {joined} contact(s) joined; the dialer of `voicecore serve` "
                           "calls them.")

    return command


_simple("start", "Run campaign NAME: its segment's contacts join it and the dialer in `serve` calls them.")
_simple("resume", "Run a paused campaign again (contacts added to its segment meanwhile join it).")
_simple("pause", "Stop dialing campaign NAME (calls in progress go on).")


@campaigns.command("list")
@tenant_option(required=True)
@data_dir_option
@json_option
def campaigns_list(tenant: str, data_dir: Path | None, as_json: bool) -> None:
    """Tenant T's campaigns."""
    with open_store(data_dir) as store:
        got = store.campaigns.list(tenant)
    if as_json:
        echo_json([c.to_dict() for c in got])
        return
    click.echo(text_table(["name", "status", "segment", "provider", "window", "created (UTC)"],
                          [[c.name, c.status, c.segment, c.provider, c.window, utc_text(c.created_at)] for c in got])
               if got else f"Tenant {tenant} has no campaign.")  # fmt: skip


@campaigns.command("status")
@click.argument("name")
@tenant_option(required=True)
@data_dir_option
@json_option
def campaigns_status(name: str, tenant: str, data_dir: Path | None, as_json: bool) -> None:
    """Where campaign NAME stands: contacts by status and outcome, why the waiting ones wait."""
    with open_store(data_dir) as store:
        st = store.campaigns.status(tenant, name)
    if as_json:
        echo_json(st.to_dict())
        return
    c = st.campaign
    click.echo(f"Campaign {c.name}: {c.status}" + (f" ({c.paused_reason})" if c.paused_reason else ""))
    click.echo(f"  {st.contacts} contact(s): " + ", ".join(f"{n} {k}" for k, n in sorted(st.by_status.items())))
    click.echo(f"  {st.attempts} attempt(s), {st.in_flight} in progress")
    if st.by_outcome:
        click.echo("  outcomes: " + ", ".join(f"{n} {k}" for k, n in sorted(st.by_outcome.items())))
    if st.waiting:
        click.echo("  waiting: " + ", ".join(f"{n} {k}" for k, n in sorted(st.waiting.items())))
    if st.next_due_at:
        click.echo(f"  next dial due at {utc_text(st.next_due_at)} UTC")


@campaigns.command("export")
@click.argument("name")
@tenant_option(required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here (default: stdout).")
@data_dir_option
def campaigns_export(name: str, tenant: str, output: Path | None, data_dir: Path | None) -> None:
    """One CSV line per contact: attempts, outcome, call id, the report's need and appointment slot."""
    with open_store(data_dir) as store:
        text = store.campaigns.export_csv(tenant, name, actor=ACTOR)
    write_text_output(text, output, "contact(s)")
