"""Builds one call's Pipecat pipeline from an agent definition, the shared models and a transport.

    caller audio (16 kHz) ─▶ VADTurn ─▶ WhisperSTT ─▶ LlamaLLM ─▶ PiperTTS ─▶ AgentAudioOutput ─▶ transport
                              ▲ BotStarted/StoppedSpeaking (upstream) ◀──────────────────────────┘
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker

from voicecore.config import PipelineConfig
from voicecore.models import PipelineModels
from voicecore.records import TurnTimeline
from voicecore.services.llm import Conversation, LlamaLLMProcessor
from voicecore.services.stt import WhisperSTTProcessor
from voicecore.services.tts import PiperTTSProcessor
from voicecore.services.vad import PIPELINE_SAMPLE_RATE, VADTurnProcessor
from voicecore.transport import AgentAudioOutput, CallTransport, ReplyFinished, ReplyStarted


@dataclass
class CallPipeline:
    """The processors of one call, and the Pipecat worker that runs them."""

    vad: VADTurnProcessor
    stt: WhisperSTTProcessor
    llm: LlamaLLMProcessor
    tts: PiperTTSProcessor
    output: AgentAudioOutput
    pipeline: Pipeline
    worker: PipelineWorker


def build_call_pipeline(
    config: PipelineConfig,
    models: PipelineModels,
    transport: CallTransport,
    conversation: Conversation,
    *,
    realtime: bool = True,
    on_caller_text: Callable[[str, TurnTimeline], bool | None] | None = None,
    on_prompt: Callable[[str], None] | None = None,
    on_reply_started: ReplyStarted | None = None,
    on_reply_finished: ReplyFinished | None = None,
    audio_tap: Callable[[bytes], None] | None = None,
    name: str = "call",
) -> CallPipeline:
    vad = VADTurnProcessor(config.turn_taking, smart_turn=models.smart_turn)
    stt = WhisperSTTProcessor(
        models.stt,
        prompt=config.stt_hint or None,
        min_utterance_ms=config.turn_taking.min_utterance_ms,
        fallback_reply=config.fallback_reply,
    )
    llm = LlamaLLMProcessor(
        models.llm,
        conversation,
        config.llm,
        fallback_reply=config.fallback_reply,
        on_caller_text=on_caller_text,
        on_prompt=on_prompt,
    )
    tts = PiperTTSProcessor(models.tts, config.voice)
    output = AgentAudioOutput(
        transport,
        realtime=realtime,
        on_reply_started=on_reply_started,
        on_reply_finished=on_reply_finished,
        tap=audio_tap,
    )
    pipeline = Pipeline([vad, stt, llm, tts, output])
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
