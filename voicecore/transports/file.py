"""Local transports: audio files and the terminal as the far end of a call.

- :class:`FileTransport` collects the agent's audio (aligned to the call's
  clock) for a WAV file; :func:`stream_audio` plays caller audio into a running
  call in 20 ms chunks, at real time or as fast as the pipeline takes it
  (``realtime=False``: the caller then waits for each reply, so turns do not overlap);
- :class:`TextTransport` and :class:`TextReplyOutput` carry a call in text (``voicecore chat``):
  typed caller turns in, the agent's replies out, through the same session and policy;
- :func:`read_audio`, :func:`write_wav` and :func:`espeak` read, write and speak caller audio.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    StartFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voicecore.frames import AgentSayFrame
from voicecore.transports.base import (
    CallTransport,
    LiveCall,
    ReplyFinished,
    ReplyStarted,
)

CHUNK_MS = 20


class AudioFileError(ValueError):
    """An audio file that cannot be used as caller audio; the message names the file."""


@dataclass
class Audio:
    """int16 mono samples and their rate."""

    samples: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return self.samples.size / self.sample_rate

    def pcm(self) -> bytes:
        return self.samples.astype(np.int16).tobytes()


def read_audio(path: str | Path) -> Audio:
    """Read a WAV (or any format libsndfile reads) at any rate, mono or multi-channel → int16 mono."""
    p = Path(path)
    if not p.exists():
        raise AudioFileError(f"{p}: file not found")
    try:
        data, rate = sf.read(str(p), dtype="int16", always_2d=True)
    except Exception as e:
        raise AudioFileError(f"{p}: not a readable audio file ({e})") from None
    if data.size == 0:
        raise AudioFileError(f"{p}: contains no audio")
    if not 4000 <= rate <= 192000:
        raise AudioFileError(f"{p}: unsupported sample rate {rate} Hz")
    mono = data.mean(axis=1).astype(np.int16) if data.shape[1] > 1 else data[:, 0].copy()
    return Audio(mono, int(rate))


def write_wav(path: str | Path, samples: np.ndarray | bytes, sample_rate: int) -> None:
    pcm = samples if isinstance(samples, bytes) else samples.astype(np.int16).tobytes()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak(text: str, *, voice: str = "en-us", speed: int = 140, pitch: int | None = None) -> Audio:
    """Speak ``text`` with espeak-ng (a voice unlike the agent's Piper voice)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "u.wav"
        cmd = [exe, "-v", voice, "-s", str(speed), "-w", str(out)]
        if pitch is not None:
            cmd += ["-p", str(pitch)]
        subprocess.run([*cmd, text], check=True, capture_output=True)
        return read_audio(out)


class FileTransport(CallTransport):
    """Agent audio collected in memory (and optionally a WAV), aligned to the call's clock."""

    name = "file"
    acknowledges_marks = False

    def __init__(self, output_sample_rate: int = 16000, *, realtime: bool = True):
        self._rate = output_sample_rate
        self._realtime = realtime
        self._chunks: list[bytes] = []
        self._written = 0  # samples
        self._t0: float | None = None
        self.clears = 0
        self.clear_times: list[float] = []
        self.write_times: list[float] = []

    @property
    def output_sample_rate(self) -> int:
        return self._rate

    def start_clock(self) -> None:
        self._t0 = time.monotonic()

    async def write_audio(self, frame: bytes) -> None:
        pcm16 = frame
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        if self._realtime:
            expected = int((now - self._t0) * self._rate)
            if expected > self._written:  # silence while the agent was not speaking
                gap = expected - self._written
                self._chunks.append(b"\x00\x00" * gap)
                self._written += gap
        self._chunks.append(pcm16)
        self._written += len(pcm16) // 2
        self.write_times.append(now)

    async def clear(self) -> None:
        self.clears += 1
        self.clear_times.append(time.monotonic())

    def audio(self) -> np.ndarray:
        return np.frombuffer(b"".join(self._chunks), dtype=np.int16)

    def save(self, path: str | Path) -> None:
        write_wav(path, self.audio(), self._rate)


async def stream_audio(session: LiveCall, audio: Audio, *, realtime: bool = True) -> None:
    """Play caller audio into the session in 20 ms chunks (stops if the call ends)."""
    step = audio.sample_rate * CHUNK_MS // 1000
    t0 = time.monotonic()
    for i, start in enumerate(range(0, audio.samples.size, step)):
        if session.ended:
            return
        await session.feed_audio(audio.samples[start : start + step].tobytes(), audio.sample_rate)
        if realtime:
            delay = t0 + (i + 1) * CHUNK_MS / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)
            await _wait_reply_if_turn_ended(session)


async def _wait_reply_if_turn_ended(session: LiveCall) -> None:
    """Fast mode: once a caller turn has ended, let the agent answer before more audio comes."""
    if session.caller_in_turn:
        return
    while session.busy:
        await asyncio.sleep(0.005)


async def stream_silence_until_idle(
    session: LiveCall, sample_rate: int = 16000, *, realtime: bool = True, timeout: float = 60.0, settle: float = 0.4
) -> bool:
    """Caller silence until the agent has answered and finished speaking (or ``timeout``)."""
    step = sample_rate * CHUNK_MS // 1000
    silence = bytes(step * 2)
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    quiet_since: float | None = None
    i = 0
    while time.monotonic() < deadline:
        if session.ended:
            return True
        await session.feed_audio(silence, sample_rate)
        i += 1
        if session.busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= settle:
            return True
        if realtime:
            delay = t0 + i * CHUNK_MS / 1000 - time.monotonic()
            await asyncio.sleep(max(0.0, delay))
        else:
            await asyncio.sleep(0.002 if session.busy else 0)
    logger.warning("the agent was still busy when the wait for it ended")
    return False


# --------------------------------------------------------------------------- text


class TextTransport(CallTransport):
    """A call in text (the terminal): no audio flows; the agent's replies are collected in order."""

    name = "terminal"
    text_only = True

    def __init__(self) -> None:
        self.replies: asyncio.Queue[str] = asyncio.Queue()

    @property
    def output_sample_rate(self) -> int:
        return 16000

    async def write_audio(self, frame: bytes) -> None:
        raise RuntimeError("a text call carries no audio")

    async def write_text(self, text: str) -> None:
        await self.replies.put(text)


class TextReplyOutput(FrameProcessor):
    """The sink of a text call's pipeline: each agent reply (streamed by the LLM, or fixed text
    such as the greeting) reaches the transport whole, and the session's reply callbacks fire as
    they do for audio (what was "heard" is everything that was written)."""

    def __init__(
        self,
        transport: TextTransport,
        *,
        on_reply_started: ReplyStarted | None = None,
        on_reply_finished: ReplyFinished | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name or "TextReplyOutput")
        self._transport = transport
        self._on_started = on_reply_started
        self._on_finished = on_reply_finished
        self._reply: tuple[str, list[str]] | None = None
        self._says = 0
        self.busy = False

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMFullResponseStartFrame):
            reply_id = frame.metadata.get("reply_id") or "r?"
            self._reply = (reply_id, [])
            self.busy = True
            if self._on_started:
                self._on_started(reply_id, "reply", frame.metadata.get("timeline"))
        elif isinstance(frame, LLMTextFrame):
            if self._reply is not None:
                self._reply[1].append(frame.text)
        elif isinstance(frame, LLMFullResponseEndFrame):
            if self._reply is not None:
                reply_id, parts = self._reply
                self._reply = None
                await self._finish(reply_id, "reply", "".join(parts).strip())
        elif isinstance(frame, AgentSayFrame):
            self._says += 1
            reply_id = f"s{self._says}"
            if self._on_started:
                self._on_started(reply_id, frame.kind, None)
            await self._finish(reply_id, frame.kind, frame.text)
        elif isinstance(frame, (StartFrame, EndFrame, CancelFrame)):
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _finish(self, reply_id: str, kind: str, text: str) -> None:
        await self._transport.write_text(text)
        self.busy = False
        if self._on_finished:
            self._on_finished(reply_id, kind, text, text, False)
