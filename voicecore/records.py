"""Plain data that a call produces: turns, their latency timelines and the call record.

These are the hand-off between the live call (``CallSession``) and storage: the
session fills them in, the policy layer decides what of them is kept.
"""

from __future__ import annotations

import json
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
    # why the caller's turn ended: "smart-turn", "semantic" (a finished sentence and enough
    # silence), "silence"; and whether the reply was started at the pause and released
    turn_end: str | None = None
    speculative: bool = False
    # the caller's turn continued the one before it (speech again before the agent's answer to it
    # was heard out): both parts were transcribed and answered as one
    rejoined: bool = False

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


#: The kind of the event turn that records one tool call (its text is :meth:`ToolCall.to_text`).
TOOL_TURN_KIND = "tool"


@dataclass(frozen=True)
class ToolCall:
    """One call of a tool by the agent: what it was asked and what came of it.

    ``tool``: ``book_appointment``, ``cancel_appointment``, ``reschedule_appointment``,
    ``take_message``, ``transfer``, ``end_call``. ``outcome``: what happened in a word (``booked``,
    ``cancelled``, ``rescheduled``, ``taken``, ``transferred``, ``ended``, ``failed``, ...); a call that
    failed has ``ok`` false and ``error`` (the exception's type and message, or the provider's error
    code: which part failed and why, never the caller's words). ``arguments``: what the tool was
    given (the session redacts the caller's part by the tenant policy before it is kept);
    ``result``: what it returned that the report may use (a booked slot and service, a provider).
    A message's text is never here: it is in the call's ``message`` turn."""

    tool: str
    outcome: str
    ok: bool = True
    arguments: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_text(self) -> str:
        """The text of the call's ``tool`` turn (JSON, one line)."""
        body: dict[str, Any] = {"tool": self.tool, "outcome": self.outcome, "ok": self.ok,
                                "arguments": self.arguments, "result": self.result}  # fmt: skip
        if self.error is not None:
            body["error"] = self.error
        return json.dumps(body, ensure_ascii=False, default=str)

    @classmethod
    def from_text(cls, text: str | None) -> ToolCall | None:
        """The tool call a ``tool`` turn's text records (None: not one, or not readable)."""
        if not text:
            return None
        try:
            body = json.loads(text)
        except ValueError:
            return None
        if not isinstance(body, dict) or not isinstance(body.get("tool"), str):
            return None
        arguments, result = body.get("arguments"), body.get("result")
        return cls(tool=body["tool"], outcome=str(body.get("outcome", "")), ok=body.get("ok") is not False,
                   arguments=arguments if isinstance(arguments, dict) else {},
                   result=result if isinstance(result, dict) else {},
                   error=str(body["error"]) if body.get("error") is not None else None)  # fmt: skip

    def describe(self) -> str:
        """One line for a transcript: ``book_appointment → booked (service: cleaning, ...) → start: ...``."""

        def pairs(d: dict[str, Any]) -> str:
            return ", ".join(f"{k}: {v}" for k, v in d.items() if v not in (None, ""))

        line = f"{self.tool} → {self.outcome}"
        if self.arguments:
            line += f" ({pairs(self.arguments)})"
        if self.result:
            line += f" → {pairs(self.result)}"
        if self.error:
            line += f": {self.error}"
        return line

    def __repr__(self) -> str:  # the arguments may hold the caller's name: never in a log
        return f"ToolCall({self.tool}, {self.outcome})"


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
