"""Plain data that a call produces: turns, their latency timelines and the call record.

These are the hand-off between the live call (``CallSession``) and storage: the
session fills them in, the policy layer decides what of them is kept.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["caller", "agent", "event"]

# The stages of one turn, in the order they happen. Times are seconds on the
# process monotonic clock (time.monotonic()), so they can be subtracted.
TIMELINE_STAGES: tuple[str, ...] = (
    "speech_end",  # end of caller speech (last voiced audio frame heard)
    "stt_final",  # final transcript ready
    "llm_first_token",  # first token out of the LLM
    "first_clause",  # first clause handed to TTS
    "first_audio_out",  # first agent audio byte handed to the transport
)


@dataclass
class TurnTimeline:
    """When each stage of one caller→agent exchange happened (monotonic seconds)."""

    speech_end: float | None = None
    stt_final: float | None = None
    llm_first_token: float | None = None
    first_clause: float | None = None
    first_audio_out: float | None = None

    def mark(self, stage: str, at: float | None = None) -> None:
        """Record ``stage`` at ``at`` (now by default), keeping the first value seen."""
        if stage not in TIMELINE_STAGES:
            raise ValueError(f"unknown timeline stage {stage!r}; known: {', '.join(TIMELINE_STAGES)}")
        if getattr(self, stage) is None:
            setattr(self, stage, time.monotonic() if at is None else at)

    def is_complete(self) -> bool:
        return all(getattr(self, s) is not None for s in TIMELINE_STAGES)

    def relative_ms(self) -> dict[str, float | None]:
        """Each stage as milliseconds after the end of caller speech."""
        base = self.speech_end
        out: dict[str, float | None] = {}
        for stage in TIMELINE_STAGES:
            value = getattr(self, stage)
            out[stage] = None if value is None or base is None else round((value - base) * 1000.0, 1)
        return out

    def voice_to_voice_ms(self) -> float | None:
        if self.speech_end is None or self.first_audio_out is None:
            return None
        return round((self.first_audio_out - self.speech_end) * 1000.0, 1)


@dataclass
class Turn:
    """One entry of the transcript."""

    role: Role
    text: str
    started_at: float = field(default_factory=time.time)  # wall clock (epoch seconds)
    timeline: TurnTimeline | None = None
    interrupted: bool = False  # agent turn cut short by a barge-in
    generated_text: str | None = None  # agent: everything the LLM produced (text is what was heard)
    kind: str | None = None  # event turns: "dtmf", "greeting", ...

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timeline"] = self.timeline.relative_ms() if self.timeline else None
        return d


@dataclass
class CallRecord:
    """Everything one call produced, handed to storage when the call ends."""

    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    tenant: str = "default"
    pipeline: str = ""
    transport: str = "file"  # file, terminal, twilio, telnyx, vonage, plivo, exotel, asterisk, webrtc
    caller: str | None = None  # caller's number as the provider gave it
    callee: str | None = None
    provider_ids: dict[str, str] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    end_reason: str | None = None
    turns: list[Turn] = field(default_factory=list)
    flags: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else round(self.ended_at - self.started_at, 3)

    def to_dict(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "tenant": self.tenant,
            "pipeline": self.pipeline,
            "transport": self.transport,
            "caller": self.caller,
            "callee": self.callee,
            "provider_ids": dict(self.provider_ids),
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_s": self.duration_s,
            "end_reason": self.end_reason,
            "flags": dict(self.flags),
            "turns": [t.to_dict() for t in self.turns],
        }
