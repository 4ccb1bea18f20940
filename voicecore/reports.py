"""Post-call reports: what the caller wanted, in a form the tenant can act on.

``generate_report`` runs after a call was stored. It reads the call's transcript
through the tenant policy (:meth:`ContextBuilder.transcript_for_summary`: caller
text redacted as the policy says; the model never sees more than that), asks the
local LLM about it, validates the answers with pydantic and stores the report
with the policy's ``retention.reports`` (and a ``report.ready`` outbox event in
the same transaction) through :meth:`Store.save_report`.

The report (``format: voicecore-report/1``)::

    {"format": "voicecore-report/1",
     "purpose": "book an appointment",                 # one of PURPOSES
     "contact": {"name": "Maria Lopez", "phone": "+14155552671", "email": null},
     "need": "I'd like to book a teeth cleaning.",    # the caller's own sentence
     "appointment": {"requested": "next Tuesday at ten", "slot": "2024-05-21T10:00:00"},
     "optout_requested": false,
     "summary": "Maria Lopez called to book a teeth cleaning for next Tuesday at ten.",
     "withheld": [],                                   # contact kinds the policy redacted
     "call_date": "2024-05-15", "model": "SmolLM2-135M-Instruct.Q4_1.gguf"}

How it stays truthful with a 135M-parameter model ("never invented"):

* The model answers one question at a time (name, phone, e-mail, need, purpose,
  day, time, summary) in one multi-turn exchange after a worked example; every
  answer is JSON constrained by a JSON schema compiled to a llama.cpp grammar
  (``LlamaGrammar.from_json_schema``). The schemas only admit values that occur
  in the policy-filtered transcript: the name, phone, e-mail, need, day and time
  answers are an ``enum`` of candidates found there (or ``null``), the purpose an
  ``enum`` of the :data:`PURPOSES` the caller's words support (cue words; "stop
  calls" only when the opt-out matcher fired), and the summary a string whose
  ``pattern`` admits one or two sentences of words of the transcript plus a fixed
  list of function words, opening with the caller ("Maria Lopez called ...", "The
  caller asked ..."), with numbers and "at" only inside a time someone said: it
  cannot name a person, number, day or action that nobody mentioned. A question
  with no candidate is not asked (the answer is ``null``).
* Dates are Python's job: the model picks the caller's words ("next Tuesday",
  "at ten"); :func:`resolve_day` and :func:`resolve_time` turn them into a date
  and a time relative to the call's date. ``slot`` is an ISO 8601 date-time
  (wall-clock time at the tenant, no offset), an ISO date when no time was given,
  and ``null`` when no day was given.
* The opt-out flag comes from the policy's phrase matcher
  (:func:`voicecore.policy.optout_requested`) and the stored call's flag, never
  from the model.
* The assembled answers are validated (:class:`PostCallReport`, checked against
  the candidates again). A report that fails is generated once more (sampling
  instead of greedy decoding); if that fails too it is stored with status
  ``failed`` and the reason, and no field is filled in.

Scheduling: the model work runs on the engine's inference thread through
:meth:`LlamaEngine.complete_json` under its own KV-cache owner
(``report:<call id>``), so live calls' cached prompts are saved and restored
around it; the prompt is evaluated in small jobs so a live call's turn is not
queued behind a whole transcript. One report per engine runs at a time; the
report's KV state is dropped afterwards. Store calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from voicecore.policy.context import ContextBuilder
from voicecore.policy.models import Policy
from voicecore.policy.optout import optout_requested
from voicecore.policy.phone import try_normalize_phone
from voicecore.policy.redaction import PLACEHOLDERS, find_sensitive
from voicecore.services.llm import ChatMessage, Generation

REPORT_FORMAT = "voicecore-report/1"
REPORT_ACTOR = "reports"  # who the audit log names when a report reads a stored transcript

Purpose = Literal[
    "book an appointment",
    "change an appointment",
    "cancel an appointment",
    "ask a question",
    "report a problem",
    "stop calls",
    "other",
]
PURPOSES: tuple[str, ...] = get_args(Purpose)

WEEKDAYS: tuple[str, ...] = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS: tuple[str, ...] = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip
_HOUR_WORDS: dict[str, int] = {
    w: i + 1
    for i, w in enumerate(
        ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
    )
}
_MINUTE_WORDS: dict[str, int] = {
    "o'clock": 0, "oclock": 0, "hundred": 0, "oh five": 5, "o five": 5, "ten": 10, "fifteen": 15, "twenty": 20,
    "twenty five": 25, "twenty-five": 25, "thirty": 30, "forty": 40, "forty five": 45, "forty-five": 45,
    "fifty": 50,
}  # fmt: skip

# Words a summary may use besides the transcript's own words: glue, not facts. Words that
# say what happened (book, cancel, move, confirm, ...) must come from the transcript itself.
FUNCTION_WORDS: tuple[str, ...] = tuple(
    """a an the and or but to for of on at in with about from by as is was are were be been has have had will would
    can could not no yes also then so that this these those it its he she they his her their them who what when which
    caller agent called calls call calling asked asks ask wants want wanted needs need needed said says told gave give
    given would like appointment number phone email name day time question help""".split()
)

# How a summary's first sentence goes on after its subject (the caller or the caller's name).
SUMMARY_VERBS: tuple[str, ...] = ("called", "asked", "wanted", "wants", "needs", "said", "gave")

_STOP_NAMES = frozenset(
    """i i'm i'd i'll i've im hi hello hey yes yeah yep no nope okay ok sure thanks thank please good great well so and
    but the a an this that it it's my me we our you your hmm um uh oh alright right fine bye goodbye morning afternoon
    evening dr mr mrs ms miss sir madam can could would will what when where why how is are do does did just also
    actually calling here there speaking not sorry""".split()
) | frozenset(WEEKDAYS) | frozenset(MONTHS)

_CAP_WORD = r"[A-Z][A-Za-z'\-]+"
_NAME_CUE = re.compile(
    r"\b(?:my name is|my name's|name is|this is|i am|i'm|it's|it is|call me)\s+(" + _CAP_WORD + r"(?:\s+" + _CAP_WORD
    + r"){0,2})",
    re.IGNORECASE,
)
_NAME_ONLY = re.compile(r"^(?:(?:sure|yes|yeah|okay|ok|it's|it is|sure it's)[,.]?\s+)?(" + _CAP_WORD + r"(?:\s+"
                        + _CAP_WORD + r"){0,2})[.!]?$", re.IGNORECASE)  # fmt: skip

_WEEKDAY_RE = "|".join(WEEKDAYS)
_MONTH_RE = "|".join(MONTHS)
_ORD = r"(?:[1-9]|[12][0-9]|3[01])(?:st|nd|rd|th)"
DAY_RE = re.compile(
    rf"\b(?:(?:this|next|coming|on)\s+)?(?:{_WEEKDAY_RE})\b(?!s)"
    r"|\b(?:the\s+)?day after tomorrow\b|\btomorrow\b|\btoday\b"
    rf"|\b(?:{_MONTH_RE})\s+(?:the\s+)?(?:{_ORD}|[1-9]|[12][0-9]|3[01])\b"
    rf"|\b(?:the\s+)?{_ORD}(?:\s+of\s+(?:{_MONTH_RE}))?\b",
    re.IGNORECASE,
)
_HOUR = r"(?:1[0-2]|0?[1-9]|" + "|".join(_HOUR_WORDS) + r")"
_HOUR24 = r"(?:[01]?[0-9]|2[0-3])"
_MIN_WORDS = r"(?:o'clock|oclock|oh five|o five|fifteen|twenty[- ]five|twenty|thirty|forty[- ]five|forty|fifty)"
_AMPM = r"(?:\s*(?:a\.?\s?m\b\.?|p\.?\s?m\b\.?)|\s+in the (?:morning|afternoon|evening))"
TIME_RE = re.compile(
    rf"\b(?:at\s+)?{_HOUR24}:[0-5][0-9]{_AMPM}?"
    rf"|\b(?:at\s+)?{_HOUR}(?:\s+{_MIN_WORDS})?{_AMPM}"
    rf"|\bat\s+{_HOUR}(?:\s+{_MIN_WORDS})?\b"
    rf"|\b(?:at\s+)?(?:half past|quarter past|quarter to)\s+{_HOUR}{_AMPM}?"
    r"|\b(?:at\s+)?(?:noon|midday)\b",
    re.IGNORECASE,
)
_WORD_RE = re.compile(r"[A-Za-z0-9]+(?:['’:\-][A-Za-z0-9]+)*")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")

# Token budgets of one report (SmolLM2 has a 2048-token context).
ANSWER_MAX_TOKENS = 48
SUMMARY_MAX_TOKENS = 120
SUMMARY_SENTENCE_WORDS = 30  # a summary is one or two sentences of at most this many words
RESERVED_TOKENS = 520  # questions, answers and the summary after the transcript


# --------------------------------------------------------------------------- results


@dataclass
class ReportResult:
    """What :func:`generate_report` did: ``ready`` (stored), ``failed`` (stored with the reason)
    or ``skipped`` (nothing stored: reports not kept by the policy, call not stored)."""

    status: Literal["ready", "failed", "skipped"]
    call_id: str
    report_id: str | None = None
    report: dict[str, Any] | None = None
    error: str | None = None
    attempts: int = 0
    seconds: float = 0.0


class ReportEngine(Protocol):
    """What report generation needs from the LLM (:class:`voicecore.services.llm.LlamaEngine`)."""

    n_ctx: int
    path: str

    def prompt_tokens(
        self, messages: list[ChatMessage], generated: dict[str, list[int]] | None = None, *,
        generation_header: bool = True,
    ) -> list[int]: ...  # fmt: skip

    async def complete_json(
        self, owner: str, prompt: list[int], grammar: object, *, max_tokens: int, temperature: float = 0.0,
        seed: int | None = None, repeat_penalty: float = 1.0, no_repeat_words: bool = False, eval_chunk: int = 128,
    ) -> Generation: ...  # fmt: skip

    def forget(self, owner: str) -> None: ...


# --------------------------------------------------------------------------- what the transcript offers


@dataclass
class Candidates:
    """Every value a report field may take, found in the policy-filtered transcript."""

    transcript: str
    caller_lines: list[str]
    names: list[str] = field(default_factory=list)
    phones: dict[str, str] = field(default_factory=dict)  # words as said -> E.164
    emails: dict[str, str] = field(default_factory=dict)  # words as said -> address
    needs: list[str] = field(default_factory=list)
    days: list[str] = field(default_factory=list)
    times: list[str] = field(default_factory=list)
    vocabulary: list[str] = field(default_factory=list)
    purposes: list[str] = field(default_factory=lambda: list(PURPOSES))
    withheld: list[str] = field(default_factory=list)  # redaction placeholders in the caller's text


def _unique(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        key = item.lower()
        if item and key not in seen:
            seen.add(key)
            out.append(item)
    return out


def _clean_name(raw: str) -> str | None:
    words = []
    for w in raw.split():
        w = w.strip(".,!?")
        if not w or not w[0].isupper() or w.lower() in _STOP_NAMES:
            break
        words.append(w)
    return " ".join(words) or None


def _spoken_email(text: str) -> str:
    if "@" in text:
        return text.strip().strip(".")
    t = re.sub(r"\s+dot\s+", ".", text.strip(), flags=re.IGNORECASE)
    t = re.sub(r"\s+at\s+", "@", t, flags=re.IGNORECASE)
    return re.sub(r"\s+", "", t).lower()


def find_candidates(transcript: str, region: str = "US", *, optout: bool = False) -> Candidates:
    """The values the report may use, from a ``transcript_for_summary`` text ("Caller: ..." and
    "Agent: ..." lines). Pure; names, contacts and needs come from the caller's lines only,
    days and times from both sides (the agent often proposes the slot; an agent's "today" is
    left out: it is in every greeting). ``optout`` (the opt-out
    matcher's verdict) puts "stop calls" among the purposes on offer."""
    lines = [ln for ln in transcript.splitlines() if ln.strip()]
    caller = [ln[len("Caller: ") :] for ln in lines if ln.startswith("Caller: ")]
    c = Candidates(transcript=transcript, caller_lines=caller)
    names: list[str] = []
    previous_agent = ""
    for ln in lines:
        if ln.startswith("Agent: "):
            previous_agent = ln.lower()
            continue
        text = ln[len("Caller: ") :] if ln.startswith("Caller: ") else ""
        for m in _NAME_CUE.finditer(text):
            name = _clean_name(m.group(1))
            if name:
                names += [name, name.split()[0]]
        if "name" in previous_agent:
            m = _NAME_ONLY.match(text.strip())
            if m:
                name = _clean_name(m.group(1))
                if name:
                    names += [name, name.split()[0]]
        previous_agent = ""
    c.names = _unique(names)
    for text in caller:
        for f in find_sensitive(text, ("email", "phone", "spoken_digits"), region):
            said = text[f.start : f.end].strip()
            if f.kind == "email":
                c.emails.setdefault(said, _spoken_email(said))
            elif f.digits:
                e164 = try_normalize_phone(f.digits, region)
                if e164 is not None and len(re.sub(r"\D", "", f.digits)) >= 7:
                    c.phones.setdefault(said, e164)
        for kind, placeholder in PLACEHOLDERS.items():
            if placeholder in text and kind not in c.withheld:
                c.withheld.append(kind)
        for sentence in _SENTENCE_SPLIT.split(text.strip()):
            sentence = sentence.strip()
            if len(sentence.split()) >= 3 and len(sentence) <= 300:
                c.needs.append(sentence)
    c.needs = _unique(c.needs)
    spoken = [ln.split(": ", 1)[1] for ln in lines if ": " in ln]
    # "today" counts only when the caller says it: agents say it in every greeting ("How can I
    # help you today?"); a slot the agent proposes ("tomorrow at 9 am") counts from either side.
    c.days = _unique(
        m.group(0).strip()
        for ln in lines
        if ": " in ln
        for m in DAY_RE.finditer(ln.split(": ", 1)[1])
        if ln.startswith("Caller: ") or m.group(0).strip().lower() != "today"
    )
    c.days = [d for d in c.days if resolve_day(d, date(2000, 1, 3)) is not None]
    c.times = _unique(m.group(0).strip().rstrip(".") for t in spoken for m in TIME_RE.finditer(t))
    c.times = [t for t in c.times if resolve_time(t) is not None]
    words = {w for t in spoken for w in _WORD_RE.findall(t)}
    vocab: set[str] = set()
    for w in list(words) + list(FUNCTION_WORDS):
        w = w.replace("’", "'")
        vocab.update({w, w.lower(), w[:1].upper() + w[1:]})
    c.vocabulary = sorted(vocab)
    said = " ".join(caller).lower()
    c.purposes = [
        p
        for p in PURPOSES
        if p == "other" or (p == "stop calls" and optout) or (p in _PURPOSE_CUES and _PURPOSE_CUES[p].search(said))
    ]
    return c


# What the caller must have said for a purpose to be on offer ("stop calls" is added by the
# opt-out matcher, not by words the model could misread; "other" is always on offer).
_PURPOSE_CUES: dict[str, re.Pattern[str]] = {
    "book an appointment": re.compile(
        r"\b(?:book|schedul|(?:make|get|need|want|like|have) an appointment|come in|come by|bring\b.*\bin\b|"
        r"see (?:a|the|someone|you|him|her)|availab|opening|slot|reserv|visit)"
    ),
    "change an appointment": re.compile(r"\b(?:resched|move|change|push|postpone|different (?:day|time)|instead)"),
    "cancel an appointment": re.compile(r"\bcancel"),
    "ask a question": re.compile(r"\?|\b(?:wondering|question|do you|are you|is there|can you tell)\b"),
    "report a problem": re.compile(
        r"\b(?:problem|issue|broken|break|hurt|pain|leak|not working|doesn't work|does not work|wrong|complain|"
        r"damag|stopped working|emergency)"
    ),
}


# --------------------------------------------------------------------------- dates and times


def _weekday_index(text: str) -> int | None:
    for i, name in enumerate(WEEKDAYS):
        if re.search(rf"\b{name}\b", text):
            return i
    return None


def resolve_day(phrase: str, call_date: date) -> date | None:
    """The date a day phrase means on ``call_date``, or ``None`` when it names no single day.

    * "today", "tomorrow", "the day after tomorrow";
    * a weekday ("Tuesday", "on Tuesday", "this Tuesday", "coming Tuesday"): the next such day
      after the call's date (1 to 7 days later; the call's own weekday means a week later);
    * "next Tuesday": the Tuesday of the following calendar week (weeks start on Monday):
      on Wednesday 15 May 2024 that is 21 May, and so it is on Monday 13 May (not the 14th);
    * "May 21st", "the 21st of May", "the 21st": the next such date on or after the call's
      date (this year or next; this month or next).
    """
    t = re.sub(r"\s+", " ", phrase.lower().strip().rstrip(".,"))
    if t in ("today",):
        return call_date
    if t == "tomorrow":
        return call_date + timedelta(days=1)
    if t.endswith("day after tomorrow"):
        return call_date + timedelta(days=2)
    wd = _weekday_index(t)
    if wd is not None:
        if t.startswith("next "):
            monday_next_week = call_date + timedelta(days=7 - call_date.weekday())
            return monday_next_week + timedelta(days=wd)
        ahead = (wd - call_date.weekday()) % 7 or 7
        return call_date + timedelta(days=ahead)
    m = re.search(r"\b([1-9]|[12][0-9]|3[01])(?:st|nd|rd|th)?\b", t)
    if m is None:
        return None
    day = int(m.group(1))
    month = next((i + 1 for i, name in enumerate(MONTHS) if re.search(rf"\b{name}\b", t)), None)
    if month is not None:
        for year in (call_date.year, call_date.year + 1):
            try:
                d = date(year, month, day)
            except ValueError:
                continue
            if d >= call_date:
                return d
        return None
    if not re.search(r"(?:st|nd|rd|th)\b", t):
        return None  # a bare number is not a day
    y, mo = call_date.year, call_date.month
    for _ in range(3):
        try:
            d = date(y, mo, day)
            if d >= call_date:
                return d
        except ValueError:
            pass
        y, mo = (y + 1, 1) if mo == 12 else (y, mo + 1)
    return None


def _hour_value(token: str) -> int | None:
    token = token.lower()
    if token.isdigit():
        return int(token)
    return _HOUR_WORDS.get(token)


def resolve_time(phrase: str) -> dtime | None:
    """The time a phrase means ("at ten", "10:30", "ten thirty in the morning", "3 pm",
    "half past two", "noon"), or ``None``. Without "am"/"pm" or a part of the day, hours
    1-6 are afternoon (business hours) and 7-11 morning; 12 is noon."""
    t = re.sub(r"\s+", " ", phrase.lower().strip().rstrip(".,"))
    t = re.sub(r"^at ", "", t)
    if t in ("noon", "midday"):
        return dtime(12, 0)
    pm = bool(re.search(r"\bp\.? ?m\b|afternoon|evening", t))
    am = bool(re.search(r"\ba\.? ?m\b|morning", t))
    t = re.sub(r"\s*(?:a\.? ?m\.?|p\.? ?m\.?|in the (?:morning|afternoon|evening))$", "", t).strip()
    minute = 0
    m = re.fullmatch(r"(half past|quarter past|quarter to) (\S+)", t)
    if m:
        hour = _hour_value(m.group(2))
        if hour is None:
            return None
        minute = {"half past": 30, "quarter past": 15, "quarter to": 45}[m.group(1)]
        if m.group(1) == "quarter to":
            hour = hour - 1 or 12
    else:
        m = re.fullmatch(r"(\d{1,2}):(\d{2})", t)
        if m:
            hour, minute = int(m.group(1)), int(m.group(2))
        else:
            parts = t.split(" ", 1)
            hour = _hour_value(parts[0])
            if hour is None:
                return None
            if len(parts) == 2:
                rest = parts[1].replace("-", " ")
                if rest not in _MINUTE_WORDS and rest.replace(" ", "-") not in _MINUTE_WORDS:
                    return None
                minute = _MINUTE_WORDS.get(rest, _MINUTE_WORDS.get(rest.replace(" ", "-"), 0))
    if hour > 23 or minute > 59:
        return None
    if hour <= 12:
        if pm and hour < 12:
            hour += 12
        elif am and hour == 12:
            hour = 0
        elif not am and not pm and 1 <= hour <= 6:
            hour += 12
    return dtime(hour, minute)


def resolve_slot(day_phrase: str | None, time_phrase: str | None, call_date: date) -> str | None:
    """ISO 8601 for the requested slot: date-time, date only (no time said), or ``None`` (no day said)."""
    if not day_phrase:
        return None
    day = resolve_day(day_phrase, call_date)
    if day is None:
        return None
    at = resolve_time(time_phrase) if time_phrase else None
    if at is None:
        return day.isoformat()
    return datetime.combine(day, at).isoformat()


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
    purpose: Purpose
    appointment_day: str | None = None
    appointment_time: str | None = None
    summary: str

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
    def _purpose_on_offer(cls, value: str, info: Any) -> str:
        c: Candidates | None = (info.context or {}).get("candidates")
        if c is not None and value not in c.purposes:
            raise ValueError("is not a purpose the caller's words support")
        return value

    @field_validator("summary")
    @classmethod
    def _summary_words(cls, value: str, info: Any) -> str:
        c: Candidates | None = (info.context or {}).get("candidates")
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


def _questions_for(c: Candidates) -> list[tuple[str, str]]:
    has = {
        "caller_name": bool(c.names),
        "phone": bool(c.phones),
        "email": bool(c.emails),
        "need": bool(c.needs),
        "appointment_day": bool(c.days),
        "appointment_time": bool(c.times),
    }
    return [(f, q) for f, q in QUESTIONS if has.get(f, True)]


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


def fit_transcript(transcript: str, budget_tokens: int, count: Any) -> str:
    """``transcript`` cut to ``budget_tokens`` (by ``count(text) -> tokens``): agent lines go first,
    then caller lines from the middle, marked "[...]"."""
    if count(transcript) <= budget_tokens:
        return transcript
    lines = transcript.splitlines()
    caller_only = [ln for ln in lines if ln.startswith("Caller: ")]
    if count("\n".join(caller_only)) <= budget_tokens:
        # keep agent lines that fit, earliest first
        kept = list(lines)
        for i in reversed(range(len(kept))):
            if kept[i].startswith("Agent: "):
                del kept[i]
                if count("\n".join(kept)) <= budget_tokens:
                    break
        return "\n".join(kept)
    head, tail = caller_only[: len(caller_only) // 2], caller_only[len(caller_only) // 2 :]
    while head or tail:
        text = "\n".join([*head, "[...]", *tail])
        if count(text) <= budget_tokens:
            return text
        if len(head) >= len(tail) and head:
            head.pop()
        elif tail:
            tail.pop(0)
    return ""


# --------------------------------------------------------------------------- generation


_ENGINE_LOCKS: weakref.WeakKeyDictionary[Any, dict[Any, asyncio.Lock]] = weakref.WeakKeyDictionary()


def _engine_lock(engine: Any) -> asyncio.Lock:
    """One report at a time per engine (per event loop): reports would otherwise take turns on
    the model question by question and push live calls' saved KV states out of the engine."""
    loop = asyncio.get_running_loop()
    try:
        per_loop = _ENGINE_LOCKS.setdefault(engine, {})
    except TypeError:  # an engine that cannot be weakly referenced: no sharing
        return asyncio.Lock()
    lock = per_loop.get(loop)
    if lock is None:
        for stale in [k for k in per_loop if k.is_closed()]:
            del per_loop[stale]
        lock = per_loop[loop] = asyncio.Lock()
    return lock


async def ask_model(
    engine: ReportEngine, owner: str, c: Candidates, *, temperature: float = 0.0, seed: int | None = None
) -> dict[str, Any]:
    """Ask every question the candidates allow, in one exchange; returns the answers (JSON values)
    with ``null`` for questions not asked. Raises ``ValueError`` for output that is not JSON."""
    from llama_cpp import LlamaGrammar

    messages = example_messages()
    generated: dict[str, list[int]] = {}
    answers: dict[str, Any] = {f: None for f, _ in QUESTIONS}
    for i, (f, q) in enumerate(_questions_for(c)):
        head = f"Transcript:\n{c.transcript}\n\n" if i == 0 else ""
        if f == "purpose":
            q = PURPOSE_QUESTION + ", ".join(c.purposes) + "."
        messages.append(ChatMessage("user", head + q))
        grammar = LlamaGrammar.from_json_schema(json.dumps(answer_schema(f, c)), verbose=False)
        prompt = engine.prompt_tokens(messages, generated)
        result = await engine.complete_json(
            owner,
            prompt,
            grammar,
            max_tokens=SUMMARY_MAX_TOKENS if f == "summary" else ANSWER_MAX_TOKENS,
            temperature=temperature,
            seed=seed,
            repeat_penalty=1.3 if f == "summary" else 1.0,
            no_repeat_words=f == "summary",
        )
        try:
            value = json.loads(result.text)[f]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"the answer to {f!r} is not complete JSON ({result.stats.generated_tokens} tokens)") from None
        answers[f] = value
        messages.append(ChatMessage("assistant", result.text))
        generated[result.text] = result.tokens
    return answers


def _validation_reason(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:3]:
        where = ".".join(str(p) for p in e.get("loc", ())) or "report"
        parts.append(f"{where}: {str(e.get('msg', 'invalid')).removeprefix('Value error, ')}")
    return "; ".join(parts)


def build_report(
    answers: dict[str, Any], c: Candidates, *, call_date: date, optout: bool, model: str
) -> PostCallReport:
    """Validate the model's answers against the transcript and assemble the report (raises ``ValidationError``)."""
    a = ModelAnswers.model_validate(answers, context={"candidates": c})
    requested = " ".join(p for p in (a.appointment_day, a.appointment_time) if p) or None
    return PostCallReport(
        purpose=a.purpose,
        contact=ReportContact(
            name=a.caller_name,
            phone=c.phones.get(a.phone) if a.phone else None,
            email=c.emails.get(a.email) if a.email else None,
        ),
        need=a.need,
        appointment=ReportAppointment(
            requested=requested, slot=resolve_slot(a.appointment_day, a.appointment_time, call_date)
        ),
        optout_requested=optout,
        summary=a.summary,
        withheld=[w for w in c.withheld if w in ("phone", "email", "card", "iban", "number")],  # type: ignore[misc]
        call_date=call_date,
        model=model,
    )


async def generate_report(
    store: Any,
    engine: ReportEngine,
    tenant: str,
    call_id: str,
    *,
    policy: Policy | None = None,
    call_date: date | None = None,
    turns: Sequence[Any] | None = None,
    actor: str = REPORT_ACTOR,
) -> ReportResult:
    """Generate, validate and store the post-call report of a stored call (see the module docstring).

    ``turns`` are the call's turns as the session holds them (``CallRecord.turns``); without
    them the stored transcript is read (audited as a ``transcript.read`` by ``actor``), which
    holds nothing when the policy keeps no transcripts. ``call_date`` is the day the caller
    spoke on (tenant-local); default: the UTC date the call started. Never raises for a bad
    model answer: that becomes a ``failed`` report with the reason.
    """
    t0 = time.monotonic()
    policy = policy or await asyncio.to_thread(store.get_tenant_policy, tenant)
    result = ReportResult(status="skipped", call_id=call_id)
    if policy.retention.reports == 0:
        result.error = "the tenant policy does not store reports (retention.reports is 0)"
        return result
    call = await asyncio.to_thread(
        store.call_get, tenant, call_id, actor=actor, include_transcript=turns is None
    )
    if call is None:
        result.error = "the call is not stored (restricted subject, or metadata not kept)"
        return result
    source = list(turns) if turns is not None else list(call.turns or [])
    if call_date is None:
        call_date = datetime.fromtimestamp(call.started_at, UTC).date()
    builder = ContextBuilder(policy)
    transcript = builder.transcript_for_summary(
        t for t in source if getattr(t, "role", None) in ("caller", "agent") and getattr(t, "text", None)
    )
    optout = bool(call.optout) or any(
        optout_requested(policy, t.text) for t in source if getattr(t, "role", None) == "caller"
    )
    model = Path(getattr(engine, "path", "") or "llm").name
    if not any(ln.startswith("Caller: ") for ln in transcript.splitlines()):
        error = "nothing to report: the transcript holds no caller speech"
        if turns is None and policy.retention.transcripts == 0:
            error = "no transcript: the policy stores none and the call's turns were not passed"
        return await _store_failed(store, tenant, call_id, policy, result, error, t0)

    owner = f"report:{call_id}"
    async with _engine_lock(engine):
        try:
            base = len(engine.prompt_tokens(example_messages()))
            budget = engine.n_ctx - base - RESERVED_TOKENS
            transcript = fit_transcript(
                transcript, budget, lambda text: len(engine.prompt_tokens([ChatMessage("user", text)]))
            )
            c = find_candidates(transcript, policy.phone_region, optout=optout)
            reasons: list[str] = []
            for attempt, (temperature, seed) in enumerate(((0.0, None), (0.5, 1234))):
                result.attempts = attempt + 1
                try:
                    answers = await ask_model(engine, owner, c, temperature=temperature, seed=seed)
                    report = build_report(answers, c, call_date=call_date, optout=optout, model=model)
                except ValidationError as e:
                    reasons.append(f"attempt {attempt + 1}: {_validation_reason(e)}")
                    continue
                except ValueError as e:
                    reasons.append(f"attempt {attempt + 1}: {e}")
                    continue
                body = report.model_dump(mode="json")
                report_id = await asyncio.to_thread(store.save_report, tenant, call_id, body, policy=policy)
                result.status, result.report_id, result.report = "ready", report_id, body
                result.seconds = round(time.monotonic() - t0, 3)
                logger.info(
                    "report for call {} ready in {:.1f} s ({} attempt(s))", call_id[:8], result.seconds, result.attempts
                )
                return result
        finally:
            engine.forget(owner)
    return await _store_failed(store, tenant, call_id, policy, result, "; ".join(reasons), t0)


async def _store_failed(
    store: Any, tenant: str, call_id: str, policy: Policy, result: ReportResult, error: str, t0: float
) -> ReportResult:
    result.status, result.error = "failed", error
    result.report_id = await asyncio.to_thread(
        store.save_report, tenant, call_id, None, status="failed", error=error, policy=policy
    )
    result.seconds = round(time.monotonic() - t0, 3)
    logger.info("report for call {} failed after {} attempt(s)", call_id[:8], result.attempts)
    logger.debug("report for call {} failed: {}", call_id[:8], error)
    return result


# --------------------------------------------------------------------------- background scheduling

# Reports still being generated, kept referenced until they finish (asyncio keeps only weak
# references to tasks). ``serve`` and the CLI wait for them with :func:`drain_reports`.
_PENDING: set[asyncio.Task[ReportResult]] = set()


def schedule_report(
    store: Any,
    engine: ReportEngine,
    tenant: str,
    call_id: str,
    *,
    policy: Policy | None = None,
    turns: Sequence[Any] | None = None,
    call_date: date | None = None,
) -> asyncio.Task[ReportResult]:
    """Generate the report of a just-stored call in the background (see :func:`generate_report`);
    an unexpected error is logged (without call content), never raised into the call."""

    async def run() -> ReportResult:
        try:
            return await generate_report(
                store, engine, tenant, call_id, policy=policy, turns=list(turns) if turns is not None else None,
                call_date=call_date,
            )  # fmt: skip
        except Exception as e:
            logger.error("report for call {} could not be generated ({})", call_id[:8], type(e).__name__)
            return ReportResult(status="failed", call_id=call_id, error=type(e).__name__)

    task = asyncio.create_task(run(), name=f"report-{call_id[:8]}")
    _PENDING.add(task)
    task.add_done_callback(_PENDING.discard)
    return task


async def drain_reports(timeout: float | None = 60.0) -> int:
    """Wait for the reports scheduled in this event loop; returns how many were still unfinished
    after ``timeout`` (those keep running; nothing is cancelled)."""
    loop = asyncio.get_running_loop()
    pending = [t for t in _PENDING if t.get_loop() is loop and not t.done()]
    if not pending:
        return 0
    _done, still = await asyncio.wait(pending, timeout=timeout)
    return len(still)
