"""The demo call: a scripted caller (spoken audio, not text) talks to the receptionist."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from voicecore.config import PipelineConfig
from voicecore.models import ModelPool
from voicecore.records import CallRecord
from voicecore.simulate import Audio, espeak, espeak_available, run_call

DEMO_CALLER_LINES = [
    "What are your opening hours on Saturday?",
    "Are you open on Sunday?",
    "I would like to book a cleaning appointment.",
    "Next Tuesday at ten in the morning would be great.",
    "My name is John Smith.",
    "Thank you very much. Goodbye.",
]

# espeak-ng voices unlike the agent's Piper voice (and unlike each other).
CALLER_VOICES = ["en-us", "en-us+m3", "en-gb", "en-us+f3"]


def caller_audio(text: str, index: int = 0, pool: ModelPool | None = None) -> Audio:
    """A caller utterance as audio: espeak-ng where installed, else Piper at another pace."""
    if espeak_available():
        return espeak(text, voice=CALLER_VOICES[index % len(CALLER_VOICES)], speed=140)
    if pool is None:
        raise RuntimeError("espeak-ng is not installed and no model pool was given for the Piper fallback")
    import numpy as np

    logger.warning("espeak-ng not found: the demo caller speaks with the agent's Piper voice, slowed down")
    engine = pool.tts("default")
    pcm = engine.synthesize_sync(text, length_scale=1.25)
    return Audio(np.frombuffer(pcm, dtype=np.int16).copy(), engine.sample_rate)


@dataclass
class DemoResult:
    record: CallRecord
    audio_path: Path


async def run_demo(
    config: PipelineConfig,
    pool: ModelPool,
    out_dir: Path,
    *,
    lines: list[str] | None = None,
    realtime: bool = True,
) -> DemoResult:
    lines = lines or DEMO_CALLER_LINES
    utterances = [caller_audio(text, i, pool) for i, text in enumerate(lines)]
    record, transport, _session = await run_call(config, pool, utterances, realtime=realtime)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "demo-agent.wav"
    transport.save(path)
    return DemoResult(record, path)
