"""``voicecore providers``: a tenant's accounts at the telephony providers, and what to paste there.

- ``providers set PROVIDER --tenant T name=value …`` stores the credentials that check the
  provider's signatures (a ``-`` value is read from standard input, so a secret need not
  sit in the shell history);
- ``providers list --tenant T`` shows what is set (never a secret);
- ``providers delete PROVIDER --tenant T`` forgets them;
- ``providers snippet PROVIDER --tenant T [--pipeline P]`` prints the TwiML app / TeXML /
  Call Control parameters, NCCO, Plivo XML, Exotel applet URL or Asterisk configuration.

The same repository calls (``store.providers``) back the ``/v1/providers`` API.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from voicecore.cli.options import (
    ACTOR,
    data_dir_option,
    echo_json,
    json_option,
    open_store,
    tenant_option,
)
from voicecore.telephony.signatures import CREDENTIAL_FIELDS
from voicecore.telephony.snippets import PUBLIC_URL_ENV, SNIPPET_PROVIDERS
from voicecore.views import provider_account_view, text_table, utc_text

PROVIDER = click.Choice(SNIPPET_PROVIDERS)


@click.group()
def providers() -> None:
    """Provider credentials (signature checks) and call-control snippets for each provider."""


def _read_fields(provider: str, pairs: tuple[str, ...]) -> dict[str, str]:
    fields: dict[str, str] = {}
    from_stdin = [p for p in pairs if p.partition("=")[2] == "-"]
    if len(from_stdin) > 1:
        raise click.UsageError("only one value may be read from stdin ('-')")
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.UsageError(f"expected name=value, got {pair.split('=')[0]!r}=…" if sep else
                                   f"expected name=value, got {pair!r}")  # fmt: skip
        if value == "-":
            value = sys.stdin.readline().strip()
            if not value:
                raise click.UsageError(f"no value for {name} on standard input")
        fields[name] = value
    if not fields:
        names = ", ".join(f.name for f in CREDENTIAL_FIELDS[provider]) or "none (it uses a stream secret)"
        raise click.UsageError(f"give at least one name=value; {provider} credentials: {names}")
    return fields


@providers.command("set")
@click.argument("provider", type=PROVIDER)
@click.argument("fields", nargs=-1, metavar="NAME=VALUE...")
@tenant_option(required=True)
@data_dir_option
@json_option
def providers_set(provider: str, fields: tuple[str, ...], tenant: str, data_dir: Path | None, as_json: bool) -> None:
    """Store PROVIDER credentials for tenant T (encrypted with the tenant's key; secrets are never shown
    again). Twilio: auth_token [account_sid]; Telnyx: public_key [api_key connection_id]; Vonage:
    signature_secret [application_id private_key]; Plivo: auth_token [auth_id]; Asterisk: [ari_url ari_user
    ari_password trunk]. Bracketed ones are needed to place outbound calls. A value of '-' is read from
    standard input (one line: give a PEM key base64-encoded)."""
    given = _read_fields(provider, fields)
    with open_store(data_dir) as store:
        info = store.providers.set(tenant, provider, given, actor=ACTOR)
    if as_json:
        echo_json(provider_account_view(info))
        return
    click.echo(f"Stored {provider} credentials for tenant {tenant}: {', '.join(info.secrets_set) or 'no secret'}"
               + (f" (account {info.account_id})" if info.account_id else "")
               + (f"; still missing: {', '.join(info.missing)}" if info.missing else ""))  # fmt: skip


@providers.command("list")
@tenant_option(required=True)
@data_dir_option
@json_option
def providers_list(tenant: str, data_dir: Path | None, as_json: bool) -> None:
    """What tenant T has set for each provider (names only, never secrets)."""
    with open_store(data_dir) as store:
        accounts = store.providers.list(tenant)
    if as_json:
        echo_json([provider_account_view(a) for a in accounts])
        return
    if not accounts:
        click.echo(f"Tenant {tenant} has no provider credentials yet (voicecore providers set PROVIDER ...).")
        return
    click.echo(text_table(
        ["provider", "secrets", "missing", "account", "stream secret", "updated"],
        [[a.provider, ", ".join(a.secrets_set) or "-", ", ".join(a.missing) or "-", a.account_id or "-",
          "yes" if a.has_stream_secret else "no", utc_text(a.updated_at)] for a in accounts],
    ))  # fmt: skip


@providers.command("delete")
@click.argument("provider", type=PROVIDER)
@tenant_option(required=True)
@data_dir_option
def providers_delete(provider: str, tenant: str, data_dir: Path | None) -> None:
    """Forget tenant T's PROVIDER credentials and stream secret (its calls from PROVIDER stop at once)."""
    with open_store(data_dir) as store:
        deleted = store.providers.delete(tenant, provider, actor=ACTOR)
    click.echo(f"Deleted tenant {tenant}'s {provider} credentials." if deleted
               else f"Tenant {tenant} had no {provider} credentials.")  # fmt: skip


@providers.command("snippet")
@click.argument("provider", type=PROVIDER)
@tenant_option(required=True)
@click.option("--pipeline", default=None, help="The agent these calls get (default: the server's default).")
@click.option("--public-url", envvar=PUBLIC_URL_ENV, required=True, metavar="URL",
              help=f"The public https://host[:port] of the deployment (or ${PUBLIC_URL_ENV}), as given to serve.")
@click.option("--new-stream-secret", is_flag=True,
              help="Telnyx Call Control, Exotel, Asterisk: replace the stream secret (the old one stops working).")
@click.option("--telnyx-codec", type=click.Choice(["PCMU", "PCMA", "L16"]), default="PCMU", show_default=True,
              help="As given to serve --telnyx-codec.")
@click.option("--telnyx-sample-rate", type=click.Choice(["8000", "16000", "22050", "24000", "48000"]),
              default="8000", show_default=True, help="As given to serve --telnyx-sample-rate (L16 only).")
@data_dir_option
def providers_snippet(provider: str, tenant: str, pipeline: str | None, public_url: str, new_stream_secret: bool,
                      telnyx_codec: str, telnyx_sample_rate: str, data_dir: Path | None) -> None:  # fmt: skip
    """Print what to paste into PROVIDER so tenant T's calls reach this deployment: the answer URL and
    the document serve answers it with, or the static configuration (Asterisk, Exotel, Telnyx Call
    Control, with a stream secret shown once)."""
    with open_store(data_dir) as store:
        try:
            text = store.providers.snippet(
                tenant, provider, public_url=public_url, pipeline=pipeline, new_stream_secret=new_stream_secret,
                telnyx_codec=telnyx_codec, telnyx_sample_rate=int(telnyx_sample_rate), actor=ACTOR,
            )  # fmt: skip
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--public-url") from None
    click.echo(text, nl=False)
