"""Is a summary grounded? Every day, date, time, price, phone number and street address it states
must be one the transcript or the tools' results state.

The report's summary grammar keeps the model to the transcript's words, but words make new facts
("two" and "pm" are both said, "two pm" never was; "tomorrow" and "Thursday" both said about
different things). :func:`summary_problems` reads the summary for the facts it states, as
:class:`voicecore.agent.facts.FactBook` reads a reply for them, and checks each one against what was
said or what a tool returned (not against the business's facts: a report says what happened):

* days and dates ("Thursday", "tomorrow", "December 10th", "2026-12-10"): the same date, or the
  same weekday, as one mentioned (an agent's "today" is a greeting, not a mention);
* times ("at 2 pm", "14:00", "at ten", "noon"): the same time of day as one mentioned (an hour
  without am/pm matches either);
* prices ("$95", "95 dollars"), phone numbers (7 or more digits, written or spoken) and street
  addresses ("12 Main Street"): as mentioned.

Pure functions of the texts and the call's date: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

from voicecore.policy.redaction import number_mentions
from voicecore.reports.transcript import (
    DAY_RE,
    TIME_RE,
    WEEKDAYS,
    resolve_day,
    resolve_time,
)

__all__ = ["Grounds", "find_grounds", "summary_problems"]

_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_PRICE = re.compile(r"[$€£]\s?(\d+(?:\.\d{1,2})?)\b|\b(\d+(?:\.\d{1,2})?)\s*(?:dollars?|euros?|pounds?|bucks)\b",
                    re.IGNORECASE)  # fmt: skip
_STREET = r"(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|way|place|pl|square|sq)"
_ADDRESS = re.compile(rf"\b\d+\s+(?:[a-z]+\s+){{1,3}}{_STREET}\b", re.IGNORECASE)
_AM_PM = re.compile(r"\b(?:a\.?\s?m|p\.?\s?m)\b|am\b|pm\b|morning|afternoon|evening|noon|midday", re.IGNORECASE)
MIN_PHONE_DIGITS = 7


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _times(phrase: str) -> set[int]:
    """The minutes of the day a time phrase may mean (both halves of the day without am/pm)."""
    at = resolve_time(phrase)
    if at is None:
        return set()
    minutes = at.hour * 60 + at.minute
    if _AM_PM.search(phrase) or at.hour == 0 or ":" in phrase and at.hour > 12:
        return {minutes}
    return {minutes % 720, minutes % 720 + 720}


def _stated_times(text: str) -> list[tuple[str, set[int]]]:
    """The times ``text`` states, each with the minutes it may mean ("at 12 Main Street" is no time)."""
    streets = [m.span() for m in _ADDRESS.finditer(text)]
    found = []
    for m in TIME_RE.finditer(text):
        if any(a < m.end() and m.start() < b for a, b in streets):
            continue
        minutes = _times(m.group(0))
        if minutes:
            found.append((m.group(0).strip().rstrip("."), minutes))
    return found


def _weekday(phrase: str) -> int | None:
    low = phrase.lower()
    return next((i for i, d in enumerate(WEEKDAYS) if re.search(rf"\b{d}\b", low)), None)


@dataclass
class Grounds:
    """The facts a set of texts state, normalised."""

    dates: set[date] = field(default_factory=set)
    weekdays: set[int] = field(default_factory=set)
    times: set[int] = field(default_factory=set)
    prices: set[float] = field(default_factory=set)
    numbers: set[str] = field(default_factory=set)
    words: str = ""


def _stated_days(text: str, call_date: date, *, agent_today: bool = True) -> list[tuple[str, date | None, int | None]]:
    found = []
    for m in DAY_RE.finditer(text):
        phrase = m.group(0).strip()
        if not agent_today and phrase.lower() == "today":
            continue
        found.append((phrase, resolve_day(phrase, call_date), _weekday(phrase)))
    for m in _ISO_DATE.finditer(text):
        try:
            found.append((m.group(0), date(int(m.group(1)), int(m.group(2)), int(m.group(3))), None))
        except ValueError:
            continue
    return found


def _numbers(text: str, region: str) -> set[str]:
    return {f.digits.lstrip("+") for f in number_mentions(text, region)
            if f.digits and len(f.digits.lstrip("+")) >= MIN_PHONE_DIGITS}  # fmt: skip


def find_grounds(text: str, call_date: date, region: str = "US") -> Grounds:
    """What ``text`` (a transcript's "Caller: "/"Agent: " lines, and the tools' results) states."""
    g = Grounds(words=_words(text))
    for line in text.splitlines():
        for _phrase, day, weekday in _stated_days(line, call_date, agent_today=not line.startswith("Agent: ")):
            if day is not None:
                g.dates.add(day)
                g.weekdays.add(day.weekday())
            if weekday is not None:
                g.weekdays.add(weekday)
        for _said, minutes in _stated_times(line):
            g.times |= minutes
    for m in _PRICE.finditer(text):
        g.prices.add(round(float(m.group(1) or m.group(2)), 2))
    g.numbers = _numbers(text, region)
    return g


def summary_problems(summary: str, grounds_text: str, call_date: date, region: str = "US") -> list[str]:
    """Each fact ``summary`` states that ``grounds_text`` (the transcript the model was given and the
    tools' results in words) does not; empty when the summary is grounded. The reasons quote the
    summary: they are call content (never logged at INFO, never stored in clear)."""
    g = find_grounds(grounds_text, call_date, region)
    problems: list[str] = []
    for phrase, day, weekday in _stated_days(summary, call_date):
        if day is not None and day in g.dates:
            continue
        if weekday is not None and weekday in g.weekdays:
            continue
        problems.append(f"day {phrase!r} is not in the transcript or the tools' results")
    for said, minutes in _stated_times(summary):
        if not minutes & g.times:
            problems.append(f"time {said!r} is not in the transcript or the tools' results")
    for m in _PRICE.finditer(summary):
        if round(float(m.group(1) or m.group(2)), 2) not in g.prices:
            problems.append(f"price {m.group(0).strip()!r} is not in the transcript or the tools' results")
    for digits in _numbers(summary, region):
        if not any(n.endswith(digits) or digits.endswith(n) for n in g.numbers):
            problems.append("a phone number is not in the transcript or the tools' results")
    for m in _ADDRESS.finditer(summary):
        if _words(m.group(0)) not in g.words:
            problems.append(f"address {m.group(0).strip()!r} is not in the transcript or the tools' results")
    return problems
