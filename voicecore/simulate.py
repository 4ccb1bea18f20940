"""Calls without a telephone: a WAV file or scripted utterances as the caller.

``voicecore run`` and ``voicecore demo`` (and the tests and benchmarks) use
these: caller audio is streamed into a real :class:`CallSession` in 20 ms
chunks, at real time or as fast as the pipeline takes it (``realtime=False``:
then the caller waits for each reply before going on, so turns do not overlap).
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

from voicecore.config import PipelineConfig
from voicecore.models import ModelPool
from voicecore.records import CallRecord
from voicecore.session import CallSession
from voicecore.transport import CallTransport

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

    async def write_audio(self, pcm16: bytes) -> None:
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


async def stream_audio(session: CallSession, audio: Audio, *, realtime: bool = True) -> None:
    """Play caller audio into the session in 20 ms chunks."""
    step = audio.sample_rate * CHUNK_MS // 1000
    t0 = time.monotonic()
    for i, start in enumerate(range(0, audio.samples.size, step)):
        await session.feed_audio(audio.samples[start : start + step].tobytes(), audio.sample_rate)
        if realtime:
            delay = t0 + (i + 1) * CHUNK_MS / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)
            await _wait_reply_if_turn_ended(session)


async def _wait_reply_if_turn_ended(session: CallSession) -> None:
    """Fast mode: once a caller turn has ended, let the agent answer before more audio comes."""
    call = session.pipeline
    if call.vad._turn.in_turn:
        return
    while session.agent_busy:
        await asyncio.sleep(0.005)


async def stream_silence_until_idle(
    session: CallSession, sample_rate: int = 16000, *, realtime: bool = True, timeout: float = 60.0, settle: float = 0.4
) -> bool:
    """Caller silence until the agent has answered and finished speaking (or ``timeout``)."""
    step = sample_rate * CHUNK_MS // 1000
    silence = bytes(step * 2)
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    quiet_since: float | None = None
    i = 0
    while time.monotonic() < deadline:
        await session.feed_audio(silence, sample_rate)
        i += 1
        if session.agent_busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= settle:
            return True
        if realtime:
            delay = t0 + i * CHUNK_MS / 1000 - time.monotonic()
            await asyncio.sleep(max(0.0, delay))
        else:
            await asyncio.sleep(0.002 if session.agent_busy else 0)
    logger.warning("the agent was still busy when the wait for it ended")
    return False


async def run_call(
    config: PipelineConfig,
    pool: ModelPool,
    utterances: list[Audio],
    *,
    realtime: bool = True,
    output_sample_rate: int = 16000,
    wait_for_replies: bool = True,
    greet: bool = True,
    session_kwargs: dict | None = None,
) -> tuple[CallRecord, FileTransport, CallSession]:
    """A whole call: greeting, then each utterance (waiting for the agent's answer in between)."""
    transport = FileTransport(output_sample_rate, realtime=realtime)
    session = CallSession(config, pool, transport, realtime=realtime, greet=greet, **(session_kwargs or {}))
    await session.start()
    transport.start_clock()
    rate = utterances[0].sample_rate if utterances else 16000
    if greet and config.greeting:
        await stream_silence_until_idle(session, rate, realtime=realtime, timeout=30)
    for utt in utterances:
        await stream_audio(session, utt, realtime=realtime)
        if wait_for_replies:
            await stream_silence_until_idle(session, utt.sample_rate, realtime=realtime, timeout=60)
    record = await session.end("completed")
    return record, transport, session
