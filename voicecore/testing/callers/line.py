"""What every emulated provider caller shares: the G.711 and PCM helpers, the microphone that
streams caller audio in real time, the emulated line that plays the agent's audio and answers
marks, and finding the call the server stored (see :mod:`voicecore.testing.callers`)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import numpy as np
import soxr
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from voicecore.audio import codecs as g711

#: A gap in agent audio longer than this (ms) is "late audio" (benchmarks).
GAP_MS = 60.0

# --------------------------------------------------------------------------- audio helpers


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """G.711 μ-law encoding of int16 samples."""
    return g711.ulaw_encode(np.asarray(pcm, dtype=np.int16).astype("<i2").tobytes())


def ulaw_decode(data: bytes) -> np.ndarray:
    """G.711 μ-law bytes → int16 samples."""
    return np.frombuffer(g711.ulaw_decode(data), dtype="<i2").astype(np.int16)


def pcm16le_decode(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def pcm16le_encode(pcm: np.ndarray) -> bytes:
    return np.asarray(pcm, dtype=np.int16).astype("<i2").tobytes()


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """int16 mono resampled with soxr (one shot: the whole utterance is known)."""
    samples = np.asarray(samples, dtype=np.int16)
    if from_rate == to_rate:
        return samples.copy()
    return soxr.resample(samples, from_rate, to_rate).astype(np.int16)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if samples.size else 0.0


def voiced_bounds(samples: np.ndarray, rate: int, threshold: float = 300.0, window_ms: float = 5.0) -> tuple[int, int]:
    """(first, last+1) sample of speech: the first and last window whose RMS exceeds ``threshold``."""
    win = max(1, int(rate * window_ms / 1000))
    n = samples.size // win
    if n == 0:
        raise ValueError("audio too short")
    frames = samples[: n * win].astype(np.float64).reshape(n, win)
    loud = np.nonzero(np.sqrt((frames**2).mean(axis=1)) > threshold)[0]
    if loud.size == 0:
        raise ValueError("no speech above the threshold")
    return int(loud[0] * win), int((loud[-1] + 1) * win)


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to its query string."""
    return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64_strict(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"payload is {type(value).__name__}, not a base64 string")
    return base64.b64decode(value, validate=True)


# --------------------------------------------------------------------------- data


@dataclass
class Utterance:
    """Caller audio queued on the microphone, with the times it went out."""

    pcm: np.ndarray  # int16 at the client's rate
    rate: int
    voiced_start: int  # first voiced sample (offset in pcm)
    voiced_end: int  # one past the last voiced sample
    label: str = ""
    stream_start: int = -1  # index of pcm[0] in the outgoing sample stream
    queued_at: float = 0.0  # when it was put on the microphone
    wall_offset: float = 0.0  # time.time() - time.monotonic() when queued
    onset_sent_at: float | None = None  # the frame holding the first voiced sample was sent
    end_sent_at: float | None = None  # the frame holding the last voiced sample was sent
    speech_end_at: float | None = None  # when the last voiced sample was "spoken" (captured)
    done: asyncio.Event = field(default_factory=asyncio.Event)  # every sample sent

    @property
    def seconds(self) -> float:
        return self.pcm.size / self.rate

    def wall(self, t: float | None) -> float | None:
        """A monotonic time of this utterance as wall-clock time (to compare with server records)."""
        return None if t is None else t + self.wall_offset


@dataclass
class AgentMedia:
    """One agent media message as received."""

    t: float  # arrival
    pcm: np.ndarray  # decoded int16 at the client's rate
    wire_bytes: int
    play_start: float  # when the emulated line starts playing it
    seconds: float = 0.0  # audio duration


@dataclass
class MarkEcho:
    due: float
    name: str
    messages: Callable[[], list[str]]  # built when sent: sequence numbers are assigned at send time


# --------------------------------------------------------------------------- base client


class ProviderClient:
    """One call as a provider would make it. Subclasses give the provider's messages."""

    provider: str = ""
    sample_rate: int = 8000
    frame_ms: int = 20
    #: the provider returns pending marks when it clears (Twilio, Telnyx)
    returns_marks_on_clear: bool = False

    def __init__(
        self,
        ws_url: str,
        *,
        token: str | None = None,
        caller: str = "+14155550100",
        callee: str = "+14155550199",
        headers: dict[str, str] | None = None,
        label: str = "",
    ):
        self.ws_url = ws_url
        self.token = token
        self.caller = caller
        self.callee = callee
        self.headers = dict(headers or {})
        self.label = label or self.provider
        self.ws: Any = None
        self.handshake_status: int | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed = asyncio.Event()
        self.closed_at: float | None = None
        self.violations: list[str] = []
        self.media: list[AgentMedia] = []
        self.media_event = asyncio.Event()  # set on every agent media message
        self.clears: list[float] = []
        self.marks_received: list[tuple[float, str]] = []
        self.marks_echoed: list[tuple[float, str, bool]] = []  # (time, name, returned by a clear)
        self.texts_received: list[tuple[float, str]] = []
        self.connected_at: float | None = None
        self.opened_at: float | None = None  # the opening messages (start) were sent
        self._play_end = 0.0
        self._pending_marks: list[MarkEcho] = []
        self._send_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        # microphone
        self._frame_samples = self.sample_rate * self.frame_ms // 1000
        self._pending = np.zeros(0, dtype=np.int16)
        self._next_sample = 0  # stream index of the next sample the mic sends
        self._utterances: list[Utterance] = []
        self.frames_sent = 0
        self.late_sends = 0  # microphone frames sent more than 10 ms late (a starved client, not the server)
        self.mic_running = False
        self.send_errors = 0

    # -- ids used to find the stored call ---------------------------------------------

    @property
    def ids(self) -> set[str]:
        """Provider ids this client put in its start message (the stored call carries some of them)."""
        return set()

    # -- connection ---------------------------------------------------------------

    def connect_headers(self) -> dict[str, str]:
        return dict(self.headers)

    async def connect(self, timeout: float = 10.0) -> bool:
        """Open the WebSocket; False when the server refused the upgrade (``handshake_status``)."""
        try:
            self.ws = await asyncio.wait_for(
                websockets.connect(
                    self.ws_url,
                    additional_headers=self.connect_headers() or None,
                    max_size=None,  # we check sizes ourselves
                    open_timeout=timeout,
                    close_timeout=2,
                    ping_interval=None,
                    compression=None,
                ),
                timeout,
            )
        except InvalidStatus as e:
            self.handshake_status = e.response.status_code
            self.closed_at = time.monotonic()
            self.closed.set()
            return False
        self.connected_at = time.monotonic()
        self._tasks.append(asyncio.create_task(self._recv_loop(), name=f"{self.label}-recv"))
        self._tasks.append(asyncio.create_task(self._tick_loop(), name=f"{self.label}-tick"))
        return True

    async def open(self) -> None:
        """Send the provider's opening messages (connected/start/...)."""
        for m in self.opening_messages():
            await self.send_raw(m)
        self.opened_at = time.monotonic()

    def opening_messages(self) -> list[str | bytes]:
        raise NotImplementedError

    async def start(self, *, mic: bool = True, timeout: float = 10.0) -> bool:
        """connect + open (+ start the microphone)."""
        if not await self.connect(timeout):
            return False
        await self.open()
        if mic:
            self.start_mic()
        return True

    async def send_raw(self, message: str | bytes, *, text: bool | None = None) -> bool:
        """Send one frame; False if the socket is already closed."""
        if self.ws is None:
            return False
        try:
            async with self._send_lock:
                if text is None:
                    await self.ws.send(message)
                else:
                    await self.ws.send(message, text=text)
            return True
        except ConnectionClosed:
            self.send_errors += 1
            return False

    async def send_built(self, build: Callable[[], list[str | bytes]]) -> bool:
        """Build messages and send them under the send lock, so sequence numbers go out in order."""
        if self.ws is None:
            return False
        try:
            async with self._send_lock:
                for message in build():
                    await self.ws.send(message)
            return True
        except ConnectionClosed:
            self.send_errors += 1
            return False

    async def send_json(self, obj: Any) -> bool:
        return await self.send_raw(json.dumps(obj))

    async def wait_closed(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def hangup(self, timeout: float = 5.0) -> None:
        """End the call the provider's way (default: close the socket)."""
        await self.close()

    async def close(self, code: int = 1000, timeout: float = 5.0) -> None:
        """Close our side (if still open) and stop the client's tasks."""
        self.mic_running = False
        if self.ws is not None and not self.closed.is_set():
            try:
                await asyncio.wait_for(self.ws.close(code), timeout)
            except (TimeoutError, ConnectionClosed):
                pass
            await self.wait_closed(timeout)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await asyncio.wait_for(task, 2)
            except (asyncio.CancelledError, TimeoutError, Exception):
                pass
        self._tasks.clear()

    # -- microphone -----------------------------------------------------------------

    def start_mic(self) -> None:
        if not self.mic_running:
            self.mic_running = True
            self._tasks.append(asyncio.create_task(self._mic_loop(), name=f"{self.label}-mic"))

    def prepare(self, samples: np.ndarray, rate: int, voiced: tuple[int, int] | None = None) -> Utterance:
        pcm = resample(samples, rate, self.sample_rate)
        if voiced is None:
            start, end = voiced_bounds(pcm, self.sample_rate)
        else:  # bounds known at the source rate (a corpus): scaled to the client's rate
            scale = self.sample_rate / rate
            start, end = int(voiced[0] * scale), max(1, int(round(voiced[1] * scale)))
        return Utterance(pcm=pcm, rate=self.sample_rate, voiced_start=start, voiced_end=end)

    def speak(
        self, audio: Any, *, rate: int | None = None, voiced: tuple[int, int] | None = None, label: str = ""
    ) -> Utterance:
        """Queue caller audio after what is queued: a :class:`voicecore.transports.file.Audio`, or int16
        samples with their ``rate`` (and, optionally, the ``voiced`` sample bounds at that rate)."""
        samples = audio.samples if rate is None else audio
        utt = self.prepare(samples, rate or audio.sample_rate, voiced)
        utt.label = label
        utt.queued_at = time.monotonic()
        utt.wall_offset = time.time() - utt.queued_at
        utt.stream_start = self._next_sample + self._pending.size
        self._pending = np.concatenate([self._pending, utt.pcm])
        self._utterances.append(utt)
        return utt

    def _take_frame(self) -> np.ndarray:
        n = self._frame_samples
        frame = self._pending[:n]
        self._pending = self._pending[n:]
        if frame.size < n:
            frame = np.concatenate([frame, np.zeros(n - frame.size, dtype=np.int16)])
        return frame

    async def _mic_loop(self) -> None:
        dur = self.frame_ms / 1000
        t0 = time.monotonic()
        n = 0
        while self.mic_running and not self.closed.is_set():
            # frame n holds the audio captured in [t0 + n*dur, t0 + (n+1)*dur): it goes out at its end
            delay = t0 + (n + 1) * dur - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.010:
                self.late_sends += 1
            frame = self._take_frame()
            s0 = self._next_sample
            if not await self.send_built(lambda: self.media_messages(frame)):
                break
            sent = time.monotonic()
            self._next_sample += frame.size
            self.frames_sent += 1
            self._note_sent(s0, s0 + frame.size, sent)
            n += 1

    def _note_sent(self, s0: int, s1: int, sent: float) -> None:
        for utt in list(self._utterances):
            first = utt.stream_start + utt.voiced_start
            last = utt.stream_start + utt.voiced_end - 1
            if utt.onset_sent_at is None and s0 <= first < s1:
                utt.onset_sent_at = sent
            if utt.end_sent_at is None and s0 <= last < s1:
                utt.end_sent_at = sent
                utt.speech_end_at = sent - (s1 - (last + 1)) / self.sample_rate
            if utt.stream_start + utt.pcm.size <= s1:
                utt.done.set()
                self._utterances.remove(utt)

    def media_messages(self, pcm: np.ndarray) -> list[str | bytes]:
        """The provider's media message(s) carrying one frame of caller audio."""
        raise NotImplementedError

    def dtmf_message(self, digit: str) -> str:
        """The provider's key-press message."""
        raise NotImplementedError

    async def say_and_wait(self, audio: Any, timeout: float = 30.0) -> Utterance:
        utt = self.speak(audio)
        await asyncio.wait_for(utt.done.wait(), timeout)
        return utt

    # -- agent audio: the emulated line ---------------------------------------------

    def _play(self, pcm: np.ndarray, wire_bytes: int, t: float) -> None:
        start = max(t, self._play_end)
        seconds = pcm.size / self.sample_rate
        self._play_end = start + seconds
        self.media.append(AgentMedia(t, pcm, wire_bytes, start, seconds))
        self.media_event.set()

    @property
    def queued_seconds(self) -> float:
        """Agent audio received and not yet played."""
        return max(0.0, self._play_end - time.monotonic())

    def _schedule_mark(self, name: str, messages: Callable[[], list[str]], t: float) -> None:
        """Answer a mark once the audio received before it has played."""
        self.marks_received.append((t, name))
        self._pending_marks.append(MarkEcho(max(t, self._play_end), name, messages))

    def _clear(self, t: float) -> None:
        """The provider empties its buffer: the rest of the queued audio is never heard."""
        self.clears.append(t)
        self._play_end = t
        pending, self._pending_marks = self._pending_marks, []
        if self.returns_marks_on_clear:
            for echo in pending:
                self._spawn_send(echo.messages, echo.name, cleared=True)

    def _spawn_send(self, messages: Callable[[], list[str]], name: str, cleared: bool) -> None:
        async def go() -> None:
            await self.send_built(messages)
            self.marks_echoed.append((time.monotonic(), name, cleared))

        self._tasks.append(asyncio.create_task(go()))

    async def _tick_loop(self) -> None:
        while not self.closed.is_set():
            now = time.monotonic()
            due = [m for m in self._pending_marks if m.due <= now]
            if due:
                self._pending_marks = [m for m in self._pending_marks if m.due > now]
                for echo in due:
                    await self.send_built(echo.messages)
                    self.marks_echoed.append((time.monotonic(), echo.name, False))
            await self.tick(now)
            await asyncio.sleep(0.005)

    async def tick(self, now: float) -> None:
        """Provider-specific periodic work (Asterisk: queue-drained reports, flow control)."""

    # -- receiving ----------------------------------------------------------------

    async def _recv_loop(self) -> None:
        try:
            async for message in self.ws:
                t = time.monotonic()
                try:
                    if isinstance(message, str):
                        self.texts_received.append((t, message))
                        self.on_text(message, t)
                    else:
                        self.on_binary(message, t)
                except Exception as e:  # a malformed server message is a finding, not a crash
                    self.violations.append(f"{self.provider}: cannot handle server message ({e!r}): {message[:120]!r}")
        except ConnectionClosed:
            pass
        finally:
            self.closed_at = time.monotonic()
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason
            self.mic_running = False
            self.closed.set()

    def on_text(self, text: str, t: float) -> None:
        self.violations.append(f"{self.provider}: unexpected text frame {text[:120]!r}")

    def on_binary(self, data: bytes, t: float) -> None:
        self.violations.append(f"{self.provider}: unexpected binary frame of {len(data)} bytes")

    def _json(self, text: str) -> dict[str, Any]:
        obj = json.loads(text)
        if not isinstance(obj, dict):
            raise ValueError("server message is not a JSON object")
        return obj

    def _json_event(
        self, msg: dict[str, Any], text: str, t: float, decode: Callable[[bytes], np.ndarray],
        check_media: Callable[[bytes], None] | None = None,
    ) -> None:  # fmt: skip
        """``media`` / ``mark`` / ``clear`` in the shape Twilio, Telnyx and Exotel share:
        ``{"event": "media", "media": {"payload": <base64>}}``, ``{"event": "mark", "mark": {"name": ...}}``."""
        event = msg.get("event")
        if event == "media":
            media = msg.get("media")
            wire = b64_strict(media.get("payload") if isinstance(media, dict) else None)
            if not wire:
                self.violations.append(f"{self.provider}: empty media payload")
            if check_media is not None:
                check_media(wire)
            self._play(decode(wire), len(wire), t)
        elif event == "mark":
            mark = msg.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str) or not name:
                self.violations.append(f"{self.provider}: mark without a name: {text[:120]!r}")
                return
            self._schedule_mark(name, lambda: [self.mark_message(name)], t)
        elif event == "clear":
            self._clear(t)
        else:
            self.violations.append(f"{self.provider}: unknown event from server: {text[:120]!r}")

    def mark_message(self, name: str) -> str:
        """The provider's answer to a mark (providers with marks)."""
        raise NotImplementedError

    # -- what arrived ----------------------------------------------------------------

    def first_media_after(self, t: float) -> AgentMedia | None:
        for m in self.media:
            if m.t > t:
                return m
        return None

    def agent_audio(self, since: float = 0.0, until: float = float("inf")) -> np.ndarray:
        chunks = [m.pcm for m in self.media if since < m.t <= until]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

    async def wait_media_after(self, t: float, timeout: float) -> AgentMedia | None:
        deadline = time.monotonic() + timeout
        while True:
            found = self.first_media_after(t)
            if found is not None or self.closed.is_set():
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.media_event.clear()
            found = self.first_media_after(t)
            if found is not None:
                return found
            try:
                await asyncio.wait_for(self.media_event.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass

    async def wait_agent_quiet(self, quiet: float = 0.8, timeout: float = 30.0) -> bool:
        """Until no agent media arrived for ``quiet`` s and the line has played everything."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.closed.is_set():
            now = time.monotonic()
            last = self.media[-1].t if self.media else (self.connected_at or now)
            if now - last >= quiet and self.queued_seconds == 0.0:
                return True
            await asyncio.sleep(0.02)
        return self.closed.is_set()

    def gaps(self, t0: float, t1: float, threshold_ms: float = GAP_MS) -> dict[str, Any]:
        """Gaps in the agent audio of one reply (media that arrived in ``[t0, t1)``).

        - ``underruns``: the line ran dry mid-reply — a message arrived more than
          ``threshold_ms`` after everything before it had finished playing (audible);
        - ``arrival_gaps``: more than ``threshold_ms`` between two messages' arrivals
          (jitter in the outbound stream, audible only when the line's buffer runs out).
        """
        sel = [m for m in self.media if t0 <= m.t < t1]
        underruns: list[float] = []
        arrivals: list[float] = []
        play_end: float | None = None
        for prev, m in zip([None, *sel[:-1]], sel):
            if prev is not None:
                arrival_gap = (m.t - prev.t) * 1000
                if arrival_gap > threshold_ms:
                    arrivals.append(arrival_gap)
                assert play_end is not None
                dry = (m.t - play_end) * 1000
                if dry > threshold_ms:
                    underruns.append(dry)
                play_end = max(play_end, m.t) + m.seconds
            else:
                play_end = m.t + m.seconds
        return {"messages": len(sel), "underruns": underruns, "arrival_gaps": arrivals}


# --------------------------------------------------------------------------- Twilio




def find_stored_call(store: Any, tenant: str, ids: set[str], *, actor: str = "test") -> Any | None:
    """The stored call (metadata) of ``tenant`` whose provider ids include one of ``ids``."""
    for call in store.calls.list(tenant, limit=10000, actor=actor):
        if ids & {str(v) for v in call.provider_ids.values()}:
            return call
    return None


async def wait_stored_call(
    store: Any,
    tenant: str,
    ids: set[str],
    timeout: float = 10.0,
    *,
    ended: bool = True,
    with_turns: bool = False,
    actor: str = "test",
) -> Any | None:
    """Poll the store until the call is there (and closed, with ``ended``); ``with_turns`` reads it
    whole (turns and timelines). After ``timeout`` whatever was found, or None."""
    deadline = time.monotonic() + timeout
    while True:
        call = await asyncio.to_thread(find_stored_call, store, tenant, ids, actor=actor)
        if call is not None and (not ended or call.ended_at is not None):
            if with_turns:
                return await asyncio.to_thread(store.calls.get, tenant, call.call_id, actor=actor)
            return call
        if time.monotonic() >= deadline:
            return call
        await asyncio.sleep(0.1)
