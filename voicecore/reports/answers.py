"""The report and the questions that fill it: pydantic models, prompts, and the JSON schemas that
constrain every answer of the model to what the transcript offers."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from voicecore.reports.transcript import (
    _WORD_RE,
    PURPOSES,
    REPORT_FORMAT,
    SUMMARY_SENTENCE_WORDS,
    SUMMARY_VERBS,
    Candidates,
    Purpose,
)
from voicecore.services.conversation import ChatMessage

# --------------------------------------------------------------------------- the report


class ReportContact(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=100)
    phone: str | None = Field(default=None, pattern=r"^\+[1-9][0-9]{6,14}$")
    email: str | None = Field(default=None, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")


class ReportAppointment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requested: str | None = Field(default=None, max_length=120)  # the caller's words
    slot: str | None = None  # ISO 8601 date-time or date, tenant-local, no offset
    # From the call's tools: the appointment's service and what was done (None: no calendar tool ran).
    service: str | None = Field(default=None, max_length=100)
    status: Literal["booked", "rescheduled", "cancelled", "failed"] | None = None

    @field_validator("slot")
    @classmethod
    def _iso(cls, value: str | None) -> str | None:
        if value is not None:
            (datetime.fromisoformat(value) if "T" in value else date.fromisoformat(value))
        return value


class PostCallReport(BaseModel):
    """A stored report (``format: voicecore-report/1``)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["voicecore-report/1"] = REPORT_FORMAT
    purpose: Purpose
    contact: ReportContact
    need: str | None = Field(default=None, max_length=300)
    appointment: ReportAppointment
    optout_requested: bool
    summary: str = Field(min_length=10, max_length=800)
    # "model": the model's summary; "template": built from the tool records because the model's
    # stated a day, time, price, number or address that neither the transcript nor a tool holds.
    summary_source: Literal["model", "template"] = "model"
    withheld: list[Literal["phone", "email", "card", "iban", "number"]] = Field(default_factory=list)
    call_date: date
    model: str


class ModelAnswers(BaseModel):
    """The model's answers, each checked against the transcript's candidates (validation context)."""

    model_config = ConfigDict(extra="forbid")

    caller_name: str | None = None
    phone: str | None = None
    email: str | None = None
    need: str | None = None
    purpose: Purpose | None = None  # None: not asked (the call's tools gave it)
    appointment_day: str | None = None
    appointment_time: str | None = None
    summary: str | None = None  # None: set aside (the report's summary is then the template)

    @field_validator("caller_name", "phone", "email", "need", "appointment_day", "appointment_time")
    @classmethod
    def _from_transcript(cls, value: str | None, info: Any) -> str | None:
        c: Candidates | None = (info.context or {}).get("candidates")
        if value is None or c is None:
            return value
        allowed = {
            "caller_name": c.names,
            "phone": list(c.phones),
            "email": list(c.emails),
            "need": c.needs,
            "appointment_day": c.days,
            "appointment_time": c.times,
        }[info.field_name]
        if value not in allowed:
            raise ValueError("is not something said in the transcript")
        return value

    @field_validator("purpose")
    @classmethod
    def _purpose_on_offer(cls, value: str | None, info: Any) -> str | None:
        c: Candidates | None = (info.context or {}).get("candidates")
        if c is not None and value is not None and value not in c.purposes:
            raise ValueError("is not a purpose the caller's words support")
        return value

    @field_validator("summary")
    @classmethod
    def _summary_words(cls, value: str | None, info: Any) -> str | None:
        c: Candidates | None = (info.context or {}).get("candidates")
        if value is None:
            return None
        value = value.strip()
        if not value.endswith("."):
            raise ValueError("is not a finished sentence")
        words = _WORD_RE.findall(value)
        if c is not None:
            vocab = set(c.vocabulary)
            unknown = [w for w in words if w not in vocab]
            if unknown:
                raise ValueError(f"uses {len(unknown)} word(s) that are not in the transcript")
        lowered = [w.lower() for w in words]
        if any(a == b for a, b in zip(lowered, lowered[1:])):
            raise ValueError("repeats a word (a degenerate generation)")
        return value


# --------------------------------------------------------------------------- the prompt

SYSTEM_PROMPT = (
    "You answer questions about a phone call transcript. Answer with JSON. Copy names, numbers and "
    "phrases exactly as they appear in the transcript. Answer null when the transcript does not say it."
)

PURPOSE_QUESTION = "What is the purpose of the call? Answer one of: "

QUESTIONS: tuple[tuple[str, str], ...] = (
    ("caller_name", "What is the caller's name?"),
    ("phone", "What phone number did the caller give?"),
    ("email", "What email address did the caller give?"),
    ("need", "What does the caller want?"),
    ("purpose", PURPOSE_QUESTION + ", ".join(PURPOSES) + "."),
    ("appointment_day", "On what day does the caller want the appointment?"),
    ("appointment_time", "At what time does the caller want the appointment?"),
    ("summary", "Summarize the call in one or two sentences."),
)

EXAMPLE_TRANSCRIPT = """Agent: Good morning, Lakeside Auto, how can I help?
Caller: Hello, my name is John Parker.
Agent: Hi John, what can I do for you?
Caller: I need to get my windshield repaired. Can I bring the car in on Friday at 3 pm?
Agent: Sure. What is the best number to reach you?
Caller: It's 212 555 0187."""

EXAMPLE_ANSWERS: dict[str, Any] = {
    "caller_name": "John Parker",
    "phone": "212 555 0187",
    "email": None,
    "need": "I need to get my windshield repaired.",
    "purpose": "book an appointment",
    "appointment_day": "on Friday",
    "appointment_time": "at 3 pm",
    "summary": "John Parker called to get his windshield repaired on Friday at 3 pm.",
}


def _trie_pattern(words: Sequence[str]) -> str:
    """A regex (in the subset llama.cpp's JSON-schema converter reads) matching exactly ``words``,
    shaped as a trie so the grammar stays fast."""
    root: dict[str, Any] = {}
    for w in words:
        node = root
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def esc(ch: str) -> str:
        return ch if ch.isalnum() else f"[{ch}]"

    def build(node: dict[str, Any]) -> str:
        alts = [esc(ch) + build(node[ch]) for ch in sorted(k for k in node if k)]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(" + "|".join(alts) + ")"
        return f"({body})?" if "" in node else body

    return "(" + build(root) + ")"


def answer_schema(field_name: str, c: Candidates) -> dict[str, Any]:
    """The JSON schema of the answer to one question, given what the transcript offers."""
    options: dict[str, list[str]] = {
        "caller_name": c.names,
        "phone": list(c.phones),
        "email": list(c.emails),
        "need": c.needs,
        "appointment_day": c.days,
        "appointment_time": c.times,
    }
    if field_name == "purpose":
        prop: dict[str, Any] = {"enum": list(c.purposes)}
    elif field_name == "summary":
        # "at" only as the start of a time the transcript gives ("at ten"): a small model that
        # wants to add a time nobody said otherwise writes "on Friday at <anything>".
        # Numbers only inside those times: a summary repeats no phone, card or other number.
        vocab = [w for w in c.vocabulary if re.fullmatch(r"[A-Za-z':\-]+", w) and w.lower() != "at"]
        times = {re.sub(r"\s+", " ", t if t.lower().startswith("at ") else f"at {t}") for t in c.times}
        vocab += sorted(t for t in times if re.fullmatch(r"[A-Za-z0-9':. \-]+", t))
        word = _trie_pattern(vocab)
        # Third person, about the caller: "Maria Lopez called ...", "The caller asked ...".
        subject = _trie_pattern([*(n for n in c.names if re.fullmatch(r"[A-Za-z' \-]+", n)), "The caller"])
        opening = f"{subject} {_trie_pattern(SUMMARY_VERBS)}"
        first = f"{opening}( {word}((, | ){word}){{0,{SUMMARY_SENTENCE_WORDS - 3}}})?[.]"
        sentence = f"{word}((, | ){word}){{0,{SUMMARY_SENTENCE_WORDS - 1}}}[.]"
        prop = {"type": "string", "pattern": f"^{first}( {sentence})?$"}
    else:
        prop = {"enum": [*options[field_name], None]}
    return {"type": "object", "properties": {field_name: prop}, "required": [field_name], "additionalProperties": False}


def _questions_for(c: Candidates, skip: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """The questions the model is asked: those the transcript offers candidates for, less ``skip``
    (what the call's tools already answer)."""
    has = {
        "caller_name": bool(c.names),
        "phone": bool(c.phones),
        "email": bool(c.emails),
        "need": bool(c.needs),
        "appointment_day": bool(c.days),
        "appointment_time": bool(c.times),
    }
    return [(f, q) for f, q in QUESTIONS if has.get(f, True) and f not in skip]


# A second, shorter example: a call without an appointment slot (so the summary of such a
# call does not imitate "on <day> at <time>"), answering only the purpose and the summary.
SECOND_EXAMPLE_TRANSCRIPT = """Caller: Hi, this is Anna Berg. I need to cancel my massage on Monday.
Agent: Sure, I have cancelled it for you.
Caller: Thank you, bye."""

SECOND_EXAMPLE_ANSWERS: dict[str, Any] = {
    "purpose": "cancel an appointment",
    "summary": "Anna Berg called to cancel her massage on Monday.",
}


def example_messages() -> list[ChatMessage]:
    """The system prompt and the worked examples (the first answers every question)."""
    msgs = [ChatMessage("system", SYSTEM_PROMPT)]
    for i, (f, q) in enumerate(QUESTIONS):
        head = f"Transcript:\n{EXAMPLE_TRANSCRIPT}\n\n" if i == 0 else ""
        msgs.append(ChatMessage("user", head + q))
        msgs.append(ChatMessage("assistant", json.dumps({f: EXAMPLE_ANSWERS[f]})))
    for i, (f, q) in enumerate((f, q) for f, q in QUESTIONS if f in SECOND_EXAMPLE_ANSWERS):
        head = f"Transcript:\n{SECOND_EXAMPLE_TRANSCRIPT}\n\n" if i == 0 else ""
        msgs.append(ChatMessage("user", head + q))
        msgs.append(ChatMessage("assistant", json.dumps({f: SECOND_EXAMPLE_ANSWERS[f]})))
    return msgs
