"""A call from each provider the way a user sets it up: the provider fetches the answer URL
(signed), connects to the media URL it was given with the one-time token it was given, and the
agent greets the caller; Asterisk connects with the stream secret of its websocket_client.conf.
The stored call belongs to the tenant, with the caller the provider reported."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import pytest
from test_provider_answers import (
    VONAGE_APP,
    VONAGE_SECRET,
    media_target,
    send,
    signed_request,
)
from test_provider_signatures import telnyx_keys, vonage_jwt

from voicecore.testing.callers import (
    AsteriskClient,
    ExotelClient,
    PlivoClient,
    ProviderClient,
    TelnyxClient,
    TwilioClient,
    VonageClient,
    wait_stored_call,
)

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.models]


@pytest.fixture
def provider_setup(telephony_server: Any) -> Iterator[dict[str, Any]]:
    """acme's provider accounts on the shared server, and the server's public URL set to where it
    listens (http://127.0.0.1:port, so media URLs say ws://)."""
    server = telephony_server
    state = server.app.state.vc
    store = server.store
    private, public = telnyx_keys()
    store.providers.set("acme", "twilio", {"auth_token": "twilio-auth-token-acme", "account_sid": "ACacme"},
                        actor="test")  # fmt: skip
    store.providers.set("acme", "telnyx", {"public_key": public}, actor="test")
    store.providers.set("acme", "vonage", {"signature_secret": VONAGE_SECRET, "application_id": VONAGE_APP},
                        actor="test")  # fmt: skip
    store.providers.set("acme", "plivo", {"auth_token": "plivo-auth-token-acme"}, actor="test")
    creds = {
        "telnyx_private": private,
        "exotel": store.providers.create_stream_secret("acme", "exotel", actor="test"),
        "asterisk": store.providers.create_stream_secret("acme", "asterisk", actor="test"),
    }
    saved = state.public_url
    state.public_url = server.base_url
    try:
        yield creds
    finally:
        state.public_url = saved
        for provider in ("twilio", "telnyx", "vonage", "plivo", "exotel", "asterisk"):
            store.providers.delete("acme", provider, actor="test")


async def _answer(server: Any, provider: str, creds: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    import test_provider_answers as answers

    saved = answers.PUBLIC
    answers.PUBLIC = server.base_url  # sign for the URL the provider would really call
    try:
        status, _, body = await send(server.base_url, signed_request(provider, creds))
    finally:
        answers.PUBLIC = saved
    assert status == 200, body
    return media_target(provider, body)


async def _greeted(client: ProviderClient) -> None:
    try:
        assert await client.start(), f"upgrade refused: HTTP {client.handshake_status}"
        assert await client.wait_media_after(0.0, 20) is not None, f"{client.provider}: no greeting"
        await asyncio.sleep(0.3)
        await client.hangup()
    finally:
        await client.close()
    assert not client.violations, client.violations[:5]


@pytest.mark.parametrize("provider", ["twilio", "telnyx", "vonage", "plivo", "exotel"])
async def test_a_call_through_the_answer_url(provider: str, telephony_server: Any,
                                             provider_setup: dict[str, Any]) -> None:  # fmt: skip
    server = telephony_server
    url, token, params = await _answer(server, provider, provider_setup)
    assert url.startswith(server.base_url.replace("http", "ws", 1))
    if provider == "twilio":
        client: ProviderClient = TwilioClient(url, custom={"token": token, **params}, call_sid="CA0001")
    elif provider == "telnyx":
        client = TelnyxClient(f"{url}?token={token}", token=token, token_in="custom")
    elif provider == "vonage":
        signed = vonage_jwt(VONAGE_SECRET, application_id=VONAGE_APP)
        client = VonageClient(url, token=token, headers={"Authorization": f"Bearer {signed}"})
    elif provider == "plivo":
        client = PlivoClient(url, token=token)
        client.call_id = "9a4c7b4e-0000"  # the CallUUID of the answer request: the stream's start.callId
        client.opening_messages = lambda: [client.start_message(extra_headers=f"token={token}")]  # type: ignore[method-assign]
    else:
        client = ExotelClient(f"{url}?sample-rate=8000&token={token}")
    started = server.calls_started
    await _greeted(client)
    assert server.calls_started == started + 1
    call = await wait_stored_call(server.store, "acme", client.ids, timeout=10)
    assert call is not None and call.end_reason in ("stop", "hangup")
    if provider == "plivo":  # Plivo's stream does not carry the numbers: the answer request did
        stored = server.store.calls.get("acme", call.call_id, actor="test")
        assert stored.caller == "+14155550100" or stored.caller == "14155550100"


async def test_an_asterisk_call_with_the_snippets_stream_secret(telephony_server: Any,
                                                                provider_setup: dict[str, Any]) -> None:  # fmt: skip
    server = telephony_server
    basic = base64.b64encode(f"acme:{provider_setup['asterisk']}".encode()).decode()
    client = AsteriskClient(server.ws_url("asterisk"), headers={"Authorization": f"Basic {basic}"})
    await _greeted(client)
    assert await wait_stored_call(server.store, "acme", client.ids, timeout=10) is not None


async def test_a_vonage_call_signed_only_by_vonage(telephony_server: Any, provider_setup: dict[str, Any]) -> None:
    """authorization {type: "vonage"} alone: the JWT's application id finds the tenant and its
    signature secret proves it."""
    server = telephony_server
    signed = vonage_jwt(VONAGE_SECRET, application_id=VONAGE_APP)
    client = VonageClient(server.ws_url("vonage"), headers={"Authorization": f"Bearer {signed}"})
    await _greeted(client)
    assert await wait_stored_call(server.store, "acme", client.ids, timeout=10) is not None
