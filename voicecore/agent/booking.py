"""Booking an appointment across turns, deterministically (the ``book_appointment`` tool).

:class:`BookingDialogue` reads each caller turn (as Whisper tiny.en writes it: lower case, maybe
no punctuation) for the service (matched against the facts' services and aliases, forgiving
spelling), the day ("tomorrow", "on Friday", "next Tuesday", "December 12th", "the 12th", resolved
against the call's date in the business's time zone), the time ("at 3", "3 pm", "half past ten",
"10:30 in the morning") and the caller's name ("my name is …", "this is …"). It asks for what is
missing, one thing at a time; offers the nearest free slots when the day is closed or the time is
taken; reads the booking back and books only after a yes; a no or a change goes back a step.

No model, no audio, no event loop: :meth:`BookingDialogue.handle` is a blocking function of the
turn's text (it reads and writes the calendar), run with ``asyncio.to_thread`` by async callers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from difflib import SequenceMatcher

from loguru import logger

from voicecore.agent.calendar import (
    Appointment,
    AppointmentBook,
    CalendarError,
    SlotClosed,
    SlotTaken,
)
from voicecore.agent.facts import (
    MONTHS,
    NUMBER_WORDS,
    ORDINALS,
    spoken_time,
    with_article,
)
from voicecore.config import WEEKDAYS, Service

YES = {"yes", "yeah", "yep", "yup", "sure", "correct", "right", "perfect", "ok", "okay", "fine", "great",
       "absolutely", "definitely", "please", "confirm", "good"}  # fmt: skip
YES_PHRASES = (r"\bsounds good\b", r"\bthat works\b", r"\bgo ahead\b", r"\bbook it\b", r"\bthats (right|it|fine)\b")
NO = {"no", "nope", "nah", "wrong", "change", "actually", "instead", "different", "not", "cancel"}
MORE_NUMBERS = {"thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
                "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fortyfive": 45}  # fmt: skip
NOT_A_NAME = {"calling", "looking", "interested", "wondering", "trying", "just", "here", "not", "sorry", "fine",
              "good", "okay", "ok", "available", "free", "new", "a", "the", "going", "hoping", "after", "booking",
              "yes", "no", "hi", "hello", "well", "thinking", "still", "also", "so", "very", "really", "great",
              "right", "correct", "perfect", "sure", "it", "that", "about", "calling", "ready", "uh", "um", "umm",
              "hmm", "hm", "er", "erm", "ah", "oh", "what", "huh", "pardon", "eh", "mm", "like", "maybe", "thanks"}  # fmt: skip
LEAD_WORDS = {",", "yes", "yeah", "yep", "sure", "ok", "okay", "its", "it", "is", "uh", "um", "umm", "er", "erm", "ah", "oh",
              "well", "so", "hmm"}  # fmt: skip
NAME_STOP = {",", "and", "i", "id", "im", "for", "on", "at", "please", "to", "with", "my", "calling", "would", "want",
             "like", "from", "the", "a", "an", "thanks", "thank", "so", "but", "today", "tomorrow", "next", "this",
             "book", "and", "is", *WEEKDAYS}  # fmt: skip
PARTS_OF_DAY = {"morning": (0, 720), "afternoon": (780, 1020), "evening": (1020, 1440), "lunchtime": (690, 840)}
CHOICE = re.compile(r"\b(?:the )?(first|second|last|earlier|later)(?: one| time| slot| option)\b"
                    r"|\bthe (first|second|last)\b(?! of)")


BOOKING_INTENT = re.compile(r"\b(book|booking|appointment|schedule|come in|see the (dentist|doctor|hygienist))\b")
GIVE_UP = re.compile(r"\b(never ?mind|forget (it|about it)|no thanks|dont (want|need) (it|to|an|a|the)|not interested|"
                     r"dont book|do not book|stop booking)\b")
NOT_A_NEW_BOOKING = re.compile(r"\b(cancel|reschedule|move|change|postpone)\b.*\b(appointment|booking)\b")
# asking for work on a day without saying "book": "I need my brakes done", "can you fit me in", "bring my car in"
BOOKING_REQUEST = re.compile(
    r"\b((fit|squeeze) (me|us|it|him|her|my \w+|the \w+) in|(bring|get) (it|my \w+|the \w+)( \w+)? in|drop (it|my \w+|the \w+) off"
    r"|(need|want|like|get|have) (my|the|our) (\w+ ){0,2}(done|fixed|seen to|looked at|checked|replaced|serviced)"
    r"|make an appointment|any (free )?(slots|availability)"
    r"|(do you have|have you got|is there) (anything|something|any (time|room|space|slots?|openings?))( free)?"
    r" (on|for|at|in|this|next|today|tomorrow|tonight|around|before|after)"
    r")\b"
)
# "is 5 pm on Saturday possible?": a time asked for as possible, free or available
POSSIBLE = re.compile(r"\b(possible|free|available|open for)\b")
# "I'd like an oil change on Friday at 3 pm", "can you have a look at them tomorrow": a request with a
# day or a time
REQUEST = re.compile(r"\b(id like|i would like|i want|i need|can i get|could i get|can i have|could i have|"
                     r"can you do|could you do|(can|could) you (have|take) a look|(can|could) you look at)\b")  # fmt: skip
INFO_WORDS = re.compile(r"\b(know|hours|open|opening|close|closing|closed|price|prices|cost|costs|how much|where|"
                        r"address|message|speak|talk)\b")  # fmt: skip


def wants_booking(text: str) -> bool:
    """A turn that asks to book ("I'd like to book a cleaning", "can I make an appointment", "I need
    my brakes done on Monday", "I'd like an oil change on Friday at 3")."""
    low = " ".join(_words(text))
    if NOT_A_NEW_BOOKING.search(low):
        return False
    if BOOKING_INTENT.search(low) or BOOKING_REQUEST.search(low):
        return True
    if POSSIBLE.search(low) and find_time(text)[0] is not None:
        return True
    return bool(REQUEST.search(low)) and not INFO_WORDS.search(low) and (
        find_day(text, date.today()) is not None or find_time(text)[0] is not None)  # fmt: skip


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower().replace("'", ""))


#: A question that starts so asks for something ("Can you repeat that, please?"): its "please" or
#: "right" is no yes to what the agent asked.
QUESTION_STARTS = {"could", "can", "would", "will", "what", "where", "when", "how", "who", "why", "which", "do",
                   "does", "is", "are"}  # fmt: skip


def says_yes(text: str) -> bool:
    """The caller agrees ("yes", "sounds good", "book it"), and does not ask for something else."""
    listed = _words(text)
    words, joined = set(listed), " ".join(listed)
    if words & NO:
        return False
    if any(re.search(p, joined) for p in YES_PHRASES):
        return True
    asks = bool(listed) and listed[0] in QUESTION_STARTS and (text.rstrip().endswith("?") or len(listed) > 4)
    return not asks and bool(words & YES)


def _number(token: str) -> int | None:
    if token.isdigit():
        return int(token)
    return NUMBER_WORDS.get(token, MORE_NUMBERS.get(token))


def _spoken_day(day: date, today: date, on: bool = True) -> str:
    """``today``, ``tomorrow, Saturday December 5,``, ``on Monday December 7``."""
    if day == today:
        return "today"
    if day == today + timedelta(days=1):
        return f"tomorrow, {day:%A} {day:%B} {day.day},"
    return f"{'on ' if on else ''}{day:%A} {day:%B} {day.day}"


def _spoken_slot(slot: datetime, today: date) -> str:
    return f"{_spoken_day(slot.date(), today)} at {spoken_time(slot.hour * 60 + slot.minute)}"


def _spoken_slots(slots: list[datetime], today: date) -> str:
    """``Monday December 7 at 9:30 am or 10:30 am`` (one day), else each slot with its day."""
    times = [spoken_time(s.hour * 60 + s.minute) for s in slots]
    if len({s.date() for s in slots}) == 1:
        return f"{_spoken_day(slots[0].date(), today, on=False)} at {_or(times)}"
    return _or([f"{_spoken_day(s.date(), today, on=False)} at {t}" for s, t in zip(slots, times)])


def _or(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


# --- reading a turn --------------------------------------------------------------------------------


@dataclass
class Heard:
    """What one caller turn said that the booking needs (None: not said)."""

    service: Service | None = None
    day: date | None = None
    minutes: int | None = None  # time of day
    ambiguous: bool = False  # an hour without am/pm ("at 3")
    part_of_day: str | None = None
    name: str | None = None
    yes: bool = False
    no: bool = False
    choice: int | None = None  # "the first one", "the second"

    @property
    def anything(self) -> bool:
        return any(v is not None for v in (self.service, self.day, self.minutes, self.part_of_day, self.name,
                                           self.choice)) or self.yes or self.no  # fmt: skip


def find_service(text: str, services: list[Service]) -> Service | None:
    """The service a turn names: a name or alias word for word, else the closest spelling (Whisper's
    "check up", "cleanin", "feeling" → filling) with a similarity of at least 0.8."""
    words = _words(text)
    joined = " " + " ".join(words) + " "
    best: tuple[float, Service] | None = None
    for s in services:
        for n in (s.name, *s.aliases):
            forms = {" ".join(_words(n)), " ".join(_words(n + "s"))}
            if any(f and f" {f} " in joined for f in forms):
                score = 2.0 + len(n) / 100  # exact, the longest one wins
            else:
                target = "".join(_words(n))
                size = len(_words(n))
                grams = {"".join(words[i:i + k]) for k in (size, size + 1) if k > 0 for i in range(len(words) - k + 1)}
                ratios = [SequenceMatcher(None, g, target).ratio() for g in grams if abs(len(g) - len(target)) <= 3]
                score = max(ratios, default=0.0) if len(target) >= 4 else 0.0
                if score < 0.8:
                    continue
            if best is None or score > best[0]:
                best = (score, s)
    return best[1] if best else None


def find_day(text: str, today: date) -> date | None:
    """The day a turn names, resolved against ``today`` (always today or later). A date wins over
    the weekday said with it ("Thursday the 10th")."""
    words = _words(text)
    joined = " ".join(words)
    if "day after tomorrow" in joined:
        return today + timedelta(days=2)
    if "tomorrow" in words:
        return today + timedelta(days=1)
    if "today" in words or "tonight" in words:
        return today
    for m, month in enumerate(MONTHS, start=1):
        short = month[:3]
        for pattern in (rf"\b(?:{month}|{short}) (?:the )?(\w+)", rf"\b(\w+) of (?:{month}|{short})\b"):
            for match in re.finditer(pattern, joined):
                n = _day_number(match.group(1))
                if n is None:
                    continue
                try:
                    d = date(today.year, m, n)
                except ValueError:
                    continue
                return d if d >= today else date(today.year + 1, m, n)
    for match in re.finditer(r"\bthe (\w+)\b(?! (one|time|slot|option)s?\b)", joined):  # "the 12th" (not "the first one")
        n = _day_number(match.group(1), ordinal_only=True)
        if n is not None:
            return _this_or_next_month(today, n)
    for i, name in enumerate(WEEKDAYS):
        if name in words or name + "s" in words:
            ahead = (i - today.weekday()) % 7
            if ahead == 0 and not re.search(rf"\b(this|today) {name}\b", joined):
                ahead = 7  # "on Friday" said on a Friday: the next one ("next Tuesday": the coming one)
            return today + timedelta(days=ahead)
    if re.search(r"\bnext week\b", joined):
        return today + timedelta(days=7 - today.weekday())  # next Monday
    return None


def _day_number(token: str, ordinal_only: bool = False) -> int | None:
    m = re.fullmatch(r"(\d{1,2})(st|nd|rd|th)" + ("" if ordinal_only else "?"), token)
    if m:
        n = int(m.group(1))
        return n if 1 <= n <= 31 else None
    return ORDINALS.get(token)


def _this_or_next_month(today: date, n: int) -> date | None:
    year, month = today.year, today.month
    for _ in range(3):
        try:
            d = date(year, month, n)
            if d >= today:
                return d
        except ValueError:
            pass
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return None


def find_time(text: str) -> tuple[int | None, bool, str | None]:
    """(minutes after midnight, whether am/pm was left open, part of day) a turn names."""
    spaced = re.sub(r"(\d)\s*([ap])\.?\s?m\b\.?", r"\1 \2m", text.lower())  # "9:30am", "4 p.m."
    low = " ".join(_words(spaced.replace(":", " colon ")))
    low = re.sub(r"\ba m\b", "am", re.sub(r"\bp m\b", "pm", low))
    part = next((p for p in PARTS_OF_DAY if re.search(rf"\b{p}\b", low)), None)
    if re.search(r"\b(noon|midday)\b", low):
        return 720, False, part
    num = r"(\d{1,2}|" + "|".join(list(NUMBER_WORDS) + ["thirteen", "fourteen", "fifteen", "sixteen", "seventeen"]) + ")"
    hour: int | None = None
    minute = 0
    suffix = None
    m = re.search(rf"\b(half|quarter) (past|after|to) {num}\b", low)
    if m:
        hour = _number(m.group(3))
        minute = 30 if m.group(1) == "half" else 15
        if m.group(2) == "to" and hour is not None:
            hour, minute = hour - 1, 45
    else:
        m = re.search(rf"\b{num}(?: colon (\d{{2}})| (thirty|fifteen|fortyfive|forty five|o clock|oclock|\d{{2}}))?"
                      rf"(?: (am|pm|in the morning|in the afternoon|in the evening))?\b", low)  # fmt: skip
        while m:
            h = _number(m.group(1))
            mins_token = m.group(2) or m.group(3)
            explicit = m.group(4) or (mins_token if mins_token and "clock" in mins_token else None)
            # a bare number counts as a time only after "at"/"around"/"by", with minutes, or with am/pm
            before = low[: m.start()].split()[-1:] or [""]
            if h is not None and h <= 23 and (explicit or mins_token or before[0] in ("at", "around", "about", "by")
                                               or low.strip() == m.group(0)):  # fmt: skip
                hour = h
                if mins_token and "clock" not in mins_token:
                    minute = {"thirty": 30, "fifteen": 15, "fortyfive": 45, "forty five": 45}.get(mins_token) \
                        or int(mins_token)
                suffix = m.group(4)
                break
            m = m.re.search(low, m.end())
    if hour is None or not (0 <= minute < 60):
        return None, False, part
    if suffix in ("pm", "in the afternoon", "in the evening") and hour < 12:
        return (hour + 12) * 60 + minute, False, part
    if suffix in ("am", "in the morning"):
        return (0 if hour == 12 else hour) * 60 + minute, False, part
    if part in ("afternoon", "evening") and hour < 12:
        return (hour + 12) * 60 + minute, False, part
    if part == "morning" or hour >= 12:
        return hour * 60 + minute, False, part
    return hour * 60 + minute, True, part


def find_name(text: str, asked: bool) -> str | None:
    """The caller's name: after "my name is", "this is", "it's", "I'm", "name's"; when the name was
    just asked for, a short answer of name-like words is the name."""
    clean = re.sub(r"[^A-Za-z', -]", " ", re.sub(r"[.,!?;:]", " , ", text)).replace("'", "")
    low = clean.lower()  # a comma for each punctuation mark: a name ends there
    m = re.search(r"\b(?:my name is|my names|name is|names|this is|it is|its|i am|im|call me)\s+([a-z -]+)", low)
    words: list[str] = []
    if m:
        words = m.group(1).split()
    elif asked:
        words = low.split()
        while words and words[0] in LEAD_WORDS:  # "uh, Monica Geller", "yes, it's Ann"
            words = words[1:]
    name: list[str] = []
    for w in words:
        if w in NAME_STOP or (not name and w in NOT_A_NAME):
            break
        name.append(w)
        if len(name) == 3:
            break
    if not name or name[0] in NOT_A_NAME or any(w in NOT_A_NAME for w in name):
        return None
    return " ".join(w.capitalize() for w in name)


def read_turn(text: str, services: list[Service], today: date, asked: str | None) -> Heard:
    words = set(_words(text))
    joined = " ".join(_words(text))
    minutes, ambiguous, part = find_time(text)
    heard = Heard(service=find_service(text, services), day=find_day(text, today), minutes=minutes,
                  ambiguous=ambiguous, part_of_day=part, name=find_name(text, asked == "name"))  # fmt: skip
    heard.no = bool(words & NO)
    heard.yes = says_yes(text)
    m = CHOICE.search(joined)
    if m:
        heard.choice = {"first": 0, "earlier": 0, "second": 1, "later": 1, "last": -1}[m.group(1) or m.group(2)]
    if heard.name and heard.service and heard.name.lower() in {s.lower() for s in _words(heard.service.name)}:
        heard.name = None
    return heard


# --- the dialogue ----------------------------------------------------------------------------------


FINISHED = ("booked", "failed", "abandoned")


@dataclass
class BookingReply:
    """What the agent says, and where the booking stands (``collecting``, ``confirming``, ``booked``,
    ``failed``, ``abandoned``); ``appointment`` once booked, ``error`` when the calendar failed."""

    text: str
    state: str
    appointment: Appointment | None = None
    error: str | None = None


@dataclass
class BookingDialogue:
    """One caller's booking, turn by turn."""

    calendar: AppointmentBook
    caller_ref: str = ""
    phone: str | None = None  # written into the event only when the policy allows (the caller decides)
    service: Service | None = None
    day: date | None = None
    minutes: int | None = None
    name: str | None = None
    state: str = "collecting"
    offered: list[datetime] = field(default_factory=list)
    appointment: Appointment | None = None
    part_of_day: str | None = None
    _asked: str | None = None

    @property
    def services(self) -> list[Service]:
        return list(self.calendar.facts.services)

    def handle(self, text: str) -> BookingReply:
        """The agent's reply to one caller turn (blocking: may read and write the calendar)."""
        if self.state in FINISHED:
            return self._reply("Your appointment is already booked." if self.state == "booked"
                               else "I'm sorry, I can't book that right now.")  # fmt: skip
        if GIVE_UP.search(" ".join(_words(text))):
            self.state = "abandoned"
            return self._reply("No problem, I won't book anything. Is there anything else I can help with?")
        today = self.calendar.today()
        heard = self._read(text, today)
        first_turn = self._asked is None
        try:
            if self.state == "confirming":
                return self._confirming(heard)
            if heard.no and not (heard.service or heard.day or heard.minutes is not None or heard.name):
                self.offered, self.minutes, self._asked = [], None, "day"
                return self._reply("No problem. Which day and time would suit you better?")
            if not self._apply(heard):
                return self._ask(again=not first_turn)
            return self._next()
        except CalendarError as e:
            return self._failed(e)

    # -- steps (a dialogue that moves a booking overrides the calendar and read-back ones) -------

    def _read(self, text: str, today: date) -> Heard:
        heard = read_turn(text, self.services, today, self._asked)
        if heard.day is None:  # a public holiday or a special day by its name ("on Christmas Eve")
            heard.day = next((d for d, label in self.calendar.factbook.days_mentioned(text, today)
                              if label.removeprefix("on ").lower() not in (*WEEKDAYS, "today", "tomorrow")), None)
        return heard

    def _free_slots(self, day: date) -> list[datetime]:
        assert self.service is not None
        return self.calendar.free_slots(day, self.service)

    def _nearest(self, wanted: datetime) -> list[datetime]:
        assert self.service is not None
        return self.calendar.nearest_free(wanted, self.service, count=2)

    def _read_back(self, start: datetime) -> BookingReply:
        assert self.service is not None
        self.state = "confirming"
        self._asked = "confirm"
        return self._reply(f"So that's {with_article(self.service.name)} {_spoken_slot(start, self.calendar.today())}, "
                           f"for {self.name}. Shall I book it?")  # fmt: skip

    def _pick_offered(self, heard: Heard) -> datetime | None:
        """The offered slot the caller chose ("the first one", "8:30", "yes"), if any."""
        if not self.offered:
            return None
        if heard.choice is not None:
            return self.offered[heard.choice] if heard.choice < len(self.offered) else self.offered[-1]
        if heard.minutes is not None and heard.day is None:
            for s in self.offered:
                m = s.hour * 60 + s.minute
                if m == heard.minutes or (heard.ambiguous and m == heard.minutes + 720):
                    return s
        if heard.minutes is None and heard.day is None and heard.service is None:
            if heard.part_of_day is not None:  # "in the morning, please": only when one offered time is then
                lo, hi = PARTS_OF_DAY[heard.part_of_day]
                inside = [s for s in self.offered if lo <= s.hour * 60 + s.minute < hi]
                return inside[0] if len(inside) == 1 else None
            if heard.yes:
                return self.offered[0]
        return None

    def _apply(self, heard: Heard) -> bool:
        """Takes what the turn said into the booking; False when it said nothing usable."""
        if heard.service is not None:
            self.service = heard.service
        if heard.name is not None:
            self.name = heard.name
        slot = self._pick_offered(heard)
        if slot is not None:
            self.day, self.minutes, self.offered = slot.date(), slot.hour * 60 + slot.minute, []
            return True
        if heard.minutes is not None and heard.day is None and self.day is None and self.offered:
            self.day = self.offered[0].date()  # a time, said after times on that day were offered
        used = heard.service is not None or heard.name is not None
        if heard.day is not None:
            self.day, used = heard.day, True
        if heard.minutes is not None:
            self.minutes, used = self._resolve_ambiguous(heard), True
        elif heard.part_of_day is not None:
            self.part_of_day, used = heard.part_of_day, True
        if heard.name is not None:
            self.name, used = heard.name, True
        return used

    def _resolve_ambiguous(self, heard: Heard) -> int:
        """"at 3": 3 pm when the business is open then and not at 3 am (the usual case)."""
        assert heard.minutes is not None
        if not heard.ambiguous or self.day is None:
            return heard.minutes if not heard.ambiguous or heard.minutes >= 7 * 60 else heard.minutes + 720
        ranges = [(a.hour * 60 + a.minute, b.hour * 60 + b.minute) for a, b in self.calendar.opening(self.day)]
        am, pm = heard.minutes, heard.minutes + 720
        if any(a <= am < b for a, b in ranges):
            return am
        if any(a <= pm < b for a, b in ranges) or heard.minutes < 7 * 60:
            return pm  # "at 6" is 6 pm, even when we close at 6
        return am

    def _next(self) -> BookingReply:
        """Asks for the first missing thing, checks the slot, or reads the booking back."""
        today = self.calendar.today()
        if self.service is None and len(self.services) == 1:
            self.service = self.services[0]
        if self.service is None:
            return self._ask_for("service")
        if self.day is None:
            return self._ask_for("day")
        why = self.calendar.closed_reason(self.day)
        if why is not None:
            closed_day = self.day
            self.day, self.minutes = None, None
            wanted = datetime.combine(closed_day, time(hour=10), self.calendar.zone)
            return self._offer(f"Sorry, we are closed on {why}.", wanted)
        if self.minutes is None:
            part = self.part_of_day
            slots = self._free_slots(self.day)
            if part:
                lo, hi = PARTS_OF_DAY[part]
                slots = [s for s in slots if lo <= s.hour * 60 + s.minute < hi] or slots
            if not slots:
                wanted = datetime.combine(self.day, time(hour=10), self.calendar.zone)
                self.day = None
                return self._offer("Sorry, that day is fully booked.", wanted)
            self.offered = slots[:2]
            self._asked = "time"
            times = _or([spoken_time(s.hour * 60 + s.minute) for s in self.offered])
            when = _spoken_day(self.day, today)
            return self._reply(f"{when[0].upper()}{when[1:]} I have {times}. Which time would suit you?")
        wanted = datetime.combine(self.day, time(self.minutes // 60, self.minutes % 60), self.calendar.zone)
        free = self._free_slots(self.day)
        if wanted not in free:
            opening = self.calendar.opening(self.day)
            inside = any(a <= wanted and wanted + self.calendar.duration(self.service) <= b for a, b in opening)
            if not inside:
                hours = " and ".join(f"{spoken_time(a.hour * 60 + a.minute)} to {spoken_time(b.hour * 60 + b.minute)}"
                                     for a, b in opening)  # fmt: skip
                when = _spoken_day(self.day, today)
                lead = f"Sorry, {when} we are open from {hours}."
            elif wanted < self.calendar.now():
                lead = "Sorry, that time has passed."
            else:
                lead = f"Sorry, {spoken_time(self.minutes)} is not available."
            self.minutes = None
            return self._offer(lead, wanted)
        self.offered = []
        if self.name is None:
            return self._ask_for("name")
        return self._read_back(wanted)

    def _offer(self, lead: str, wanted: datetime) -> BookingReply:
        assert self.service is not None
        self.offered = self._nearest(wanted)
        self._asked = "time"
        if not self.offered:
            return self._reply(f"{lead} I have no free time soon. Would another day suit you?")
        today = self.calendar.today()
        return self._reply(f"{lead} The nearest free times are {_spoken_slots(self.offered, today)}."
                           " Would one of those work?")  # fmt: skip

    def _confirming(self, heard: Heard) -> BookingReply:
        changed = heard.day is not None or heard.minutes is not None or heard.service is not None \
            or heard.name is not None  # fmt: skip
        if heard.yes and not changed:
            return self._book()
        if heard.no or changed:
            self.state = "collecting"
            if changed:
                self._apply(heard)
                return self._next()
            self.minutes = None
            self._asked = "time"
            return self._reply("No problem. Which day and time would suit you better?")
        question = self._question("confirm")
        return self._reply(f"Sorry, {question[0].lower()}{question[1:]} Please say yes or no.")

    def _book(self) -> BookingReply:
        assert self.service is not None and self.day is not None and self.minutes is not None and self.name
        start = datetime.combine(self.day, time(self.minutes // 60, self.minutes % 60), self.calendar.zone)
        try:
            self.appointment = self.calendar.book(start, self.service, self.name, caller_ref=self.caller_ref,
                                                  phone=self.phone)  # fmt: skip
        except (SlotTaken, SlotClosed):
            self.state, self.minutes = "collecting", None
            return self._offer("Sorry, that time was just taken.", start)
        self.state = "booked"
        today = self.calendar.today()
        return self._reply(f"You're booked: {with_article(self.service.name)} {_spoken_slot(start, today)}. See you then!")

    def _failed(self, e: CalendarError) -> BookingReply:
        logger.warning(f"booking failed: {type(e).__name__}: {e}")
        self.state = "failed"
        return BookingReply("I'm sorry, I can't reach our calendar right now. I can take a message and we'll call "
                            "you back to book.", self.state, None, f"{type(e).__name__}: {e}")  # fmt: skip

    # -- questions -----------------------------------------------------------------------------

    QUESTIONS = {
        "service": "What would you like to book? We offer {services}.",
        "day": "Which day would suit you?",
        "time": "What time would suit you?",
        "name": "May I have your name, please?",
        "confirm": "Shall I book it?",
    }

    def _ask_for(self, what: str) -> BookingReply:
        self._asked = what
        return self._reply(self._question(what))

    def _question(self, what: str) -> str:
        return self.QUESTIONS[what].format(services=_or([s.name for s in self.services]))

    def question(self) -> str:
        """The question the dialogue is waiting on (after another topic came up in between)."""
        if self.state == "confirming":
            return self._question("confirm")
        return self._ask().text

    def _ask(self, again: bool = False) -> BookingReply:
        what = self._asked or "service"
        question = self._question(what)
        if what == "time" and self.offered:
            question = f"I can offer {_spoken_slots(self.offered, self.calendar.today())}. Which would you like?"
        return self._reply(("Sorry, I didn't catch that. " if again else "") + question)

    def _reply(self, text: str) -> BookingReply:
        return BookingReply(text, self.state, self.appointment)
