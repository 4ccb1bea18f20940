"""Cancelling or moving the caller's own booking across turns, deterministically (the
``cancel_appointment`` and ``reschedule_appointment`` tools).

:func:`change_intent` recognises the request ("I need to cancel my appointment", "can I move my
Thursday appointment to Friday at 10", "reschedule"). :class:`ChangeDialogue` then finds the
caller's bookings in the calendar by the keyed reference of their number
(:func:`~voicecore.agent.calendar.caller_reference`) and, when that finds none or several people's,
by the name the booking is under; what they said about it ("my Thursday appointment", "the
cleaning") picks one of several, or the agent lists them and asks which. It reads the booking back
("your cleaning on Thursday December 10 at 2 pm") and cancels only after a yes; a move takes the
new day and time as a booking does (:class:`~voicecore.agent.booking.BookingDialogue`: the same
day and time resolution, the nearest free slots offered when the day is closed or the time taken,
the booking's own slot not counted as busy), reads the change back and moves it after a yes.
A "no" or "keep it" leaves the booking as it is. Every day and time the agent states is the
booking's own, one the caller said, or a free slot from the calendar.

No model, no audio, no event loop: :meth:`ChangeDialogue.handle` is a blocking function of the
turn's text (it reads and writes the calendar), run with ``asyncio.to_thread`` by async callers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time

from loguru import logger

from voicecore.agent.booking import (
    GIVE_UP,
    NO,
    YES,
    YES_PHRASES,
    BookingDialogue,
    BookingReply,
    Heard,
    _or,
    _spoken_day,
    _spoken_slot,
    _words,
    find_day,
    find_time,
    read_turn,
    wants_booking,
)
from voicecore.agent.calendar import (
    Appointment,
    AppointmentBook,
    AppointmentNotFound,
    CalendarError,
    SlotClosed,
    SlotTaken,
)
from voicecore.agent.facts import spoken_time
from voicecore.config import WEEKDAYS, Service

__all__ = ["TOOL_NAMES", "ChangeDialogue", "ChangeReply", "change_intent", "split_request"]

#: The tool each kind of change is.
TOOL_NAMES = {"cancel": "cancel_appointment", "reschedule": "reschedule_appointment"}

_NOUN = r"(?:appointments?|bookings?|visits?|reservations?)"
CANCEL_INTENT = re.compile(
    rf"\b(?:cancel|cancell?ing|cancell?ed|call off)\b(?: \w+){{0,4}}? (?:{_NOUN}|it)\b"
    r"|\b(?:need|want|like|have|wanted|going|trying|calling|hoping) to (?:cancel|call off)\b"
    r"|^(?:cancel|cancellation)(?: please)?$"
)
MOVE_INTENT = re.compile(
    r"\b(?:reschedule|rescheduling|rebook|rebooking|postpone)\b"
    rf"|\b(?:move|change|shift|switch|push)\b(?: \w+){{0,4}}? (?:{_NOUN}|time|date|day)\b"
    r"|\b(?:move|shift|push|change|switch) (?:it|that) (?:to|until|till|back|forward)\b"
    r"|\bbring\b(?: \w+){0,3} forward\b"
)
# a question about cancelling ("what is your cancellation policy", "do you charge if I cancel")
ABOUT_CHANGES = re.compile(r"\b(?:policy|fee|fees|charge|penalty)\b|\bif (?:i|we|you)\b")
# a new booking after all ("book a new one", "I'd like to book a cleaning" once services are replaced)
NEW_BOOKING = re.compile(r"\b(?:book|make|schedule)\b(?: \w+){0,2}? (?:appointment|one)\b|\bnew (?:appointment|one)\b")
OWN_BOOKING = re.compile(rf"\b(?:my|our|existing|current|other) (?:\w+ ){{0,3}}?{_NOUN}\b")
DONT_CHANGE = re.compile(r"\b(?:dont|do not|not) (?:want to )?(?:cancel|move|change|reschedule)\b")
KEEP = re.compile(r"\b(?:keep (?:it|my appointment|the appointment|that)|leave it|as it is)\b")
MOVE_VERB = re.compile(r"\b(?:reschedule|rebook|postpone|move|change|shift|switch|push)\b", re.IGNORECASE)
NEW_TIME = (re.compile(r"\b(?:to|until|till)\b", re.IGNORECASE), re.compile(r"\bfor\b", re.IGNORECASE))
NOT_A_NO = {"cancel", "change", "instead", "actually", "move"}
FINISHED = ("cancelled", "moved", "kept", "not_found", "failed", "refused")


def _low(text: str, services: Sequence[Service] = ()) -> str:
    """The turn in lower-case words, each service name or alias replaced by ``appointment``
    ("cancel my cleaning" is "cancel my appointment")."""
    low = f" {' '.join(_words(text))} "
    for s in services:
        for n in sorted((s.name, *s.aliases), key=len, reverse=True):
            low = low.replace(f" {' '.join(_words(n))} ", " appointment ")
    return low.strip()


def change_intent(text: str, services: Sequence[Service] = (), *, own: bool = False) -> str | None:
    """``cancel`` or ``reschedule`` when the turn asks to cancel or move a booking, else None.
    ``own``: only when it names the caller's own booking ("my appointment", "my cleaning"): while
    a new booking is being taken, "cancel that" is about the new one."""
    low = _low(text, services)
    if DONT_CHANGE.search(low) or ABOUT_CHANGES.search(low) or (own and not OWN_BOOKING.search(low)):
        return None
    if MOVE_INTENT.search(low):
        return "reschedule"
    if CANCEL_INTENT.search(low) and "message" not in low.split():
        return "cancel"
    return None


def _says_when(text: str, today: date) -> bool:
    minutes, _, part = find_time(text)
    return find_day(text, today) is not None or minutes is not None or part is not None


def split_request(text: str, today: date) -> tuple[str, str]:
    """(what the turn says about the booking there is, what it says about the new time): "move my
    Thursday appointment to Friday at 10" is ("move my Thursday appointment", "Friday at 10").
    The second part is "" when the turn names no new day or time."""
    verb = MOVE_VERB.search(text)
    if verb is None:
        return text, ""
    for pattern in NEW_TIME:
        for m in pattern.finditer(text, verb.end()):
            if _says_when(text[m.end():], today):
                return text[: m.start()], text[m.end():]
    return text, ""


def _yes_no(text: str) -> tuple[bool, bool]:
    """(yes, no) to "shall I cancel it?": "yes cancel it" is a yes, "no, don't" a no."""
    said = _words(text)
    words = set(said) - NOT_A_NO
    joined = " ".join(said)
    no = bool(words & NO) or bool(DONT_CHANGE.search(joined))
    yes = not no and (bool(words & YES) or any(re.search(p, joined) for p in YES_PHRASES)
                      or bool(re.search(r"\b(do it|do that|please do)\b", joined)))  # fmt: skip
    return yes, no


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _key(name: str) -> str:
    return " ".join(_words(name))


def _when(start: datetime, today: date) -> str:
    """``Friday December 11 at 10 am`` (no leading "on"): where a booking moves to."""
    return f"{_spoken_day(start.date(), today, on=False)} at {spoken_time(start.hour * 60 + start.minute)}"


@dataclass
class ChangeReply:
    """What the agent says, and where the change stands (``finding``, ``confirming``, ``moving``, or
    finished: ``cancelled``, ``moved``, ``kept``, ``not_found``, ``failed``, ``refused``); ``tool``
    is ``cancel_appointment`` or ``reschedule_appointment``; ``appointment`` the booking cancelled
    or moved (at its new time); ``error`` when the calendar failed; ``offers_message``: the reply
    asks whether the caller wants to leave a message (a yes takes one)."""

    text: str
    state: str
    tool: str
    appointment: Appointment | None = None
    error: str | None = None
    offers_message: bool = False


@dataclass
class _NewTime(BookingDialogue):
    """The new day and time of a booking being moved: a booking dialogue whose service and name are
    the booking's, whose own slot is not busy time, and whose yes moves it."""

    moving: Appointment | None = None
    QUESTIONS = {**BookingDialogue.QUESTIONS, "confirm": "Shall I move it?"}

    @classmethod
    def of(cls, calendar: AppointmentBook, booking: Appointment) -> _NewTime:
        minutes = max(1, min(1440, round((booking.end - booking.start).total_seconds() / 60)))
        service = Service(name=booking.service or "appointment", duration_min=minutes)
        return cls(calendar, caller_ref=booking.caller_ref, service=service, name=booking.name, moving=booking,
                   _asked="day")  # fmt: skip

    def _read(self, text: str, today: date) -> Heard:
        heard = read_turn(text, [], today, self._asked)
        heard.name = None
        heard.yes, heard.no = _yes_no(text)
        return heard

    def _apply(self, heard: Heard) -> bool:
        assert self.moving is not None
        if heard.day is None and heard.minutes is not None and self.day is None and not self.offered:
            self.day = self.moving.start.date()  # "move it to 3 pm": the same day
        return super()._apply(heard)

    def _free_slots(self, day: date) -> list[datetime]:
        assert self.service is not None and self.moving is not None
        return self.calendar.free_slots(day, self.service, ignore_uid=self.moving.uid)

    def _nearest(self, wanted: datetime) -> list[datetime]:
        assert self.service is not None and self.moving is not None
        return self.calendar.nearest_free(wanted, self.service, count=2, ignore_uid=self.moving.uid)

    def _read_back(self, start: datetime) -> BookingReply:
        old = self.moving
        assert old is not None
        today = self.calendar.today()
        if start == old.start:
            self.day, self.minutes, self._asked = None, None, "day"
            return self._reply(f"Your {old.service} is already {_spoken_slot(start, today)}. Which other day and "
                               "time would suit you?")  # fmt: skip
        self.state, self._asked = "confirming", "confirm"
        return self._reply(f"So I'll move your {old.service} {_spoken_slot(old.start, today)} to "
                           f"{_when(start, today)}. Shall I do that?")  # fmt: skip

    def _book(self) -> BookingReply:
        assert self.moving is not None and self.day is not None and self.minutes is not None
        start = datetime.combine(self.day, time(self.minutes // 60, self.minutes % 60), self.calendar.zone)
        try:
            self.appointment = self.calendar.reschedule(self.moving.uid, start)
        except (SlotTaken, SlotClosed):
            self.state, self.minutes = "collecting", None
            return self._offer("Sorry, that time was just taken.", start)
        except AppointmentNotFound:
            self.state = "gone"
            return self._reply("It looks like that appointment is no longer in our calendar.")
        self.state = "booked"
        return self._reply(f"Done. Your {self.moving.service} is now {_spoken_slot(start, self.calendar.today())}."
                           " See you then!")  # fmt: skip


@dataclass
class ChangeDialogue:
    """One caller's cancellation or move of their own booking, turn by turn. ``caller_ref``: the
    keyed reference of the caller's number ("" when unknown: the booking is found by name);
    ``kinds``: the changes the pipeline allows; ``take_message``: a message can be offered."""

    calendar: AppointmentBook
    caller_ref: str = ""
    kinds: frozenset[str] = frozenset(TOOL_NAMES)
    take_message: bool = True
    kind: str = ""  # cancel | reschedule
    state: str = "finding"
    name: str | None = None
    target: Appointment | None = None
    candidates: list[Appointment] = field(default_factory=list)
    pending: str = ""  # the new day and time, said before the booking was found
    _asked: str | None = None  # kind | name | which
    _tries: int = 0
    _new: _NewTime | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def tool(self) -> str:
        return TOOL_NAMES.get(self.kind, TOOL_NAMES["cancel"])

    @property
    def services(self) -> list[Service]:
        return list(self.calendar.facts.services)

    def handle(self, text: str) -> ChangeReply:
        """The agent's reply to one caller turn (blocking: may read and write the calendar)."""
        if self.finished:
            return self._reply("Is there anything else I can help with?")
        low = _low(text, self.services)
        intent = change_intent(text, self.services)
        if intent is None and self._asked == "kind":
            intent = "cancel" if "cancel" in low.split() else "reschedule" if MOVE_VERB.search(low) else None
        try:
            if intent is not None and intent != self.kind:
                self.kind = intent
                if intent not in self.kinds:
                    return self._refuse()
                if self.target is not None:  # "actually, just cancel it": the booking is known
                    return self._found(self.target)
            if not self.kind:
                self._asked = "kind"
                return self._reply("Would you like to cancel your appointment, or move it to another time?")
            if self.state == "confirming":
                return self._confirm_cancel(text)
            if self.state == "moving":
                return self._moving(text, low)
            if intent is None and (GIVE_UP.search(low) or KEEP.search(low) or DONT_CHANGE.search(low)):
                return self._keep()
            if intent is None and self._asked != "which" and wants_booking(text) and NEW_BOOKING.search(low):
                self.state = "kept"  # a new booking after all: the booking dialogue takes this turn
                return self._reply("")
            return self._finding(text, intent is not None)
        except CalendarError as e:
            return self._failed(f"{type(e).__name__}: {e}")

    def question(self) -> str:
        """The question the dialogue is waiting on (after another topic came up in between)."""
        today = self.calendar.today()
        if self.state == "confirming" and self.target is not None:
            return f"Shall I cancel your {self.target.service} {_spoken_slot(self.target.start, today)}?"
        if self.state == "moving" and self._new is not None:
            return self._new.question()
        if self._asked == "which":
            return self._which_question()
        if self._asked == "name":
            return "What name is the appointment under?"
        return "Would you like to cancel your appointment, or move it to another time?"

    # -- finding the booking -------------------------------------------------------------------

    def _finding(self, text: str, with_intent: bool) -> ChangeReply:
        today = self.calendar.today()
        old = text
        if self.kind == "reschedule" and with_intent:
            old, new = split_request(text, today)
            self.pending = new or self.pending
        if self._asked == "name":
            m = re.search(r"\bunder (?:the name )?(?:of )?(.+)", old, re.IGNORECASE)
            old = m.group(1) if m else old
        heard = read_turn(old, self.services, today, self._asked)
        weekday = next((i for i, d in enumerate(WEEKDAYS) if {d, d + "s"} & set(_words(old))), None)
        if heard.name is not None:
            self.name = heard.name
        if self._asked == "which":
            return self._which(heard, weekday)
        found, missed = self._narrow(self._lookup(), heard, weekday)
        if not found:
            if self.name is None and self._tries < 2:
                again = self._asked == "name"
                self._asked, self._tries = "name", self._tries + 1
                if again:
                    return self._reply("Sorry, I didn't catch that. What name is the appointment under?")
                lead = "I couldn't find an appointment for the number you're calling from. " if self.caller_ref else ""
                return self._reply(f"{lead}What name is the appointment under?")
            return self._not_found()
        lead = f"I don't see an appointment {missed}, but " if missed else ""
        if len(found) > 1 and self.name is None and len({_key(a.name) for a in found}) > 1 and self._asked != "name":
            self._asked, self.candidates = "name", found
            return self._reply("I see more than one appointment for this number. What name is the appointment under?")
        if len(found) > 1:
            self.candidates, self._asked = found, "which"
            n = len(found)
            listed = [f"a {a.service} {_spoken_slot(a.start, today)}" for a in found[:3]]
            head = f"I see {n} appointments" + (", the next ones are " if n > 3 else ": ")
            return self._reply(f"{head}{_and(listed)}. Which one would you like to "
                               f"{'cancel' if self.kind == 'cancel' else 'move'}?")  # fmt: skip
        return self._found(found[0], lead)

    def _lookup(self) -> list[Appointment]:
        """The caller's upcoming bookings: by their number's reference; with a name, those of them
        under it, else the bookings under that name that carry no number's reference (made in a
        text chat or from a withheld number). A booking made from a number is never found by its
        name alone: knowing a name must not tell a stranger when that person comes in."""
        by_number = self.calendar.find(caller_ref=self.caller_ref) if self.caller_ref else []
        if self.name is None:
            return by_number
        named = [a for a in by_number if _key(a.name) == _key(self.name)]
        return named or [a for a in self.calendar.find(name=self.name) if not a.caller_ref]

    def _narrow(self, found: list[Appointment], heard: Heard, weekday: int | None) -> tuple[list[Appointment], str]:
        """The bookings that match what the caller said about theirs (a service, a day, a time): a
        hint none of them matches is left out, and the first such one is named ("on Thursday")."""
        missed = ""
        tests = []
        if heard.service is not None:
            service = heard.service
            tests.append((lambda a: _key(a.service) == _key(service.name), f"for a {service.name}"))
        if heard.day is not None or weekday is not None:
            day = heard.day
            said = f"on {WEEKDAYS[weekday].capitalize()}" if weekday is not None else \
                f"on {day:%A} {day:%B} {day.day}" if day is not None else ""  # fmt: skip
            tests.append((lambda a: a.start.date() == day or a.start.weekday() == weekday, said))
        if heard.minutes is not None:
            minutes, ambiguous = heard.minutes, heard.ambiguous
            tests.append((lambda a: a.start.hour * 60 + a.start.minute in ({minutes, minutes + 720} if ambiguous
                                                                           else {minutes}), ""))  # fmt: skip
        for test, said in tests:
            kept = [a for a in found if test(a)]
            if kept:
                found = kept
            elif found and not missed:
                missed = said
        return found, missed

    def _which_question(self) -> str:
        today = self.calendar.today()
        return "Which one: " + _or([f"the {a.service} {_spoken_slot(a.start, today)}" for a in self.candidates[:3]]) + "?"

    def _which(self, heard: Heard, weekday: int | None) -> ChangeReply:
        listed = self.candidates[:3]
        if heard.choice is not None:
            return self._found(listed[heard.choice] if heard.choice < len(listed) else listed[-1])
        found = self.candidates
        if heard.name is not None:
            found = [a for a in found if _key(a.name) == _key(heard.name)] or found
        found, _ = self._narrow(found, heard, weekday)
        if len(found) == 1:
            return self._found(found[0])
        return self._reply("Sorry, " + self._which_question()[0].lower() + self._which_question()[1:])

    def _found(self, booking: Appointment, lead: str = "") -> ChangeReply:
        today = self.calendar.today()
        self.target, self._asked = booking, None
        said = f"{lead}I have your {booking.service} {_spoken_slot(booking.start, today)}."
        if self.kind == "cancel":
            self.state = "confirming"
            return self._reply(f"{said} Shall I cancel it?")
        self.state = "moving"
        self._new = _NewTime.of(self.calendar, booking)
        if not self.pending:
            return self._reply(f"{said} Which day and time would you like instead?")
        pending, self.pending = self.pending, ""
        reply = self._new.handle(pending)
        if reply.state == "failed":
            return self._failed(reply.error or "the calendar failed")
        return self._reply(reply.text if self._new.state == "confirming" and not lead else f"{said} {reply.text}")

    def _not_found(self) -> ChangeReply:
        self.state = "not_found"
        who = f" under the name {self.name}" if self.name else " for this number" if self.caller_ref else ""
        offer = ("Would you like to book a new appointment, or leave a message?" if self.take_message
                 else "Would you like to book a new appointment?")  # fmt: skip
        return self._reply(f"I'm sorry, I couldn't find an appointment{who}. {offer}")

    # -- the change ----------------------------------------------------------------------------

    def _confirm_cancel(self, text: str) -> ChangeReply:
        assert self.target is not None
        low = _low(text)
        yes, no = _yes_no(text)
        if no:
            return self._keep()
        if yes:
            today = self.calendar.today()
            try:
                cancelled = self.calendar.cancel(self.target.uid)
            except AppointmentNotFound:
                self.state = "not_found"
                return self._reply("It looks like that appointment is no longer in our calendar. Is there anything "
                                   "else I can help with?")  # fmt: skip
            self.state = "cancelled"
            return self._reply(f"Done. Your {cancelled.service} {_spoken_slot(cancelled.start, today)} is cancelled. "
                               "Is there anything else I can help with?", cancelled)  # fmt: skip
        if GIVE_UP.search(low) or KEEP.search(low):
            return self._keep()
        return self._reply(f"Sorry, {self.question()[0].lower()}{self.question()[1:]} Please say yes or no.")

    def _moving(self, text: str, low: str) -> ChangeReply:
        new = self._new
        assert new is not None
        yes, no = _yes_no(text)
        new_time = _says_when(text, self.calendar.today())
        if not new_time and not yes and (no and new.state == "confirming" or GIVE_UP.search(low) or KEEP.search(low)
                                         or DONT_CHANGE.search(low)):  # fmt: skip
            return self._keep()
        reply = new.handle(text)
        if reply.state == "failed":
            return self._failed(reply.error or "the calendar failed")
        if reply.state == "gone":
            self.state = "not_found"
            return self._reply(f"{reply.text} Is there anything else I can help with?")
        if reply.state == "booked":
            self.state = "moved"
            return self._reply(reply.text, reply.appointment)
        return self._reply(reply.text)

    def _keep(self) -> ChangeReply:
        self.state = "kept"
        if self.target is None:
            return self._reply("No problem, I won't change anything. Is there anything else I can help with?")
        when = _spoken_slot(self.target.start, self.calendar.today())
        return self._reply(f"No problem, I'll keep your {self.target.service} {when} as it is. Is there anything "
                           "else I can help with?")  # fmt: skip

    def _refuse(self) -> ChangeReply:
        self.state = "refused"
        verb = "cancel" if self.kind == "cancel" else "move"
        offer = " I can take a message for the team." if self.take_message else ""
        return self._reply(f"I'm sorry, I can't {verb} appointments over the phone.{offer}")

    def _failed(self, error: str) -> ChangeReply:
        logger.warning(f"{self.tool} failed: {error}")
        self.state = "failed"
        verb = "cancel" if self.kind == "cancel" else "move"
        offer = (" I can take a message and we'll call you back. Would you like to leave one?" if self.take_message
                 else " Please try again later.")  # fmt: skip
        return ChangeReply(f"I'm sorry, I can't {verb} appointments right now.{offer}", self.state, self.tool,
                           error=error, offers_message=self.take_message)  # fmt: skip

    def _reply(self, text: str, appointment: Appointment | None = None) -> ChangeReply:
        return ChangeReply(text, self.state, self.tool, appointment)
