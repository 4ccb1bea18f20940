"""What every fake provider REST API shares: the HTTP server on 127.0.0.1, the per-number
scenarios, the record of every create-call request, the callee that plays an answered call over
the media WebSocket, and posting status callbacks (see :mod:`voicecore.testing.provider_apis`)."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from loguru import logger

from voicecore.testing.callers import ProviderClient

#: What the callee's line does when dialled.
OUTCOMES: tuple[str, ...] = ("answer", "busy", "no_answer", "machine", "failed", "fail_500", "timeout")


@dataclass(frozen=True)
class Scenario:
    """How one dialled number behaves.

    ``outcome``: ``answer`` (a person picks up: the media stream opens to the agent, the callee
    listens to the greeting, says ``script`` one utterance at a time waiting for each reply, then
    hangs up), ``busy``, ``no_answer``, ``machine`` (an answering machine: answered, detected as
    a machine, it hangs up after its greeting; no media stream), ``failed`` (accepted, then the
    call fails), ``fail_500`` (the create-call request gets the provider's 500) or ``timeout``
    (the create-call request is never answered).
    """

    outcome: str = "answer"
    script: tuple[str, ...] = ()
    ring_s: float = 0.05  # between ringing and the answer (or the final status)
    voice: str = "en-us+f3"  # espeak-ng voice Whisper tiny.en understands at 8 kHz
    speed: int = 130
    greeting_timeout_s: float = 40.0
    reply_timeout_s: float = 40.0
    quiet_s: float = 1.5  # the agent finished talking when no audio came for this long
    hold_s: float = 0.0  # stays on the line this long after the last reply before hanging up
    machine_greeting_s: float = 0.2  # how long the machine "talks" before it hangs up

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}; outcomes: {', '.join(OUTCOMES)}")


def as_scenario(value: Scenario | str) -> Scenario:
    return value if isinstance(value, Scenario) else Scenario(outcome=value)


@dataclass
class Reply:
    """One callee utterance and the agent's answer to it (monotonic times)."""

    text: str
    speech_end_at: float | None
    first_audio_at: float | None  # first agent media after the end of the utterance (None: no reply)


@dataclass
class Callback:
    """One status callback / webhook the fake posted."""

    call_id: str
    event: str  # the provider's event name (Twilio: the StatusCallbackEvent; Telnyx: event_type; Vonage: status)
    url: str
    body: bytes
    headers: dict[str, str]
    sent_at: float
    status: int | None = None  # the receiver's HTTP status (None: not reachable)
    error: str | None = None


@dataclass
class Request:
    """One create-call request as received, whatever came of it."""

    received_at: float  # time.monotonic()
    wall: float  # time.time()
    status: int  # the HTTP status answered (0 while held: the timeout scenario)
    to: str | None
    from_: str | None
    params: Any  # the parsed body: a form multi-dict as a dict of lists (Twilio) or the JSON object
    headers: dict[str, str] = field(default_factory=dict)
    call_id: str | None = None


@dataclass
class DialRecord:
    """One call the fake placed (a create-call request it accepted), with its timings.

    Times are ``time.monotonic()``: ``received_at`` (the create-call request arrived),
    ``answered_at``, ``stream_connected_at`` (WebSocket upgrade done), ``stream_started_at``
    (the provider's opening messages sent), ``first_agent_audio_at`` (the greeting's first media
    message), ``ended_at``."""

    call_id: str
    to: str
    from_: str
    scenario: Scenario
    params: Any
    received_at: float
    wall: float
    answered_at: float | None = None
    stream_url: str | None = None
    stream_connected_at: float | None = None
    stream_started_at: float | None = None
    first_agent_audio_at: float | None = None
    ended_at: float | None = None
    voicemail_at: float | None = None  # first agent audio after a machine's beep (the message left)
    status: str = "queued"  # the provider's last status
    ended_by: str | None = None  # callee | agent | line
    stream_error: str | None = None  # why no media flowed (handshake refused, no stream URL, ...)
    replies: list[Reply] = field(default_factory=list)
    ids: dict[str, str] = field(default_factory=dict)  # the provider's other ids of the call (legs, sessions)
    client: ProviderClient | None = None
    callbacks: list[Callback] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def dial_to_greeting_s(self) -> float | None:
        """From the create-call request to the first agent audio on the line."""
        if self.first_agent_audio_at is None:
            return None
        return self.first_agent_audio_at - self.received_at

    @property
    def stream_to_greeting_s(self) -> float | None:
        if self.first_agent_audio_at is None or self.stream_started_at is None:
            return None
        return self.first_agent_audio_at - self.stream_started_at

    @property
    def events(self) -> list[str]:
        return [c.event for c in self.callbacks]


class FakeProviderApi:
    """A provider's REST API on 127.0.0.1 (ephemeral port). Use as ``async with``; ``base_url``
    is what the dialer takes as ``api_base``.

    ``scenario``: what every number does unless ``scenarios`` (E.164 → Scenario or outcome
    name) says otherwise; :meth:`set_scenario` changes one number while running."""

    provider: str = ""

    def __init__(
        self,
        *,
        scenario: Scenario | str = "answer",
        scenarios: Mapping[str, Scenario | str] | None = None,
        host: str = "127.0.0.1",
    ):
        self.default_scenario = as_scenario(scenario)
        self.scenarios: dict[str, Scenario] = {n: as_scenario(s) for n, s in (scenarios or {}).items()}
        self.host = host
        self.base_url = ""
        self.requests: list[Request] = []
        self.calls: list[DialRecord] = []
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()
        self._release = asyncio.Event()
        self._audio: dict[tuple[str, str, int], Any] = {}

    # -- lifecycle ------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    async def start(self) -> FakeProviderApi:
        app = web.Application()
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://{self.host}:{port}"
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        return self

    async def stop(self) -> None:
        self._release.set()  # held (timeout scenario) requests end
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await asyncio.wait_for(task, 10)
            except (asyncio.CancelledError, TimeoutError, Exception):
                pass
        for record in self.calls:
            if record.client is not None:
                await record.client.close()
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeProviderApi:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # -- what tests read ------------------------------------------------------------------

    def set_scenario(self, number: str, scenario: Scenario | str) -> None:
        self.scenarios[number] = as_scenario(scenario)

    def scenario_for(self, number: str) -> Scenario:
        """(Numbers compare with or without the ``+``: Vonage writes them without.)"""
        digits = number.lstrip("+")
        return self.scenarios.get(number) or self.scenarios.get("+" + digits) or self.scenarios.get(digits) \
            or self.default_scenario

    def dials_to(self, number: str) -> int:
        """Calls placed to ``number`` (accepted create-call requests; a repeated idempotency key is one)."""
        return sum(1 for c in self.calls if c.to.lstrip("+") == number.lstrip("+"))

    def call(self, call_id: str) -> DialRecord | None:
        return next((c for c in self.calls if c.call_id == call_id), None)

    async def wait_calls(self, n: int = 1, timeout: float = 30.0) -> list[DialRecord]:
        """Until ``n`` calls were placed and every placed call ended; returns them."""
        deadline = time.monotonic() + timeout
        while len(self.calls) < n:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.provider}: {len(self.calls)} call(s) placed, expected {n}")
            await asyncio.sleep(0.02)
        for record in list(self.calls):
            remaining = deadline - time.monotonic()
            try:
                await asyncio.wait_for(record.done.wait(), max(0.01, remaining))
            except TimeoutError:
                raise TimeoutError(f"{self.provider}: call {record.call_id} still {record.status}") from None
        return list(self.calls)

    # -- helpers for the providers ------------------------------------------------------

    def note_request(self, request: web.Request, status: int, *, to: str | None, from_: str | None, params: Any,
                     call_id: str | None = None) -> Request:  # fmt: skip
        entry = Request(time.monotonic(), time.time(), status, to, from_, params,
                        {k: v for k, v in request.headers.items() if k.lower() != "authorization"}, call_id)  # fmt: skip
        self.requests.append(entry)
        return entry

    def place(self, call_id: str, to: str, from_: str, params: Any, received_at: float) -> DialRecord:
        record = DialRecord(call_id, to, from_, self.scenario_for(to), params, received_at, time.time())
        self.calls.append(record)
        return record

    def spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def hold(self) -> None:
        """The ``timeout`` scenario: the create-call request gets no answer while the fake runs."""
        await self._release.wait()

    async def post(self, record: DialRecord, event: str, url: str, body: bytes, headers: dict[str, str]) -> Callback:
        """POST one signed callback; the receiver's answer is recorded, never raised."""
        cb = Callback(record.call_id, event, url, body, dict(headers), time.monotonic())
        record.callbacks.append(cb)
        assert self._http is not None
        try:
            async with self._http.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                cb.status = resp.status
                await resp.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            cb.error = type(e).__name__
            logger.debug(f"fake {self.provider}: callback {event} not delivered ({cb.error})")
        return cb

    async def speech(self, text: str, scenario: Scenario) -> Any:
        """The callee's utterance spoken with espeak-ng (cached)."""
        from voicecore.transports.file import espeak

        key = (text, scenario.voice, scenario.speed)
        if key not in self._audio:
            self._audio[key] = await asyncio.to_thread(espeak, text, voice=scenario.voice, speed=scenario.speed)
        return self._audio[key]

    async def play_callee(self, record: DialRecord, client: ProviderClient) -> None:
        """Open the media stream as the provider would and play the callee's script on it."""
        sc = record.scenario
        record.client = client
        if not await client.connect():
            record.stream_error = f"upgrade refused with HTTP {client.handshake_status}"
            record.ended_by = "line"
            return
        record.stream_connected_at = client.connected_at
        await client.open()
        client.start_mic()
        record.stream_started_at = client.opened_at
        audio = [await self.speech(text, sc) for text in sc.script]
        first = await client.wait_media_after(0.0, sc.greeting_timeout_s)
        if first is None:
            record.stream_error = (f"no greeting (closed={client.closed.is_set()}, code={client.close_code})")
        else:
            record.first_agent_audio_at = first.t
            await client.wait_agent_quiet(quiet=sc.quiet_s, timeout=60)
            for text, spoken in zip(sc.script, audio):
                if client.closed.is_set():
                    break
                utt = client.speak(spoken)
                await asyncio.wait_for(utt.done.wait(), utt.seconds + 15)
                reply = await client.wait_media_after(utt.speech_end_at or time.monotonic(), sc.reply_timeout_s)
                record.replies.append(Reply(text, utt.speech_end_at, reply.t if reply else None))
                if reply is not None:
                    await client.wait_agent_quiet(quiet=sc.quiet_s, timeout=60)
            if sc.hold_s and not client.closed.is_set():
                await asyncio.sleep(sc.hold_s)
        if client.closed.is_set():
            record.ended_by = "agent"
        else:
            record.ended_by = "callee"
            await client.hangup()
        await client.close()

    async def run_call(self, record: DialRecord, play: Callable[[DialRecord], Any]) -> None:
        """Run one call's life (``play``) and mark it done, whatever happens."""
        try:
            await play(record)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a broken fake must show in the record, not vanish in a task
            record.stream_error = record.stream_error or f"fake {self.provider} failed: {e!r}"
            logger.opt(exception=True).debug(f"fake {self.provider}: call {record.call_id} failed")
        finally:
            record.ended_at = record.ended_at or time.monotonic()
            record.done.set()


def new_uuid() -> str:
    return str(uuid.uuid4())


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)
