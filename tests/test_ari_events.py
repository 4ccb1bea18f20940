"""Asterisk outcomes for campaign calls: ``serve``'s dialer originates through ARI
(``POST /ari/channels``) and learns how each call went from ARI's events WebSocket
(:class:`voicecore.transports.ari_events.AriEventRelay`), as Asterisk posts no status callbacks.

The Asterisk here is a fake ARI on 127.0.0.1 written from the ARI documentation (Channels and
Events REST APIs, the ``ChannelStateChange`` / ``ChannelDestroyed`` data models): it checks HTTP
Basic auth on both, answers an originate with the channel, and plays each originated channel's
life on every events socket subscribed with ``subscribeAll``: Ringing, then hung up busy (Q.850
17) or unanswered (19), or Up then a normal clearing (16). Other channels of the system come by
too (as with ``subscribeAll``) and must be ignored. No models run: nothing answers with media.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import BasicAuth, WSMsgType, web
from loguru import logger

from voicecore.server import create_app, running_server
from voicecore.server.guard import AuthThrottle
from voicecore.storage import Store
from voicecore.testing.inference import free_port

ARI_USER, ARI_PASSWORD = "voicecore", "ari-secret-for-the-fake-0001"
TRUNK = "carrier"
FROM = "+14155550100"
ANSWERS, BUSY, NO_ANSWER = "+14155550111", "+14155550112", "+14155550113"
#: Q.850 cause and its text per scenario (ChannelDestroyed ``cause``/``cause_txt``)
CAUSES = {"busy": (17, "User busy"), "no_answer": (19, "No user responding"), "answer": (16, "Normal Clearing")}


@dataclass
class Originate:
    number: str
    channel_id: str
    query: dict[str, str]
    body: Any


@dataclass
class FakeAri:
    """ARI's ``POST /ari/channels`` and ``GET /ari/events`` (WebSocket) on 127.0.0.1."""

    scenarios: dict[str, str]
    drop_after_ringing: set[str] = field(default_factory=set)  # close every socket after Ringing
    originates: list[Originate] = field(default_factory=list)  # the ones accepted
    requests: int = 0  # originate requests, accepted or not
    subscriptions: list[dict[str, str]] = field(default_factory=list)
    refused_sockets: int = 0
    sockets: set[web.WebSocketResponse] = field(default_factory=set)
    base_url: str = ""

    def authorized(self, request: web.Request) -> bool:
        try:
            auth = BasicAuth.decode(request.headers.get("Authorization", ""))
        except ValueError:
            return False
        return (auth.login, auth.password) == (ARI_USER, ARI_PASSWORD)

    def dials_to(self, number: str) -> int:
        return sum(1 for o in self.originates if o.number == number)

    async def __aenter__(self) -> FakeAri:
        app = web.Application()
        app.router.add_post("/ari/channels", self.originate)
        app.router.add_get("/ari/events", self.events)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.base_url = f"http://127.0.0.1:{port}"
        self._tasks: set[asyncio.Task[None]] = set()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for ws in list(self.sockets):
            await ws.close()
        await self._runner.cleanup()

    async def originate(self, request: web.Request) -> web.Response:
        self.requests += 1
        if not self.authorized(request):
            return web.json_response({"message": "Authentication required"}, status=401)
        query = dict(request.query)
        endpoint, channel_id = query.get("endpoint", ""), query.get("channelId", "")
        if not endpoint.startswith("PJSIP/") or not endpoint.endswith(f"@{TRUNK}") or not channel_id:
            return web.json_response({"message": "bad originate"}, status=400)
        if any(o.channel_id == channel_id for o in self.originates):
            return web.json_response({"message": "Channel with given unique ID already exists"}, status=409)
        number = endpoint[len("PJSIP/"):-len(f"@{TRUNK}")]
        self.originates.append(Originate(number, channel_id, query, await request.json()))
        channel = self.channel(channel_id, "Down", number)
        task = asyncio.create_task(self.play(channel_id, number))
        self._tasks.add(task)
        return web.json_response(channel)

    @staticmethod
    def channel(channel_id: str, state: str, number: str) -> dict[str, Any]:
        return {"id": channel_id, "name": f"PJSIP/{TRUNK}-0000002a", "state": state, "protocol_id": "",
                "caller": {"name": "", "number": FROM}, "connected": {"name": "", "number": number},
                "accountcode": "", "dialplan": {"context": "voicecore-outbound", "exten": "s", "priority": 1,
                                                "app_name": "", "app_data": ""},
                "creationtime": "2026-12-05T00:00:00.000+0000", "language": "en"}  # fmt: skip

    async def send(self, event: dict[str, Any]) -> None:
        event |= {"timestamp": "2026-12-05T00:00:01.000+0000", "asterisk_id": "00:11:22:33:44:55"}
        for ws in list(self.sockets):
            if not ws.closed:
                await ws.send_json(event)

    async def play(self, channel_id: str, number: str) -> None:
        scenario = self.scenarios[number]
        await asyncio.sleep(0.2)
        # a channel of someone else's call, and the dialplan's WebSocket leg: not attempts of ours
        await self.send({"type": "ChannelStateChange", "channel": self.channel("1733360000.7", "Ringing", number)})
        await self.send({"type": "ChannelStateChange", "channel": self.channel(channel_id, "Ringing", number)})
        if number in self.drop_after_ringing:
            opened = len(self.subscriptions)
            for ws in list(self.sockets):
                await ws.close()
            deadline = time.monotonic() + 30
            while len(self.subscriptions) == opened and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        state = "Ringing"
        if scenario == "answer":
            state = "Up"
            await self.send({"type": "ChannelStateChange", "channel": self.channel(channel_id, "Up", number)})
            await self.send({"type": "ChannelCreated", "channel": self.channel("1733360000.8", "Down", number)})
            await asyncio.sleep(0.2)
        cause, text = CAUSES[scenario]
        await self.send({"type": "ChannelDestroyed", "cause": cause, "cause_txt": text,
                         "channel": self.channel(channel_id, state, number)})  # fmt: skip

    async def events(self, request: web.Request) -> web.StreamResponse:
        if not self.authorized(request):
            self.refused_sockets += 1
            return web.json_response({"message": "Authentication required"}, status=401)
        if not request.query.get("app"):
            return web.json_response({"message": "Missing parameter app"}, status=400)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.subscriptions.append(dict(request.query))
        self.sockets.add(ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.sockets.discard(ws)
        return ws

    @property
    def open_sockets(self) -> int:
        return sum(1 for ws in self.sockets if not ws.closed)


@dataclass
class Deployment:
    store: Store
    app: Any

    @property
    def dialer(self) -> Any:
        return self.app.state.vc.dialer


@pytest.fixture
async def deployment(tmp_path: Path, receptionist) -> AsyncIterator[Deployment]:
    port = free_port()
    store = Store(tmp_path / "data", allow_insecure_webhooks=True)
    app = create_app(data_dir=tmp_path / "data", store=store, pipelines={receptionist.name: receptionist},
                     public_url=f"http://127.0.0.1:{port}", auth_throttle=AuthThrottle(burst=10_000),
                     dialer_poll_s=0.2, preload=False)  # fmt: skip
    async with running_server(app, port=port):
        yield Deployment(store, app)
    store.close()


@pytest.fixture
def log_lines() -> AsyncIterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG")
    yield lines
    logger.remove(sink)


def start_campaign(store: Store, fake: FakeAri, numbers: list[str], password: str = ARI_PASSWORD,
                   max_concurrent: int = 3) -> None:
    store.tenants.create("acme", actor="test")
    store.providers.set("acme", "asterisk", {"ari_url": fake.base_url, "ari_user": ARI_USER, "ari_password": password,
                                             "trunk": TRUNK}, actor="test")  # fmt: skip
    csv = "phone\n" + "".join(f"{n}\n" for n in numbers)
    store.contacts.import_file("acme", csv.encode(), segment="leads", actor="test")
    store.campaigns.create("acme", "spring", pipeline="receptionist", segment="leads", from_number=FROM,
                           provider="asterisk", window="daily 00:00-24:00", max_concurrent=max_concurrent,
                           max_attempts=1, actor="test")  # fmt: skip
    store.campaigns.start("acme", "spring", actor="test")


async def wait_for(predicate, timeout: float, what: str) -> Any:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        await asyncio.sleep(0.1)


async def test_asterisk_campaign_outcomes_come_from_the_ari_events(deployment: Deployment, log_lines) -> None:
    store = deployment.store
    deployment.dialer.ari.linger_s = 0  # close the socket as soon as the campaign is over
    async with FakeAri({BUSY: "busy", NO_ANSWER: "no_answer", ANSWERS: "answer"}) as fake:
        start_campaign(store, fake, [BUSY, NO_ANSWER, ANSWERS])
        deployment.dialer.wake()
        await wait_for(lambda: store.campaigns.status("acme", "spring").by_status == {"done": 3}, 60,
                       "the campaign never finished (no outcome relayed from the events socket)")  # fmt: skip
        st = store.campaigns.status("acme", "spring")
        assert st.by_outcome == {"busy": 1, "no_answer": 1, "completed": 1}, st.by_outcome
        assert st.campaign.status == "done"
        for number in (BUSY, NO_ANSWER, ANSWERS):
            assert fake.dials_to(number) == 1, number
        (sub,) = fake.subscriptions  # one socket for the tenant, subscribed to every channel's events
        assert sub["subscribeAll"] == "true" and sub["app"].startswith("voicecore-")
        busy = next(o for o in fake.originates if o.number == BUSY)
        attempt = store.campaigns.attempt(busy.channel_id)
        assert attempt["outcome"] == "busy" and attempt["error_code"] == "User busy", attempt
        answered = store.campaigns.attempt(next(o for o in fake.originates if o.number == ANSWERS).channel_id)
        assert answered["outcome"] == "completed" and answered["answered_at"] is not None, answered
        assert deployment.dialer.ari.relayed >= 7  # Ringing ×3, Up, the three ends; the other channels dropped
        # no running Asterisk campaign left: the socket is closed
        await wait_for(lambda: fake.open_sockets == 0 and not deployment.dialer.ari.watches, 30,
                       "the events socket stayed open after the campaign ended")  # fmt: skip
    assert not any(ARI_PASSWORD in line for line in log_lines)


async def test_wrong_ari_credentials_pause_the_asterisk_campaign(deployment: Deployment, log_lines) -> None:
    store = deployment.store
    async with FakeAri({BUSY: "busy", NO_ANSWER: "no_answer", ANSWERS: "answer"}) as fake:
        start_campaign(store, fake, [BUSY, NO_ANSWER, ANSWERS], password="not-the-ari-password",
                       max_concurrent=1)
        deployment.dialer.wake()
        c = await wait_for(lambda: (lambda c: c if c.status == "paused" else None)(
            store.campaigns.get("acme", "spring")), 30, "the campaign was not paused")  # fmt: skip
        assert "asterisk refused the credentials" in c.paused_reason, c.paused_reason
        assert "not-the-ari-password" not in c.paused_reason
        await asyncio.sleep(1.0)
        assert fake.requests == 1 and not fake.originates  # not burning through the list
        assert fake.refused_sockets >= 1 and not fake.subscriptions  # the events socket was refused too
        st = store.campaigns.status("acme", "spring")
        assert st.attempts == 1 and st.by_status.get("pending") == 2, st
    assert not any("not-the-ari-password" in line for line in log_lines)


async def test_the_relay_reconnects_after_asterisk_drops_the_events_socket(deployment: Deployment) -> None:
    store = deployment.store
    async with FakeAri({NO_ANSWER: "no_answer"}, drop_after_ringing={NO_ANSWER}) as fake:
        start_campaign(store, fake, [NO_ANSWER])
        deployment.dialer.wake()
        await wait_for(lambda: store.campaigns.status("acme", "spring").by_status == {"done": 1}, 60,
                       "the outcome sent after the socket was dropped never arrived")  # fmt: skip
        assert store.campaigns.status("acme", "spring").by_outcome == {"no_answer": 1}
        assert len(fake.subscriptions) == 2  # the first socket, dropped; the second, which heard the end
        assert fake.dials_to(NO_ANSWER) == 1
