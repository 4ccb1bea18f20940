"""Tenant authentication on the media WebSockets: no key, no pipeline.

Every provider carries the tenant's API key its own way (see the protocol
reference): Twilio ``start.customParameters.token``; Telnyx the
``x-telnyx-streaming-auth-token`` header or ``start.custom_parameters.token``;
Vonage the NCCO headers echoed in ``websocket:connected`` (top level or under
``headers``) or ``?token=``; Plivo ``extraHeaders="token=…"`` or ``?token=``;
Exotel Basic auth (credentials in the stream URL), ``?token=`` or
``custom_parameters.token``; Asterisk ``?token=`` on the URL it connects to.

For each path: a missing or wrong key (or a revoked one, or two that disagree)
closes the socket with 1008 and starts no pipeline; the right key starts the
call and stores it under its own tenant, and only there. Twilio's webhook
hands out one-time call tokens: they work once, for the call they were made
for, under the tenant that asked for them.
"""

from __future__ import annotations

import asyncio
import base64
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from twilio.request_validator import RequestValidator

from voicecore.testing.callers import (
    AsteriskClient,
    ExotelClient,
    PlivoClient,
    ProviderClient,
    TelnyxClient,
    TwilioClient,
    VonageClient,
    find_stored_call,
    wait_stored_call,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

WRONG_KEY = "vck_0123456789ab_" + "x" * 43  # well-formed, unknown


@pytest.fixture(autouse=True)
def no_key_in_logs(telephony_server):
    """Privacy rule 8: API keys never reach the logs — every message of every level, for every
    test here (refused and accepted streams, webhooks), is searched for the secret part of a key."""
    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lines.append, level="TRACE", format="{message} {extra} {exception}")
    try:
        yield lines
    finally:
        logger.remove(sink)
    # vck_<id>_<secret>: the secret is everything after the id (it may itself hold "_")
    secrets = [k.split("_", 2)[-1] for k in (*telephony_server.keys.values(), WRONG_KEY)]
    for line in lines:
        for secret in secrets:
            assert secret not in line, f"an API key reached the log: {line[:200]!r}"


def tampered(key: str) -> str:
    """The tenant's real key with its secret's last character changed."""
    return key[:-1] + ("A" if key[-1] != "A" else "B")


@dataclass
class AuthCase:
    id: str
    make: Callable[[Any], ProviderClient]  # server → client
    accepted_for: str | None = None  # tenant that owns the call; None → rejected with 1008
    note: str = ""


def url(server, provider: str, **query: str) -> str:
    return server.ws_url(provider, **query)


REJECTED: list[AuthCase] = [
    # Twilio
    AuthCase("twilio-no-token", lambda s: TwilioClient(url(s, "twilio"), token=None)),
    AuthCase("twilio-empty-token", lambda s: TwilioClient(url(s, "twilio"), token="")),
    AuthCase("twilio-unknown-key", lambda s: TwilioClient(url(s, "twilio"), token=WRONG_KEY)),
    AuthCase("twilio-tampered-key", lambda s: TwilioClient(url(s, "twilio"), token=tampered(s.keys["acme"]))),
    AuthCase("twilio-garbage-token", lambda s: TwilioClient(url(s, "twilio"), token="hello' OR 1=1 --")),
    AuthCase("twilio-unknown-call-token", lambda s: TwilioClient(url(s, "twilio"), token="ct" + "a" * 40)),
    AuthCase("twilio-key-in-query-is-not-accepted", lambda s: TwilioClient(url(s, "twilio", token=s.keys["acme"]),
                                                                           token=None),
             note="Twilio strips query strings from Stream URLs; the key must come as a <Parameter>"),
    # Telnyx
    AuthCase("telnyx-no-token", lambda s: TelnyxClient(url(s, "telnyx"), token=None)),
    AuthCase("telnyx-wrong-header", lambda s: TelnyxClient(url(s, "telnyx"), token=WRONG_KEY, token_in="header")),
    AuthCase("telnyx-wrong-custom-parameter", lambda s: TelnyxClient(url(s, "telnyx"), token=tampered(s.keys["acme"]),
                                                                     token_in="custom")),
    AuthCase("telnyx-header-and-custom-disagree",
             lambda s: TelnyxClient(url(s, "telnyx"), token=s.keys["acme"], token_in="header",
                                    custom_token=s.keys["globex"])),
    # Vonage
    AuthCase("vonage-no-token", lambda s: VonageClient(url(s, "vonage"), token=None)),
    AuthCase("vonage-wrong-top-level-token", lambda s: VonageClient(url(s, "vonage"), token=WRONG_KEY, token_in="top")),
    AuthCase("vonage-wrong-headers-token", lambda s: VonageClient(url(s, "vonage"), token=tampered(s.keys["globex"]),
                                                                  token_in="headers")),
    AuthCase("vonage-wrong-query-token", lambda s: VonageClient(url(s, "vonage"), token=WRONG_KEY, token_in="query")),
    # Plivo
    AuthCase("plivo-no-token", lambda s: PlivoClient(url(s, "plivo"), token=None)),
    AuthCase("plivo-wrong-extra-headers-token", lambda s: PlivoClient(url(s, "plivo"), token=WRONG_KEY)),
    AuthCase("plivo-wrong-query-token", lambda s: PlivoClient(url(s, "plivo"), token=tampered(s.keys["acme"]),
                                                              token_in="query")),
    # Exotel
    AuthCase("exotel-no-token", lambda s: ExotelClient(url(s, "exotel"), token=None)),
    AuthCase("exotel-wrong-basic-password", lambda s: ExotelClient(url(s, "exotel"), token=WRONG_KEY,
                                                                   token_in="basic")),
    AuthCase("exotel-malformed-basic-header",
             lambda s: ExotelClient(url(s, "exotel"), token=None, headers={"Authorization": "Basic !!!not-base64"})),
    AuthCase("exotel-unsupported-auth-scheme",
             lambda s: ExotelClient(url(s, "exotel"), token=None, headers={"Authorization": f"Digest {s.keys['acme']}"})),
    AuthCase("exotel-wrong-query-token", lambda s: ExotelClient(url(s, "exotel"), token=WRONG_KEY, token_in="query")),
    AuthCase("exotel-wrong-custom-parameter", lambda s: ExotelClient(url(s, "exotel"), token=WRONG_KEY,
                                                                     token_in="custom")),
    # Asterisk
    AuthCase("asterisk-no-token", lambda s: AsteriskClient(url(s, "asterisk"), token=None)),
    AuthCase("asterisk-wrong-token", lambda s: AsteriskClient(url(s, "asterisk"), token=tampered(s.keys["acme"]))),
    AuthCase("asterisk-query-and-basic-disagree",
             lambda s: AsteriskClient(url(s, "asterisk"), token=s.keys["acme"], headers={
                 "Authorization": "Basic " + base64.b64encode(f"asterisk:{s.keys['globex']}".encode()).decode()})),
]

ACCEPTED: list[AuthCase] = [
    AuthCase("twilio-custom-parameters", lambda s: TwilioClient(url(s, "twilio"), token=s.keys["acme"]), "acme"),
    AuthCase("telnyx-header", lambda s: TelnyxClient(url(s, "telnyx"), token=s.keys["globex"], token_in="header"),
             "globex"),
    AuthCase("telnyx-custom-parameters", lambda s: TelnyxClient(url(s, "telnyx"), token=s.keys["acme"],
                                                                token_in="custom"), "acme"),
    AuthCase("vonage-top-level", lambda s: VonageClient(url(s, "vonage"), token=s.keys["globex"], token_in="top"),
             "globex"),
    AuthCase("vonage-headers", lambda s: VonageClient(url(s, "vonage"), token=s.keys["acme"], token_in="headers"),
             "acme"),
    AuthCase("vonage-query", lambda s: VonageClient(url(s, "vonage"), token=s.keys["globex"], token_in="query"),
             "globex"),
    AuthCase("plivo-extra-headers", lambda s: PlivoClient(url(s, "plivo"), token=s.keys["acme"]), "acme"),
    AuthCase("plivo-query", lambda s: PlivoClient(url(s, "plivo"), token=s.keys["globex"], token_in="query"), "globex"),
    AuthCase("exotel-basic", lambda s: ExotelClient(url(s, "exotel"), token=s.keys["globex"], token_in="basic"),
             "globex"),
    AuthCase("exotel-query", lambda s: ExotelClient(url(s, "exotel"), token=s.keys["acme"], token_in="query"), "acme"),
    AuthCase("exotel-custom-parameters", lambda s: ExotelClient(url(s, "exotel"), token=s.keys["acme"],
                                                                token_in="custom"), "acme"),
    AuthCase("asterisk-query", lambda s: AsteriskClient(url(s, "asterisk"), token=s.keys["globex"]), "globex"),
]

OTHER = {"acme": "globex", "globex": "acme"}


async def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def _nothing_stored(server, client: ProviderClient, ids: set[str] | None = None) -> None:
    for tenant in ("acme", "globex"):
        found = await asyncio.to_thread(find_stored_call, server.store, tenant, ids or client.ids)
        assert found is None, f"{client.label}: a call was stored for {tenant} without a valid key"


async def assert_rejected(server, client: ProviderClient, ids: set[str] | None = None) -> None:
    """Connect, open the stream the provider's way, expect 1008 and no pipeline (nothing stored under ``ids``)."""
    started_before = server.calls_started
    try:
        connected = await client.connect()
        if connected:
            await client.open()
            await asyncio.sleep(0.05)
            await client.send_raw(client.media_messages(_silence(client))[0])
            assert await client.wait_closed(10), f"{client.label}: the server accepted the stream (not closed in 10 s)"
    finally:
        await client.close()
    assert connected, f"{client.label}: upgrade refused with HTTP {client.handshake_status}; expected a 1008 close"
    assert client.close_code == 1008, f"{client.label}: closed with {client.close_code} {client.close_reason!r}"
    assert not client.media, f"{client.label}: an unauthenticated caller heard the agent"
    await asyncio.sleep(0.2)
    assert server.calls_started == started_before, f"{client.label}: a pipeline started without a valid key"
    await _nothing_stored(server, client, ids)


def _silence(client: ProviderClient):
    import numpy as np

    return np.zeros(client.sample_rate * client.frame_ms // 1000, dtype=np.int16)


@pytest.mark.parametrize("case", REJECTED, ids=[c.id for c in REJECTED])
async def test_stream_without_a_valid_key_is_closed_1008(case: AuthCase, telephony_server):
    client = case.make(telephony_server)
    client.label = case.id
    await assert_rejected(telephony_server, client)


@pytest.mark.models
@pytest.mark.parametrize("case", ACCEPTED, ids=[c.id for c in ACCEPTED])
async def test_stream_with_the_tenant_key_starts_and_is_stored_for_that_tenant(case: AuthCase, telephony_server):
    server = telephony_server
    client = case.make(server)
    client.label = case.id
    started_before = server.calls_started
    try:
        assert await client.start(), f"upgrade refused with HTTP {client.handshake_status}"
        assert await _wait(lambda: server.calls_started == started_before + 1, 15), (
            f"{case.id}: no pipeline started (closed={client.closed.is_set()} code={client.close_code} "
            f"{client.close_reason!r})"
        )
        assert await client.wait_media_after(0.0, 15) is not None, f"{case.id}: no greeting"
        await client.hangup()
    finally:
        await client.close()
    call = await wait_stored_call(server.store, case.accepted_for, client.ids)
    assert call is not None, f"{case.id}: not stored for {case.accepted_for}"
    assert call.transport == client.provider
    other = await asyncio.to_thread(find_stored_call, server.store, OTHER[case.accepted_for], client.ids)
    assert other is None, f"{case.id}: the call also shows up under {OTHER[case.accepted_for]}"


async def test_revoked_key_is_refused(telephony_server):
    server = telephony_server
    key = await asyncio.to_thread(server.store.tenants.create_api_key, "acme", label="to-revoke", actor="test")
    key_id = key.split("_")[1]
    assert await asyncio.to_thread(server.store.tenants.revoke_api_key, "acme", key_id, actor="test")
    await assert_rejected(server, TwilioClient(server.ws_url("twilio"), token=key, label="revoked-key"))


@pytest.mark.models
async def test_an_agent_key_takes_calls_and_viewer_or_analyst_keys_do_not(telephony_server):
    """Roles on call paths (issue 11.5): ``agent`` (and ``admin``) keys open media streams; the
    read-only roles of the admin API are refused before any pipeline starts."""
    server = telephony_server
    for role in ("viewer", "analyst"):
        key = await asyncio.to_thread(server.store.tenants.create_api_key, "acme", role=role, actor="test")
        await assert_rejected(server, TwilioClient(server.ws_url("twilio"), token=key, label=f"{role}-key"))
    agent = await asyncio.to_thread(server.store.tenants.create_api_key, "acme", role="agent", actor="test")
    client = TwilioClient(server.ws_url("twilio"), token=agent, label="agent-key")
    try:
        assert await client.start()
        assert await client.wait_media_after(0.0, 20) is not None, "the agent key's call got no greeting"
    finally:
        await client.hangup()
    assert await wait_stored_call(server.store, "acme", client.ids) is not None


# --------------------------------------------------------------------------- Twilio webhook and call tokens


def _twilio_form(call_sid: str, caller: str = "+14155550123") -> dict[str, str]:
    return {"CallSid": call_sid, "AccountSid": "AC" + "0" * 32, "From": caller, "To": "+14155550999",
            "Direction": "inbound", "CallStatus": "ringing"}


TWILIO_AUTH_TOKENS = {"acme": "acme-twilio-auth-token", "globex": "globex-twilio-auth-token"}


@pytest.fixture
def twilio_accounts(telephony_server):
    """acme's and globex's Twilio auth tokens on the shared server (removed afterwards)."""
    store = telephony_server.store
    for tenant, token in TWILIO_AUTH_TOKENS.items():
        store.providers.set(tenant, "twilio", {"auth_token": token}, actor="test")
    yield
    for tenant in TWILIO_AUTH_TOKENS:
        store.providers.delete(tenant, "twilio", actor="test")


def _post_signed(url: str, form: dict[str, str], auth_token: str | None) -> tuple[int, str, str]:
    """POST ``form`` as Twilio does: signed with the account's auth token over the URL it calls."""
    data = urllib.parse.urlencode(form).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if auth_token is not None:
        headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(url, form)
    req = urllib.request.Request(url, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("content-type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read().decode()


async def webhook(server, tenant: str, call_sid: str, caller: str = "+14155550123", *,
                  auth_token: str | None | bool = True, form: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Twilio's voice webhook for ``tenant``'s number, signed with ``auth_token`` (True: the tenant's)."""
    target = f"{server.base_url}/providers/twilio/{tenant}/answer"
    token = TWILIO_AUTH_TOKENS[tenant] if auth_token is True else (auth_token or None)
    return await asyncio.to_thread(_post_signed, target, form or _twilio_form(call_sid, caller), token)


def parse_twiml(body: str) -> tuple[str, dict[str, str]]:
    """(stream url, parameters) of a <Response><Connect><Stream> document."""
    root = ET.fromstring(body)
    assert root.tag == "Response", body
    stream = root.find("./Connect/Stream")
    assert stream is not None, f"no <Connect><Stream> (a <Start><Stream> would be one-way): {body}"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    return stream.get("url"), params


async def test_twilio_webhook_without_a_valid_signature_is_refused(telephony_server, twilio_accounts):
    status, _ctype, body = await webhook(telephony_server, "acme", "CA" + "1" * 32, auth_token=None)
    assert status == 403, (status, body)
    assert "<Stream" not in body
    status, _ctype, body = await webhook(telephony_server, "acme", "CA" + "2" * 32, auth_token="not-the-token")
    assert status == 403, (status, body)
    # globex's signature does not open acme's answer URL
    status, _ctype, body = await webhook(telephony_server, "acme", "CA" + "2" * 32,
                                         auth_token=TWILIO_AUTH_TOKENS["globex"])  # fmt: skip
    assert status == 403, (status, body)


@pytest.mark.models
async def test_twilio_call_token_works_once_for_its_tenant(telephony_server, twilio_accounts):
    server = telephony_server
    call_sid = "CA" + "3" * 32
    status, ctype, body = await webhook(server, "globex", call_sid, caller="+14155550123")
    assert status == 200, body
    assert "xml" in ctype, ctype
    stream_url, params = parse_twiml(body)
    parts = urllib.parse.urlsplit(stream_url)
    assert parts.path == "/ws/twilio" and not parts.query, f"stream URL {stream_url!r} (no query allowed: 31922)"
    assert params.get("from") == "+14155550123" and params.get("to") == "+14155550999", params
    token = params.get("token")
    assert token and token.isalnum() and "vck_" not in body, "the webhook must not put an API key into TwiML"
    for name, value in params.items():
        assert len(name) + len(value) < 500, f"<Parameter> {name} too long for Twilio"

    # Twilio connects to the URL it was given, with the parameters as customParameters
    ws = server.ws_url("twilio")
    first = TwilioClient(ws, custom=params, call_sid=call_sid, caller="+14155550123", label="call-token")
    started_before = server.calls_started
    try:
        assert await first.start()
        assert await _wait(lambda: server.calls_started == started_before + 1, 15), (
            f"call token refused: {first.close_code} {first.close_reason!r}")
        await first.hangup()
    finally:
        await first.close()
    call = await wait_stored_call(server.store, "globex", first.ids)
    assert call is not None, "the call of a globex call token is not stored under globex"
    assert call.caller == "+14155550123"
    assert await asyncio.to_thread(find_stored_call, server.store, "acme", first.ids) is None

    # one-time: the same token again is refused
    again = TwilioClient(ws, custom=params, call_sid=call_sid, label="call-token-reused")
    await assert_rejected(server, again, ids={again.stream_sid})


async def test_twilio_call_token_is_bound_to_its_call(telephony_server, twilio_accounts):
    """A call token minted by globex's webhook for one CallSid opens no stream for another call."""
    server = telephony_server
    globex_call = "CA" + "4" * 32
    status, _ctype, body = await webhook(server, "globex", globex_call)
    assert status == 200, body
    _url, params = parse_twiml(body)
    other_call = "CA" + "5" * 32
    client = TwilioClient(server.ws_url("twilio"), custom=params, call_sid=other_call, label="token-other-call")
    await assert_rejected(server, client)


async def test_other_tenants_key_cannot_take_over_a_call_announced_for_a_tenant(telephony_server, twilio_accounts):
    """globex's webhook announced CallSid X; acme's key on a stream claiming CallSid X is refused."""
    server = telephony_server
    globex_call = "CA" + "6" * 32
    status, _ctype, body = await webhook(server, "globex", globex_call)
    assert status == 200, body
    client = TwilioClient(server.ws_url("twilio"), token=server.keys["acme"], call_sid=globex_call,
                          label="acme-key-globex-call")
    await assert_rejected(server, client)


async def test_outbound_call_to_an_opted_out_number_is_hung_up_before_any_stream(telephony_server, twilio_accounts):
    """Privacy rule 5: a number on the opt-out list is never called again. When Twilio asks for
    instructions on an answered outbound call, serve hangs up instead of connecting a stream."""
    server = telephony_server
    callee = "+14155550777"
    await asyncio.to_thread(server.store.subjects.add_optout, "globex", callee, source="test", actor="test")
    started = server.app.state.vc.calls_started

    def form(direction: str, to: str, sid: str) -> dict[str, str]:
        return {"CallSid": sid, "AccountSid": "AC" + "0" * 32, "From": "+14155550999", "To": to,
                "Direction": direction, "CallStatus": "in-progress"}

    status, ctype, body = await webhook(server, "globex", "", form=form("outbound-api", callee, "CA" + "7" * 32))
    assert status == 200 and "xml" in ctype, (status, body)
    root = ET.fromstring(body)
    assert root.find("./Hangup") is not None and "<Stream" not in body, body
    # an outbound call to a number that is not on the list connects as usual
    status, _ctype, body = await webhook(server, "globex", "", form=form("outbound-api", "+14155550778", "CA" + "8" * 32))
    assert status == 200 and parse_twiml(body)[0].endswith("/ws/twilio"), body
    # the list binds the tenant that holds it only
    status, _ctype, body = await webhook(server, "acme", "", form=form("outbound-dial", callee, "CA" + "9" * 32))
    assert status == 200 and "<Stream" in body, body
    assert server.app.state.vc.calls_started == started  # nothing was started by the refused call
    await asyncio.to_thread(server.store.subjects.remove_optout, "globex", callee, actor="test")
