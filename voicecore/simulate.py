"""Calls without a telephone: a scripted caller (audio files, spoken lines) or typed text.

``voicecore run``, ``voicecore demo`` and ``voicecore chat`` (and the tests and
benchmarks) use these. Each is a thin user of :func:`voicecore.session.open_call`,
the road every call takes: with no tenant, the call runs under the built-in
default tenant and the privacy-first default policy, and nothing is stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from loguru import logger

from voicecore.config import PipelineConfig
from voicecore.model_pool import ModelPool
from voicecore.records import CallRecord
from voicecore.reports import ReportScheduler
from voicecore.services.llm import GenerationStats
from voicecore.session import CallSession, open_call
from voicecore.transports.file import (
    Audio,
    FileTransport,
    TextTransport,
    espeak,
    espeak_available,
    stream_audio,
    stream_silence_until_idle,
)

if TYPE_CHECKING:
    from voicecore.storage import Store

DEMO_CALLER_LINES = [
    "What are your opening hours on Saturday?",
    "Are you open on Sunday?",
    "I would like to book a cleaning appointment.",
    "Next Tuesday morning at ten, please.",
    "My name is John Smith.",
    "Yes, please.",
    "Thank you very much. Goodbye.",
]

# espeak-ng voices unlike the agent's Piper voice (and unlike each other).
CALLER_VOICES = ["en-us", "en-us+m3", "en-gb", "en-us+f3"]


async def run_call(
    config: PipelineConfig,
    pool: ModelPool,
    utterances: list[Audio],
    *,
    realtime: bool = True,
    output_sample_rate: int = 16000,
    wait_for_replies: bool = True,
    greet: bool = True,
    tenant: str | None = None,
    store: Store | None = None,
    record: CallRecord | None = None,
    on_prompt: Callable[[str], None] | None = None,
) -> tuple[CallRecord, FileTransport, CallSession]:
    """A whole call: greeting, then each utterance (waiting for the agent's answer in between).

    The call starts through :func:`voicecore.session.open_call` under ``tenant``'s policy
    (no tenant: the default tenant and policy; ``store`` None: nothing stored); it may raise
    :class:`~voicecore.session.CallRefused`. A call the session ends itself (an opt-out)
    stops the script early. With a ``store``, the post-call report is generated before this
    returns.
    """
    transport = FileTransport(output_sample_rate, realtime=realtime)
    reports = ReportScheduler() if store is not None else None
    session = await open_call(
        pool=pool, config=config, transport=transport, store=store, tenant=tenant, record=record,
        reports=reports, realtime=realtime, greet=greet, on_prompt=on_prompt,
    )  # fmt: skip
    transport.start_clock()
    rate = utterances[0].sample_rate if utterances else 16000
    # the greeting (or the recording question, or a restricted caller's notice) plays out
    await stream_silence_until_idle(session, rate, realtime=realtime, timeout=30)
    for utt in utterances:
        await stream_audio(session, utt, realtime=realtime)
        if wait_for_replies:
            await stream_silence_until_idle(session, utt.sample_rate, realtime=realtime, timeout=60)
    record = await session.end("completed")
    if reports is not None:
        await reports.drain()  # the post-call report finishes before the command exits
    return record, transport, session


# --------------------------------------------------------------------------- the demo


def caller_audio(text: str, index: int = 0, pool: ModelPool | None = None) -> Audio:
    """A caller utterance as audio: espeak-ng where installed, else Piper at another pace."""
    if espeak_available():
        return espeak(text, voice=CALLER_VOICES[index % len(CALLER_VOICES)], speed=140)
    if pool is None:
        raise RuntimeError("espeak-ng is not installed and no model pool was given for the Piper fallback")
    logger.warning("espeak-ng not found: the demo caller speaks with the agent's Piper voice, slowed down")
    engine = pool.tts("default")
    pcm = engine.synthesize_sync(text, length_scale=1.25)
    return Audio(np.frombuffer(pcm, dtype=np.int16).copy(), engine.sample_rate)


@dataclass
class DemoResult:
    record: CallRecord
    audio_path: Path
    calendar_path: Path | None = None  # the demo's own .ics calendar (the booking lands there)


async def run_demo(
    config: PipelineConfig,
    pool: ModelPool,
    out_dir: Path,
    *,
    lines: list[str] | None = None,
    realtime: bool = True,
) -> DemoResult:
    """The demo call: a scripted caller (spoken audio, not text) talks to the agent.

    An ``.ics`` calendar of the pipeline is replaced by a fresh ``demo-calendar.ics`` in
    ``out_dir``, so each run books into an empty calendar (``calendar_path`` in the result)."""
    lines = lines or DEMO_CALLER_LINES
    utterances = [caller_audio(text, i, pool) for i, text in enumerate(lines)]
    out_dir.mkdir(parents=True, exist_ok=True)
    config, calendar_path = _fresh_demo_calendar(config, out_dir)
    record, transport, _session = await run_call(config, pool, utterances, realtime=realtime)
    path = out_dir / "demo-agent.wav"
    transport.save(path)
    return DemoResult(record, path, calendar_path)


def _fresh_demo_calendar(config: PipelineConfig, out_dir: Path) -> tuple[PipelineConfig, Path | None]:
    tool = config.tools.book_appointment
    if tool is None or tool.calendar.ics is None:
        return config, None
    path = (out_dir / "demo-calendar.ics").resolve()
    path.unlink(missing_ok=True)
    tool = tool.model_copy(update={"calendar": tool.calendar.model_copy(update={"ics": str(path)})})
    tools = config.tools.model_copy(update={"book_appointment": tool})
    return config.model_copy(update={"tools": tools}), path


# --------------------------------------------------------------------------- text


class TextCall:
    """A call in text (``voicecore chat``): typed caller turns in, the agent's replies out,
    through the same session, policy and opt-out handling as a phone call."""

    def __init__(self, session: CallSession, transport: TextTransport):
        self.session = session
        self.transport = transport

    @classmethod
    async def open(
        cls,
        config: PipelineConfig,
        pool: ModelPool,
        *,
        store: Store | None = None,
        tenant: str | None = None,
        greet: bool = True,
    ) -> TextCall:
        transport = TextTransport()
        session = await open_call(pool=pool, config=config, transport=transport, store=store, tenant=tenant,
                                  greet=greet)  # fmt: skip
        return cls(session, transport)

    @property
    def ended(self) -> bool:
        return self.session.ended

    async def next_reply(self, timeout: float = 120.0) -> str | None:
        """The agent's next reply (the greeting first), or None once the call has ended."""
        get = asyncio.ensure_future(self.transport.replies.get())
        closed = asyncio.ensure_future(self.session.closed.wait())
        try:
            done, _ = await asyncio.wait({get, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if get in done:
            return get.result()
        get.cancel()
        if not self.transport.replies.empty():
            return self.transport.replies.get_nowait()
        return None

    async def say(self, text: str) -> tuple[str | None, GenerationStats | None]:
        """Say ``text`` as the caller; the agent's reply and the LLM's figures for it."""
        await self.session.send_text(text)
        reply = await self.next_reply()
        return reply, self.session.pipeline.llm.last_stats

    async def close(self) -> CallRecord:
        return await self.session.end("completed")
