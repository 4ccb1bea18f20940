"""The providers' answer URLs and the credentials behind them, over a real server on 127.0.0.1.

Each provider asks ``/providers/<provider>/<tenant>/answer`` the way its documentation says
(Twilio and Plivo form POSTs with their signatures, Telnyx a body signed with Ed25519, Vonage a
GET with its JWT, Exotel a GET with the stream secret as Basic auth), and gets the document that
connects the call to ``wss://<public URL>/ws/<provider>`` with a one-time call token — never an
API key. Unsigned or wrongly signed requests get one generic 403. No call starts here (no
models): the tokens' acceptance by a real call is in test_provider_calls.py.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_provider_signatures import plivo_v3, telnyx_keys, telnyx_sign, vonage_jwt
from twilio.request_validator import RequestValidator

from voicecore.server import create_app, running_server
from voicecore.server.guard import AuthThrottle
from voicecore.server.state import is_call_token
from voicecore.storage import Store
from voicecore.testing.callers import (
    ExotelClient,
    PlivoClient,
    ProviderClient,
    TwilioClient,
    VonageClient,
)

TENANTS = {"acme": None, "globex": None}
PUBLIC = "https://voice.example.test"
TWILIO_TOKEN = "twilio-auth-token-acme"
PLIVO_TOKEN = "plivo-auth-token-acme"
VONAGE_SECRET = "vonage-signature-secret-acme-0123456789"
VONAGE_APP = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"


@pytest.fixture
def credentials(store: Store) -> dict[str, Any]:
    """acme's accounts at every provider; the Telnyx private key and Exotel secret for signing."""
    private, public = telnyx_keys()
    store.providers.set("acme", "twilio", {"auth_token": TWILIO_TOKEN, "account_sid": "ACacme"}, actor="test")
    store.providers.set("acme", "telnyx", {"public_key": public}, actor="test")
    store.providers.set("acme", "vonage", {"signature_secret": VONAGE_SECRET, "application_id": VONAGE_APP}, actor="test")
    store.providers.set("acme", "plivo", {"auth_token": PLIVO_TOKEN}, actor="test")
    exotel = store.providers.create_stream_secret("acme", "exotel", actor="test")
    asterisk = store.providers.create_stream_secret("acme", "asterisk", actor="test")
    keys = {role: store.tenants.create_api_key("acme", role=role, actor="test") for role in ("admin", "viewer")}
    return {"telnyx_private": private, "exotel": exotel, "asterisk": asterisk, "keys": keys}


@pytest.fixture
async def server(store: Store, receptionist: Any, tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    app = create_app(data_dir=tmp_path, store=store, preload=False, pipelines={receptionist.name: receptionist},
                     public_url=PUBLIC, auth_throttle=AuthThrottle(burst=10_000))  # fmt: skip
    async with running_server(app) as base:
        yield base, app


def answer_path(provider: str, tenant: str = "acme", query: str = "") -> str:
    return f"/providers/{provider}/{tenant}/answer" + (f"?{query}" if query else "")


def signed_request(provider: str, creds: dict[str, Any], *, path: str | None = None, sign: bool = True,
                   form: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """The request ``provider`` sends to the answer URL, signed as its documentation says."""
    path = path or answer_path(provider)
    public_url = PUBLIC + path
    form = form if form is not None else {
        "twilio": {"CallSid": "CA0001", "AccountSid": "ACacme", "From": "+14155550100", "To": "+14155550199",
                   "Direction": "inbound"},
        "telnyx": {"CallSid": "v3:telnyx-1", "From": "+13122010094", "To": "+13122123456", "Direction": "inbound"},
        "vonage": {"from": "447700900000", "to": "447700900001", "uuid": "63f61863", "conversation_uuid": "CON-1"},
        "plivo": {"CallUUID": "9a4c7b4e-0000", "From": "14155550100", "To": "14155550199", "Direction": "inbound"},
        "exotel": {"CallSid": "exo-1", "From": "09876543210", "To": "08047491899"},
    }[provider]
    headers: dict[str, str] = {}
    if provider == "twilio":
        if sign:
            headers["X-Twilio-Signature"] = RequestValidator(TWILIO_TOKEN).compute_signature(public_url, form)
        return {"method": "POST", "path": path, "data": form, "headers": headers}
    if provider == "telnyx":
        body = urllib.parse.urlencode(form).encode()
        ts = str(int(time.time()))
        if sign:
            headers = {"telnyx-signature-ed25519": telnyx_sign(creds["telnyx_private"], ts, body), "telnyx-timestamp": ts}
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        return {"method": "POST", "path": path, "data": body, "headers": headers}
    if provider == "vonage":
        if sign:
            headers["Authorization"] = f"Bearer {vonage_jwt(VONAGE_SECRET, application_id=VONAGE_APP)}"
        query = urllib.parse.urlencode(form)
        return {"method": "GET", "path": f"{path}{'&' if '?' in path else '?'}{query}", "headers": headers}
    if provider == "plivo":
        if sign:
            nonce = "05429567804466091622"
            headers = {"X-Plivo-Signature-V3": plivo_v3(PLIVO_TOKEN, "POST", public_url, form, nonce),
                       "X-Plivo-Signature-V3-Nonce": nonce}  # fmt: skip
        return {"method": "POST", "path": path, "data": form, "headers": headers}
    if sign:
        headers["Authorization"] = "Basic " + base64.b64encode(f"acme:{creds['exotel']}".encode()).decode()
    return {"method": "GET", "path": f"{path}{'&' if '?' in path else '?'}{urllib.parse.urlencode(form)}",
            "headers": headers}


async def send(base: str, request: dict[str, Any]) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session:
        async with session.request(request["method"], base + request["path"], data=request.get("data"),
                                   headers=request.get("headers")) as reply:  # fmt: skip
            return reply.status, reply.headers.get("content-type", ""), await reply.text()


def media_target(provider: str, body: str) -> tuple[str, str, dict[str, str]]:
    """(media URL, one-time token, other parameters) from the document an answer URL returned."""
    if provider in ("twilio", "telnyx"):
        stream = ET.fromstring(body).find("./Connect/Stream")
        assert stream is not None, body
        params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
        url = stream.get("url", "")
        return url.split("?")[0], params.pop("token"), params
    if provider == "vonage":
        [action] = json.loads(body)
        [endpoint] = action["endpoint"]
        headers = dict(endpoint["headers"])
        assert endpoint["authorization"] == {"type": "vonage"}
        return endpoint["uri"], headers.pop("token"), headers
    if provider == "plivo":
        stream = ET.fromstring(body).find("Stream")
        assert stream is not None and stream.text
        extra = dict(item.split("=", 1) for item in stream.get("extraHeaders", "").split(","))
        return stream.text, extra.pop("token"), extra
    url = json.loads(body)["url"]
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    return url.split("?")[0], query.pop("token"), query


PROVIDERS = ["twilio", "telnyx", "vonage", "plivo", "exotel"]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_signed_answer_request_gets_a_wss_document_with_a_one_time_token(
    provider: str, server: tuple[str, Any], credentials: dict[str, Any]
) -> None:
    base, app = server
    status, content_type, body = await send(base, signed_request(provider, credentials))
    assert status == 200, body
    url, token, params = media_target(provider, body)
    assert url == f"wss://voice.example.test/ws/{provider}"  # from --public-url, whatever the request said
    assert is_call_token(token) and token.isalnum()
    assert "vck_" not in body and "vcs" not in body  # no API key, no stream secret
    grant = app.state.vc.store.call_tokens.peek(token)
    assert grant is not None
    assert grant.tenant == "acme" and grant.provider == provider
    if provider == "plivo":
        assert params == {}  # Plivo's extraHeaders: the token only (letters and digits)
        assert (grant.caller, grant.callee) == ("14155550100", "14155550199")  # the stream gets them from here
    if provider == "twilio":
        assert params == {"from": "+14155550100", "to": "+14155550199"} and grant.call_id == "CA0001"
    if provider == "exotel":
        assert params == {"sample-rate": "8000"}
    expected_type = "application/json" if provider in ("vonage", "exotel") else "application/xml"
    assert content_type.startswith(expected_type)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_unsigned_or_wrongly_signed_answer_requests_are_refused_alike(
    provider: str, server: tuple[str, Any], credentials: dict[str, Any]
) -> None:
    base, app = server
    metrics = app.state.vc.metrics
    unsigned = await send(base, signed_request(provider, credentials, sign=False))
    other_tenant = await send(base, signed_request(provider, credentials, path=answer_path(provider, "globex")))
    unknown_tenant = await send(base, signed_request(provider, credentials, path=answer_path(provider, "nobody")))
    tampered = signed_request(provider, credentials)
    if "data" in tampered and isinstance(tampered["data"], dict):
        tampered["data"] = tampered["data"] | {"To": "+19995550000"}
    elif "data" in tampered:
        tampered["data"] = tampered["data"].replace(b"%2B1312", b"%2B1999")
    elif provider == "vonage":
        tampered["headers"]["Authorization"] = f"Bearer {vonage_jwt('another-vonage-secret-0123456789-xyz')}"
    else:
        tampered["headers"]["Authorization"] = "Basic " + base64.b64encode(
            f"acme:{credentials['asterisk']}".encode()).decode()  # another provider's stream secret  # fmt: skip
    changed = await send(base, tampered)
    for status, _, body in (unsigned, other_tenant, unknown_tenant, changed):
        assert status == 403 and body == unsigned[2]  # one answer: it tells nothing about the tenant
        assert "ct" not in body.split() and "<Connect>" not in body
    assert app.state.vc.store.call_tokens.unused() == 0
    rejected = sum(n for (p, _), n in metrics.webhooks_rejected_total.items() if p == provider)
    assert rejected == 4
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/metrics") as reply:
            assert f'voicecore_answer_requests_rejected_total{{provider="{provider}"' in await reply.text()


async def test_the_twilio_account_sid_is_checked_when_stored(server: tuple[str, Any],
                                                             credentials: dict[str, Any]) -> None:  # fmt: skip
    base, _ = server
    form = {"CallSid": "CA0002", "AccountSid": "ACsomeoneelse", "From": "+14155550100", "To": "+14155550199"}
    status, _, _ = await send(base, signed_request("twilio", credentials, form=form))
    assert status == 403


async def test_missing_credentials_say_how_to_store_them_in_the_log(server: tuple[str, Any], store: Store) -> None:
    from loguru import logger

    base, _ = server
    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING", format="{message}")
    try:
        status, _, body = await send(base, {"method": "POST", "path": answer_path("twilio", "globex"),
                                            "data": {"CallSid": "CA1"}, "headers": {"X-Twilio-Signature": "x"}})
    finally:
        logger.remove(sink)
    assert status == 403
    assert any("globex" in line and "voicecore providers set twilio" in line for line in lines), lines


async def test_the_pipeline_of_an_answer_url_and_unknown_ones(server: tuple[str, Any], credentials: dict[str, Any],
                                                              receptionist: Any) -> None:  # fmt: skip
    base, app = server
    path = answer_path("twilio", query=f"pipeline={receptionist.name}")
    status, _, body = await send(base, signed_request("twilio", credentials, path=path))
    assert status == 200, body
    _, token, _ = media_target("twilio", body)
    assert app.state.vc.store.call_tokens.peek(token).pipeline == receptionist.name
    status, _, body = await send(base, signed_request("twilio", credentials, path=answer_path("twilio", query="pipeline=nope")))
    assert status == 404 and "nope" in body


async def test_an_outbound_call_to_an_opted_out_number_is_hung_up(server: tuple[str, Any], store: Store,
                                                                  credentials: dict[str, Any]) -> None:  # fmt: skip
    base, _ = server
    store.subjects.add_optout("acme", "+14155550111", actor="test")
    for provider, hangup in (("twilio", "<Hangup"), ("plivo", "<Hangup"), ("telnyx", "<Hangup")):
        field = {"twilio": "CallSid", "plivo": "CallUUID", "telnyx": "CallSid"}[provider]
        form = {field: "X1", "From": "+14155550100", "To": "+14155550111", "Direction": "outbound-api"}
        if provider == "twilio":
            form["AccountSid"] = "ACacme"
        status, _, body = await send(base, signed_request(provider, credentials, form=form))
        assert status == 200 and hangup in body and "Stream" not in body, (provider, body)


async def test_the_old_twilio_webhook_is_gone_and_asterisk_has_no_answer_url(server: tuple[str, Any],
                                                                             credentials: dict[str, Any]) -> None:  # fmt: skip
    base, _ = server
    key = credentials["keys"]["admin"]
    status, _, body = await send(base, {"method": "POST", "path": f"/twilio/voice?token={key}", "data": {"CallSid": "CA1"}})
    assert status == 410 and "/providers/twilio/<tenant>/answer" in body and key not in body
    status, _, body = await send(base, {"method": "GET", "path": answer_path("asterisk")})
    assert status == 404 and "snippet asterisk" in body


# --------------------------------------------------------------------------- media streams


def local(url: str, base: str) -> str:
    """The media URL an answer gave, pointed at the test server."""
    return url.replace("wss://voice.example.test", "ws" + base.removeprefix("http"))


async def refused(client: ProviderClient) -> int | None:
    try:
        assert await client.start(mic=False)
        await client.wait_closed(10)
        return client.close_code
    finally:
        await client.close()


async def test_a_one_time_token_opens_nothing_on_another_providers_socket_or_call(
    server: tuple[str, Any], credentials: dict[str, Any]
) -> None:
    base, app = server
    state = app.state.vc
    _, _, body = await send(base, signed_request("twilio", credentials))
    url, token, _ = media_target("twilio", body)
    # minted for Twilio call CA0001: on Plivo's socket, it is refused (and used up)
    assert await refused(PlivoClient(local(url, base).replace("/twilio", "/plivo"), token=token,
                                     token_in="extra_headers")) == 1008  # fmt: skip
    assert state.store.call_tokens.peek(token) is None  # used up
    _, _, body = await send(base, signed_request("twilio", credentials))
    url, token, _ = media_target("twilio", body)
    assert await refused(TwilioClient(local(url, base), token=token, call_sid="CAotherCall")) == 1008
    assert state.calls_started == 0


async def test_stream_secrets_open_only_their_providers_streams(server: tuple[str, Any],
                                                                credentials: dict[str, Any]) -> None:  # fmt: skip
    base, app = server
    ws = "ws" + base.removeprefix("http")
    # Exotel's secret on Exotel's socket passes authentication; on Asterisk's it does not.
    from voicecore.testing.callers import AsteriskClient

    assert await refused(AsteriskClient(f"{ws}/ws/asterisk", token=credentials["exotel"])) == 1008
    assert await refused(ExotelClient(f"{ws}/ws/exotel", token="vcs" + "0" * 60)) == 1008
    assert app.state.vc.calls_started == 0
    assert app.state.vc.metrics.rejected_total[("asterisk", "bad_token")] == 1


async def test_a_vonage_jwt_from_another_account_opens_nothing(server: tuple[str, Any],
                                                               credentials: dict[str, Any]) -> None:  # fmt: skip
    base, app = server
    ws = "ws" + base.removeprefix("http")
    forged = vonage_jwt("not-the-signature-secret-0123456789-abc", application_id=VONAGE_APP)
    client = VonageClient(f"{ws}/ws/vonage", headers={"Authorization": f"Bearer {forged}"})
    assert await refused(client) == 1008
    # and with a valid one-time token, a JWT that does not check out still refuses the call
    _, _, body = await send(base, signed_request("vonage", credentials))
    _, token, _ = media_target("vonage", body)
    client = VonageClient(f"{ws}/ws/vonage", token=token, headers={"Authorization": f"Bearer {forged}"})
    assert await refused(client) == 1008
    assert app.state.vc.calls_started == 0


# --------------------------------------------------------------------------- the public URL


async def test_serve_warns_without_a_public_url(store: Store, receptionist: Any, tmp_path: Path) -> None:
    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING", format="{message}")
    try:
        for public_url in (None, "http://voice.example.test"):
            app = create_app(data_dir=tmp_path, store=store, preload=False, public_url=public_url,
                             pipelines={receptionist.name: receptionist})  # fmt: skip
            async with running_server(app):
                pass
    finally:
        logger.remove(sink)
    assert any("no public URL" in line and "ws://" in line for line in lines), lines
    assert any("is http://" in line for line in lines), lines
    with pytest.raises(ValueError, match="public URL"):
        create_app(data_dir=tmp_path, store=store, preload=False, public_url="ftp://voice.example.test",
                   pipelines={receptionist.name: receptionist})  # fmt: skip


async def test_without_a_public_url_the_proxy_headers_decide(store: Store, receptionist: Any, tmp_path: Path,
                                                             credentials: dict[str, Any]) -> None:  # fmt: skip
    app = create_app(data_dir=tmp_path, store=store, preload=False, pipelines={receptionist.name: receptionist})
    async with running_server(app) as base:
        request = signed_request("twilio", credentials)
        request["headers"] |= {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "voice.example.test"}
        status, _, body = await send(base, request)
    assert status == 200, body
    assert media_target("twilio", body)[0] == "wss://voice.example.test/ws/twilio"
