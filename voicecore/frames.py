"""Frames voicecore adds to Pipecat's: agent speech bookkeeping and call events.

Everything else in the pipeline uses Pipecat's own frames (InputAudioRawFrame,
VAD/User speaking frames, TranscriptionFrame, LLMTextFrame, TTSAudioRawFrame,
InterruptionFrame, ...). A turn's :class:`~voicecore.records.TurnTimeline`
travels with the frames of that turn in ``frame.metadata["timeline"]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipecat.frames.frames import DataFrame

from voicecore.records import TurnTimeline


@dataclass
class AgentSayFrame(DataFrame):
    """Ask the TTS to speak fixed text (greeting, notices, fallbacks) as one agent turn."""

    text: str
    kind: str = "say"  # "greeting", "notice", "fallback", ...
    cacheable: bool = False  # synthesise once per process and reuse (greeting)


@dataclass
class AgentClauseFrame(DataFrame):
    """Marks the start of one spoken clause; the clause's audio frames follow it."""

    reply_id: str
    index: int
    text: str
    timeline: TurnTimeline | None = None


@dataclass
class AgentReplyDoneFrame(DataFrame):
    """Follows the audio of the last clause of one agent reply."""

    reply_id: str
    generated_text: str
    kind: str = "reply"
    timeline: TurnTimeline | None = None


@dataclass
class AgentReplyStartFrame(DataFrame):
    """Precedes the clauses of one agent reply (a new reply id)."""

    reply_id: str
    kind: str = "reply"
    timeline: TurnTimeline | None = None


@dataclass
class PauseTranscriptFrame(DataFrame):
    """Upstream, STT → turn detector: what the caller said up to pause ``pause_id``.

    The turn detector uses it as the semantic end-of-turn cue (a finished sentence
    ends the turn after a shorter silence); stale pauses are ignored."""

    pause_id: int
    text: str


@dataclass
class SpeechTrailingFrame(DataFrame):
    """Downstream, turn detector → STT: the caller's speech has trailed off for
    ``early_transcript_ms`` (not yet a pause): start transcribing the turn so far. ``resumed``:
    speech came back before a pause, that transcript no longer covers the turn."""

    resumed: bool = False


@dataclass
class SpeculativeTranscriptFrame(DataFrame):
    """Downstream, STT → LLM: what the caller said up to pause ``pause_id``, while the turn may
    still go on. The LLM may start the reply to it, held back until the turn's final transcript
    says the same (speculative replies); speech again drops it."""

    pause_id: int
    text: str


@dataclass
class SpeculativeClauseFrame(DataFrame):
    """Downstream, LLM → TTS: the text a held (speculative) reply starts with. The TTS may
    synthesise its first clause ahead, to be spoken only if the reply is released."""

    text: str
