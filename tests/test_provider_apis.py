"""The fake provider REST APIs of ``voicecore.testing.provider_apis``, checked against what the
providers document and against voicecore's own checks.

Create-call requests are sent by hand here, the way each provider's documentation shows them
(not with voicecore's dialer), so these tests say whether the fakes are faithful: wrong
credentials get the provider's 401, an accepted request its documented answer; the status
callbacks arrive at a receiver on 127.0.0.1 and pass the signature checks of
``voicecore.telephony.signatures``; busy / no-answer / machine / failed numbers send their callback
sequence and open no media. The ``models`` tests dial into a real in-process ``serve`` with the
default models: the fake opens the provider's media stream with the tenant's ``agent`` key as the
stream token, and the callee hears the greeting and a reply to its question.
"""

from __future__ import annotations

import asyncio
import base64
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import MultiDict

from voicecore.server import create_app, running_server
from voicecore.server.guard import AuthThrottle
from voicecore.storage import Store
from voicecore.telephony.signatures import SignatureError, check_twilio_signature
from voicecore.testing.callers import rms, wait_stored_call
from voicecore.testing.provider_apis import FakeTwilioApi, Scenario

TENANTS = {"acme": None}
TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-auth-token-for-the-fake-0001"
CALLEE = "+14155550123"
CALLER_ID = "+14155550100"
QUESTION = "What are your opening hours on Saturday?"
SPEECH_RMS = 300.0


# --------------------------------------------------------------------------- a callback receiver


@dataclass
class Hook:
    url: str  # the full URL as requested (path and query)
    headers: dict[str, str]
    body: bytes

    @property
    def form(self) -> MultiDict[str]:
        return MultiDict(urllib.parse.parse_qsl(self.body.decode(), keep_blank_values=True))


@dataclass
class HookReceiver:
    base: str = ""
    hooks: list[Hook] = field(default_factory=list)

    def url(self, path: str = "/status", **query: str) -> str:
        return f"{self.base}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")

    def twilio_events(self) -> list[tuple[str, str]]:
        return [(h.form["CallStatus"], h.form["SequenceNumber"]) for h in self.hooks]


@pytest.fixture
async def hooks() -> AsyncIterator[HookReceiver]:
    receiver = HookReceiver()

    async def take(request: web.Request) -> web.Response:
        receiver.hooks.append(Hook(str(request.url), dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", take)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield receiver
    await runner.cleanup()


# --------------------------------------------------------------------------- Twilio


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def twilio_form(to: str, status_url: str, *, twiml: str | None = None, amd: bool = True) -> list[tuple[str, str]]:
    """A create-call form as Twilio's "Create a Call" documentation shows it (repeated StatusCallbackEvent)."""
    form = [("To", to), ("From", CALLER_ID),
            ("Twiml", twiml or "<Response><Connect><Stream url=\"ws://127.0.0.1:9/ws/twilio\"/></Connect></Response>"),
            ("StatusCallback", status_url), ("StatusCallbackMethod", "POST"), ("Timeout", "30")]  # fmt: skip
    form += [("StatusCallbackEvent", e) for e in ("initiated", "ringing", "answered", "completed")]
    if amd:
        form.append(("MachineDetection", "Enable"))
    return form


async def twilio_create(api: FakeTwilioApi, form: list[tuple[str, str]], *, sid: str = TWILIO_SID,
                        token: str = TWILIO_TOKEN, timeout: float = 10) -> tuple[int, Any]:  # fmt: skip
    url = f"{api.base_url}/2010-04-01/Accounts/{sid}/Calls.json"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        async with http.post(url, data=form, headers={"Authorization": basic(sid, token)}) as resp:
            return resp.status, await resp.json()


def verify_twilio(hook: Hook) -> None:
    check_twilio_signature(TWILIO_TOKEN, hook.url, hook.form, hook.headers.get("X-Twilio-Signature"))


async def test_twilio_wrong_credentials_get_twilios_401_and_place_no_call(hooks: HookReceiver) -> None:
    async with FakeTwilioApi(TWILIO_SID, TWILIO_TOKEN) as api:
        form = twilio_form(CALLEE, hooks.url())
        for sid, token in ((TWILIO_SID, "wrong-token"), ("AC" + "f" * 32, TWILIO_TOKEN)):
            status, body = await twilio_create(api, form, sid=sid, token=token)
            assert status == 401, (status, body)
            assert body["code"] == 20003 and body["status"] == 401 and body["message"] == "Authenticate", body
            assert body["more_info"] == "https://www.twilio.com/docs/errors/20003"
        # no Authorization header at all
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{api.base_url}/2010-04-01/Accounts/{TWILIO_SID}/Calls.json", data=form) as resp:
                assert resp.status == 401 and (await resp.json())["code"] == 20003
        # a missing parameter: 400 with Twilio's code for it
        status, body = await twilio_create(api, [kv for kv in form if kv[0] != "To"])
        assert (status, body["code"]) == (400, 21201), body
        status, body = await twilio_create(api, [kv for kv in form if kv[0] != "From"])
        assert (status, body["code"]) == (400, 21603), body
        await asyncio.sleep(0.2)
        assert not api.calls and api.dials_to(CALLEE) == 0
        assert [r.status for r in api.requests] == [401, 401, 401, 400, 400]
    assert not hooks.hooks, "a refused request sent status callbacks"


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ("busy", [("initiated", None), ("busy", None)]),
        ("no_answer", [("initiated", None), ("ringing", None), ("no-answer", None)]),
        ("failed", [("initiated", None), ("failed", None)]),
        ("machine", [("initiated", None), ("ringing", None), ("in-progress", "machine_start"),
                     ("completed", "machine_start")]),
    ],
)  # fmt: skip
async def test_twilio_unanswered_numbers_send_their_callbacks_and_open_no_media(
    hooks: HookReceiver, outcome: str, expected: list[tuple[str, str | None]]
) -> None:
    async with FakeTwilioApi(TWILIO_SID, TWILIO_TOKEN, scenarios={CALLEE: outcome}) as api:
        status, body = await twilio_create(api, twilio_form(CALLEE, hooks.url(attempt="a-1")))
        assert status == 201, body
        assert body["sid"].startswith("CA") and len(body["sid"]) == 34 and body["status"] == "queued"
        assert (body["to"], body["from"], body["direction"]) == (CALLEE, CALLER_ID, "outbound-api")
        [record] = await api.wait_calls(1, timeout=20)
    assert record.client is None and record.stream_url is None, "media was opened for an unanswered call"
    got = [(h.form["CallStatus"], h.form.get("AnsweredBy")) for h in hooks.hooks]
    assert got == expected, got
    assert [h.form["SequenceNumber"] for h in hooks.hooks] == [str(i) for i in range(len(expected))]
    for hook in hooks.hooks:
        verify_twilio(hook)  # signed over the full URL, query included
        assert hook.form["CallSid"] == body["sid"] and hook.form["AccountSid"] == TWILIO_SID
        assert urllib.parse.urlsplit(hook.url).query == "attempt=a-1"
    assert hooks.hooks[-1].form["CallDuration"] == "0" or outcome == "machine"
    assert api.dials_to(CALLEE) == 1


async def test_twilio_signatures_fail_with_another_token_and_only_subscribed_events_are_sent(
    hooks: HookReceiver,
) -> None:
    async with FakeTwilioApi(TWILIO_SID, TWILIO_TOKEN, scenario="busy") as api:
        form = [kv for kv in twilio_form(CALLEE, hooks.url()) if kv[0] != "StatusCallbackEvent"]
        assert (await twilio_create(api, form))[0] == 201
        assert (await twilio_create(api, form))[0] == 201
        await api.wait_calls(2, timeout=20)
    # no StatusCallbackEvent: only "completed" (Twilio's default)
    assert [h.form["CallStatus"] for h in hooks.hooks] == ["busy", "busy"]
    hook = hooks.hooks[0]
    verify_twilio(hook)
    with pytest.raises(SignatureError):
        check_twilio_signature("another-auth-token", hook.url, hook.form, hook.headers["X-Twilio-Signature"])
    tampered = MultiDict(hook.form)
    tampered["CallStatus"] = "completed"
    with pytest.raises(SignatureError):
        check_twilio_signature(TWILIO_TOKEN, hook.url, tampered, hook.headers["X-Twilio-Signature"])
    assert api.dials_to(CALLEE) == 2 and len({c.call_id for c in api.calls}) == 2


async def test_twilio_500_and_a_request_never_answered() -> None:
    async with FakeTwilioApi(TWILIO_SID, TWILIO_TOKEN, scenarios={CALLEE: "fail_500", "+14155550124": "timeout"}) as api:
        status, body = await twilio_create(api, twilio_form(CALLEE, "http://127.0.0.1:9/status"))
        assert status == 500 and body["status"] == 500 and isinstance(body["code"], int), body
        with pytest.raises(TimeoutError):
            await twilio_create(api, twilio_form("+14155550124", "http://127.0.0.1:9/status"), timeout=1.0)
        assert not api.calls
        assert [r.status for r in api.requests] == [500, 0]  # the second is still held


# --------------------------------------------------------------------------- a real serve


@pytest.fixture
async def serve(store: Store, pool: Any, receptionist: Any, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """An in-process ``serve`` with the default models; yields (ws base URL, acme's agent key)."""
    key = store.tenants.create_api_key("acme", role="agent", actor="test")
    app = create_app(data_dir=tmp_path, store=store, pool=pool, preload=False,
                     pipelines={receptionist.name: receptionist}, auth_throttle=AuthThrottle(burst=1000))  # fmt: skip
    pool.for_pipeline(receptionist)  # loaded before the dial: the greeting is not held up by a load
    async with running_server(app) as base:
        yield base.replace("http", "ws", 1), key


@pytest.mark.models
async def test_twilio_answered_call_streams_to_serve_and_the_callee_hears_the_agent(
    serve: tuple[str, str], store: Store, hooks: HookReceiver, say: Any
) -> None:
    ws_base, key = serve
    say(QUESTION, voice="en-us+f3", speed=130)  # the log check knows the sentence
    twiml = (f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="{ws_base}/ws/twilio">'
             f'<Parameter name="token" value="{key}"/></Stream></Connect></Response>')  # fmt: skip
    scenario = Scenario(script=(QUESTION,))
    async with FakeTwilioApi(TWILIO_SID, TWILIO_TOKEN, scenarios={CALLEE: scenario}) as api:
        status, body = await twilio_create(api, twilio_form(CALLEE, hooks.url(attempt="a-7"), twiml=twiml))
        assert status == 201, body
        [record] = await api.wait_calls(1, timeout=180)
    client = record.client
    assert client is not None and record.stream_error is None, record.stream_error
    assert not client.violations, client.violations[:5]
    # the parameters of the TwiML arrived as Twilio's customParameters: the server took the key
    assert record.stream_url == f"{ws_base}/ws/twilio"
    assert record.first_agent_audio_at is not None, "no greeting"
    assert record.received_at < record.stream_started_at < record.first_agent_audio_at
    assert 0 < record.dial_to_greeting_s < 60
    greeting = client.agent_audio(until=record.replies[0].speech_end_at)
    assert rms(greeting) > SPEECH_RMS, f"greeting is silent (RMS {rms(greeting):.0f})"
    [reply] = record.replies
    assert reply.first_audio_at is not None, "the agent did not answer the callee"
    answer = client.agent_audio(since=reply.speech_end_at)
    assert answer.size > client.sample_rate * 0.5 and rms(answer) > SPEECH_RMS
    assert record.ended_by == "callee"
    # the call is stored by its Twilio CallSid, with the callee's question in it
    call = await wait_stored_call(store, "acme", {body["sid"]}, timeout=20, with_turns=True)
    assert call is not None and call.ended_at is not None, "the call was not stored and closed"
    assert any(t.role == "caller" and t.text for t in call.turns), [(t.role, t.text) for t in call.turns]
    # the status callbacks: initiated, ringing, answered (human), completed with a duration; all signed
    got = [(h.form["CallStatus"], h.form.get("AnsweredBy")) for h in hooks.hooks]
    assert got == [("initiated", None), ("ringing", None), ("in-progress", "human"), ("completed", "human")], got
    for hook in hooks.hooks:
        verify_twilio(hook)
    assert int(hooks.hooks[-1].form["CallDuration"]) >= 1
    assert time.monotonic() >= record.ended_at
