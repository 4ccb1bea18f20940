"""The edge of a call: the port every transport implements, and the agent's paced audio output.

A transport (a WAV file, the terminal, a telephony WebSocket, a WebRTC peer)
implements :class:`CallTransport` and drives the running call through the
:class:`LiveCall` port (caller audio in with ``feed_audio``, DTMF, mark
acknowledgements, the end). Agent audio leaves through :class:`AgentAudioOutput`,
the last processor of every pipeline, which

- cuts agent audio into the transport's frames (``CallTransport.frame_bytes``):
  the one place agent audio is sliced, so each frame is one provider message;
- paces those frames at real time with a small lead (one frame plus ``lead_ms``),
  so the far end never runs dry and a barge-in can silence the line at once;
- sends one mark after the last audio of each clause and learns from the
  transport's mark acknowledgements (or, for local transports, from its own
  playback clock) which clauses the caller heard;
- on an ``InterruptionFrame`` drops everything unplayed, asks the transport to
  clear its buffer, and reports the reply cut to what was heard.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputAudioRawFrame,
    StartFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voicecore.frames import AgentClauseFrame, AgentReplyDoneFrame, AgentReplyStartFrame
from voicecore.records import CallRecord, TurnTimeline

#: Agent audio frame length unless a transport says otherwise.
DEFAULT_FRAME_MS = 20


class CallRefused(Exception):
    """The call may not run (unknown tenant, a policy that forbids the pipeline, an unknown
    pipeline...). ``reason`` says why; transports close the call with it."""

    def __init__(self, reason: str, *, try_again: bool = False):
        self.reason = reason
        #: the refusal is about this worker, not the call (full, draining): a provider or load
        #: balancer may place the call again, elsewhere (WebSocket close 1013, HTTP 503)
        self.try_again = try_again
        super().__init__(reason)


class LiveCall(Protocol):
    """What a transport drives of a running call (:class:`voicecore.session.CallSession`)."""

    record: CallRecord
    #: Set once the call has ended and its record was handed off; transports hang up on it.
    closed: asyncio.Event

    @property
    def call_id(self) -> str: ...

    @property
    def ended(self) -> bool: ...

    @property
    def busy(self) -> bool:
        """The agent is transcribing, thinking or speaking for some turn."""
        ...

    @property
    def caller_in_turn(self) -> bool:
        """The caller is in the middle of a turn (speaking, or pausing within it)."""
        ...

    async def feed_audio(self, pcm16: bytes, sample_rate: int, channels: int = 1) -> None: ...

    async def dtmf(self, digit: str) -> None: ...

    def mark_played(self, name: str) -> None: ...

    async def end(self, reason: str = "hangup") -> CallRecord: ...


class CallTransport(ABC):
    """What the pipeline needs from the far end of a call."""

    name: str = "transport"
    #: Whether the far end acknowledges marks once the audio before them has played.
    acknowledges_marks: bool = False

    @property
    @abstractmethod
    def output_sample_rate(self) -> int:
        """The rate agent audio must be handed over at (int16 mono)."""

    @property
    def frame_bytes(self) -> int:
        """int16 bytes of one outbound frame: ``write_audio`` always gets exactly this many."""
        return self.output_sample_rate * DEFAULT_FRAME_MS // 1000 * 2

    @abstractmethod
    async def write_audio(self, frame: bytes) -> None:
        """Send one frame of agent audio (``frame_bytes`` of int16 LE mono at ``output_sample_rate``)."""

    async def send_mark(self, name: str) -> None:
        """Ask the far end to acknowledge ``name`` once everything before it has played."""

    async def clear(self) -> None:
        """Drop audio the far end has buffered but not played yet."""


@dataclass
class _Clause:
    reply_id: str
    index: int
    text: str
    start: int = -1  # sample offsets in the output stream
    end: int = -1
    acked: bool = False

    @property
    def mark_name(self) -> str:
        return f"{self.reply_id}:{self.index}"


@dataclass
class _Reply:
    reply_id: str
    kind: str
    timeline: TurnTimeline | None
    clauses: list[_Clause] = field(default_factory=list)
    generated_text: str = ""
    done_queued: bool = False
    first_audio_sent: bool = False


def heard_text(clauses: list[_Clause], position: int, needs_ack: bool) -> str:
    """What of a reply the caller heard, the playback being at sample ``position``.

    A clause counts whole once acknowledged (or, without acknowledgements, once
    the playback passed its end); the clause being played counts for the share
    of its words that matches the share of its audio played.
    """
    words: list[str] = []
    for c in clauses:
        if c.start < 0:
            break
        whole = c.acked if needs_ack else (c.end >= 0 and position >= c.end)
        if whole:
            words += c.text.split()
            continue
        if position > c.start:
            span = (c.end if c.end > c.start else position) - c.start
            share = min(1.0, (position - c.start) / span) if span > 0 else 0.0
            parts = c.text.split()
            words += parts[: int(len(parts) * share)]
        break
    return " ".join(words)


ReplyStarted = Callable[[str, str, TurnTimeline | None], None]
ReplyFinished = Callable[[str, str, str, str, bool], None]  # reply_id, kind, generated, heard, interrupted


class AgentAudioOutput(FrameProcessor):
    """The sink of a call's pipeline: agent audio cut into the transport's frames and paced,
    marks after each clause's last audio, barge-in clears."""

    def __init__(
        self,
        transport: CallTransport,
        *,
        realtime: bool = True,
        lead_ms: int = 100,
        on_reply_started: ReplyStarted | None = None,
        on_reply_finished: ReplyFinished | None = None,
        tap: Callable[[bytes], None] | None = None,
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        """``lead_ms``: how far ahead of playback audio is sent *beyond one whole frame*: the far
        end always holds the frame being played plus at least ``lead_ms`` (Exotel's 8 kHz
        messages are 200–400 ms long, so a lead shorter than a message leaves no margin).
        ``clock``/``sleep`` are the pacer's time source (virtual time in tests)."""
        super().__init__(name=name or "AgentAudioOutput")
        self._transport = transport
        self._realtime = realtime
        self._now = clock
        self._sleep = sleep
        self._on_reply_started = on_reply_started
        self._on_reply_finished = on_reply_finished
        self._tap = tap  # sees every byte of agent audio sent (the recording seam)
        self._rate = transport.output_sample_rate
        self._frame_bytes = transport.frame_bytes
        self._lead = lead_ms / 1000 + self._frame_bytes / 2 / self._rate
        self._queue: deque[object] = deque()
        self._partial = bytearray()  # agent audio not yet a whole frame (sent with the next audio)
        self._handed = 0  # stream offset (samples) after all the agent audio handed to this output
        self._wakeup = asyncio.Event()
        self._pacer: asyncio.Task | None = None
        self._stream_start = 0.0  # monotonic time the current burst of audio started playing
        self._burst_samples = 0  # samples sent in the current burst
        self._position_base = 0  # output stream offset where the current burst started
        self._sent = 0  # total samples sent (stream offset)
        self._speaking = False
        self._replies: dict[str, _Reply] = {}
        self._current: _Reply | None = None  # reply whose audio is being sent
        self._pending_marks: dict[str, _Clause] = {}  # marks sent, not yet acknowledged
        self._unsent_marks: list[_Clause] = []  # clauses whose last audio is still in ``_partial``
        self.interruptions = 0
        self.last_write_at: dict[str, float] = {}  # reply id -> when its last audio was written
        self.last_clear_at: float | None = None

    # -- state the session and the tests look at ---------------------------------------

    @property
    def lead_s(self) -> float:
        """How long before its playback time a frame is sent: one frame plus ``lead_ms``."""
        return self._lead

    @property
    def busy(self) -> bool:
        """Audio queued or still playing."""
        return bool(self._queue) or bool(self._partial) or self._speaking

    @property
    def _offset(self) -> int:
        """Stream offset (samples) of the next agent sample: sent, plus the partial frame."""
        return self._sent + len(self._partial) // 2

    def unplayed_s(self) -> float:
        """Agent audio handed to this output that the far end has not played yet (seconds): what
        is queued here, and what was sent ahead of playback. 0 when not paced in real time."""
        if not self._realtime:
            return 0.0
        return max(0, self._handed - self.playback_position()) / self._rate

    def playback_position(self) -> int:
        """Output stream offset (samples) the far end is estimated to have played."""
        if not self._realtime:
            return self._sent
        played = int((self._now() - self._stream_start) * self._rate) if self._speaking else self._burst_samples
        return self._position_base + max(0, min(self._burst_samples, played))

    # -- frames ------------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            if self.processor_setup.audio_out_sample_rate != self._rate:
                logger.warning(
                    f"{self}: pipeline output rate {self.processor_setup.audio_out_sample_rate} differs "
                    f"from transport rate {self._rate}"
                )
            self._pacer = self.create_task(self._pace())
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            await self._interrupt()
            await self.push_frame(frame, direction)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            if isinstance(frame, EndFrame):
                await self._drain()
            await self._stop_pacer()
            await self.push_frame(frame, direction)
        elif isinstance(frame, (AgentReplyStartFrame, AgentClauseFrame, AgentReplyDoneFrame)):
            self._enqueue(frame)
        elif isinstance(frame, OutputAudioRawFrame):
            if frame.sample_rate != self._rate:
                raise ValueError(f"{self}: agent audio at {frame.sample_rate} Hz, transport wants {self._rate} Hz")
            self._handed += len(frame.audio) // 2
            self._enqueue(frame.audio)
        else:
            await self.push_frame(frame, direction)

    def _enqueue(self, item: object) -> None:
        self._queue.append(item)
        self._wakeup.set()

    async def _drain(self, timeout: float = 30.0) -> None:
        """At the end of a call: let queued audio finish playing."""
        deadline = self._now() + timeout
        while (self._queue or self._speaking) and self._now() < deadline:
            await asyncio.sleep(0.02)

    async def _stop_pacer(self) -> None:
        if self._pacer is not None:
            await self.cancel_task(self._pacer)
            self._pacer = None

    # -- the pacer -----------------------------------------------------------------------

    async def _pace(self) -> None:
        while True:
            if not self._queue:
                await self._idle_until_work()
                continue
            item = self._queue.popleft()
            if isinstance(item, AgentReplyStartFrame):
                reply = _Reply(item.reply_id, item.kind, item.timeline)
                self._replies[item.reply_id] = reply
                self._current = reply
                self._maybe_finish_replies()
                if self._on_reply_started:
                    self._on_reply_started(item.reply_id, item.kind, item.timeline)
            elif isinstance(item, AgentClauseFrame):
                await self._close_clause()
                reply = self._replies.get(item.reply_id)
                if reply is not None:
                    reply.clauses.append(_Clause(item.reply_id, item.index, item.text, start=self._offset))
            elif isinstance(item, AgentReplyDoneFrame):
                await self._close_clause()
                await self._send_partial_frame()
                reply = self._replies.get(item.reply_id)
                if reply is not None:
                    reply.generated_text = item.generated_text
                    reply.done_queued = True
                self._maybe_finish_replies()
            elif isinstance(item, bytes | bytearray):
                self._partial += item
                whole = len(self._partial) - len(self._partial) % self._frame_bytes
                for i in range(0, whole, self._frame_bytes):
                    await self._send_frame(bytes(self._partial[i : i + self._frame_bytes]))
                del self._partial[:whole]

    async def _close_clause(self) -> None:
        """The audio of the clause being sent is complete: mark its end (the mark goes out once
        the frame holding its last sample has been sent)."""
        reply = self._current
        if reply is None or not reply.clauses:
            return
        clause = reply.clauses[-1]
        if clause.end >= 0:
            return
        clause.end = self._offset
        if self._transport.acknowledges_marks:
            self._unsent_marks.append(clause)
            await self._send_due_marks()

    async def _send_due_marks(self) -> None:
        while self._unsent_marks and self._unsent_marks[0].end <= self._sent:
            clause = self._unsent_marks.pop(0)
            self._pending_marks[clause.mark_name] = clause
            await self._transport.send_mark(clause.mark_name)

    async def _send_partial_frame(self) -> None:
        """The end of a reply: what is left of its audio, padded with silence to a whole frame."""
        if self._partial:
            frame = bytes(self._partial) + bytes(self._frame_bytes - len(self._partial))
            self._partial.clear()
            await self._send_frame(frame)

    async def _send_frame(self, frame: bytes) -> None:
        n = len(frame) // 2
        if self._realtime:
            now = self._now()
            if not self._speaking:
                self._stream_start = now
                self._burst_samples = 0
                self._position_base = self._sent
            ahead = self._stream_start + self._burst_samples / self._rate - now
            if ahead > self._lead:
                await self._sleep(ahead - self._lead)
        if not self._speaking:
            self._speaking = True
            await self.push_frame(BotStartedSpeakingFrame(), FrameDirection.UPSTREAM)
        reply = self._current
        if reply is not None and not reply.first_audio_sent:
            reply.first_audio_sent = True
            if reply.timeline is not None:
                reply.timeline.mark("first_audio_out")
        await self._transport.write_audio(frame)
        if reply is not None:
            self.last_write_at[reply.reply_id] = self._now()
        if self._tap is not None:
            self._tap(frame)
        self._sent += n
        self._burst_samples += n
        if self._unsent_marks:
            await self._send_due_marks()

    async def _idle_until_work(self) -> None:
        """Nothing queued: wait for work, and notice when the audio already sent has played."""
        self._wakeup.clear()
        if self._speaking:
            remaining = (
                self._stream_start + self._burst_samples / self._rate - self._now() if self._realtime else 0.0
            )
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=max(0.0, remaining) + 0.01)
                return
            except asyncio.TimeoutError:
                pass
            if not self._queue:
                self._speaking = False
                await self.push_frame(BotStoppedSpeakingFrame(), FrameDirection.UPSTREAM)
                self._maybe_finish_replies()
            return
        await self._wakeup.wait()

    # -- marks and replies -------------------------------------------------------------

    def mark_played(self, name: str) -> None:
        """The transport says the audio before mark ``name`` has played."""
        clause = self._pending_marks.pop(name, None)
        if clause is None:
            logger.debug(f"{self}: acknowledgement for unknown or stale mark {name!r}")
            return
        clause.acked = True
        self._maybe_finish_replies()

    def _maybe_finish_replies(self) -> None:
        position = self.playback_position()
        for reply_id, reply in list(self._replies.items()):
            if not reply.done_queued:
                continue
            if self._transport.acknowledges_marks:
                played = all(c.acked for c in reply.clauses)
            else:
                played = not reply.clauses or position >= reply.clauses[-1].end
            if played:
                del self._replies[reply_id]
                if self._current is reply:
                    self._current = None
                if self._on_reply_finished:
                    text = " ".join(c.text for c in reply.clauses)
                    self._on_reply_finished(reply_id, reply.kind, reply.generated_text or text, text, False)

    async def _interrupt(self) -> None:
        """Barge-in: drop what was not played, clear the far end, report what was heard."""
        position = self.playback_position()
        had_audio = self._speaking or bool(self._partial) or any(isinstance(i, bytes | bytearray) for i in self._queue)
        current = self._current.clauses[-1] if self._current and self._current.clauses else None
        if current is not None and current.end < 0:
            # The clause being sent ends where its audio still queued would have ended.
            queued = 0
            for item in self._queue:
                if not isinstance(item, bytes | bytearray):
                    break
                queued += len(item) // 2
            current.end = self._offset + queued
        self._queue.clear()
        self._partial.clear()
        self._handed = self._sent  # what was not sent is gone
        self._unsent_marks.clear()
        if self._pacer is not None:
            # The pacer may be waiting to send the next frame: restart it on an empty queue.
            await self.cancel_task(self._pacer)
            self._pacer = self.create_task(self._pace())
        if had_audio:
            self.interruptions += 1
            self.last_clear_at = self._now()
            await self._transport.clear()
        acks = self._transport.acknowledges_marks
        for reply_id, reply in list(self._replies.items()):
            heard = heard_text(reply.clauses, position, acks)
            generated = reply.generated_text or " ".join(c.text for c in reply.clauses)
            if self._on_reply_finished:
                self._on_reply_finished(reply_id, reply.kind, generated, heard, True)
        self._replies.clear()
        self._current = None
        self._pending_marks.clear()
        if self._speaking:
            self._speaking = False
            await self.push_frame(BotStoppedSpeakingFrame(), FrameDirection.UPSTREAM)
        # The stream restarts from the position reached: unplayed audio never happened.
        self._sent = position
        self._burst_samples = 0
        self._position_base = position
