"""What a call's transcript offers a report: names, numbers, needs, days and times, and their dates.

Pure functions of the (policy-filtered) transcript text: :func:`find_candidates`
collects every value a report field may take, :func:`resolve_day` and
:func:`resolve_time` turn the caller's words into a date and a time relative to
the call's date, and :func:`fit_transcript` cuts a transcript to the model's budget.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import Any, Literal, get_args

from voicecore.policy.phone import try_normalize_phone
from voicecore.policy.redaction import PLACEHOLDERS, find_sensitive

REPORT_FORMAT = "voicecore-report/1"
REPORT_ACTOR = "reports"  # who the audit log names when a report reads a stored transcript

Purpose = Literal[
    "book an appointment",
    "change an appointment",
    "cancel an appointment",
    "ask a question",
    "report a problem",
    "leave a message",  # from a message taken (take_message), never offered to the model
    "speak to someone",  # from a transfer asked for (transfer), never offered to the model
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
