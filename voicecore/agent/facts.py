"""Facts a business states, answered from the data and never from the model.

A 135M model cannot be trusted to copy "Saturday from 9 am to 1 pm" out of its prompt, so
correctness does not depend on it:

* :meth:`FactBook.answer` recognises a caller's question about hours (a weekday, today,
  tomorrow, the weekend, a date, a public holiday), the address, the phone number, prices and
  services, or an FAQ entry, and renders the answer from ``facts``. A question it cannot answer
  from ``facts`` (and that is not about booking) gets :data:`DONT_KNOW`, never a guess.
* :meth:`FactBook.check` reads a sentence the model generated for the facts it states — times,
  weekdays said open or closed, prices, phone numbers, street addresses — and lists each one
  that ``facts`` do not back. :class:`FactGuard` applies it clause by clause to a streamed
  reply, so a clause with an invented fact is never spoken.

Pure functions of (facts, text, date): no I/O, no event loop. Public holidays come from the
``holidays`` package.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from voicecore.agent.clock import agent_now
from voicecore.config import WEEKDAYS, Facts, Service, parse_hours

DONT_KNOW = "I'm sorry, I don't have that information. I can help you book an appointment, though."
NOT_SURE = "Sorry, I'm not sure about that."

MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")  # fmt: skip
QUESTION_WORDS = {"what", "when", "where", "why", "how", "who", "which", "do", "does", "did", "are", "is", "can",
                  "could", "will", "would", "should", "may", "whats", "whens", "wheres", "hows"}  # fmt: skip
# Turns about booking go to the dialogue (the model, later the booking tool), not to the fact answers.
BOOKING_WORDS = {"book", "booking", "appointment", "appointments", "schedule", "reschedule", "cancel", "available",
                 "availability", "slot", "slots", "visit", "come", "anything", "something", "possible", "openings",
                 "fit", "squeeze"}  # fmt: skip
SMALL_TALK = (r"\bcan you hear me\b", r"\bare you (still )?there\b", r"^(hello|hi|hey)\b", r"\bhow are you\b",
              r"\bis (that|this) (right|correct|ok|okay)\b", r"^(really|okay|ok|right|sorry)\b",
              r"\b(can|could|would|will) you help\b", r"\bhelp me\b", r"\bi (have|ve got|got) a question\b",
              r"\b(speak|talk) (to|with) (someone|somebody|a person|a human|the dentist|the doctor)\b",
              r"\b(can|could) you (repeat|say that again)\b", r"\bwhat did you say\b")  # fmt: skip
HOURS_WORDS = {"open", "opening", "opens", "close", "closing", "closes", "closed", "hours", "shut"}
ADDRESS_PATTERNS = (r"\bwhere\b", r"\baddress\b", r"\blocated\b", r"\blocation\b", r"\bdirections\b",
                    r"\bhow (do|can) i get (there|to you)\b", r"\bfind you\b")  # fmt: skip
PHONE_PATTERNS = (r"\bphone number\b", r"\byour number\b", r"\btelephone\b", r"\bnumber to call\b",
                  r"\bcall you (back )?(on|at)\b")  # fmt: skip
PRICE_PATTERNS = (r"\bhow much\b", r"\bprices?\b", r"\bcosts?\b", r"\bcharge\b", r"\bfees?\b", r"\brates?\b",
                  r"\bexpensive\b", r"\bcheap\b", r"\bpricey\b", r"\bafford(able)?\b")
SERVICE_PATTERNS = (r"\bwhat services\b", r"\bwhat do you (offer|do)\b", r"\bservices\b",
                    r"\bdo you (offer|do|have|provide|perform|treat)\b", r"\bwhat kind of\b")  # fmt: skip
DURATION_PATTERNS = (r"\bhow long\b", r"\bhow many (minutes|hours)\b")
# a follow-up that names only a day ("and on Saturday?", "what about the 26th of December?") asks for its hours
FOLLOW_UP_WORDS = {"and", "what", "about", "how", "on", "the", "of", "this", "next", "then", "also", "so", "okay", "ok",
                   "uh", "um", "er", "erm", "ah", "oh", "well", "day", "s", "is", "it", "that", "for"}  # fmt: skip
IDENTITY_PATTERNS = (r"\bwho (is this|am i (speaking|talking) (to|with))\b", r"\bwhat (is|s) this( place)?\W*$",
                     r"\bwhat (is|s) the name of (this|your) (place|business|practice|office|clinic|company)\b")

NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
                "ten": 10, "eleven": 11, "twelve": 12}  # fmt: skip
ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
            "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14,
            "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19,
            "twentieth": 20, "thirtieth": 30}  # fmt: skip


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower().replace("'", ""))


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def spoken_time(minutes: int) -> str:
    """``540`` → ``9 am``, ``570`` → ``9:30 am``, ``720`` → ``noon``."""
    if minutes in (0, 1440):
        return "midnight"
    if minutes == 720:
        return "noon"
    h, m = divmod(minutes, 60)
    suffix = "am" if h < 12 else "pm"
    h12 = h % 12 or 12
    return f"{h12} {suffix}" if m == 0 else f"{h12}:{m:02d} {suffix}"


def spoken_price(value: float, currency: str) -> str:
    return f"{int(value)} {currency}" if float(value).is_integer() else f"{value:.2f} {currency}"


def with_article(name: str) -> str:
    """``a cleaning``, ``an oil change``, ``an MOT`` (an initialism said letter by letter)."""
    first = name[:1]
    letters = name.split()[0] if name.split() else ""
    vowel_sound = first.lower() in "aeiou" or (letters.isupper() and len(letters) > 1 and first in "AEFHILMNORSX")
    return f"{'an' if vowel_sound else 'a'} {name}"


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _or(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]


def _plural(name: str) -> str:
    return name if name.endswith("s") else name + "s"


@dataclass(frozen=True)
class FactAnswer:
    """An answer rendered from the facts; ``topic`` says which (hours, address, price, ...)."""

    text: str
    topic: str


@lru_cache(maxsize=64)
def _holiday_table(country: str, subdivision: str | None, year: int) -> dict[date, str]:
    import holidays

    return dict(holidays.country_holidays(country, subdiv=subdivision, years=year).items())


@dataclass
class FactBook:
    """One pipeline's facts, ready to answer and to check replies against."""

    facts: Facts
    clock: Callable[[], float] = agent_now  # epoch seconds (pinned in tests and benchmarks)
    _times: set[int] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self.zone = ZoneInfo(self.facts.timezone)
        times: set[int] = set()
        for hours in [getattr(self.facts.hours, d) for d in WEEKDAYS] if self.facts.hours else []:
            for start, end in parse_hours(hours):
                times |= {_minutes(start), _minutes(end)}
        for c in self.facts.closures:
            for start, end in parse_hours(c.hours):
                times |= {_minutes(start), _minutes(end)}
        self._times = times

    # -- the calendar ------------------------------------------------------------------------

    def today(self) -> date:
        return datetime.fromtimestamp(self.clock(), self.zone).date()

    def holiday(self, day: date) -> str | None:
        h = self.facts.holidays
        if h is None:
            return None
        return _holiday_table(h.country, h.subdivision, day.year).get(day)

    def hours_on(self, day: date) -> tuple[list[tuple[int, int]], str | None]:
        """The opening ranges (minutes) on ``day`` and why they differ from the week's, if they do."""
        for c in self.facts.closures:
            if c.date == day:
                return [(_minutes(a), _minutes(b)) for a, b in parse_hours(c.hours)], c.note or "a special day"
        name = self.holiday(day)
        if name is not None:
            return [], name
        return self.weekly(WEEKDAYS[day.weekday()]), None

    def weekly(self, weekday: str) -> list[tuple[int, int]]:
        if self.facts.hours is None:
            return []
        return [(_minutes(a), _minutes(b)) for a, b in parse_hours(getattr(self.facts.hours, weekday))]

    def _all_ranges(self) -> list[tuple[int, int]]:
        """Every opening range of the week and of the special days."""
        out = [r for d in WEEKDAYS for r in self.weekly(d)]
        return out + [(_minutes(a), _minutes(b)) for c in self.facts.closures for a, b in parse_hours(c.hours)]

    @staticmethod
    def _ranges(ranges: list[tuple[int, int]]) -> str:
        return " and ".join(f"from {spoken_time(a)} to {spoken_time(b)}" for a, b in ranges)

    def week_summary(self) -> str:
        """``We are open Monday to Friday from 8 am to 6 pm, and Saturday from 9 am to 1 pm. We are
        closed on Sunday.`` (consecutive days with the same hours grouped)."""
        groups: list[tuple[list[str], list[tuple[int, int]]]] = []
        for d in WEEKDAYS:
            r = self.weekly(d)
            if groups and groups[-1][1] == r:
                groups[-1][0].append(d)
            else:
                groups.append(([d], r))
        open_parts, closed = [], []
        for days, r in groups:
            name = days[0].capitalize() if len(days) == 1 else f"{days[0].capitalize()} to {days[-1].capitalize()}"
            if r:
                open_parts.append(f"{name} {self._ranges(r)}")
            else:
                closed += [d.capitalize() for d in days]
        text = f"We are open {', and '.join(open_parts)}." if open_parts else "We are closed all week."
        if closed and open_parts:
            text += f" We are closed on {_join(closed)}."
        return text

    def day_answer(self, day: date, label: str) -> str:
        """``On Saturday we are open from 9 am to 1 pm.`` / ``On Christmas Day we are closed.``"""
        ranges, why = self.hours_on(day)
        when = label[0].upper() + label[1:]
        if why and why.lower() not in label.lower():
            when += f", {why},"
        if not ranges:
            return f"{when} we are closed."
        return f"{when} we are open {self._ranges(ranges)}."

    # -- understanding the caller ------------------------------------------------------------

    def _days_mentioned(self, text: str, today: date) -> list[tuple[date, str]]:
        words = _words(text)
        joined = " ".join(words)
        found: list[tuple[date, str]] = []

        def next_weekday(index: int) -> date:
            return today + timedelta(days=(index - today.weekday()) % 7)

        if "today" in words or "tonight" in words:
            found.append((today, "today"))
        if "tomorrow" in words:
            found.append((today + timedelta(days=1), "tomorrow"))
        for i, name in enumerate(WEEKDAYS):
            if name in words or name + "s" in words:
                found.append((next_weekday(i), f"on {name.capitalize()}"))
        if "weekend" in words or "weekends" in words:
            found += [(next_weekday(5), "on Saturday"), (next_weekday(6), "on Sunday")]
        for m, month in enumerate(MONTHS, start=1):
            for pattern in (rf"\b{month} (\w+)", rf"\b(\w+) of {month}\b"):
                for match in re.finditer(pattern, joined):
                    day_n = self._day_number(match.group(1))
                    if day_n is None:
                        continue
                    try:
                        d = date(today.year, m, day_n)
                    except ValueError:
                        continue
                    if d < today:
                        d = date(today.year + 1, m, day_n)
                    found.append((d, f"on {month.capitalize()} {day_n}"))
        for c in self.facts.closures:  # a closure's note names its day ("Christmas Eve")
            note = " ".join(_words(c.note))
            if note and note in joined and c.date >= today:
                found.append((c.date, f"on {c.note}"))
        if self.facts.holidays is not None:
            named = " ".join(" ".join(_words(label)) for _, label in found)
            seen_names: set[str] = set()
            for year in (today.year, today.year + 1):
                table = _holiday_table(self.facts.holidays.country, self.facts.holidays.subdivision, year)
                for d, name in sorted(table.items()):
                    name = name.split(";")[0].strip()
                    if "observed" in name.lower() or d < today or name in seen_names:
                        continue
                    key = " ".join(w for w in _words(name) if w not in {"day", "the", "s"})
                    key = re.split(r" (?:jr|national)\b", key)[0]  # "martin luther king", "juneteenth"
                    if not key or key in named:
                        continue
                    if re.search(rf"\b{re.escape(key)} eve\b", joined):  # "New Year's Eve": the day before
                        if d - timedelta(days=1) >= today:
                            seen_names.add(name)
                            found.append((d - timedelta(days=1), f"on {re.sub(r' Day$', '', name)} Eve"))
                    elif re.search(rf"\b{re.escape(key)}\b", joined):
                        seen_names.add(name)
                        found.append((d, f"on {name}"))
        # one answer per date, first mention first
        seen: set[date] = set()
        out = []
        for d, label in found:
            if d not in seen:
                seen.add(d)
                out.append((d, label))
        return out

    def days_mentioned(self, text: str, today: date | None = None) -> list[tuple[date, str]]:
        """The days ``text`` names (weekdays, today, tomorrow, dates, public holidays and special days
        by their names), resolved against ``today``, each with how to say it (``on Christmas Eve``)."""
        return self._days_mentioned(text, today or self.today())

    @staticmethod
    def _day_number(token: str) -> int | None:
        m = re.fullmatch(r"(\d{1,2})(st|nd|rd|th)?", token)
        if m:
            return int(m.group(1))
        return ORDINALS.get(token)

    def _service(self, text: str) -> Service | None:
        low = " " + " ".join(_words(text)) + " "
        best: tuple[int, Service] | None = None
        for s in self.facts.services:
            for n in (s.name, *s.aliases):
                forms = {" ".join(_words(n)), " ".join(_words(_plural(n)))}
                for f in forms:
                    if f and f" {f} " in low and (best is None or len(f) > best[0]):
                        best = (len(f), s)
        return best[1] if best else None

    @staticmethod
    def is_question(text: str) -> bool:
        words = _words(text)
        return text.strip().endswith("?") or (bool(words) and words[0] in QUESTION_WORDS)

    def answer(self, text: str) -> FactAnswer | None:
        """The answer to a caller's question about the facts (several topics in one turn are all
        answered); :data:`DONT_KNOW` for another question the facts cannot answer; None when the
        turn is for the dialogue (booking, small talk, statements)."""
        low = text.strip().lower()
        words = set(_words(text))
        f = self.facts
        parts: list[tuple[str, str]] = []  # (topic, text)
        if words & HOURS_WORDS and f.hours is not None and not (words & {"book", "appointment", "appointments"}):
            days = self._days_mentioned(text, self.today())
            if not days:
                parts.append(("hours", self.week_summary()))
            else:
                parts.append(("hours", " ".join(self.day_answer(d, label) for d, label in days[:3])))
        if any(re.search(p, low) for p in PRICE_PATTERNS) and f.services:
            service = self._service(text)
            priced = [s for s in f.services if s.price is not None]
            if service is not None and service.price is None:
                parts.append(("price", f"I don't have a price for {service.name}. The team can tell you at your visit."))
            elif service is not None:
                what = with_article(service.name)
                parts.append(("price", f"{what[0].upper()}{what[1:]} costs {spoken_price(service.price, f.currency)}."))  # type: ignore[arg-type]
            elif priced:
                items = [f"{with_article(s.name)} is {spoken_price(s.price, f.currency)}" for s in priced]  # type: ignore[arg-type]
                parts.append(("price", f"Our prices: {_join(items)}."))
        if f.address and any(re.search(p, low) for p in ADDRESS_PATTERNS) and not (words & BOOKING_WORDS):
            parts.append(("address", f"We are at {f.address}."))
        if f.phone and any(re.search(p, low) for p in PHONE_PATTERNS):
            parts.append(("phone", f"Our phone number is {f.phone}."))
        for entry in f.faq:
            if any(set(_words(phrase)) <= words for phrase in entry.phrases):
                parts.append(("faq", entry.answer))
        if f.services and not any(t == "price" for t, _ in parts) and not (words & BOOKING_WORDS) \
                and any(re.search(p, low) for p in SERVICE_PATTERNS):  # fmt: skip
            service = self._service(text)
            names = _join([_plural(s.name) for s in f.services])
            if service is not None:
                parts.append(("services", f"Yes, we offer {_plural(service.name)}."))
            elif re.search(r"\bdo you (offer|do|have|provide|perform|treat)\b", low) \
                    and not re.search(r"\b(what|which) (services|kind|sort|other)\b|^\W*(what|which)\b", low):  # fmt: skip
                if not parts:  # "do you have parking" was an FAQ, not a service; this one the facts cannot
                    # answer (they list what we do, not what we don't): the tools offer a message or a person
                    parts.append(("unknown", f"I don't see that among our services. We offer {names}."))
            else:
                parts.append(("services", f"We offer {names}."))
        if f.business and (any(re.search(p, low) for p in IDENTITY_PATTERNS) or (  # "is this Bright Smile Dental?"
                re.search(r"\b(is|are) (this|that|you)\b", low) and set(_words(f.business)) <= words)):  # fmt: skip
            parts.append(("identity", f"This is {f.business}."))
        if f.services and any(re.search(p, low) for p in DURATION_PATTERNS):
            service = self._service(text)
            if service is not None and service.duration_min:
                what = with_article(service.name)
                parts.append(("duration", f"{what[0].upper()}{what[1:]} takes about {service.duration_min} minutes."))
        if not parts and f.hours is not None and self.is_question(text) and not (words & BOOKING_WORDS):
            days = self._days_mentioned(text, self.today())
            said = {w for _, label in days for w in _words(label)}
            rest = {w for w in words - FOLLOW_UP_WORDS - said if not re.fullmatch(r"\d+(st|nd|rd|th)?", w)}
            if days and not rest - set(ORDINALS):
                parts.append(("hours", " ".join(self.day_answer(d, label) for d, label in days[:3])))
        if not parts and any(re.search(p, low) for p in SMALL_TALK):
            return None  # for the dialogue: small talk, a greeting before a request
        if parts:
            return FactAnswer(" ".join(t for _, t in parts), "+".join(topic for topic, _ in parts))
        if self.is_question(text) and not (words & BOOKING_WORDS):
            return FactAnswer(DONT_KNOW, "unknown")
        return None

    # -- checking what the model says --------------------------------------------------------

    def check(self, sentence: str, *, slots: bool = False) -> list[str]:
        """Each fact ``sentence`` states that the facts do not back (empty when it states none).

        A date the sentence names (today, tomorrow, December 24, Christmas Day) is checked against
        that day's own hours, a weekday named alone against the week's, and a weekday said with a
        date must be that date's. ``slots``: the sentence offers or reads back appointment times
        (the booking dialogue's), so a time is backed when we are open then on the day it names,
        not only at opening and closing times."""
        f = self.facts
        low = sentence.lower()
        words = _words(sentence)
        problems: list[str] = []
        today = self.today()
        # times: each must be an opening or closing time (of the days named, if any)
        said_times: list[tuple[str, set[int]]] = []
        for m in re.finditer(r"\b(\d{1,2})(?::([0-5]\d))?\s*(a\.?\s?m\b\.?|p\.?\s?m\b\.?|o'?clock)", low):
            h, mins = int(m.group(1)), int(m.group(2) or 0)
            suffix = m.group(3).replace(".", "").replace(" ", "")
            if suffix.startswith("p") and h < 12:
                h += 12
            if suffix.startswith("a") and h == 12:
                h = 0
            said_times.append((m.group(0).strip(" ."), {h * 60 + mins} if not suffix.startswith("o") else {h * 60, (h + 12) * 60}))
        for m in re.finditer(r"\bat (\d{1,2})(?::([0-5]\d))?(?=\s*(?:$|[.,!?;]|today\b|tomorrow\b|tonight\b|on\b|in the\b))",
                             low):  # fmt: skip  ("at 4": a time without am/pm)
            h, mins = int(m.group(1)), int(m.group(2) or 0)
            if h <= 12:
                said_times.append((m.group(0).strip(" ."), {h * 60 + mins, (h + 12) * 60 + mins}))
        for m in re.finditer(r"\b(noon|midday|midnight)\b", low):
            said_times.append((m.group(1), {0, 1440} if m.group(1) == "midnight" else {720}))
        dated = [(d, label.removeprefix("on ")) for d, label in self._days_mentioned(sentence, today)
                 if label.removeprefix("on ").lower() not in WEEKDAYS]  # fmt: skip
        on_dates = {WEEKDAYS[d.weekday()] for d, _ in dated}  # "Friday December 4" is about that Friday
        days = [d for d in self._weekdays_named(words) if d not in on_dates]
        named = [(d.capitalize(), self.weekly(d)) for d in days] + [(label, self.hours_on(d)[0]) for d, label in dated]
        negated = bool({"not", "closed", "never", "dont", "arent", "isnt", "shut"} & set(words))
        day_times = {t for _, ranges in named for r in ranges for t in r}
        names = _join([n for n, _ in named])
        for said, minutes in said_times:
            if slots:
                ranges = [r for _, rs in named for r in rs] if named else self._all_ranges()
                if not any(a <= t <= b for t in minutes for a, b in ranges):
                    problems.append(f"time {said!r} is not within our opening hours" + (f" on {names}" if named else ""))
            elif not minutes & self._times:
                problems.append(f"time {said!r} is not an opening or closing time")
            elif named and not negated and not minutes & day_times:
                problems.append(f"time {said!r} is not when we open or close on {names}")
        # days said open or closed
        if f.hours is not None and named:
            says_open = bool({"open", "opens"} & set(words)) or bool(said_times)
            for name, ranges in named:
                if negated and ranges and not says_open:
                    problems.append(f"{name} is said closed but is open")
                elif says_open and not negated and not ranges:
                    problems.append(f"{name} is said open but is closed")
        # a weekday said with a date ("Monday December 7") must be that date's
        for m in re.finditer(rf"\b({'|'.join(WEEKDAYS)}),? (?:the )?({'|'.join(MONTHS)}) (\d{{1,2}})(?:st|nd|rd|th)?\b", low):
            try:
                d = date(today.year, MONTHS.index(m.group(2)) + 1, int(m.group(3)))
                if d < today:
                    d = date(today.year + 1, d.month, d.day)
            except ValueError:
                problems.append(f"date {m.group(0)!r} does not exist")
                continue
            if WEEKDAYS[d.weekday()] != m.group(1):
                problems.append(f"{d:%B} {d.day} is a {d:%A}, not a {m.group(1).capitalize()}")
        # prices
        prices = {round(s.price, 2) for s in f.services if s.price is not None}
        for m in re.finditer(r"(?:\$\s?(\d+(?:\.\d{1,2})?))|(?:\b(\d+(?:\.\d{1,2})?)\s*(?:dollars?|euros?|pounds?|bucks))",
                             low):  # fmt: skip
            value = round(float(m.group(1) or m.group(2)), 2)
            if value not in prices:
                problems.append(f"price {m.group(0).strip()!r} is not a listed price")
        # phone numbers
        phone_digits = re.sub(r"\D", "", f.phone)
        for m in re.finditer(r"(?:\+?\d[\d\s().-]{6,}\d)", sentence):
            digits = re.sub(r"\D", "", m.group(0))
            if len(digits) >= 7 and not (phone_digits and (digits in phone_digits or phone_digits.endswith(digits))):
                problems.append(f"phone number {m.group(0).strip()!r} is not the business's")
        # web and email addresses: the facts state none
        for m in re.finditer(r"\bhttps?://\S+|\bwww\.\S+|\b[\w.+-]+@[\w-]+\.[\w.]+"
                             r"|\b[\w-]+\.(?:com|net|org|co\.uk|uk|io|us|info|biz)\b(?:/\S*)?", sentence, re.IGNORECASE):
            problems.append(f"web or email address {m.group(0)!r} is not in the facts")
        # street addresses
        street = r"(street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|way|place|pl|square|sq)"
        address_words = " ".join(_words(f.address))
        for m in re.finditer(rf"\b(\d+)\s+((?:[a-z]+\s+){{1,3}}){street}\b", low):
            said = " ".join(_words(m.group(0)))
            if not address_words or said not in address_words:
                problems.append(f"address {m.group(0).strip()!r} is not the business's")
        return problems

    @staticmethod
    def _weekdays_named(words: list[str]) -> list[str]:
        """The weekdays a sentence names; ``Monday to Friday`` / ``through`` names the days between too."""
        idx = [(i, WEEKDAYS.index(w.rstrip("s") if w.rstrip("s") in WEEKDAYS else w))
               for i, w in enumerate(words) if w in WEEKDAYS or (w.endswith("s") and w[:-1] in WEEKDAYS)]  # fmt: skip
        named: list[int] = []
        for k, (pos, day) in enumerate(idx):
            named.append(day)
            if k + 1 < len(idx):
                nxt_pos, nxt_day = idx[k + 1]
                between = words[pos + 1 : nxt_pos]
                if between and between[0] in ("to", "through", "thru", "till", "until") and nxt_day > day:
                    named += list(range(day + 1, nxt_day))
        return [WEEKDAYS[d] for d in dict.fromkeys(named)]

    # -- what the model is told ------------------------------------------

    def prompt_text(self) -> str:
        """The facts in plain sentences, for the model's system prompt (no phone number)."""
        f = self.facts
        lines = []
        if f.business:
            lines.append(f"This is {f.business}.")
        if f.hours is not None:
            lines.append(self.week_summary())
        if f.address:
            lines.append(f"Address: {f.address}.")
        # (the phone number stays out: it is answered from the data, and a prompt holds no phone number)
        if f.services:
            items = [s.name + (f" ({spoken_price(s.price, f.currency)})" if s.price is not None else "") for s in f.services]
            lines.append(f"Services: {_join(items)}.")
        return "Facts: " + " ".join(lines) if lines else ""

    def recogniser_hint(self) -> str:
        """Words callers use with this business, for the recogniser's prompt: the business name, the
        services ("a cleaning, check-up, filling or whitening appointment") and the open weekdays.

        Measured with Whisper tiny.en (repetition penalty 1.1) on the bench corpus plus 18 booking
        lines: word error rate 27.7 % → 22.7 % at 16 kHz and 38.0 % → 37.1 % over 8 kHz telephone
        audio; "Next Tuesday at ten in the morning" was heard as "next 2 steps and in the morning"
        without it. Service aliases stay out (a longer prompt made the decoder repeat it)."""
        f = self.facts
        parts = []
        if f.business:
            parts.append(f"{f.business}.")
        services = [s.name for s in f.services]
        open_days = [d.capitalize() for d in WEEKDAYS if self.weekly(d)] if f.hours is not None else []
        if services:
            article = "an" if services[0][:1].lower() in "aeiou" else "a"
            sentence = f"Book {article} {_or(services)} appointment"
            parts.append(f"{sentence} on {_or(open_days)}." if open_days else f"{sentence}.")
        elif open_days:
            parts.append(f"Open {_join(open_days)}.")
        return " ".join(parts)


class FactGuard:
    """A streamed reply, clause by clause: a clause is released once complete and checked; the
    first clause stating a fact the facts do not back is replaced by :data:`NOT_SURE`, and the
    rest of the reply is dropped."""

    # A clause ends at punctuation before a space; at the end of what has streamed so far only when
    # no digit precedes it ("8:" may be "8:30", "1," may be "1,000": the next piece says), and not
    # at a full stop ("www." or "example." may go on as "example.com": the next piece, or the end
    # of the reply, says).
    CLAUSE_END = re.compile(r"[.!?;:,]\s|(?<!\d)[!?;:,]$")

    def __init__(self, book: FactBook):
        self.book = book
        self._pending = ""
        self.blocked: list[str] = []  # what was held back, and why

    @property
    def stopped(self) -> bool:
        return bool(self.blocked)

    def feed(self, piece: str) -> str:
        """Text safe to speak now (whole clauses); empty while a clause is incomplete or after a block."""
        if self.stopped:
            return ""
        self._pending += piece
        out = ""
        while True:
            m = self.CLAUSE_END.search(self._pending)
            if m is None:
                return out
            clause, self._pending = self._pending[: m.end()], self._pending[m.end():]
            released = self._release(clause)
            out += released
            if self.stopped:
                return out

    def flush(self) -> str:
        """The end of the reply: the last (unpunctuated) clause, checked."""
        if self.stopped or not self._pending.strip():
            self._pending = ""
            return ""
        clause, self._pending = self._pending, ""
        return self._release(clause)

    def _release(self, clause: str) -> str:
        problems = self.book.check(clause)
        if not problems:
            return clause
        self.blocked += problems
        return (" " if clause.startswith(" ") else "") + NOT_SURE
