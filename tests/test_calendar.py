"""Appointments in a real calendar (issue 13, book_appointment): a Radicale CalDAV server started
here on 127.0.0.1, and an .ics file — the same operations on both: free slots within the opening
hours, book (the slot is gone), find the caller's own booking, reschedule, cancel; a closed day
and a taken slot are refused; failures (wrong password, server down, no such calendar) name
what failed. The caller's number never appears in an event unless it is passed in."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import icalendar
import pytest
from caldav_server import PASSWORD, free_port, radicale_server

from voicecore.agent.calendar import (
    AppointmentBook,
    AppointmentNotFound,
    CalDAVCalendar,
    CalendarAuthError,
    CalendarNotFound,
    CalendarUnavailable,
    ICSCalendar,
    SlotClosed,
    SlotTaken,
    caller_reference,
    open_appointment_book,
)
from voicecore.config import ConfigError, Facts, load_pipeline

ZONE = ZoneInfo("America/New_York")
NOW = datetime(2026, 12, 4, 15, 0, tzinfo=ZONE)  # Friday 4 December 2026, 3 pm
MONDAY = date(2026, 12, 7)
FACTS = Facts.model_validate({
    "business": "Bright Smile Dental", "timezone": "America/New_York",
    "hours": {d: "08:00-18:00" for d in ("monday", "tuesday", "wednesday", "thursday", "friday")}
    | {"saturday": "09:00-13:00", "sunday": "closed"},
    "holidays": {"country": "US"},
    "closures": [{"date": "2026-12-24", "hours": "08:00-12:00", "note": "Christmas Eve"}],
    "services": [{"name": "cleaning", "price": 95, "duration_min": 45}, {"name": "check-up", "duration_min": 30}],
})  # fmt: skip
CLEANING, CHECKUP = FACTS.services
KEY = b"test-key-for-caller-references"


def at(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=ZONE)


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Radicale server on 127.0.0.1 (htpasswd auth, storage in a temporary directory); its URL."""
    with radicale_server(tmp_path_factory.mktemp("radicale"), calendar=None) as url:
        import caldav

        principal = caldav.DAVClient(url=url, username="front-desk", password=PASSWORD).principal()
        principal.make_calendar(name="Appointments", cal_id="appointments")
        yield url


_counter = iter(range(1000))


@pytest.fixture(params=["caldav", "ics"])
def backend(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "caldav":
        url = request.getfixturevalue("radicale")
        import caldav

        # a fresh calendar per test, so tests do not see each other's bookings
        name = f"Appointments {next(_counter)}"
        caldav.DAVClient(url=url, username="front-desk", password=PASSWORD).principal().make_calendar(name=name)
        return CalDAVCalendar(url, "front-desk", PASSWORD, name)
    return ICSCalendar(tmp_path / "calendars" / "appointments.ics")


def appointments(backend) -> AppointmentBook:
    return AppointmentBook(backend, FACTS, slot_minutes=30, min_notice_minutes=60, clock=NOW.timestamp)


def test_book_find_reschedule_cancel(backend) -> None:
    book = appointments(backend)
    free = book.free_slots(MONDAY, CLEANING)
    assert free[0] == at(MONDAY, 8) and free[-1] == at(MONDAY, 17)  # 45 min must fit before 18:00
    assert at(MONDAY, 10) in free

    ref = caller_reference("+1 415 555 0199", KEY)
    booked = book.book(at(MONDAY, 10), CLEANING, "Anna Smith", caller_ref=ref)
    assert (booked.start, booked.end) == (at(MONDAY, 10), at(MONDAY, 10, 45))
    free = book.free_slots(MONDAY, CLEANING)
    # 9:30-10:15, 10:00-10:45 and 10:30-11:15 overlap the booking; 9:00 and 11:00 do not
    assert at(MONDAY, 9, 30) not in free and at(MONDAY, 10) not in free and at(MONDAY, 10, 30) not in free
    assert at(MONDAY, 9) in free and at(MONDAY, 11) in free

    # another instance (another call, another worker) sees the booking
    other = appointments(backend)
    assert [a.uid for a in other.find(caller_ref=ref)] == [booked.uid]
    assert [a.uid for a in other.find(name="anna smith")] == [booked.uid]
    assert other.find(caller_ref=caller_reference("+1 415 555 0100", KEY)) == []
    assert other.find(name="Anna Smith", caller_ref=caller_reference("+1 415 555 0100", KEY)) == []
    found = other.find(caller_ref=ref)[0]
    assert (found.service, found.name, found.start) == ("cleaning", "Anna Smith", at(MONDAY, 10))

    moved = other.reschedule(booked.uid, at(MONDAY, 14))
    assert (moved.start, moved.end) == (at(MONDAY, 14), at(MONDAY, 14, 45))
    free = book.free_slots(MONDAY, CLEANING)
    assert at(MONDAY, 10) in free and at(MONDAY, 14) not in free
    assert [a.start for a in book.find(caller_ref=ref)] == [at(MONDAY, 14)]

    cancelled = book.cancel(booked.uid)
    assert cancelled.start == at(MONDAY, 14)
    assert book.find(caller_ref=ref) == []
    assert at(MONDAY, 14) in book.free_slots(MONDAY, CLEANING)
    with pytest.raises(AppointmentNotFound):
        book.cancel(booked.uid)


def test_closed_days_and_taken_slots_are_refused(backend) -> None:
    book = appointments(backend)
    sunday, christmas, christmas_eve = date(2026, 12, 6), date(2026, 12, 25), date(2026, 12, 24)
    assert book.free_slots(sunday, CHECKUP) == [] and book.closed_reason(sunday) == "Sunday"
    assert book.free_slots(christmas, CHECKUP) == [] and "Christmas" in (book.closed_reason(christmas) or "")
    assert book.free_slots(christmas_eve, CHECKUP)[-1] == at(christmas_eve, 11, 30)  # open 8-12 only
    assert book.free_slots(date(2026, 12, 4), CHECKUP)[0] == at(date(2026, 12, 4), 16)  # an hour from now
    for when in (at(sunday, 10), at(christmas, 10), at(MONDAY, 17, 30), at(MONDAY, 7, 30), NOW - timedelta(hours=2)):
        with pytest.raises(SlotClosed):
            book.book(when, CLEANING, "Bob")
    book.book(at(MONDAY, 9), CHECKUP, "Bob")
    with pytest.raises(SlotTaken):
        book.book(at(MONDAY, 8, 30), CLEANING, "Carla")  # 8:30-9:15 overlaps 9:00-9:30
    # the nearest free slots to a taken one: the same day, closest first (returned in time order)
    assert book.nearest_free(at(MONDAY, 9), CHECKUP, count=2) == [at(MONDAY, 8, 30), at(MONDAY, 9, 30)]
    # from a closed day: the next open day's first slots
    assert book.nearest_free(at(sunday, 10), CHECKUP, count=2) == [at(MONDAY, 8), at(MONDAY, 8, 30)]


def test_a_slot_taken_meanwhile_is_refused(backend) -> None:
    first, second = appointments(backend), appointments(backend)
    assert at(MONDAY, 11) in second.free_slots(MONDAY, CHECKUP)
    first.book(at(MONDAY, 11), CHECKUP, "Dan")
    with pytest.raises(SlotTaken, match="11:00 is taken"):
        second.book(at(MONDAY, 11), CHECKUP, "Eve")
    moved = second.book(at(MONDAY, 12), CHECKUP, "Eve")
    with pytest.raises(SlotTaken):
        first.reschedule(moved.uid, at(MONDAY, 11))


def test_events_not_booked_by_the_agent_are_busy_time(backend) -> None:
    """A staff block with a local TZID, an all-day event and a recurring lunch break take their time;
    none is anyone's booking."""
    block = icalendar.Event()
    block.add("uid", "staff-meeting@clinic")
    block.add("summary", "Staff meeting")
    block.add("dtstart", at(MONDAY, 13))
    block.add("dtend", at(MONDAY, 14))
    backend.add(block)
    day_off = icalendar.Event()
    day_off.add("uid", "training@clinic")
    day_off.add("summary", "Training day")
    day_off.add("dtstart", date(2026, 12, 8))
    day_off.add("dtend", date(2026, 12, 9))
    backend.add(day_off)
    lunch = icalendar.Event()  # every weekday from a week ago: the recurrence is expanded
    lunch.add("uid", "lunch@clinic")
    lunch.add("summary", "Lunch")
    lunch.add("dtstart", at(MONDAY - timedelta(days=7), 12))
    lunch.add("dtend", at(MONDAY - timedelta(days=7), 12, 30))
    lunch.add("rrule", {"freq": "weekly", "byday": ["MO", "TU", "WE", "TH", "FR"]})
    backend.add(lunch)
    book = appointments(backend)
    free = book.free_slots(MONDAY, CHECKUP)
    assert at(MONDAY, 12, 30) in free and at(MONDAY, 13) not in free and at(MONDAY, 13, 30) not in free
    assert at(MONDAY, 14) in free
    assert at(MONDAY, 12) not in free and at(MONDAY, 11, 30) in free and at(MONDAY, 12, 30) in free
    assert at(date(2026, 12, 9), 12) not in book.free_slots(date(2026, 12, 9), CHECKUP)
    assert book.free_slots(date(2026, 12, 8), CHECKUP) == []
    assert book.find(name="Staff meeting") == []


def _stored_text(backend, tmp_path: Path) -> str:
    if isinstance(backend, ICSCalendar):
        return backend.path.read_text()
    start = at(MONDAY, 0)
    return "".join(e.to_ical().decode() for e in backend.events(start, start + timedelta(days=1)))


def test_the_callers_number_is_kept_only_when_passed(backend, tmp_path: Path) -> None:
    book = appointments(backend)
    number = "+1 415 555 0199"
    ref = caller_reference(number, KEY)
    book.book(at(MONDAY, 9), CHECKUP, "Fay", caller_ref=ref)
    text = _stored_text(backend, tmp_path)
    assert "Check-up: Fay" in text and ref in text
    assert "5550199" not in text.replace(" ", "") and "555 0199" not in text
    with_number = book.book(at(MONDAY, 10), CHECKUP, "Gus", caller_ref=ref, phone=number)
    events = {str(e["uid"]): e for e in backend.events(at(MONDAY, 0), at(MONDAY, 23))}
    event = events[with_number.uid]
    assert number not in str(event["summary"]) and number in str(event["description"])


def test_concurrent_bookings_of_one_slot_in_an_ics_file(tmp_path: Path) -> None:
    """Eight calls book the same slot at once: the file lock lets exactly one through."""
    path = tmp_path / "a.ics"
    results: list[str] = []

    def call(i: int) -> None:
        try:
            appointments(ICSCalendar(path)).book(at(MONDAY, 15), CHECKUP, f"Caller {i}")
            results.append("booked")
        except SlotTaken:
            results.append("taken")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == ["booked"] + ["taken"] * 7
    assert len(appointments(ICSCalendar(path)).busy(at(MONDAY, 0), at(MONDAY, 23))) == 1


def test_caldav_failures_name_what_failed(radicale: str) -> None:
    with pytest.raises(CalendarAuthError, match="refused user 'front-desk'") as e:
        appointments(CalDAVCalendar(radicale, "front-desk", "wrong", "Appointments")).free_slots(MONDAY, CHECKUP)
    assert "wrong" not in str(e.value)
    with pytest.raises(CalendarNotFound, match="'Holidays'"):
        appointments(CalDAVCalendar(radicale, "front-desk", PASSWORD, "Holidays")).free_slots(MONDAY, CHECKUP)
    down = f"http://127.0.0.1:{free_port()}/"
    with pytest.raises(CalendarUnavailable, match="server unreachable"):
        appointments(CalDAVCalendar(down, "front-desk", PASSWORD, "Appointments")).book(at(MONDAY, 9), CHECKUP, "Hal")


def test_pipeline_tools_section(tmp_path: Path) -> None:
    pipeline = load_pipeline(Path(__file__).resolve().parent.parent / "pipelines" / "receptionist.yaml")
    tool = pipeline.tools.book_appointment
    assert tool is not None and tool.calendar.ics
    book = open_appointment_book(tool, pipeline.facts, tmp_path, clock=NOW.timestamp)
    assert isinstance(book.backend, ICSCalendar) and book.backend.path.is_relative_to(tmp_path)

    def write(tools: str, facts: str = "facts: {hours: {monday: '08:00-12:00'}, services: [{name: x}]}") -> Path:
        p = tmp_path / "p.yaml"
        p.write_text(f"name: p\nsystem_prompt: hi\n{facts}\ntools:\n{tools}\n")
        return p

    with pytest.raises(ConfigError, match=r"tools\.book_appointment\.calendar.*exactly one"):
        load_pipeline(write("  book_appointment: {calendar: {}}"))
    with pytest.raises(ConfigError, match=r"tools\.book_appointment\.calendar\.caldav\.url"):
        load_pipeline(write("  book_appointment: {calendar: {caldav: {url: 'dav.example.com', calendar: A}}}"))
    with pytest.raises(ConfigError, match=r"tools\.book_appointment\.slot_minutes"):
        load_pipeline(write("  book_appointment: {calendar: {ics: a.ics}, slot_minutes: 0}"))
    with pytest.raises(ConfigError, match=r"tools\.book_appointment\.colour"):
        load_pipeline(write("  book_appointment: {calendar: {ics: a.ics}, colour: red}"))
    with pytest.raises(ConfigError, match=r"needs facts\.hours"):
        load_pipeline(write("  book_appointment: {calendar: {ics: a.ics}}", facts=""))
    dav = load_pipeline(write("  book_appointment: {calendar: {caldav: {url: 'https://dav.example.com/', "
                              "username: u, password_env: VC_TEST_DAV_PW, calendar: A}}}"))  # fmt: skip
    with pytest.raises(CalendarAuthError, match="VC_TEST_DAV_PW is not set"):
        open_appointment_book(dav.tools.book_appointment, dav.facts, tmp_path, environ={})
    opened = open_appointment_book(dav.tools.book_appointment, dav.facts, tmp_path, environ={"VC_TEST_DAV_PW": "pw"})
    assert isinstance(opened.backend, CalDAVCalendar) and "pw" not in opened.backend.describe()
