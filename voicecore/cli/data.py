"""``voicecore tenants | subjects | optout | retention | audit | policy``: the tenants' data.

Each verb opens the data directory's :class:`~voicecore.storage.Store` once, makes one
call into a repository (the same call the HTTP API and the tests make; the repository
audits itself with actor ``cli``) and prints the result as a table or, with ``--json``,
as the JSON of :mod:`voicecore.views`. Errors become a one-line message naming what was
wrong (unknown tenant, invalid phone number, the policy field) and exit status 1.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import click

from voicecore.cli.options import (
    ACTOR,
    confirm,
    data_dir_option,
    echo_json,
    json_option,
    open_store,
    parse_when,
    tenant_option,
)
from voicecore.policy.models import PolicyError, load_policy
from voicecore.session import outbound_check
from voicecore.storage import ROLES, UnknownTenant
from voicecore.views import (
    api_key_view,
    audit_view,
    export_view,
    optout_view,
    plain_view,
    tenant_view,
    text_table,
    utc_text,
)

# --------------------------------------------------------------------------- tenants


@click.group()
def tenants() -> None:
    """Create, list and delete tenants; manage their policy and API keys."""


@tenants.command("add")
@click.argument("name")
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Policy YAML file (default: the privacy-first default policy).")
@click.option("--role", type=click.Choice(ROLES), default="admin", show_default=True,
              help="Role of the first API key.")
@data_dir_option
@json_option
def tenants_add(name: str, policy_file: Path | None, role: str, data_dir: Path | None, as_json: bool) -> None:
    """Create tenant NAME and print its first API key — shown only this once (only a hash is stored).

    The data directory is created if it does not exist yet.
    """
    with open_store(data_dir, create=True) as store:
        api_key = store.tenants.create(name, policy_file, role=role, actor=ACTOR)
        policy_name = store.tenants.policy(name).name
    if as_json:
        echo_json({"tenant": name, "api_key": api_key})
        return
    click.echo(f"Created tenant {name} (policy {policy_name}).")
    click.echo(f"API key ({role}) — shown only this once, store it now:")
    click.echo(f"  {api_key}")


@tenants.command("list")
@data_dir_option
@json_option
def tenants_list(data_dir: Path | None, as_json: bool) -> None:
    """List the tenants with their policy name and number of active API keys."""
    with open_store(data_dir) as store:
        items = store.tenants.list()
    if as_json:
        echo_json([tenant_view(t) for t in items])
        return
    if not items:
        click.echo("No tenants.")
        return
    click.echo(text_table(["tenant", "policy", "created (UTC)", "active keys"],
                          [[t.name, t.policy_name, utc_text(t.created_at), str(t.active_keys)] for t in items]))


@tenants.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@data_dir_option
def tenants_delete(name: str, yes: bool, data_dir: Path | None) -> None:
    """Delete tenant NAME with all its data and recordings, and destroy its encryption keys."""
    with open_store(data_dir) as store:
        if not store.tenants.exists(name):
            raise UnknownTenant(name)
        confirm(yes, f"Delete tenant {name!r}, all its calls and recordings, and destroy its keys?")
        store.tenants.delete(name, actor=ACTOR)
    click.echo(f"Deleted tenant {name}: its data is removed and its encryption keys destroyed.")


@tenants.command("policy")
@click.argument("name")
@click.option("--set", "new_policy", type=click.Path(dir_okay=False, path_type=Path),
              help="Replace the tenant's policy with this YAML file (validated first; audited).")
@data_dir_option
def tenants_policy(name: str, new_policy: Path | None, data_dir: Path | None) -> None:
    """Print tenant NAME's policy as YAML, or replace it with --set FILE.

    A new policy applies to data written from then on; stored rows keep their expiry.
    """
    with open_store(data_dir) as store:
        if new_policy is None:
            click.echo(store.tenants.policy_yaml(name).rstrip("\n"))
            return
        if not store.tenants.exists(name):
            raise UnknownTenant(name)
        load_policy(new_policy)  # errors name the file and the field
        policy = store.tenants.set_policy(name, new_policy.read_text(encoding="utf-8"), actor=ACTOR)
    click.echo(f"Policy of tenant {name} replaced by {policy.name!r} from {new_policy}.")


@tenants.command("keys")
@click.argument("name")
@data_dir_option
@json_option
def tenants_keys(name: str, data_dir: Path | None, as_json: bool) -> None:
    """List tenant NAME's API keys (id, role, label, created, revoked) — never the secrets."""
    with open_store(data_dir) as store:
        keys = store.tenants.api_keys(name)
    if as_json:
        echo_json([api_key_view(k) for k in keys])
        return
    if not keys:
        click.echo(f"Tenant {name} has no API keys.")
        return
    click.echo(text_table(["key id", "role", "label", "created (UTC)", "revoked (UTC)"],
                          [[k.key_id, k.role, k.label or "", utc_text(k.created_at),
                            utc_text(k.revoked_at) if k.revoked_at else ""] for k in keys]))


@tenants.command("key-add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True,
              help="admin: everything in the tenant; agent: take calls (media streams, WebRTC, provider "
                   "webhooks) and nothing else; analyst: calls, transcripts, reports, exports; viewer: call "
                   "metadata only.")
@click.option("--label", help="A note to tell keys apart (e.g. who holds it).")
@data_dir_option
@json_option
def tenants_key_add(name: str, role: str, label: str | None, data_dir: Path | None, as_json: bool) -> None:
    """Create another API key for tenant NAME; the key is printed only this once."""
    with open_store(data_dir) as store:
        api_key = store.tenants.create_api_key(name, role=role, label=label, actor=ACTOR)
    key_id = api_key.split("_")[1]
    if as_json:
        echo_json({"tenant": name, "key_id": key_id, "role": role, "api_key": api_key})
        return
    click.echo(f"API key {key_id} ({role}) for tenant {name} — shown only this once, store it now:")
    click.echo(f"  {api_key}")


@tenants.command("key-revoke")
@click.argument("name")
@click.argument("key_id")
@data_dir_option
def tenants_key_revoke(name: str, key_id: str, data_dir: Path | None) -> None:
    """Revoke API key KEY_ID of tenant NAME (see `voicecore tenants keys NAME`)."""
    with open_store(data_dir) as store:
        if not store.tenants.revoke_api_key(name, key_id, actor=ACTOR):
            raise click.ClickException(f"tenant {name!r} has no active API key {key_id!r}")
    click.echo(f"Revoked API key {key_id} of tenant {name}.")


# --------------------------------------------------------------------------- data subjects


@click.group()
def subjects() -> None:
    """Data-subject rights for one phone number at one tenant: export, erase, restrict."""


PLAINTEXT_WARNING = (
    "Warning: {path} holds the subject's data in plaintext, outside voicecore: retention and erasure "
    "do not reach it. Hand it over, then delete it."
)


@subjects.command("export")
@click.argument("phone")
@tenant_option(required=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write a plaintext copy in a new folder under this directory instead (not covered by "
                   "retention or erasure; a warning says so).")
@data_dir_option
@json_option
def subjects_export(phone: str, tenant: str, out_dir: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """Export everything tenant T holds about PHONE (calls, turns, reports, contacts, opt-out and
    restriction status, recordings). Kept in the store, encrypted with the tenant's key, for 7 days
    (retention and the subject's erasure delete it); `subjects export-get` writes it out. Audited."""
    with open_store(data_dir, phone=phone) as store:
        if out_dir is None:
            info = store.subjects.store_export(tenant, phone, actor=ACTOR)
            if as_json:
                echo_json({"tenant": tenant, **export_view(info)})
                return
            click.echo(f"Stored export {info.export_id} of {info.subject} at tenant {tenant} (encrypted, "
                       f"{info.bytes} bytes, until {utc_text(info.expires_at)}).")
            click.echo(f"Write it out with: voicecore subjects export-get {info.export_id} --tenant {tenant} --out DIR")
            return
        target = store.subjects.export(tenant, phone, out_dir, actor=ACTOR)
    doc = json.loads((target / "export.json").read_text(encoding="utf-8"))
    summary = {
        "tenant": tenant,
        "subject": doc["subject"],
        "path": str(target),
        "calls": len(doc["calls"]),
        "reports": len(doc["reports"]),
        "contacts": len(doc["contacts"]),
        "recordings": len(doc["recordings"]),
        "opted_out": doc["opted_out"],
        "restricted": doc["restricted"],
    }
    click.echo(PLAINTEXT_WARNING.format(path=target), err=True)
    if as_json:
        echo_json(summary)
        return
    click.echo(f"Exported {summary['calls']} calls, {summary['reports']} reports, {summary['contacts']} contacts "
               f"and {summary['recordings']} recordings of {doc['subject']} (tenant {tenant}) to {target}")


@subjects.command("exports")
@tenant_option(required=True)
@data_dir_option
@json_option
def subjects_exports(tenant: str, data_dir: Path | None, as_json: bool) -> None:
    """List tenant T's stored exports (no content; the subject by its keyed hash)."""
    with open_store(data_dir) as store:
        items = store.subjects.exports(tenant)
    if as_json:
        echo_json([export_view(e) for e in items])
        return
    if not items:
        click.echo(f"Tenant {tenant} has no stored exports.")
        return
    click.echo(text_table(["export id", "subject", "bytes", "made (UTC)", "deleted (UTC)"],
                          [[e.export_id, e.subject, str(e.bytes), utc_text(e.created_at), utc_text(e.expires_at)]
                           for e in items]))  # fmt: skip


@subjects.command("export-get")
@click.argument("export_id")
@tenant_option(required=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Write the export (export.json, recordings/*.wav) in a new folder under this directory.")
@data_dir_option
def subjects_export_get(export_id: str, tenant: str, out_dir: Path, data_dir: Path | None) -> None:
    """Decrypt stored export EXPORT_ID of tenant T into a new folder under --out. Audited."""
    with open_store(data_dir) as store:
        target = store.subjects.write_export(tenant, export_id, out_dir, actor=ACTOR)
    click.echo(PLAINTEXT_WARNING.format(path=target), err=True)
    click.echo(f"Export {export_id} written to {target}")


@subjects.command("erase")
@click.argument("phone")
@tenant_option(required=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@data_dir_option
@json_option
def subjects_erase(phone: str, tenant: str, yes: bool, data_dir: Path | None, as_json: bool) -> None:
    """Erase everything tenant T holds about PHONE (calls, turns, recordings, reports, contact,
    mentions in other calls). Only a keyed hash is kept so an opt-out keeps working. Audited."""
    with open_store(data_dir, phone=phone) as store:
        e164 = store.subjects.e164(tenant, phone)
        confirm(yes, f"Erase all data of {e164} at tenant {tenant!r}? This cannot be undone")
        result = store.subjects.erase(tenant, phone, actor=ACTOR)
    if as_json:
        echo_json(plain_view(result, tenant=tenant))
        return
    click.echo(f"Erased {e164} at tenant {tenant}: {result.calls} calls, {result.turns} turns, "
               f"{result.recordings} recordings, {result.reports} reports, {result.contacts} contacts, "
               f"{result.outbox} pending events; {result.mentions_scrubbed} mentions scrubbed elsewhere."
               + (" The opt-out is kept (as a keyed hash)." if result.opted_out else ""))


@subjects.command("restrict")
@click.argument("phone")
@tenant_option(required=True)
@click.option("--undo", is_flag=True, help="Lift the restriction.")
@data_dir_option
def subjects_restrict(phone: str, tenant: str, undo: bool, data_dir: Path | None) -> None:
    """Restrict processing for PHONE at tenant T: its calls get a notice and are not stored,
    recordings are refused, outbound calls refused. Nothing is deleted. Audited."""
    with open_store(data_dir, phone=phone) as store:
        if undo:
            changed = store.subjects.unrestrict(tenant, phone, actor=ACTOR)
            click.echo(f"{phone} is no longer restricted at tenant {tenant}." if changed
                       else f"{phone} was not restricted at tenant {tenant}.")
        else:
            changed = store.subjects.restrict(tenant, phone, actor=ACTOR)
            click.echo(f"{phone} is now restricted at tenant {tenant}." if changed
                       else f"{phone} was already restricted at tenant {tenant}.")


# --------------------------------------------------------------------------- opt-out list


@click.group()
def optout() -> None:
    """A tenant's do-not-call list (survives erasure as a keyed hash)."""


@optout.command("add")
@click.argument("phone")
@tenant_option(required=True)
@data_dir_option
@json_option
def optout_add(phone: str, tenant: str, data_dir: Path | None, as_json: bool) -> None:
    """Put PHONE on tenant T's do-not-call list (writes an optout.requested event)."""
    with open_store(data_dir, phone=phone) as store:
        added = store.subjects.add_optout(tenant, phone, source=ACTOR, actor=ACTOR)
        e164 = store.subjects.e164(tenant, phone)
    if as_json:
        echo_json({"tenant": tenant, "phone": e164, "added": added})
        return
    click.echo(f"{e164} added to the opt-out list of tenant {tenant}." if added
               else f"{e164} is already on the opt-out list of tenant {tenant}.")


@optout.command("list")
@tenant_option(required=True)
@data_dir_option
@json_option
def optout_list(tenant: str, data_dir: Path | None, as_json: bool) -> None:
    """List tenant T's opt-outs (an erased subject shows only its hash)."""
    with open_store(data_dir) as store:
        entries = store.subjects.optouts(tenant, actor=ACTOR)
    if as_json:
        echo_json([optout_view(e) for e in entries])
        return
    if not entries:
        click.echo(f"The opt-out list of tenant {tenant} is empty.")
        return
    click.echo(text_table(["phone", "source", "since (UTC)"],
                          [[e.phone or f"[erased] {e.phone_hash[:16]}", e.source, utc_text(e.created_at)]
                           for e in entries]))


@optout.command("remove")
@click.argument("phone")
@tenant_option(required=True)
@data_dir_option
@json_option
def optout_remove(phone: str, tenant: str, data_dir: Path | None, as_json: bool) -> None:
    """Take PHONE off tenant T's do-not-call list."""
    with open_store(data_dir, phone=phone) as store:
        removed = store.subjects.remove_optout(tenant, phone, actor=ACTOR)
        e164 = store.subjects.e164(tenant, phone)
    if as_json:
        echo_json({"tenant": tenant, "phone": e164, "removed": removed})
        return
    if not removed:
        raise click.ClickException(f"{e164} is not on the opt-out list of tenant {tenant}")
    click.echo(f"{e164} removed from the opt-out list of tenant {tenant}.")


@optout.command("check")
@click.argument("phone")
@tenant_option(required=True)
@data_dir_option
@json_option
def optout_check(phone: str, tenant: str, data_dir: Path | None, as_json: bool) -> None:
    """May tenant T place an outbound call to PHONE? Exit status 1 when not (opt-out or restriction).

    `voicecore serve` asks the same question when Twilio reports an outbound call
    (Direction outbound-*) and hangs up on a refused number before any audio flows."""
    with open_store(data_dir, phone=phone) as store:
        refusal = outbound_check(store, tenant, phone)
        e164 = store.subjects.e164(tenant, phone)
    if as_json:
        echo_json({"tenant": tenant, "phone": e164, "allowed": refusal is None, "reason": refusal})
    elif refusal is None:
        click.echo(f"Tenant {tenant} may call {e164}.")
    else:
        click.echo(f"Tenant {tenant} must not call {e164}: {refusal}.")
    if refusal is not None:
        raise SystemExit(1)


# --------------------------------------------------------------------------- retention


@click.group()
def retention() -> None:
    """Enforce the tenants' retention policies."""


@retention.command("sweep")
@click.option("--now", "now", callback=parse_when, metavar="ISO8601",
              help="Sweep as if it were this time (UTC unless it has an offset); default: now.")
@data_dir_option
@json_option
def retention_sweep(now: datetime | None, data_dir: Path | None, as_json: bool) -> None:
    """Delete every expired row and recording file of every tenant, then compact the database
    so no deleted byte remains (secure_delete, VACUUM, WAL truncated). Audited."""
    with open_store(data_dir) as store:
        result = store.retention.sweep(now, actor=ACTOR)
    if as_json:
        echo_json(plain_view(result, total=result.total))
        return
    if result.skipped:
        click.echo("Retention sweep skipped: another worker is sweeping the same database right now.")
        return
    removed = ", ".join(f"{n} {table}" for table, n in result.deleted.items() if n) or "no rows"
    click.echo(f"Retention sweep at {utc_text(result.at)}: removed {removed}; "
               f"{result.transcripts_cleared} transcript texts cleared; "
               f"{result.files_removed} recording files removed.")
    if not result.wal_truncated:
        click.echo("Warning: another connection kept the WAL open; deleted bytes may remain until the next sweep.",
                   err=True)


# --------------------------------------------------------------------------- audit log


@click.group()
def audit() -> None:
    """The hash-chained audit log: verify it, read it."""


@audit.command("verify")
@data_dir_option
@json_option
def audit_verify(data_dir: Path | None, as_json: bool) -> None:
    """Check the audit log's hash chain; exit status 1 names the first modified or missing entry."""
    with open_store(data_dir) as store:
        check = store.audit.verify()
    if as_json:
        echo_json(plain_view(check))
    elif check.ok:
        click.echo(f"Audit log OK: {check.entries} entries, chain intact.")
    else:
        click.echo(f"Audit log BROKEN at entry {check.first_bad_id}: {check.reason}", err=True)
    if not check.ok:
        click.get_current_context().exit(1)


@audit.command("list")
@click.option("--tenant", "tenant", help="Only entries of this tenant (default: all).")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True,
              help="At most this many entries.")
@data_dir_option
@json_option
def audit_list(tenant: str | None, limit: int, data_dir: Path | None, as_json: bool) -> None:
    """The latest audit entries, newest first: time, actor, tenant, action, object (no call content)."""
    with open_store(data_dir) as store:
        entries = store.audit.list(tenant, limit=limit)
    if as_json:
        echo_json([audit_view(e) for e in entries])
        return
    if not entries:
        click.echo("No audit entries.")
        return
    click.echo(text_table(["id", "time (UTC)", "actor", "tenant", "action", "object"],
                          [[str(e.id), utc_text(e.at), e.actor, e.tenant or "", e.action, e.object_id or ""]
                           for e in entries]))


# --------------------------------------------------------------------------- policy files


@click.group()
def policy() -> None:
    """Tenant policy files (policies/*.yaml)."""


@policy.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def policy_check(files: tuple[Path, ...]) -> None:
    """Validate policy FILES; print each problem with the field it is in. Exit status 1 if any is invalid."""
    bad = 0
    for path in files:
        try:
            p = load_policy(path)
        except PolicyError as e:
            bad += 1
            for field, message in e.problems:
                click.echo(f"{path}: {field}: {message}", err=True)
            continue
        click.echo(f"{path}: OK (policy {p.name!r}, recording {p.recording.mode}, "
                   f"transcripts {p.retention.transcripts} days)")
    if bad:
        raise click.ClickException(f"{bad} of {len(files)} policy files invalid")
