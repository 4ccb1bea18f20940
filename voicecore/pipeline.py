"""Builds one call's Pipecat pipeline from an agent definition, the shared models and a transport.

An audio call::

    caller audio (16 kHz) ─▶ VADTurn ─▶ WhisperSTT ─▶ LlamaLLM ─▶ PiperTTS ─▶ AgentAudioOutput ─▶ transport
                              ▲ BotStarted/StoppedSpeaking (upstream) ◀──────────────────────────┘

A text call (``voicecore chat``, a :class:`~voicecore.transports.file.TextTransport`)::

    caller text (TranscriptionFrame) ─▶ LlamaLLM ─▶ TextReplyOutput ─▶ transport
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameProcessor

from voicecore.agent.appointment_changes import TOOL_NAMES, ChangeDialogue
from voicecore.agent.booking import BookingDialogue
from voicecore.agent.calendar import CallerOnFile, open_appointment_book
from voicecore.agent.call_tools import CallTools, ToolAction
from voicecore.agent.facts import FactBook
from voicecore.config import PipelineConfig
from voicecore.model_pool import ModelPool
from voicecore.records import ToolCall, TurnTimeline
from voicecore.services.conversation import Conversation
from voicecore.services.llm import LlamaLLMProcessor
from voicecore.services.stt import WhisperSTTProcessor
from voicecore.services.tts import PiperTTSProcessor, speakable
from voicecore.services.vad import PIPELINE_SAMPLE_RATE, VADTurnProcessor
from voicecore.storage.store import default_data_dir
from voicecore.transports.base import (
    AgentAudioOutput,
    CallTransport,
    ReplyFinished,
    ReplyStarted,
)
from voicecore.transports.file import TextReplyOutput, TextTransport


@dataclass
class CallPipeline:
    """The processors of one call, and the Pipecat worker that runs them (a text call has no
    VAD, STT or TTS)."""

    vad: VADTurnProcessor | None
    stt: WhisperSTTProcessor | None
    llm: LlamaLLMProcessor
    tts: PiperTTSProcessor | None
    output: AgentAudioOutput | TextReplyOutput
    pipeline: Pipeline
    worker: PipelineWorker

    @property
    def busy(self) -> bool:
        """Some processor is working on a turn: transcribing, generating, or playing audio."""
        return bool(
            (self.vad is not None and self.vad.in_turn)
            or (self.stt is not None and self.stt.busy)
            or self.llm.busy
            or self.output.busy
        )


def booking_dialogue_factory(config: PipelineConfig, data_dir: Path | None = None,
                             caller: CallerOnFile | None = None) -> Callable[[], BookingDialogue] | None:  # fmt: skip
    """Makes a call's booking dialogue when the pipeline declares ``tools.book_appointment`` (its
    ``.ics`` path under ``data_dir``, by default the data directory: ``VOICECORE_DATA_DIR`` or
    ``./storage``). Each call gets its own dialogue; the calendar is opened when first needed.
    ``caller``: the booking carries their number's reference (and their number where allowed)."""
    tool = config.tools.book_appointment
    facts = config.facts
    if tool is None or facts is None:
        return None
    caller = caller or CallerOnFile()

    def new_dialogue() -> BookingDialogue:
        return BookingDialogue(open_appointment_book(tool, facts, data_dir or default_data_dir()),
                               caller_ref=caller.reference, phone=caller.phone)  # fmt: skip

    return new_dialogue


def change_dialogue_factory(config: PipelineConfig, data_dir: Path | None = None,
                            caller: CallerOnFile | None = None) -> Callable[[], ChangeDialogue] | None:  # fmt: skip
    """Makes a call's dialogue for ``tools.cancel_appointment``/``reschedule_appointment`` (in
    ``book_appointment``'s calendar), finding the bookings of ``caller`` by their reference."""
    tools = config.tools
    kinds = frozenset(kind for kind, name in TOOL_NAMES.items() if getattr(tools, name) is not None)
    tool, facts = tools.book_appointment, config.facts
    if not kinds or tool is None or facts is None:
        return None
    reference = caller.reference if caller is not None else ""

    def new_dialogue() -> ChangeDialogue:
        return ChangeDialogue(open_appointment_book(tool, facts, data_dir or default_data_dir()),
                              caller_ref=reference, kinds=kinds, take_message=tools.take_message is not None)  # fmt: skip

    return new_dialogue


def recogniser_prompt(config: PipelineConfig, facts: FactBook | None) -> str | None:
    """Whisper's prompt for this pipeline: the words its facts name (business, services, open
    days; ``stt_vocabulary_from_facts``), then the pipeline's own ``stt_hint``."""
    parts = []
    if facts is not None and config.stt_vocabulary_from_facts:
        parts.append(facts.recogniser_hint())
    if config.stt_hint:
        parts.append(config.stt_hint)
    return " ".join(p for p in parts if p) or None


async def warm_up(pool: ModelPool, config: PipelineConfig) -> None:
    """Load ``config``'s models and synthesise its greeting into the voice's cache, so the first
    call is greeted as fast as the tenth (``serve`` does this for its default pipeline at start)."""
    models = await asyncio.to_thread(pool.for_pipeline, config)
    if config.greeting:
        try:
            await models.tts.synthesize(speakable(config.greeting), config.voice.length_scale,
                                        config.voice.speaker_id, cache=True)  # fmt: skip
        except Exception as e:  # a remote voice that is down: the first call pays the synthesis
            logger.warning(f"pipeline {config.name!r}: the greeting was not synthesised at start ({type(e).__name__})")


def _agent_audio_taps(vad: VADTurnProcessor, audio_tap: Callable[[bytes], None] | None) -> Callable[[bytes], None]:
    """What sees each frame of agent audio sent: the turn detector (its echo floor), and ``audio_tap``."""
    if audio_tap is None:
        return vad.agent_audio

    def both(frame: bytes) -> None:
        vad.agent_audio(frame)
        audio_tap(frame)

    return both


def build_call_pipeline(
    config: PipelineConfig,
    pool: ModelPool,
    transport: CallTransport,
    conversation: Conversation,
    *,
    realtime: bool = True,
    on_caller_text: Callable[[str, TurnTimeline], bool | None] | None = None,
    on_prompt: Callable[[str], None] | None = None,
    on_reply_started: ReplyStarted | None = None,
    on_reply_finished: ReplyFinished | None = None,
    audio_tap: Callable[[bytes], None] | None = None,
    on_tool_action: Callable[[ToolAction], None] | None = None,
    caller: CallerOnFile | None = None,
    on_tool_call: Callable[[ToolCall], None] | None = None,
    name: str = "call",
) -> CallPipeline:
    """The call's pipeline, on the pool's shared models (load them first, in a thread:
    :meth:`ModelPool.for_pipeline`, or :meth:`ModelPool.llm` for a text call). ``on_tool_action``
    gets what the ``take_message``/``transfer``/``end_call`` tools do (the session acts on it);
    ``caller`` is who the calendar tools know the caller as (their bookings are found by it);
    ``on_tool_call`` gets every tool call made (the session records it)."""
    facts = FactBook(config.facts) if config.facts is not None else None
    llm = LlamaLLMProcessor(
        pool.llm(config.models.llm),
        conversation,
        config.llm,
        fallback_reply=config.fallback_reply,
        on_caller_text=on_caller_text,
        on_prompt=on_prompt,
        facts=facts,
        booking=booking_dialogue_factory(config, caller=caller),
        changes=change_dialogue_factory(config, caller=caller),
        tools=CallTools(config.tools),
        on_tool_action=on_tool_action,
        on_tool_call=on_tool_call,
        speculate=config.turn_taking.speculative_replies and not isinstance(transport, TextTransport),
    )
    vad: VADTurnProcessor | None = None
    stt: WhisperSTTProcessor | None = None
    tts: PiperTTSProcessor | None = None
    output: AgentAudioOutput | TextReplyOutput
    if isinstance(transport, TextTransport):
        output = TextReplyOutput(transport, on_reply_started=on_reply_started, on_reply_finished=on_reply_finished)
        processors: list[FrameProcessor] = [llm, output]
    else:
        models = pool.for_pipeline(config)
        vad = VADTurnProcessor(config.turn_taking, smart_turn=models.smart_turn, silero=models.silero_vad,
                               may_rejoin=lambda: llm.may_rejoin)  # fmt: skip
        stt = WhisperSTTProcessor(
            models.stt,
            prompt=recogniser_prompt(config, facts),
            min_utterance_ms=config.turn_taking.min_utterance_ms,
            fallback_reply=config.fallback_reply,
            rejoin_within_ms=config.turn_taking.rejoin_within_ms,
        )
        tts = PiperTTSProcessor(models.tts, config.voice)
        output = AgentAudioOutput(
            transport,
            realtime=realtime,
            on_reply_started=on_reply_started,
            on_reply_finished=on_reply_finished,
            tap=_agent_audio_taps(vad, audio_tap),
        )
        tts.unplayed_s = output.unplayed_s  # later clauses synthesised only as far ahead as needed
        processors = [vad, stt, llm, tts, output]
    pipeline = Pipeline(processors)
    worker = PipelineWorker(
        pipeline,
        name=name,
        params=PipelineParams(
            audio_in_sample_rate=PIPELINE_SAMPLE_RATE,
            audio_out_sample_rate=transport.output_sample_rate,
        ),
        enable_rtvi=False,
        enable_turn_tracking=False,
        idle_timeout_secs=None,
        cancel_on_idle_timeout=False,
        check_dangling_tasks=False,
    )
    return CallPipeline(vad, stt, llm, tts, output, pipeline, worker)
