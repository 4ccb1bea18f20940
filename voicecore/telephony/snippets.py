"""What to paste into each provider so its calls reach a voicecore deployment.

Every URL handed to a provider is derived from the deployment's public URL
(``serve --public-url https://voice.example.com`` or ``VOICECORE_PUBLIC_URL``):
``https://…/providers/<provider>/<tenant>/answer`` for the providers that fetch call
instructions (Twilio, Telnyx TeXML, Vonage, Plivo, Exotel's dynamic applet URL), and
``wss://…/ws/<provider>`` for the media streams. No URL carries a tenant API key:
answer-URL requests are checked with the provider's own signature, media streams
with a one-time call token (or, where the provider connects with static settings —
Telnyx Call Control, Exotel's static URL, Asterisk — a per-provider stream secret).

Pure text building: :func:`provider_snippet` takes everything it prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote, urlsplit, urlunsplit

from voicecore.telephony.asterisk import asterisk_dialplan, websocket_client_conf
from voicecore.telephony.exotel import exotel_bootstrap, exotel_stream_url
from voicecore.telephony.plivo import plivo_stream_xml
from voicecore.telephony.signatures import CREDENTIAL_FIELDS
from voicecore.telephony.telnyx import (
    call_control_stream_parameters,
    texml_connect_stream,
)
from voicecore.telephony.twilio import twiml_connect_stream
from voicecore.telephony.vonage import ncco_connect

__all__ = [
    "PUBLIC_URL_ENV",
    "SNIPPET_PROVIDERS",
    "ANSWER_PROVIDERS",
    "STREAM_SECRET_PROVIDERS",
    "SnippetContext",
    "check_public_url",
    "answer_url",
    "media_url",
    "provider_snippet",
]

PUBLIC_URL_ENV: Final = "VOICECORE_PUBLIC_URL"
SNIPPET_PROVIDERS: Final = ("twilio", "telnyx", "vonage", "plivo", "exotel", "asterisk")
#: Providers that fetch call instructions from an answer URL that ``serve`` answers.
ANSWER_PROVIDERS: Final = frozenset({"twilio", "telnyx", "vonage", "plivo", "exotel"})
#: Providers whose snippet uses a stream secret (static credentials on the provider's side).
STREAM_SECRET_PROVIDERS: Final = frozenset({"telnyx", "exotel", "asterisk"})
#: What the examples show where serve puts a fresh one-time call token per call.
TOKEN_PLACEHOLDER: Final = "ONETIMECALLTOKEN"


def check_public_url(url: str) -> str:
    """The deployment's public base URL, normalised (no trailing slash); ``ValueError`` naming
    the problem otherwise. ``https://`` is what providers need; ``http://`` is accepted for
    local tests (media URLs then say ``ws://``, which providers refuse)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"public URL must look like https://host[:port][/prefix], got {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("public URL must not have a query, a fragment or credentials")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError(f"public URL has an invalid port: {url!r}") from None
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def media_url(public_url: str, provider: str) -> str:
    """``wss://host[:port][/prefix]/ws/<provider>`` (``ws://`` for an ``http://`` public URL)."""
    parts = urlsplit(public_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, f"{parts.path.rstrip('/')}/ws/{provider}", "", ""))


def answer_url(public_url: str, provider: str, tenant: str, pipeline: str | None = None) -> str:
    """Where a provider fetches call instructions for ``tenant``'s calls (``?pipeline=`` picks the agent)."""
    parts = urlsplit(public_url)
    path = f"{parts.path.rstrip('/')}/providers/{provider}/{quote(tenant, safe='')}/answer"
    return urlunsplit((parts.scheme, parts.netloc, path, f"pipeline={quote(pipeline)}" if pipeline else "", ""))


def _with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    shown = password if password.startswith("<") else quote(password, safe="")  # a placeholder stays readable
    netloc = f"{quote(user, safe='')}:{shown}@{parts.netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


@dataclass(frozen=True)
class SnippetContext:
    provider: str
    tenant: str
    public_url: str
    pipeline: str | None = None
    #: Credentials this tenant still has to store for the provider (names).
    missing_credentials: tuple[str, ...] = ()
    #: A stream secret created for this snippet (shown this once), if one was.
    stream_secret: str | None = field(default=None, repr=False)
    has_stream_secret: bool = False
    telnyx_codec: str = "PCMU"
    telnyx_sample_rate: int = 8000


def _credentials_step(ctx: SnippetContext) -> list[str]:
    fields = CREDENTIAL_FIELDS[ctx.provider]
    if not fields:
        return []
    lines = ["# Store the account's credentials once (they check the provider's signature on every request):"]
    for f in fields:
        state = "missing" if f.name in ctx.missing_credentials else ("optional" if not f.required else "set")
        lines.append(f"#   {f.name} ({state}): {f.help}")
    names = " ".join(f"{f.name}=-" if f.secret else f"{f.name}=<{f.name}>" for f in fields if f.required or
                     not f.secret)  # fmt: skip
    lines.append(f"#   voicecore providers set {ctx.provider} --tenant {ctx.tenant} {names}   (a '-' value is read from stdin)")
    return lines


def _stream_secret_lines(ctx: SnippetContext) -> tuple[str, list[str]]:
    if ctx.stream_secret:
        return ctx.stream_secret, [
            f"# Stream secret for {ctx.provider} (shown only this once; it opens {ctx.provider} media streams",
            f"# for tenant {ctx.tenant} and nothing else): {ctx.stream_secret}",
        ]
    note = "# Stream secret: the one shown when it was created" if ctx.has_stream_secret else "# Stream secret: none yet"
    return "<STREAM_SECRET>", [
        f"{note}; a new one: voicecore providers snippet {ctx.provider} --tenant {ctx.tenant} --new-stream-secret",
    ]


def provider_snippet(ctx: SnippetContext) -> str:
    """The text to paste into ``ctx.provider``'s console or configuration, with comments."""
    if ctx.provider not in SNIPPET_PROVIDERS:
        raise ValueError(f"unknown provider {ctx.provider!r}; known: {', '.join(SNIPPET_PROVIDERS)}")
    base = check_public_url(ctx.public_url)
    ws = media_url(base, ctx.provider)
    answer = answer_url(base, ctx.provider, ctx.tenant, ctx.pipeline)
    lines: list[str] = [f"# {ctx.provider.capitalize()} → voicecore, tenant {ctx.tenant}"
                        + (f", pipeline {ctx.pipeline}" if ctx.pipeline else "")]  # fmt: skip
    if not base.startswith("https://"):
        lines.append("# WARNING: the public URL is http://, so media URLs say ws:// — providers require wss://.")
    lines += _credentials_step(ctx)
    example_params = {"token": TOKEN_PLACEHOLDER, "from": "+15550100", "to": "+15550199"}
    if ctx.provider == "twilio":
        lines += [
            "# Console → Phone Numbers → Manage → Active numbers → your number → Voice Configuration:",
            '#   "A call comes in": Webhook, HTTP POST:',
            answer,
            "# (or the Voice Request URL of a TwiML App). voicecore checks X-Twilio-Signature and answers with",
            "# TwiML like this, with a fresh one-time call token per call:",
            twiml_connect_stream(ws, example_params),
        ]
    elif ctx.provider == "telnyx":
        secret, secret_lines = _stream_secret_lines(ctx)
        lines += [
            "# TeXML: Voice → Programmable Voice → TeXML Applications → your app → Voice Method POST, Webhook URL:",
            answer,
            "# voicecore checks telnyx-signature-ed25519 and answers with TeXML like this:",
            texml_connect_stream(f"{ws}?token={TOKEN_PLACEHOLDER}", {"token": TOKEN_PLACEHOLDER},
                                 codec=ctx.telnyx_codec if ctx.telnyx_codec in ("PCMU", "PCMA") else "PCMU"),
            "# Call Control instead: your application answers the call, then starts the stream with",
            "# POST /v2/calls/{call_control_id}/actions/streaming_start (or dials with POST /v2/calls) and:",
            *secret_lines,
            json.dumps(call_control_stream_parameters(ws, codec=ctx.telnyx_codec, sample_rate=ctx.telnyx_sample_rate,
                                                      auth_token=secret), indent=2),  # fmt: skip
            f"# stream_bidirectional_codec must be what serve sends: --telnyx-codec {ctx.telnyx_codec}"
            + (f" --telnyx-sample-rate {ctx.telnyx_sample_rate}" if ctx.telnyx_codec == "L16" else ""),
        ]
    elif ctx.provider == "vonage":
        lines += [
            "# Dashboard → Applications → your app → Capabilities → Voice:",
            "#   Answer URL (HTTP GET or POST):",
            answer,
            "#   and turn on signed webhooks. voicecore checks the JWT and answers with an NCCO like this",
            "#   (the WebSocket is signed too: authorization type vonage):",
            json.dumps(ncco_connect(ws, example_params), indent=2),
        ]
    elif ctx.provider == "plivo":
        lines += [
            "# Console → Voice → Applications → your application: Answer URL, method POST:",
            answer,
            "# voicecore checks X-Plivo-Signature-V3 and answers with XML like this (extraHeaders: letters and",
            "# digits only, so the token is the only header; caller and callee come from the answer request):",
            plivo_stream_xml(ws, {"token": TOKEN_PLACEHOLDER}),
        ]
    elif ctx.provider == "exotel":
        secret, secret_lines = _stream_secret_lines(ctx)
        user = ctx.tenant
        lines += [
            *secret_lines,
            "# App Bazaar → your flow: Call Start → Voicebot → (Passthru) → Hangup. Voicebot applet URL, the",
            "# dynamic form (voicecore checks the credentials and returns this call's stream URL):",
            _with_user(answer, user, secret),
            "#   which answers:",
            json.dumps(exotel_bootstrap(exotel_stream_url(ws, parameters={"token": TOKEN_PLACEHOLDER}))),
            "# or the static form (Exotel sends the credentials as Basic auth on the WebSocket):",
            _with_user(exotel_stream_url(ws, parameters={"pipeline": ctx.pipeline} if ctx.pipeline else None),
                       user, secret),
        ]
    else:  # asterisk
        secret, secret_lines = _stream_secret_lines(ctx)
        lines += [
            *secret_lines,
            "# Asterisk 20.16 / 21.11 / 22.6 / 23.0 or later (chan_websocket). In websocket_client.conf:",
            websocket_client_conf("voicecore", ws, username=ctx.tenant, password=secret).rstrip("\n"),
            "# In extensions.conf (calls into from-pstn go to voicecore; caller and extension as URI parameters):",
            asterisk_dialplan("voicecore").rstrip("\n"),
        ]
        if ctx.pipeline:
            lines.append(f"# For pipeline {ctx.pipeline}, add it to the v() options: v(pipeline={ctx.pipeline},from=…)")
    return "\n".join(lines) + "\n"
