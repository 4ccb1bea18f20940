"""The calendar the agent books appointments into: a CalDAV server, or an ``.ics`` file.

:class:`AppointmentBook` is the one interface the booking dialogue uses: the free slots on a day
for a service (the opening hours and closures of the pipeline's ``facts``, minus the events already
in the calendar, on a grid of ``slot_minutes``, in the business's time zone), book, find the
caller's own booking, cancel, reschedule. Below it a backend does the calendar I/O:

* :class:`CalDAVCalendar` talks to a CalDAV server with the ``caldav`` package;
* :class:`ICSCalendar` keeps the events in one ``.ics`` file (``icalendar``), for a business
  without a calendar server (and the demo).

Every event in the calendar counts as busy time (staff blocks, other bookings), unless it is
marked transparent or cancelled. An appointment the agent books carries the caller's name and the
service in its summary, never the caller's number; the number is identified by a keyed reference
(:func:`caller_reference`) and only written out in full when the caller of :meth:`book` passes it
(the policy decides). All calendar I/O blocks: async callers run it with ``asyncio.to_thread``.
Failures raise a :class:`CalendarError` subclass whose message names what failed.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import icalendar
from loguru import logger

from voicecore.agent.clock import agent_now
from voicecore.agent.facts import FactBook
from voicecore.config import BookAppointmentTool, Facts, Service
from voicecore.policy.phone import try_normalize_phone

PRODID = "-//voicecore//appointments//EN"
# Properties of an event the agent booked (other events in the calendar are only busy time).
X_SERVICE, X_NAME, X_CALLER = "X-VOICECORE-SERVICE", "X-VOICECORE-NAME", "X-VOICECORE-CALLER"


class CalendarError(RuntimeError):
    """A calendar operation failed; the message says which and why."""


class CalendarUnavailable(CalendarError):
    """The calendar could not be reached (server down, network, unreadable file)."""


class CalendarAuthError(CalendarError):
    """The calendar server refused the credentials."""


class CalendarNotFound(CalendarError):
    """The named calendar does not exist on the server."""


class SlotClosed(CalendarError):
    """The requested time is outside the opening hours (or in the past)."""


class SlotTaken(CalendarError):
    """The requested time overlaps an event already in the calendar."""


class AppointmentNotFound(CalendarError):
    """No booking with that reference."""


def caller_reference(number: str, key: bytes) -> str:
    """A keyed reference for a caller's number (HMAC-SHA256 of its digits, 16 hex characters): the
    same number gives the same reference, the reference does not give the number back."""
    digits = re.sub(r"\D", "", number)
    return hmac.new(key, digits.encode(), hashlib.sha256).hexdigest()[:16]


#: What the tenant's hash key is bound to before it keys caller references (so a reference is
#: never the same as another keyed hash of the number).
REFERENCE_KEY_LABEL = b"voicecore calendar caller reference"


@dataclass(frozen=True)
class CallerOnFile:
    """The caller as the calendar tools know them: ``reference`` (see :func:`caller_reference`; ""
    when the caller gave no phone number) finds their own bookings; ``phone`` is written into the
    description of an event they book only where the pipeline and the tenant's policy allow it."""

    reference: str = ""
    phone: str | None = None


def caller_on_file(number: str | None, tenant_key: bytes, *, region: str = "US",
                   keep_number: bool = False) -> CallerOnFile:  # fmt: skip
    """The caller of a call, from the number the provider gave, keyed under ``tenant_key`` (the
    tenant's hash key). A caller id that is not a phone number (``anonymous``, a SIP client) gets
    no reference: such callers cannot be told apart, so none of them finds another's booking."""
    e164 = try_normalize_phone(number, region) if number else None
    if e164 is None:
        return CallerOnFile()
    key = hmac.new(tenant_key, REFERENCE_KEY_LABEL, hashlib.sha256).digest()
    return CallerOnFile(caller_reference(e164, key), e164 if keep_number else None)


def _name_key(name: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", name.lower()))


@dataclass(frozen=True)
class Appointment:
    """A booking the agent made, times in the business's time zone."""

    uid: str
    start: datetime
    end: datetime
    service: str
    name: str
    caller_ref: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"uid": self.uid, "start": self.start.isoformat(), "end": self.end.isoformat(),
                "service": self.service, "name": self.name}  # fmt: skip


@dataclass(frozen=True)
class Busy:
    """Time taken in the calendar; ``appointment`` when the agent booked it."""

    start: datetime
    end: datetime
    uid: str
    appointment: Appointment | None = None


class CalendarBackend(Protocol):
    """Where the events are kept. Every method blocks."""

    def events(self, start: datetime, end: datetime) -> list[icalendar.Event]:
        """The events overlapping [start, end), recurrences expanded."""
        ...

    def add(self, event: icalendar.Event) -> None: ...

    def update(self, uid: str, start: datetime, end: datetime) -> None:
        """Move the event ``uid`` (raises :class:`AppointmentNotFound`)."""
        ...

    def remove(self, uid: str) -> None:
        """Delete the event ``uid`` (raises :class:`AppointmentNotFound`)."""
        ...

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held while a free slot is checked and taken (a lock where the backend has one)."""
        ...

    def describe(self) -> str:
        """Where the calendar is, for messages (no credentials)."""
        ...


def _calendar_of(event: icalendar.Event) -> bytes:
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add_component(event)
    return cal.to_ical()


# --- the .ics file --------------------------------------------------------------------------------


class ICSCalendar:
    """Events in one ``.ics`` file, created on the first booking. A lock file next to it serialises
    writers (several calls, several worker processes on one machine); writes replace the file
    atomically."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._held = threading.local()

    def describe(self) -> str:
        return f"calendar file {self.path}"

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        if getattr(self._held, "depth", 0):  # already held by this thread (book → add)
            self._held.depth += 1
            try:
                yield
            finally:
                self._held.depth -= 1
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_name(self.path.name + ".lock"), "a")
        except OSError as e:
            raise CalendarUnavailable(f"{self.describe()}: cannot lock it: {e}") from e
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._held.depth = 1
            yield
        finally:
            self._held.depth = 0
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()

    def _read(self) -> icalendar.Calendar:
        if not self.path.exists():
            cal = icalendar.Calendar()
            cal.add("prodid", PRODID)
            cal.add("version", "2.0")
            return cal
        try:
            return icalendar.Calendar.from_ical(self.path.read_bytes())
        except OSError as e:
            raise CalendarUnavailable(f"{self.describe()}: cannot read it: {e}") from e
        except ValueError as e:
            raise CalendarError(f"{self.describe()}: not a valid iCalendar file: {e}") from e

    def _write(self, cal: icalendar.Calendar) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(cal.to_ical())
            os.replace(tmp, self.path)
        except OSError as e:
            raise CalendarUnavailable(f"{self.describe()}: cannot write it: {e}") from e

    def events(self, start: datetime, end: datetime) -> list[icalendar.Event]:
        import recurring_ical_events

        return [c for c in recurring_ical_events.of(self._read()).between(start, end) if c.name == "VEVENT"]

    def add(self, event: icalendar.Event) -> None:
        with self.exclusive():
            cal = self._read()
            cal.add_component(event)
            self._write(cal)

    def _find(self, cal: icalendar.Calendar, uid: str) -> icalendar.Event:
        for c in cal.walk("VEVENT"):
            if str(c.get("uid")) == uid:
                return c
        raise AppointmentNotFound(f"{self.describe()}: no event {uid!r}")

    def update(self, uid: str, start: datetime, end: datetime) -> None:
        with self.exclusive():
            cal = self._read()
            _move(self._find(cal, uid), start, end)
            self._write(cal)

    def remove(self, uid: str) -> None:
        with self.exclusive():
            cal = self._read()
            event = self._find(cal, uid)
            cal.subcomponents.remove(event)
            self._write(cal)


def _move(event: icalendar.Event, start: datetime, end: datetime) -> None:
    for prop in ("dtstart", "dtend", "duration", "dtstamp"):
        if prop in event:
            del event[prop]
    event.add("dtstart", start.astimezone(timezone.utc))
    event.add("dtend", end.astimezone(timezone.utc))
    event.add("dtstamp", datetime.now(timezone.utc))
    event["sequence"] = int(event.get("sequence", 0)) + 1


# --- a CalDAV server ------------------------------------------------------------------------------


class CalDAVCalendar:
    """One calendar (by display name) on a CalDAV server, found through the user's principal."""

    def __init__(self, url: str, username: str, password: str, calendar: str, *, timeout: float = 15.0):
        self.url, self.username, self.calendar_name = url, username, calendar
        self._password = password
        self._timeout = timeout
        self._calendar: Any = None

    def describe(self) -> str:
        return f"CalDAV calendar {self.calendar_name!r} at {self.url}"

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turns the client's exceptions into ones that name the server and what was being done."""
        from caldav.lib import error as dav_error

        try:
            yield
        except CalendarError:
            raise
        except dav_error.AuthorizationError as e:
            raise CalendarAuthError(f"{self.describe()}: the server refused user {self.username!r} "
                                    f"while {doing} (check the username and password)") from e  # fmt: skip
        except dav_error.NotFoundError as e:
            raise CalendarNotFound(f"{self.describe()}: not found while {doing}: {e.reason or e.url}") from e
        except dav_error.DAVError as e:
            raise CalendarError(f"{self.describe()}: the server failed while {doing}: {e}") from e
        except OSError as e:  # niquests' connection errors and timeouts are OSErrors
            raise CalendarUnavailable(f"{self.describe()}: server unreachable while {doing}: "
                                      f"{type(e).__name__}: {e}") from e  # fmt: skip

    def _cal(self) -> Any:
        if self._calendar is None:
            import caldav

            with self._errors("opening the calendar"):
                client = caldav.DAVClient(url=self.url, username=self.username or None,
                                          password=self._password or None, timeout=self._timeout)  # fmt: skip
                principal = client.principal()
                self._calendar = principal.calendar(name=self.calendar_name)
            logger.debug(f"opened {self.describe()}")
        return self._calendar

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        yield  # the server has no lock; the slot is checked right before it is taken

    def events(self, start: datetime, end: datetime) -> list[icalendar.Event]:
        cal = self._cal()
        with self._errors("listing events"):
            found = cal.search(start=start, end=end, event=True, expand=True)
            return [obj.icalendar_component for obj in found]

    def add(self, event: icalendar.Event) -> None:
        cal = self._cal()
        with self._errors("adding an event"):
            cal.add_event(_calendar_of(event).decode())

    def _object(self, uid: str, doing: str) -> Any:
        cal = self._cal()
        try:
            with self._errors(doing):
                return cal.event_by_uid(uid)
        except CalendarNotFound:
            raise AppointmentNotFound(f"{self.describe()}: no event {uid!r}") from None

    def update(self, uid: str, start: datetime, end: datetime) -> None:
        obj = self._object(uid, "finding an event to move")
        with self._errors("moving an event"):
            _move(obj.icalendar_component, start, end)
            obj.save()

    def remove(self, uid: str) -> None:
        obj = self._object(uid, "finding an event to delete")
        with self._errors("deleting an event"):
            obj.delete()


# --- appointments on top of a backend -------------------------------------------------------------


def _as_datetime(value: date | datetime, zone: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=zone)  # floating: local time
    return datetime.combine(value, time(0), zone)


def _busy(event: icalendar.Event, zone: Any) -> Busy | None:
    if str(event.get("transp", "")).upper() == "TRANSPARENT" or str(event.get("status", "")).upper() == "CANCELLED":
        return None
    try:
        start_value = event.decoded("dtstart")
    except KeyError:
        return None
    start = _as_datetime(start_value, zone)
    if "dtend" in event:
        end = _as_datetime(event.decoded("dtend"), zone)
    elif "duration" in event:
        end = start + event.decoded("duration")
    else:
        end = start + (timedelta(days=1) if not isinstance(start_value, datetime) else timedelta(0))
    start, end = start.astimezone(zone), end.astimezone(zone)
    uid = str(event.get("uid", ""))
    appointment = None
    if X_SERVICE in event:
        appointment = Appointment(uid=uid, start=start, end=end, service=str(event.get(X_SERVICE)),
                                  name=str(event.get(X_NAME, "")), caller_ref=str(event.get(X_CALLER, "")))  # fmt: skip
    return Busy(start, end, uid, appointment)


class AppointmentBook:
    """Appointments in a calendar, within the opening hours the pipeline's ``facts`` state."""

    def __init__(self, backend: CalendarBackend, facts: Facts, *, slot_minutes: int = 30,
                 default_duration_min: int = 30, min_notice_minutes: int = 0, days_ahead: int = 90,
                 clock: Callable[[], float] = agent_now):  # fmt: skip
        if facts.hours is None:
            raise ValueError("booking needs facts.hours (the opening hours slots are taken from)")
        self.backend = backend
        self.facts = facts
        self.factbook = FactBook(facts, clock=clock)
        self.zone = self.factbook.zone
        self.slot_minutes = slot_minutes
        self.default_duration_min = default_duration_min
        self.min_notice = timedelta(minutes=min_notice_minutes)
        self.days_ahead = days_ahead
        self.clock = clock

    # -- time --------------------------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), self.zone)

    def today(self) -> date:
        return self.now().date()

    def duration(self, service: Service) -> timedelta:
        return timedelta(minutes=service.duration_min or self.default_duration_min)

    def service_named(self, name: str) -> Service:
        key = _name_key(name)
        for s in self.facts.services:
            if key in {_name_key(n) for n in (s.name, *s.aliases)}:
                return s
        raise CalendarError(f"no service {name!r} in the pipeline's facts")

    def opening(self, day: date) -> list[tuple[datetime, datetime]]:
        """The opening ranges on ``day`` (closures and public holidays applied)."""
        ranges, _ = self.factbook.hours_on(day)
        midnight = datetime.combine(day, time(0))
        return [((midnight + timedelta(minutes=a)).replace(tzinfo=self.zone),
                 (midnight + timedelta(minutes=b)).replace(tzinfo=self.zone)) for a, b in ranges]  # fmt: skip

    def closed_reason(self, day: date) -> str | None:
        """Why ``day`` is closed (``Sunday``, ``Christmas Day``), None when it is open."""
        ranges, why = self.factbook.hours_on(day)
        if ranges:
            return None
        return why or day.strftime("%A")

    # -- reading the calendar ----------------------------------------------------------------

    def busy(self, start: datetime, end: datetime) -> list[Busy]:
        out = [b for e in self.backend.events(start, end) if (b := _busy(e, self.zone)) is not None]
        return sorted((b for b in out if b.start < end and b.end > start), key=lambda b: b.start)

    def _free_on(self, day: date, length: timedelta, busy: list[Busy], ignore_uid: str = "") -> list[datetime]:
        earliest = self.now() + self.min_notice
        step = timedelta(minutes=self.slot_minutes)
        slots = []
        for open_at, close_at in self.opening(day):
            t = open_at
            while t + length <= close_at:
                # wall-clock arithmetic in the zone, compared in absolute time
                if t >= earliest and not any(b.start < t + length and b.end > t for b in busy
                                             if not (ignore_uid and b.uid == ignore_uid)):  # fmt: skip
                    slots.append(t)
                t = (t.replace(tzinfo=None) + step).replace(tzinfo=self.zone)
        return slots

    def free_slots(self, day: date, service: Service, ignore_uid: str = "") -> list[datetime]:
        """The start times on ``day`` where ``service`` fits between the opening hours and the events
        (the event ``ignore_uid`` not counted: the booking being moved)."""
        opening = self.opening(day)
        if not opening:
            return []
        busy = self.busy(opening[0][0], opening[-1][1])
        return self._free_on(day, self.duration(service), busy, ignore_uid)

    def nearest_free(self, wanted: datetime, service: Service, count: int = 2, ignore_uid: str = "") -> list[datetime]:
        """The free slots nearest ``wanted``: on its day closest first, then the first ones of the
        following open days (at most ``days_ahead``)."""
        wanted = wanted.astimezone(self.zone)
        length = self.duration(service)
        out: list[datetime] = []
        day = wanted.date()
        last = self.today() + timedelta(days=self.days_ahead)
        while len(out) < count and day <= last:
            opening = self.opening(day)
            if opening:
                slots = self._free_on(day, length, self.busy(opening[0][0], opening[-1][1]), ignore_uid)
                if day == wanted.date():
                    slots.sort(key=lambda s: (abs((s - wanted).total_seconds()), s))
                out += slots[: count - len(out)]
            day += timedelta(days=1)
        return sorted(out)

    def find(self, *, name: str | None = None, caller_ref: str | None = None) -> list[Appointment]:
        """The caller's own upcoming bookings: every given criterion must match (the keyed reference
        of their number, their name, case and punctuation ignored)."""
        if not name and not caller_ref:
            raise ValueError("find needs a name or a caller reference")
        now = self.now()
        found = []
        for b in self.busy(now, now + timedelta(days=self.days_ahead + 1)):
            a = b.appointment
            if a is None or a.end <= now:
                continue
            if caller_ref and a.caller_ref != caller_ref:
                continue
            if name and _name_key(a.name) != _name_key(name):
                continue
            found.append(a)
        return found

    # -- changing it -------------------------------------------------------------------------

    def _check_slot(self, start: datetime, length: timedelta, ignore_uid: str = "") -> None:
        start = start.astimezone(self.zone)
        end = start + length
        if start < self.now() + self.min_notice:
            raise SlotClosed(f"{start:%Y-%m-%d %H:%M} is in the past or too soon to book")
        if start.date() > self.today() + timedelta(days=self.days_ahead):
            raise SlotClosed(f"{start:%Y-%m-%d} is more than {self.days_ahead} days ahead")
        if not any(a <= start and end <= b for a, b in self.opening(start.date())):
            why = self.closed_reason(start.date())
            raise SlotClosed(f"{start:%Y-%m-%d %H:%M}-{end:%H:%M} is outside the opening hours"
                             + (f" (closed: {why})" if why else ""))  # fmt: skip
        clash = [b for b in self.busy(start, end) if not (ignore_uid and b.uid == ignore_uid)]
        if clash:
            raise SlotTaken(f"{self.backend.describe()}: {start:%Y-%m-%d %H:%M} is taken")

    def book(self, start: datetime, service: Service, name: str, *, caller_ref: str = "",
             phone: str | None = None) -> Appointment:
        """Book ``service`` at ``start`` for ``name``. ``caller_ref`` (see :func:`caller_reference`)
        lets the caller find it again by their number; ``phone`` is written into the event's
        description only when given (the policy decides), never into its summary."""
        length = self.duration(service)
        start = start.astimezone(self.zone)
        uid = f"{uuid.uuid4().hex}@voicecore"
        event = icalendar.Event()
        event.add("uid", uid)
        event.add("summary", f"{service.name[:1].upper()}{service.name[1:]}: {name}")
        event.add("dtstart", start.astimezone(timezone.utc))
        event.add("dtend", (start + length).astimezone(timezone.utc))
        event.add("dtstamp", datetime.now(timezone.utc))
        description = "Booked by phone with the voice agent."
        if phone:
            description += f"\nPhone: {phone}"
        event.add("description", description)
        event.add(X_SERVICE, service.name)
        event.add(X_NAME, name)
        if caller_ref:
            event.add(X_CALLER, caller_ref)
        with self.backend.exclusive():
            self._check_slot(start, length)
            self.backend.add(event)
        logger.info(f"booked an appointment in {self.backend.describe()} ({uid})")
        return Appointment(uid, start, start + length, service.name, name, caller_ref)

    def _appointment(self, uid: str) -> Appointment:
        now = self.now()
        for b in self.busy(now - timedelta(days=1), now + timedelta(days=self.days_ahead + 1)):
            if b.uid == uid and b.appointment is not None:
                return b.appointment
        raise AppointmentNotFound(f"{self.backend.describe()}: no upcoming appointment {uid!r}")

    def cancel(self, uid: str) -> Appointment:
        with self.backend.exclusive():
            appointment = self._appointment(uid)
            self.backend.remove(uid)
        logger.info(f"cancelled appointment {uid} in {self.backend.describe()}")
        return appointment

    def reschedule(self, uid: str, start: datetime) -> Appointment:
        """Move a booking to ``start`` (same service and length); the old slot is freed."""
        old = self._appointment(uid)
        start = start.astimezone(self.zone)
        length = old.end - old.start
        with self.backend.exclusive():
            self._check_slot(start, length, ignore_uid=uid)
            self.backend.update(uid, start, start + length)
        logger.info(f"rescheduled appointment {uid} in {self.backend.describe()}")
        return Appointment(uid, start, start + length, old.service, old.name, old.caller_ref)


def open_appointment_book(tool: BookAppointmentTool, facts: Facts, data_dir: str | Path, *,
                          environ: dict[str, str] | None = None,
                          clock: Callable[[], float] = agent_now) -> AppointmentBook:  # fmt: skip
    """The :class:`AppointmentBook` a pipeline's ``tools.book_appointment`` names (no I/O yet: the
    server is first contacted by the first operation). A relative ``ics`` path is under ``data_dir``."""
    env = os.environ if environ is None else environ
    settings = tool.calendar
    backend: CalendarBackend
    if settings.caldav is not None:
        dav = settings.caldav
        password = ""
        if dav.password_env:
            if dav.password_env not in env:
                raise CalendarAuthError(f"tools.book_appointment.calendar.caldav.password_env: the environment "
                                        f"variable {dav.password_env} is not set")  # fmt: skip
            password = env[dav.password_env]
        backend = CalDAVCalendar(dav.url, dav.username, password, dav.calendar)
    else:
        assert settings.ics is not None
        path = Path(settings.ics)
        backend = ICSCalendar(path if path.is_absolute() else Path(data_dir) / path)
    return AppointmentBook(backend, facts, slot_minutes=tool.slot_minutes,
                           default_duration_min=tool.default_duration_min,
                           min_notice_minutes=tool.min_notice_minutes, days_ahead=tool.days_ahead, clock=clock)  # fmt: skip
