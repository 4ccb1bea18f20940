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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
from loguru import logger

from voicecore.config import PipelineConfig
from voicecore.models import ModelPool
from voicecore.records import CallRecord
from voicecore.session import CallSession, _open_call
from voicecore.transport import CallTransport

if TYPE_CHECKING:
    from voicecore.storage import Store

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
        if session.ended:
            return True
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
    tenant: str | None = None,
    store: Store | None = None,
    record: CallRecord | None = None,
    on_prompt: Callable[[str], None] | None = None,
) -> tuple[CallRecord, FileTransport, CallSession]:
    """A whole call: greeting, then each utterance (waiting for the agent's answer in between).

    With ``tenant`` the call starts through :func:`voicecore.session.open_call` under that
    tenant's policy (``store`` None: the privacy-first default policy, nothing stored);
    it may raise :class:`~voicecore.session.CallRefused`. A call the session ends itself
    (an opt-out) stops the script early.
    """
    transport = FileTransport(output_sample_rate, realtime=realtime)
    if tenant is not None:
        if session_kwargs:
            raise ValueError("session_kwargs cannot be combined with tenant (the policy wires the session)")
        session = await _open_call(
            pool=pool, store=store, tenant=tenant, config=config, transport=transport, record=record,
            realtime=realtime, on_prompt=on_prompt, greet=greet,
        )  # fmt: skip
    else:
        if store is not None:
            raise ValueError("a store needs a tenant")
        kwargs = dict(session_kwargs or {})
        if record is not None:
            kwargs["record"] = record
        if on_prompt is not None:
            kwargs["on_prompt"] = on_prompt
        session = CallSession(config, pool, transport, realtime=realtime, greet=greet, **kwargs)
        await session.start()
    transport.start_clock()
    rate = utterances[0].sample_rate if utterances else 16000
    # the greeting (or the recording question, or a restricted caller's notice) plays out
    await stream_silence_until_idle(session, rate, realtime=realtime, timeout=30)
    for utt in utterances:
        await stream_audio(session, utt, realtime=realtime)
        if wait_for_replies:
            await stream_silence_until_idle(session, utt.sample_rate, realtime=realtime, timeout=60)
    record = await session.end("completed")
    if store is not None:
        from voicecore.reports import drain_reports

        await drain_reports()  # the post-call report finishes before the command exits
    return record, transport, session
