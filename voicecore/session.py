"""CallSession: one call from first audio to stored record.

A session owns the call's transport, tenant, pipeline and record. Transports
push caller audio in (``feed_audio``), DTMF (``dtmf``) and mark
acknowledgements (``mark_played``); the session runs the Pipecat pipeline,
keeps the transcript with per-turn timelines, and at the end hands the closed
:class:`~voicecore.records.CallRecord` to whoever stores it.

The policy seams are here, each in one place:
- the context builder (``context_builder``): the only road into the LLM;
- recording (``recorder``): sees caller and agent audio only when set;
- the hand-off of the finished record (``on_record``): storage decides what is kept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import numpy as np
import soxr
from loguru import logger
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import EndFrame, InputAudioRawFrame, InputDTMFFrame
from pipecat.workers.runner import WorkerRunner

from voicecore.config import PipelineConfig
from voicecore.frames import AgentSayFrame
from voicecore.models import ModelPool
from voicecore.pipeline import CallPipeline, build_call_pipeline
from voicecore.records import CallRecord, Turn, TurnTimeline
from voicecore.services.llm import ContextBuilder, Conversation, GenerationStats, PassThroughContext
from voicecore.services.vad import PIPELINE_SAMPLE_RATE
from voicecore.transport import CallTransport


class AudioRecorder(Protocol):
    """Receives call audio when (and only when) the tenant's policy allows recording."""

    def caller_audio(self, pcm16: bytes, sample_rate: int) -> None: ...

    def agent_audio(self, pcm16: bytes, sample_rate: int) -> None: ...

    def close(self) -> None: ...


RecordSink = Callable[[CallRecord], Awaitable[None] | None]


class CallSession:
    """One call: transport in and out, the pipeline between, the record at the end."""

    def __init__(
        self,
        config: PipelineConfig,
        pool: ModelPool,
        transport: CallTransport,
        *,
        record: CallRecord | None = None,
        context_builder: ContextBuilder | None = None,
        recorder: AudioRecorder | None = None,
        realtime: bool = True,
        on_record: RecordSink | None = None,
        on_prompt: Callable[[str], None] | None = None,
        greet: bool = True,
    ):
        self.config = config
        self.pool = pool
        self.transport = transport
        self.record = record or CallRecord(pipeline=config.name, transport=transport.name)
        self.record.pipeline = self.record.pipeline or config.name
        self.recorder = recorder
        self.realtime = realtime
        self._on_record = on_record
        self._on_prompt = on_prompt
        self._greet = greet
        self.conversation = Conversation(
            system_prompt=config.system_prompt,
            context=context_builder or PassThroughContext(config.llm.history_turns),
        )
        self._resampler: soxr.ResampleStream | None = None
        self._resampler_rate = 0
        self._agent_turns: dict[str, Turn] = {}
        self._call: CallPipeline | None = None
        self._runner: WorkerRunner | None = None
        self._run_task: asyncio.Task | None = None
        self._prefill_task: asyncio.Task | None = None
        self._started = asyncio.Event()
        self._ended = False
        self._end_lock = asyncio.Lock()
        self.replies_finished = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def call_id(self) -> str:
        return self.record.call_id

    @property
    def pipeline(self) -> CallPipeline:
        if self._call is None:
            raise RuntimeError("call not started")
        return self._call

    async def start(self) -> None:
        """Build and start the pipeline (models load here if not loaded yet), then greet."""
        loop = asyncio.get_running_loop()
        models = await loop.run_in_executor(None, self.pool.for_pipeline, self.config)
        self._call = build_call_pipeline(
            self.config,
            models,
            self.transport,
            self.conversation,
            realtime=self.realtime,
            on_caller_text=self._caller_said,
            on_prompt=self._on_prompt,
            on_reply_started=self._reply_started,
            on_reply_finished=self._reply_finished,
            audio_tap=self._agent_audio_tap if self.recorder is not None else None,
            name=f"call-{self.call_id[:8]}",
        )

        @self._call.worker.event_handler("on_pipeline_started")
        async def _on_started(_worker, _frame):
            self._started.set()

        self._runner = WorkerRunner(handle_sigint=False, handle_sigterm=False, check_dangling_tasks=False)
        await self._runner.add_workers(self._call.worker)
        self._run_task = asyncio.create_task(self._runner.run(), name=f"call-{self.call_id[:8]}")
        await asyncio.wait_for(self._started.wait(), timeout=30)
        logger.info(f"call {self.call_id[:8]} started ({self.record.transport}, pipeline {self.config.name})")
        if self._greet and self.config.greeting:
            await self.say(self.config.greeting, kind="greeting", cacheable=True)
        self._prefill_task = asyncio.create_task(self._prefill(models.llm))

    async def _prefill(self, engine) -> None:
        """Put the system prompt (and greeting) in the KV cache before the caller's first turn."""
        try:
            prompt = engine.prompt_tokens(
                self.conversation.prompt_messages(), self.conversation.generated, generation_header=False
            )
            await engine.prefill(self.conversation.key, prompt)
        except Exception as e:  # only a head start: the first turn evaluates the prompt anyway
            logger.debug(f"call {self.call_id[:8]}: prefill skipped ({e!r})")

    async def say(self, text: str, *, kind: str = "say", cacheable: bool = False) -> None:
        """Speak fixed text as an agent turn (greeting, notices); it enters the model's history."""
        self.conversation.add_agent(text)
        await self.pipeline.worker.queue_frame(AgentSayFrame(text=text, kind=kind, cacheable=cacheable))

    async def end(self, reason: str = "hangup") -> CallRecord:
        """End the call (idempotent): stop the pipeline, close the record, hand it off."""
        async with self._end_lock:
            if self._ended:
                return self.record
            self._ended = True
            if self._call is not None and self._run_task is not None:
                try:
                    if reason in ("completed",):
                        await self._call.worker.queue_frame(EndFrame(reason=reason))
                        await asyncio.wait_for(asyncio.shield(self._run_task), timeout=40)
                    else:
                        await self._call.worker.cancel(reason=reason)
                        await asyncio.wait_for(asyncio.shield(self._run_task), timeout=10)
                except (asyncio.TimeoutError, Exception) as e:  # the record is closed whatever happens
                    logger.warning(f"call {self.call_id[:8]}: pipeline did not stop cleanly ({e!r})")
                    self._run_task.cancel()
                self.pool.llm(self.config.models.llm).forget(self.conversation.key)
            # Replies still open were cut by the hang-up: keep what was said.
            for reply_id, turn in list(self._agent_turns.items()):
                turn.interrupted = True
                self._agent_turns.pop(reply_id, None)
            if self.recorder is not None:
                self.recorder.close()
            self.record.ended_at = time.time()
            self.record.end_reason = reason
            logger.info(
                f"call {self.call_id[:8]} ended ({reason}) after {self.record.duration_s:.1f} s, "
                f"{sum(1 for t in self.record.turns if t.role == 'caller')} caller turns"
            )
            if self._on_record is not None:
                result = self._on_record(self.record)
                if asyncio.iscoroutine(result):
                    await result
            return self.record

    # -- input from the transport -------------------------------------------------------

    async def feed_audio(self, pcm16: bytes, sample_rate: int, channels: int = 1) -> None:
        """Caller audio (int16 LE) at any rate; resampled to 16 kHz mono with state kept across chunks."""
        if self._ended or not pcm16:
            return
        samples = np.frombuffer(pcm16, dtype=np.int16)
        if channels > 1:
            samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
        if self.recorder is not None:
            self.recorder.caller_audio(samples.tobytes(), sample_rate)
        if sample_rate != PIPELINE_SAMPLE_RATE:
            if self._resampler is None or self._resampler_rate != sample_rate:
                self._resampler = soxr.ResampleStream(sample_rate, PIPELINE_SAMPLE_RATE, 1, dtype="int16", quality="HQ")
                self._resampler_rate = sample_rate
            samples = self._resampler.resample_chunk(samples)
            if samples.size == 0:
                return
        await self.pipeline.worker.queue_frame(
            InputAudioRawFrame(audio=samples.tobytes(), sample_rate=PIPELINE_SAMPLE_RATE, num_channels=1)
        )

    async def dtmf(self, digit: str) -> None:
        """A keypad digit from the caller: logged into the transcript, mapped by the agent definition."""
        action = self.config.dtmf.get(digit)
        self.record.turns.append(Turn(role="event", text=digit, kind="dtmf"))
        if action:
            self.record.flags.setdefault("dtmf_actions", []).append(action)
            logger.info(f"call {self.call_id[:8]}: DTMF action {action!r}")
        try:
            entry = KeypadEntry(digit)
        except ValueError:
            return
        await self.pipeline.worker.queue_frame(InputDTMFFrame(button=entry))

    def mark_played(self, name: str) -> None:
        """The transport acknowledged a mark (the audio before it has played)."""
        if self._call is not None:
            self._call.output.mark_played(name)

    # -- transcript --------------------------------------------------------------------------

    def _caller_said(self, text: str, timeline: TurnTimeline) -> None:
        self.record.turns.append(Turn(role="caller", text=text, timeline=timeline))

    def _reply_started(self, reply_id: str, kind: str, timeline: TurnTimeline | None) -> None:
        turn = Turn(role="agent", text="", timeline=timeline, kind=kind)
        self._agent_turns[reply_id] = turn
        self.record.turns.append(turn)
        self.replies_finished.clear()

    def _reply_finished(self, reply_id: str, kind: str, generated: str, heard: str, interrupted: bool) -> None:
        turn = self._agent_turns.pop(reply_id, None)
        if turn is None:
            return
        turn.text = heard
        turn.generated_text = generated
        turn.interrupted = interrupted
        if interrupted:
            self.conversation.agent_heard(reply_id, heard)
            logger.debug(f"call {self.call_id[:8]}: reply {reply_id} cut by barge-in")
        if not self._agent_turns:
            self.replies_finished.set()

    def _agent_audio_tap(self, pcm16: bytes) -> None:
        if self.recorder is not None:
            self.recorder.agent_audio(pcm16, self.transport.output_sample_rate)

    # -- state -------------------------------------------------------------------------------

    @property
    def agent_busy(self) -> bool:
        """The agent is transcribing, thinking or speaking for some turn."""
        c = self._call
        if c is None:
            return False
        return bool(
            c.vad._turn.in_turn
            or c.stt._final_tasks
            or (c.llm._task is not None and not c.llm._task.done())
            or c.output.busy
            or self._agent_turns
        )

    async def wait_until_idle(self, timeout: float = 60.0, settle: float = 0.3) -> bool:
        """Wait until no turn is in progress anywhere in the pipeline (for scripted callers)."""
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            if self.agent_busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= settle:
                return True
            await asyncio.sleep(0.02)
        return False


class TextChat:
    """The LLM and policy path of a call without audio: typed caller text in, agent text out."""

    def __init__(self, config: PipelineConfig, pool: ModelPool, *, context_builder: ContextBuilder | None = None):
        self.config = config
        self.engine = pool.llm(config.models.llm)
        self.conversation = Conversation(
            system_prompt=config.system_prompt,
            context=context_builder or PassThroughContext(config.llm.history_turns),
        )
        if config.greeting:
            self.conversation.add_agent(config.greeting)

    async def reply(self, caller_text: str) -> tuple[str, GenerationStats]:
        import threading

        self.conversation.add_caller(caller_text)
        messages = self.conversation.prompt_messages()
        prompt = self.engine.prompt_tokens(messages, self.conversation.generated)
        result = await self.engine.generate(self.conversation.key, prompt, self.config.llm, threading.Event())
        text = result.text.strip() or self.config.fallback_reply
        self.conversation.add_agent(text, result.tokens if result.text.strip() else None)
        return text, result.stats

    def close(self) -> None:
        self.engine.forget(self.conversation.key)
