"""A Twilio Media Streams caller for the benchmarks, written from the protocol reference.

It plays Twilio's side of a bidirectional ``<Connect><Stream>``: ``connected``, a full
``start`` (the tenant key in ``customParameters.token``), then a "microphone" that sends
one 160-byte μ-law frame (20 ms at 8 kHz) every 20 ms with increasing
``sequenceNumber``/``chunk``/``timestamp`` — silence when nothing is being said — and
``stop`` at hang-up. Agent audio goes onto an emulated phone line that plays it in real
time: a ``mark`` is echoed back once the audio sent before it has played, and ``clear``
drops the queued audio and returns every pending mark at once, as Twilio does.

Everything is timed on ``time.monotonic()``:

- ``Spoken.speech_end_at``: when the last voiced sample of an utterance was captured —
  the send time of the frame that holds it, less the part of the frame after it;
- ``AgentMedia.t``: when each agent media message arrived.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soxr
import websockets
from websockets.exceptions import ConnectionClosed

RATE = 8000
FRAME_MS = 20
FRAME_SAMPLES = RATE * FRAME_MS // 1000  # 160
GAP_MS = 60.0  # a gap in agent audio longer than this is "late audio"


# --------------------------------------------------------------------------- G.711 μ-law

def _ulaw_table() -> np.ndarray:
    """μ-law byte for every int16 value (ITU-T G.711 as in the reference g711.c ``linear2ulaw``)."""
    x = np.arange(-32768, 32768, dtype=np.int32) >> 2  # 14-bit magnitude, arithmetic shift
    mask = np.where(x < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(x), 8159) + 0x21
    seg_end = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
    seg = np.searchsorted(seg_end, mag)
    uval = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (np.minimum(seg, 7) + 1)) & 0x0F))
    return ((uval ^ mask) & 0xFF).astype(np.uint8)


_ULAW = _ulaw_table()


def ulaw_encode(pcm: np.ndarray) -> bytes:
    return _ULAW[np.asarray(pcm, dtype=np.int16).astype(np.int32) + 32768].tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    u = (~np.frombuffer(data, dtype=np.uint8).astype(np.int32)) & 0xFF
    exponent = (u >> 4) & 0x07
    mag = ((((u & 0x0F) << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -mag, mag).astype(np.int16)


def to_8k(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate == RATE:
        return np.asarray(samples, dtype=np.int16)
    return soxr.resample(np.asarray(samples, dtype=np.int16), rate, RATE).astype(np.int16)


# --------------------------------------------------------------------------- data


@dataclass
class Spoken:
    """One utterance put on the microphone, and when its parts went out."""

    label: str
    pcm: np.ndarray  # int16, 8 kHz
    voiced_start: int  # sample offsets in pcm (8 kHz)
    voiced_end: int
    stream_start: int = -1  # index of pcm[0] in the outgoing sample stream
    queued_at: float = 0.0
    onset_sent_at: float | None = None  # the frame with the first voiced sample was sent
    end_sent_at: float | None = None  # the frame with the last voiced sample was sent
    speech_end_at: float | None = None  # the last voiced sample was "spoken"
    done: asyncio.Event = field(default_factory=asyncio.Event)
    wall_offset: float = 0.0  # time.time() - time.monotonic() when queued

    def wall(self, t: float | None) -> float | None:
        return None if t is None else t + self.wall_offset


@dataclass
class AgentMedia:
    t: float  # arrival
    nbytes: int  # μ-law bytes = samples at 8 kHz
    play_start: float  # when the emulated line starts playing it

    @property
    def seconds(self) -> float:
        return self.nbytes / RATE


@dataclass
class _PendingMark:
    due: float
    name: str


class TwilioCaller:
    """One call over the Twilio protocol to ``ws_url`` (``ws://host:port/ws/twilio``)."""

    def __init__(self, ws_url: str, *, token: str | None = None, caller: str = "+14155550100",
                 callee: str = "+14155550199", label: str = "call"):
        self.ws_url = ws_url
        self.token = token
        self.caller = caller
        self.callee = callee
        self.label = label
        self.account_sid = "AC" + secrets.token_hex(16)
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.call_sid = "CA" + secrets.token_hex(16)
        self.ws: Any = None
        self.seq = 0
        self.chunk = 0
        self.start_sent_at: float | None = None
        self.media: list[AgentMedia] = []
        self.clears: list[float] = []
        self.marks_received = 0
        self.marks_echoed = 0
        self.protocol_errors: list[str] = []
        self.closed = asyncio.Event()
        self.frames_sent = 0
        self.late_sends = 0  # microphone frames sent more than 10 ms late (a starved client, not the server)
        self._media_event = asyncio.Event()
        self._play_end = 0.0
        self._marks: list[_PendingMark] = []
        self._pending = np.zeros(0, dtype=np.int16)
        self._next_sample = 0
        self._spoken: list[Spoken] = []
        self._tasks: list[asyncio.Task] = []
        self._send_lock = asyncio.Lock()

    @property
    def ids(self) -> set[str]:
        return {self.stream_sid, self.call_sid}

    # -- messages ---------------------------------------------------------------------

    def _next_seq(self) -> str:
        self.seq += 1
        return str(self.seq)

    def _start_message(self) -> str:
        params = {"from": self.caller, "to": self.callee}
        if self.token is not None:
            params["token"] = self.token
        return json.dumps({
            "event": "start",
            "sequenceNumber": self._next_seq(),
            "streamSid": self.stream_sid,
            "start": {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1},
            },
        })

    def _media_message(self, pcm: np.ndarray) -> str:
        self.chunk += 1
        return json.dumps({
            "event": "media",
            "sequenceNumber": self._next_seq(),
            "streamSid": self.stream_sid,
            "media": {"track": "inbound", "chunk": str(self.chunk), "timestamp": str((self.chunk - 1) * FRAME_MS),
                      "payload": base64.b64encode(ulaw_encode(pcm)).decode("ascii")},
        })

    def _mark_message(self, name: str) -> str:
        return json.dumps({"event": "mark", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
                           "mark": {"name": name}})

    async def _send(self, message: str) -> bool:
        if self.ws is None or self.closed.is_set():
            return False
        try:
            async with self._send_lock:
                await self.ws.send(message)
            return True
        except ConnectionClosed:
            return False

    # -- call -------------------------------------------------------------------------

    async def start(self, timeout: float = 20.0) -> None:
        """Connect, send ``connected`` and ``start``, and start the microphone."""
        self.ws = await websockets.connect(self.ws_url, open_timeout=timeout, close_timeout=2, ping_interval=None,
                                           max_size=None, compression=None)
        self._tasks.append(asyncio.create_task(self._recv_loop(), name=f"{self.label}-recv"))
        self._tasks.append(asyncio.create_task(self._mark_loop(), name=f"{self.label}-marks"))
        await self._send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await self._send(self._start_message())
        self.start_sent_at = time.monotonic()
        self._tasks.append(asyncio.create_task(self._mic_loop(), name=f"{self.label}-mic"))

    async def hangup(self, timeout: float = 3.0) -> None:
        """``stop``, then close the socket (if the server has not closed it by then)."""
        await self._send(json.dumps({"event": "stop", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
                                     "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}}))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.closed.wait(), timeout)
        await self.close()

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 3)
        self.closed.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    # -- microphone ---------------------------------------------------------------------

    def say(self, samples: np.ndarray, rate: int, voiced_start: int, voiced_end: int, label: str = "") -> Spoken:
        """Queue an utterance (int16 at ``rate``; voiced bounds in samples at ``rate``) after what is queued."""
        pcm = to_8k(samples, rate)
        scale = RATE / rate
        spoken = Spoken(label, pcm, int(voiced_start * scale), max(1, int(round(voiced_end * scale))))
        spoken.stream_start = self._next_sample + self._pending.size
        spoken.queued_at = time.monotonic()
        spoken.wall_offset = time.time() - time.monotonic()
        self._pending = np.concatenate([self._pending, pcm])
        self._spoken.append(spoken)
        return spoken

    async def _mic_loop(self) -> None:
        dur = FRAME_MS / 1000
        t0 = time.monotonic()
        n = 0
        while not self.closed.is_set():
            # frame n holds the audio captured in [t0 + n*dur, t0 + (n+1)*dur): it goes out at its end
            due = t0 + (n + 1) * dur
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.010:
                self.late_sends += 1
            frame = self._pending[:FRAME_SAMPLES]
            self._pending = self._pending[FRAME_SAMPLES:]
            if frame.size < FRAME_SAMPLES:
                frame = np.concatenate([frame, np.zeros(FRAME_SAMPLES - frame.size, dtype=np.int16)])
            s0 = self._next_sample
            if not await self._send(self._media_message(frame)):
                break
            sent = time.monotonic()
            self._next_sample += FRAME_SAMPLES
            self.frames_sent += 1
            self._note_sent(s0, s0 + FRAME_SAMPLES, sent)
            n += 1

    def _note_sent(self, s0: int, s1: int, sent: float) -> None:
        for sp in list(self._spoken):
            first = sp.stream_start + sp.voiced_start
            last = sp.stream_start + sp.voiced_end - 1
            if sp.onset_sent_at is None and s0 <= first < s1:
                sp.onset_sent_at = sent
            if sp.end_sent_at is None and s0 <= last < s1:
                sp.end_sent_at = sent
                sp.speech_end_at = sent - (s1 - (last + 1)) / RATE
            if sp.stream_start + sp.pcm.size <= s1:
                sp.done.set()
                self._spoken.remove(sp)

    async def speak(self, samples: np.ndarray, rate: int, voiced_start: int, voiced_end: int, label: str = "",
                    timeout: float = 30.0) -> Spoken:
        """Say an utterance and wait until all of it has been sent."""
        sp = self.say(samples, rate, voiced_start, voiced_end, label)
        await asyncio.wait_for(sp.done.wait(), timeout)
        return sp

    # -- the emulated line ------------------------------------------------------------------

    async def _recv_loop(self) -> None:
        try:
            async for message in self.ws:
                t = time.monotonic()
                if not isinstance(message, str):
                    self.protocol_errors.append(f"binary frame of {len(message)} bytes (Twilio warning 31950)")
                    continue
                try:
                    msg = json.loads(message)
                    event = msg.get("event")
                    if msg.get("streamSid") != self.stream_sid:
                        self.protocol_errors.append(f"{event} with a foreign streamSid")
                    if event == "media":
                        n = len(base64.b64decode(msg["media"]["payload"], validate=True))
                        start = max(t, self._play_end)
                        self._play_end = start + n / RATE
                        self.media.append(AgentMedia(t, n, start))
                        self._media_event.set()
                    elif event == "mark":
                        self.marks_received += 1
                        self._marks.append(_PendingMark(max(t, self._play_end), str(msg["mark"]["name"])))
                    elif event == "clear":
                        self.clears.append(t)
                        self._play_end = t
                        pending, self._marks = self._marks, []
                        for m in pending:  # Twilio returns every pending mark on clear
                            if await self._send(self._mark_message(m.name)):
                                self.marks_echoed += 1
                    else:
                        self.protocol_errors.append(f"unknown event {event!r}")
                except Exception as e:
                    self.protocol_errors.append(f"bad message ({e!r}): {message[:100]!r}")
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()

    async def _mark_loop(self) -> None:
        while not self.closed.is_set():
            now = time.monotonic()
            due = [m for m in self._marks if m.due <= now]
            if due:
                self._marks = [m for m in self._marks if m.due > now]
                for m in due:
                    if await self._send(self._mark_message(m.name)):
                        self.marks_echoed += 1
            await asyncio.sleep(0.01)

    @property
    def queued_seconds(self) -> float:
        """Agent audio received and not yet played on the emulated line."""
        return max(0.0, self._play_end - time.monotonic())

    def first_media_after(self, t: float) -> AgentMedia | None:
        for m in self.media:
            if m.t > t:
                return m
        return None

    async def wait_media_after(self, t: float, timeout: float) -> AgentMedia | None:
        """The first agent media message that arrived after ``t`` (waiting up to ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.first_media_after(t)
            if found is not None or self.closed.is_set():
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._media_event.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._media_event.wait(), min(remaining, 0.25))

    async def wait_agent_quiet(self, quiet: float = 0.8, timeout: float = 30.0) -> bool:
        """Until no agent media arrived for ``quiet`` s and the line has played all of it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.closed.is_set():
            now = time.monotonic()
            last = self.media[-1].t if self.media else (self.start_sent_at or now)
            if now - last >= quiet and self.queued_seconds == 0.0:
                return True
            await asyncio.sleep(0.02)
        return False

    # -- what the caller heard ------------------------------------------------------------

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
