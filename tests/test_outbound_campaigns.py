"""Outbound campaigns end to end (issue 14): ``serve``'s dialer calls a segment through a fake
provider REST API on 127.0.0.1 (written from the provider's documentation:
:mod:`voicecore.testing.provider_apis`); the fake opens the media stream back to ``serve`` with
the one-time token it was given, a callee made with espeak-ng talks to the real default models,
the signed status callbacks settle each attempt. What is checked is what the issue asks:
outcomes per number, each contact dialed once per attempt, the do-not-call list enforced before
every dial (an opt-out said during a campaign call stops every campaign of the tenant), wrong
credentials pause the campaign, forged status callbacks change nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from voicecore.server import create_app, running_server
from voicecore.server.guard import AuthThrottle
from voicecore.storage import Store
from voicecore.testing.inference import free_port
from voicecore.testing.provider_apis import FakeTelnyxApi, FakeTwilioApi, Scenario

TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-auth-token-for-the-fake-0001"
FROM = "+14155550100"
ANSWERS, BUSY, NO_ANSWER, OPTS_OUT = "+14155550111", "+14155550112", "+14155550113", "+14155550114"
LEADS = f"phone,first_name\n{ANSWERS},Ann\n{BUSY},Bob\n{NO_ANSWER},Cy\n{OPTS_OUT},Dee\n".encode()


@dataclass
class Deployment:
    store: Store
    base: str
    app: Any

    @property
    def dialer(self) -> Any:
        return self.app.state.vc.dialer


@pytest.fixture
async def deployment(tmp_path: Path, receptionist, monkeypatch) -> AsyncIterator[Deployment]:
    """``serve`` in process on a known port (its public URL is what the fake provider reaches)."""
    port = free_port()
    store = Store(tmp_path / "data", allow_insecure_webhooks=True)
    app = create_app(data_dir=tmp_path / "data", store=store, pipelines={receptionist.name: receptionist},
                     public_url=f"http://127.0.0.1:{port}", auth_throttle=AuthThrottle(burst=10_000),
                     dialer_poll_s=0.2, preload=False)  # fmt: skip
    async with running_server(app, port=port) as base:
        yield Deployment(store, base, app)
    store.close()


def make_tenant(store: Store, provider_fields: dict[str, str], provider: str = "twilio") -> None:
    store.tenants.create("acme", actor="test")
    store.providers.set("acme", provider, provider_fields, actor="test")
    store.contacts.import_file("acme", LEADS, segment="leads", actor="test")


async def wait_for(predicate, timeout: float, what: str) -> Any:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        await asyncio.sleep(0.2)


@pytest.mark.models
async def test_a_twilio_campaign_calls_each_contact_once_and_records_every_outcome(
    deployment: Deployment, monkeypatch
) -> None:  # fmt: skip
    store = deployment.store
    async with FakeTwilioApi(TWILIO_SID, TWILIO_TOKEN, scenarios={
        ANSWERS: Scenario(script=("Hello? Who is calling?",)), BUSY: "busy", NO_ANSWER: "no_answer",
        OPTS_OUT: Scenario(script=("Please don't call me again.",)),
    }) as fake:  # fmt: skip
        monkeypatch.setenv("VOICECORE_TWILIO_API_BASE", fake.base_url)
        make_tenant(store, {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN})
        store.campaigns.create("acme", "spring", pipeline="receptionist", segment="leads", from_number=FROM,
                               provider="twilio", window="daily 00:00-24:00", max_concurrent=2, max_attempts=1,
                               actor="test")  # fmt: skip
        store.campaigns.start("acme", "spring", actor="test")
        deployment.dialer.wake()

        def finished() -> bool:
            return store.campaigns.status("acme", "spring").by_status == {"done": 4}

        await wait_for(finished, 180, "the campaign never finished")
        st = store.campaigns.status("acme", "spring")
        assert st.by_outcome == {"completed": 1, "busy": 1, "no_answer": 1, "opted_out": 1}, st.by_outcome
        assert st.campaign.status == "done"
        for number in (ANSWERS, BUSY, NO_ANSWER, OPTS_OUT):
            assert fake.dials_to(number) == 1, number  # each once: max_attempts 1
        answered = next(c for c in fake.calls if c.to == ANSWERS)
        assert answered.first_agent_audio_at is not None, answered.stream_error  # the greeting reached the callee
        assert answered.replies and answered.replies[0].first_audio_at is not None  # and a reply to what it said
        lines = store.campaigns.export_csv("acme", "spring", actor="test").splitlines()
        (row,) = [line for line in lines if line.startswith(ANSWERS)]
        call_id = row.split(",")[6]
        assert call_id, row
        stored = store.calls.get("acme", call_id, actor="test")
        assert stored is not None and any(t.role == "caller" and t.text for t in stored.turns)
        assert stored.caller == ANSWERS  # the person called is the call's data subject
        done = [e.payload["data"] for e in store.outbox.events("acme", actor="test") if e.type == "campaign.contact_done"]
        assert sorted(d["outcome"] for d in done) == ["busy", "completed", "no_answer", "opted_out"]
        # the opt-out said in the call holds for every campaign of the tenant: a new one never dials it
        assert store.subjects.is_opted_out("acme", OPTS_OUT)
        store.campaigns.create("acme", "autumn", pipeline="receptionist", segment="leads", from_number=FROM,
                               provider="twilio", window="daily 00:00-24:00", max_concurrent=4, max_attempts=1,
                               actor="test")  # fmt: skip
        store.campaigns.start("acme", "autumn", actor="test")
        deployment.dialer.wake()
        await wait_for(lambda: store.campaigns.status("acme", "autumn").by_status == {"done": 4}, 180,
                       "the second campaign never finished")  # fmt: skip
        assert fake.dials_to(OPTS_OUT) == 1
        assert store.campaigns.status("acme", "autumn").by_outcome.get("opted_out") == 1


async def test_wrong_credentials_pause_the_campaign_after_one_request(deployment: Deployment, monkeypatch) -> None:
    store = deployment.store
    async with FakeTwilioApi(TWILIO_SID, TWILIO_TOKEN) as fake:
        monkeypatch.setenv("VOICECORE_TWILIO_API_BASE", fake.base_url)
        make_tenant(store, {"account_sid": TWILIO_SID, "auth_token": "not-the-token"})
        store.campaigns.create("acme", "spring", pipeline="receptionist", segment="leads", from_number=FROM,
                               provider="twilio", window="daily 00:00-24:00", max_concurrent=1, actor="test")  # fmt: skip
        store.campaigns.start("acme", "spring", actor="test")
        deployment.dialer.wake()
        c = await wait_for(lambda: (lambda c: c if c.status == "paused" else None)(store.campaigns.get("acme", "spring")),
                           30, "the campaign was not paused")  # fmt: skip
        assert "twilio refused the credentials" in c.paused_reason and "20003" in c.paused_reason
        assert "not-the-token" not in c.paused_reason
        await asyncio.sleep(1.0)
        assert len(fake.requests) == 1  # not burning through the list
        st = store.campaigns.status("acme", "spring")
        assert st.attempts == 1 and st.by_status.get("pending") == 3


async def test_a_forged_status_callback_is_refused_and_changes_nothing(deployment: Deployment, monkeypatch) -> None:
    store = deployment.store
    async with FakeTwilioApi(TWILIO_SID, TWILIO_TOKEN, scenario=Scenario(outcome="no_answer", ring_s=5.0)) as fake:
        monkeypatch.setenv("VOICECORE_TWILIO_API_BASE", fake.base_url)
        make_tenant(store, {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN})
        store.campaigns.create("acme", "spring", pipeline="receptionist", segment="leads", from_number=FROM,
                               provider="twilio", window="daily 00:00-24:00", max_concurrent=1, actor="test")  # fmt: skip
        store.campaigns.start("acme", "spring", actor="test")
        deployment.dialer.wake()
        (record,) = await fake.wait_calls(1, timeout=30)
        attempt = await wait_for(lambda: store.campaigns.attempt(provider="twilio", provider_call_id=record.call_id),
                                 30, "no attempt recorded")  # fmt: skip
        url = f"{deployment.base}/providers/twilio/acme/status?attempt={attempt['id']}"
        form = {"CallSid": record.call_id, "AccountSid": TWILIO_SID, "CallStatus": "completed", "To": record.to}
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=form, headers={"X-Twilio-Signature": "Zm9yZ2Vk"}) as r:
                assert r.status == 403
        assert store.campaigns.attempt(attempt["id"])["status"] != "done"


@pytest.mark.models
async def test_a_telnyx_campaign_call_reaches_the_agent(deployment: Deployment, monkeypatch) -> None:
    store = deployment.store
    async with FakeTelnyxApi("KEY-telnyx-test", "conn-1", scenarios={
        ANSWERS: Scenario(script=("Hello? Who is calling?",)),
    }, scenario="busy") as fake:  # fmt: skip
        monkeypatch.setenv("VOICECORE_TELNYX_API_BASE", fake.base_url)
        make_tenant(store, {"api_key": "KEY-telnyx-test", "connection_id": "conn-1", "public_key": fake.public_key},
                    provider="telnyx")  # fmt: skip
        store.campaigns.create("acme", "spring", pipeline="receptionist", segment="leads", from_number=FROM,
                               provider="telnyx", window="daily 00:00-24:00", max_concurrent=4, max_attempts=1,
                               actor="test")  # fmt: skip
        store.campaigns.start("acme", "spring", actor="test")
        deployment.dialer.wake()
        await wait_for(lambda: store.campaigns.status("acme", "spring").by_status == {"done": 4}, 180,
                       "the campaign never finished")  # fmt: skip
        st = store.campaigns.status("acme", "spring")
        assert st.by_outcome == {"completed": 1, "busy": 3}, st.by_outcome
        answered = next(c for c in fake.calls if c.to == ANSWERS)
        assert answered.first_agent_audio_at is not None, answered.stream_error
        assert all(fake.dials_to(n) == 1 for n in (ANSWERS, BUSY, NO_ANSWER, OPTS_OUT))


@pytest.mark.models
async def test_a_vonage_campaign_call_reaches_the_agent(deployment: Deployment, monkeypatch) -> None:
    from voicecore.testing.provider_apis import FakeVonageApi

    store = deployment.store
    app_id, secret = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", "vonage-signature-secret-0123456789"
    async with FakeVonageApi(app_id, secret, scenarios={ANSWERS: Scenario(script=("Hello? Who is calling?",))},
                             scenario="no_answer") as fake:  # fmt: skip
        monkeypatch.setenv("VOICECORE_VONAGE_API_BASE", fake.base_url)
        make_tenant(store, {"application_id": app_id, "private_key": fake.private_key_pem, "signature_secret": secret},
                    provider="vonage")  # fmt: skip
        store.campaigns.create("acme", "spring", pipeline="receptionist", segment="leads", from_number=FROM,
                               provider="vonage", window="daily 00:00-24:00", max_concurrent=4, max_attempts=1,
                               actor="test")  # fmt: skip
        store.campaigns.start("acme", "spring", actor="test")
        deployment.dialer.wake()
        await wait_for(lambda: store.campaigns.status("acme", "spring").by_status == {"done": 4}, 180,
                       "the campaign never finished")  # fmt: skip
        st = store.campaigns.status("acme", "spring")
        assert st.by_outcome == {"completed": 1, "no_answer": 3}, st.by_outcome
        answered = next(c for c in fake.calls if c.to.lstrip("+") == ANSWERS.lstrip("+"))
        assert answered.first_agent_audio_at is not None, answered.stream_error


@pytest.mark.models
async def test_killing_serve_mid_campaign_and_restarting_it_dials_nobody_twice_and_skips_nobody(tmp_path: Path) -> None:
    import signal

    from serve_workers import start_worker, stop_worker

    numbers = [f"+1415555{i:04d}" for i in range(2000, 2006)]
    data = tmp_path / "data"
    async with FakeTwilioApi(TWILIO_SID, TWILIO_TOKEN, scenario=Scenario(outcome="no_answer", ring_s=2.0)) as fake:
        store = Store(data)
        key = store.tenants.create("acme", actor="test")
        store.providers.set("acme", "twilio", {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN}, actor="test")
        store.contacts.import_file("acme", ("phone\n" + "\n".join(numbers) + "\n").encode(), segment="leads",
                                   actor="test")  # fmt: skip
        store.campaigns.create("acme", "spring", pipeline="receptionist", segment="leads", from_number=FROM,
                               provider="twilio", window="daily 00:00-24:00", max_concurrent=2, max_attempts=1,
                               actor="test")  # fmt: skip
        store.campaigns.start("acme", "spring", actor="test")
        store.close()
        port = free_port()
        args = ("--public-url", f"http://127.0.0.1:{port}")
        env = {"VOICECORE_TWILIO_API_BASE": fake.base_url, "VOICECORE_DIALER_STALE_S": "4"}
        first = await start_worker(tmp_path, *args, data_dir=data, key=key, env=env, port=port, name="first")
        try:
            await fake.wait_calls(2, timeout=60)
            first.proc.send_signal(signal.SIGKILL)  # two calls ringing, the rest not dialed yet
            first.proc.wait(10)
        finally:
            stop_worker(first)
        dialed_before = len(fake.calls)
        second = await start_worker(tmp_path, *args, data_dir=data, key=key, env=env, port=port, name="second")
        try:
            store = Store(data)
            await wait_for(lambda: store.campaigns.status("acme", "spring").by_status == {"done": 6}, 120,
                           "the campaign never finished after the restart")  # fmt: skip
            st = store.campaigns.status("acme", "spring")
            store.close()
        finally:
            stop_worker(second)
        assert dialed_before >= 2
        assert sorted(c.to for c in fake.calls) == sorted(numbers), [c.to for c in fake.calls]  # each exactly once
        assert st.attempts == 6 and sum(st.by_outcome.values()) == 6, st.by_outcome
        assert set(st.by_outcome) <= {"no_answer", "failed"}


@pytest.mark.models
async def test_an_answering_machine_gets_the_campaigns_voicemail_then_the_call_ends(
    deployment: Deployment, monkeypatch
) -> None:  # fmt: skip
    store = deployment.store
    message = "This is Acme Dental calling about your appointment. Please call us back at your convenience."
    async with FakeTwilioApi(TWILIO_SID, TWILIO_TOKEN, scenarios={ANSWERS: "machine"}, scenario="busy") as fake:
        monkeypatch.setenv("VOICECORE_TWILIO_API_BASE", fake.base_url)
        make_tenant(store, {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN})
        store.campaigns.create("acme", "spring", pipeline="receptionist", segment="leads", from_number=FROM,
                               provider="twilio", window="daily 00:00-24:00", max_concurrent=4, max_attempts=1,
                               machine_action="voicemail", voicemail=message, actor="test")  # fmt: skip
        store.campaigns.start("acme", "spring", actor="test")
        deployment.dialer.wake()
        await wait_for(lambda: store.campaigns.status("acme", "spring").by_status == {"done": 4}, 180,
                       "the campaign never finished")  # fmt: skip
        assert store.campaigns.status("acme", "spring").by_outcome == {"machine": 1, "busy": 3}
        machine = next(c for c in fake.calls if c.to == ANSWERS)
        await asyncio.wait_for(machine.done.wait(), 60)
        assert machine.voicemail_at is not None and machine.ended_by == "agent", (machine.stream_error, machine.ended_by)

        def stored_call() -> Any:
            call_id = store.calls.find_by_provider_id(store.tenants.row("acme").id, machine.call_id, 0)
            return store.calls.get("acme", call_id, actor="test") if call_id else None

        stored = await wait_for(stored_call, 30, "the machine call was not stored")
        assert stored.end_reason == "voicemail" and stored.flags.get("answered_by") == "machine"
        assert any(t.role == "agent" and t.kind == "voicemail" and "call us back" in (t.text or t.generated_text or "")
                   for t in stored.turns), [(t.role, t.kind, t.text) for t in stored.turns]  # fmt: skip
