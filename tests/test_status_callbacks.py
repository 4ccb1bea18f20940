"""Status callbacks of outbound calls, ``POST /providers/<provider>/<tenant>/status``, over a real server.

Each provider posts the way its documentation says (Twilio and Plivo signed forms, Telnyx an
Ed25519-signed JSON body, Vonage a JSON body with its HS256 JWT and payload hash; Asterisk's
relayed ARI events with the stream secret). A wrong signature gets 403 and nothing reaches
``ServerState.on_call_status``; a right one hands the hook the parsed event, for that tenant.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from test_provider_signatures import plivo_v3, telnyx_keys, telnyx_sign, vonage_jwt
from twilio.request_validator import RequestValidator

from voicecore.server import create_app, running_server
from voicecore.server.guard import AuthThrottle
from voicecore.storage import Store
from voicecore.telephony.dialing import CallStatusEvent

TENANTS = {"acme": None, "globex": None}
PUBLIC = "https://voice.example.test"
TWILIO_TOKEN = "twilio-auth-token-acme"
TWILIO_SID = "AC" + "a" * 32
PLIVO_TOKEN = "plivo-auth-token-acme"
VONAGE_SECRET = "vonage-signature-secret-acme-0123456789"
VONAGE_APP = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
ATTEMPT = "att_42"


@pytest.fixture
def credentials(store: Store) -> dict[str, Any]:
    private, public = telnyx_keys()
    store.providers.set("acme", "twilio", {"auth_token": TWILIO_TOKEN, "account_sid": TWILIO_SID}, actor="test")
    store.providers.set("acme", "telnyx", {"public_key": public, "api_key": "KEYacme", "connection_id": "1494"},
                        actor="test")  # fmt: skip
    store.providers.set("acme", "vonage", {"signature_secret": VONAGE_SECRET, "application_id": VONAGE_APP}, actor="test")
    store.providers.set("acme", "plivo", {"auth_token": PLIVO_TOKEN, "auth_id": "MAACME"}, actor="test")
    asterisk = store.providers.create_stream_secret("acme", "asterisk", actor="test")
    return {"telnyx_private": private, "asterisk": asterisk}


class Hook:
    """Stands where the campaign dialer listens: records what reaches it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, CallStatusEvent]] = []
        self.fail = False

    async def __call__(self, tenant: str, provider: str, event: CallStatusEvent) -> None:
        if self.fail:
            raise RuntimeError("the dialer is broken")
        self.events.append((tenant, provider, event))


@pytest.fixture
async def server(store: Store, receptionist: Any, tmp_path: Path, credentials: dict[str, Any]
                 ) -> AsyncIterator[tuple[str, Any, Hook]]:  # fmt: skip
    app = create_app(data_dir=tmp_path, store=store, preload=False, pipelines={receptionist.name: receptionist},
                     public_url=PUBLIC, auth_throttle=AuthThrottle(burst=10_000))  # fmt: skip
    hook = Hook()
    app.state.vc.on_call_status = hook
    async with running_server(app) as base:
        yield base, app, hook


def status_path(provider: str, tenant: str = "acme") -> str:
    return f"/providers/{provider}/{tenant}/status?attempt={ATTEMPT}"


TWILIO_BUSY = {"CallSid": "CA" + "c" * 32, "AccountSid": TWILIO_SID, "From": "+14155550100", "To": "+14155550199",
               "Direction": "outbound-api", "CallStatus": "busy", "CallDuration": "0"}  # fmt: skip
TELNYX_HANGUP = {"data": {"event_type": "call.hangup", "id": "0ccc7b54", "occurred_at": "2026-01-01T12:00:00Z",
                          "record_type": "event",
                          "payload": {"call_control_id": "v3:call-1", "hangup_cause": "no_answer",
                                      "client_state": base64.b64encode(ATTEMPT.encode()).decode(),
                                      "from": "+14155550100", "to": "+14155550199"}}}  # fmt: skip
VONAGE_MACHINE = {"uuid": "63f61863-4a51-4f6b-86e1-46edebcf9356", "conversation_uuid": "CON-1", "status": "machine",
                  "from": "14155550100", "to": "14155550199", "direction": "outbound"}  # fmt: skip
PLIVO_COMPLETED = {"CallUUID": "e1e7d4b2-0000", "RequestUUID": "9834029e-58b6", "CallStatus": "completed",
                   "Duration": "31", "HangupCause": "NORMAL_CLEARING", "Direction": "outbound"}  # fmt: skip
ARI_ANSWERED = {"type": "ChannelStateChange", "channel": {"id": ATTEMPT, "state": "Up"}}


def signed(provider: str, creds: dict[str, Any], *, good: bool = True, tenant: str = "acme",
           payload: Any = None) -> dict[str, Any]:  # fmt: skip
    """The status callback ``provider`` sends, signed as its documentation says (``good=False``: with
    the wrong secret)."""
    path = status_path(provider, tenant)
    url = PUBLIC + path
    if provider == "twilio":
        form = payload or TWILIO_BUSY
        token = TWILIO_TOKEN if good else "someone-elses-token"
        return {"path": path, "data": form,
                "headers": {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, form)}}  # fmt: skip
    if provider == "plivo":
        form = payload or PLIVO_COMPLETED
        nonce = "05429567804466091622"
        token = PLIVO_TOKEN if good else "someone-elses-token"
        return {"path": path, "data": form, "headers": {"X-Plivo-Signature-V3": plivo_v3(token, "POST", url, form, nonce),
                                                        "X-Plivo-Signature-V3-Nonce": nonce}}  # fmt: skip
    body = json.dumps(payload or {"telnyx": TELNYX_HANGUP, "vonage": VONAGE_MACHINE, "asterisk": ARI_ANSWERED}[provider]).encode()
    headers = {"Content-Type": "application/json"}
    if provider == "telnyx":
        ts = str(int(time.time()))
        key = creds["telnyx_private"] if good else telnyx_keys()[0]
        headers |= {"telnyx-signature-ed25519": telnyx_sign(key, ts, body), "telnyx-timestamp": ts}
    elif provider == "vonage":
        secret = VONAGE_SECRET if good else "another-signature-secret-0123456789"
        token = vonage_jwt(secret, application_id=VONAGE_APP, payload_hash=hashlib.sha256(body).hexdigest())
        headers["Authorization"] = f"Bearer {token}"
    else:  # asterisk: the relay authenticates with the tenant's Asterisk stream secret
        password = creds["asterisk"] if good else "vcs" + "0" * 60
        headers["Authorization"] = "Basic " + base64.b64encode(f"acme:{password}".encode()).decode()
    return {"path": path, "data": body, "headers": headers}


async def post(base: str, request: dict[str, Any]) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.post(base + request["path"], data=request["data"], headers=request["headers"]) as reply:
            return reply.status, await reply.text()


PROVIDERS = ["twilio", "telnyx", "vonage", "plivo", "asterisk"]
EXPECTED = {
    "twilio": ("CA" + "c" * 32, "busy", None),
    "telnyx": ("v3:call-1", "no_answer", None),
    "vonage": ("63f61863-4a51-4f6b-86e1-46edebcf9356", "machine", "machine"),
    "plivo": ("9834029e-58b6", "completed", None),
    "asterisk": (ATTEMPT, "answered", None),
}


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_signed_status_callback_reaches_the_dialer(server: tuple[str, Any, Hook], credentials: dict[str, Any],
                                                           provider: str) -> None:  # fmt: skip
    base, _, hook = server
    status, text = await post(base, signed(provider, credentials))
    assert status == (200 if provider == "telnyx" else 204), text
    [(tenant, got_provider, event)] = hook.events
    assert (tenant, got_provider) == ("acme", provider)
    assert (event.provider_call_id, event.status, event.answered_by) == EXPECTED[provider]
    assert event.attempt_id == ATTEMPT


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_wrongly_signed_status_callback_is_refused(server: tuple[str, Any, Hook],
                                                           credentials: dict[str, Any], provider: str) -> None:  # fmt: skip
    base, app, hook = server
    status, text = await post(base, signed(provider, credentials, good=False))
    assert status == 403 and "could not be verified" in text
    unsigned = signed(provider, credentials)
    unsigned["headers"] = {k: v for k, v in unsigned["headers"].items() if k == "Content-Type"}
    assert (await post(base, unsigned))[0] == 403
    # signed for acme, sent as globex (which has no credentials): refused too
    other = signed(provider, credentials)
    other["path"] = status_path(provider, "globex")
    assert (await post(base, other))[0] == 403
    assert hook.events == []
    assert f'provider="{provider}"' in app.state.vc.metrics.render()


async def test_a_tampered_body_is_refused(server: tuple[str, Any, Hook], credentials: dict[str, Any]) -> None:
    base, _, hook = server
    for provider in ("telnyx", "vonage"):
        request = signed(provider, credentials)
        request["data"] = request["data"].replace(b"no_answer", b"normal_clearing").replace(b'"machine"', b'"human"')
        assert (await post(base, request))[0] == 403, provider
    request = signed("twilio", credentials)
    request["data"] = dict(request["data"], CallStatus="completed")
    assert (await post(base, request))[0] == 403
    assert hook.events == []


async def test_twilio_callbacks_for_another_account_are_refused(server: tuple[str, Any, Hook],
                                                                credentials: dict[str, Any]) -> None:  # fmt: skip
    base, _, hook = server
    form = dict(TWILIO_BUSY, AccountSid="AC" + "f" * 32)
    assert (await post(base, signed("twilio", credentials, payload=form)))[0] == 403
    assert hook.events == []


async def test_callbacks_that_say_nothing_are_acknowledged_and_dropped(server: tuple[str, Any, Hook],
                                                                        credentials: dict[str, Any]) -> None:  # fmt: skip
    base, _, hook = server
    streaming = {"data": {"event_type": "call.streaming.started", "payload": {"call_control_id": "v3:call-1"}}}
    assert (await post(base, signed("telnyx", credentials, payload=streaming)))[0] == 200
    unreadable = {"CallSid": "CA1", "AccountSid": TWILIO_SID, "CallStatus": "exploded"}
    assert (await post(base, signed("twilio", credentials, payload=unreadable)))[0] == 400
    assert hook.events == []


async def test_without_a_dialer_callbacks_are_acknowledged(server: tuple[str, Any, Hook],
                                                           credentials: dict[str, Any]) -> None:  # fmt: skip
    base, app, hook = server
    app.state.vc.on_call_status = None
    assert (await post(base, signed("twilio", credentials)))[0] == 204
    app.state.vc.on_call_status = hook
    hook.fail = True
    assert (await post(base, signed("vonage", credentials)))[0] == 500  # the provider may retry
    assert hook.events == []


async def test_unknown_providers_have_no_status_url(server: tuple[str, Any, Hook]) -> None:
    base, _, _ = server
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/providers/exotel/acme/status", data={"CallSid": "x"}) as reply:
            assert reply.status == 404



def test_dialing_credentials_survive_storage(store: Store) -> None:
    """A Vonage private key pasted base64-encoded comes back from the encrypted store as the PEM that signs."""
    from test_dialing import VONAGE_PEM, VONAGE_PUBLIC, request

    from voicecore.telephony.dialing import build_create_call

    store.providers.set("acme", "vonage", {"signature_secret": VONAGE_SECRET, "application_id": VONAGE_APP,
                                           "private_key": base64.b64encode(VONAGE_PEM.encode()).decode()},
                        actor="test")  # fmt: skip
    info = store.providers.get("acme", "vonage")
    assert info is not None and "private_key" in info.secrets_set and not info.missing
    stored = store.providers.secrets("acme", "vonage")
    assert stored is not None and stored["private_key"] == VONAGE_PEM
    http = build_create_call("vonage", stored, request("vonage"))
    claims = jwt.decode(http.headers["Authorization"].split()[1], VONAGE_PUBLIC, algorithms=["RS256"])
    assert claims["application_id"] == VONAGE_APP
