"""Booking across turns (issue 13, book_appointment): scripted caller lines, written the way
Whisper tiny.en transcribes them, go through :class:`BookingDialogue` into a real .ics calendar.
A full booking takes several turns and lands in the calendar only after a yes; a closed day
(Sunday, a public holiday) and a taken slot are refused with the nearest free times; "no" at the
read-back changes the time; a line with nothing usable asks the same question again."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from test_calendar import FACTS, NOW, ZONE, at

from voicecore.agent.booking import (
    BookingDialogue,
    find_day,
    find_name,
    find_service,
    find_time,
    wants_booking,
)
from voicecore.agent.calendar import (
    AppointmentBook,
    CalDAVCalendar,
    ICSCalendar,
    caller_reference,
)
from voicecore.config import Facts

FRIDAY = NOW.date()  # Friday 4 December 2026, 3 pm in New York
MONDAY, TUESDAY = date(2026, 12, 7), date(2026, 12, 8)
CLEANING, CHECKUP = FACTS.services


@pytest.fixture
def calendar(tmp_path: Path) -> AppointmentBook:
    return AppointmentBook(ICSCalendar(tmp_path / "appointments.ics"), FACTS, slot_minutes=30,
                           min_notice_minutes=60, clock=NOW.timestamp)  # fmt: skip


def talk(dialogue: BookingDialogue, *lines: str) -> list[str]:
    return [dialogue.handle(line).text for line in lines]


def booked(calendar: AppointmentBook, day: date) -> list[tuple[datetime, str, str]]:
    """What is in the calendar on ``day``, read back from the file by a fresh reader."""
    fresh = AppointmentBook(ICSCalendar(calendar.backend.path), FACTS, clock=NOW.timestamp)  # type: ignore[attr-defined]
    start = at(day, 0)
    return [(b.start, b.appointment.service, b.appointment.name)
            for b in fresh.busy(start, start + timedelta(days=1)) if b.appointment]  # fmt: skip


@pytest.mark.parametrize("text, minutes", [
    ("at 3", 15 * 60), ("3 pm", 15 * 60), ("half past ten", 10 * 60 + 30), ("10:30 in the morning", 10 * 60 + 30),
    ("at 10 30 in the morning", 10 * 60 + 30), ("9:30am", 9 * 60 + 30), ("4 p.m.", 16 * 60), ("noon", 12 * 60),
    ("quarter to eleven", 10 * 60 + 45), ("at three thirty in the afternoon", 15 * 60 + 30),
])  # fmt: skip
def test_times_as_callers_say_them(text: str, minutes: int) -> None:
    said, ambiguous, _ = find_time(text)
    assert said is not None
    # an hour without am/pm is taken as the afternoon one when it is before 7 (the dialogue then
    # checks it against the day's opening hours)
    assert (said + 720 if ambiguous and said < 7 * 60 else said) == minutes


@pytest.mark.parametrize("text, day", [
    ("tomorrow", date(2026, 12, 5)), ("on friday", date(2026, 12, 11)), ("this friday", FRIDAY),
    ("next tuesday", TUESDAY), ("december 12th", date(2026, 12, 12)), ("the 12th", date(2026, 12, 12)),
    ("the 3rd", date(2027, 1, 3)), ("12th of december", date(2026, 12, 12)), ("january 5", date(2027, 1, 5)),
    ("the day after tomorrow", date(2026, 12, 6)),
])  # fmt: skip
def test_days_resolved_against_the_calls_date(text: str, day: date) -> None:
    assert find_day(text, FRIDAY) == day


def test_services_names_and_nothing_invented() -> None:
    services = list(FACTS.services)
    for text, name in [("i'd like to book a cleaning", "cleaning"), ("a teeth cleanin please", "cleaning"),
                       ("can i get a check up", "check-up"), ("a checkup", "check-up")]:  # fmt: skip
        assert getattr(find_service(text, services), "name", None) == name, text
    assert find_service("i want a haircut", services) is None
    assert find_name("hi this is maria lopez and i'd like a cleaning", asked=False) == "Maria Lopez"
    assert find_name("my name is anna smith", asked=False) == "Anna Smith"
    assert find_name("Anna Smith.", asked=True) == "Anna Smith"
    assert find_name("Anna Smith.", asked=False) is None
    assert find_name("i'm looking to book", asked=False) is None
    assert find_name("tomorrow at 3", asked=True) is None


@pytest.mark.parametrize("line", [
    "I need my brakes done on Monday morning", "can you fit me in for an oil change tomorrow afternoon?",
    "can I bring my car in on Sunday for new tyres?", "could I get the car in for a service on Tuesday?",
    "can you squeeze me in tomorrow for a filling?", "do you have anything on Friday morning for a cleaning?",
    "is 5 pm on Saturday possible for a cleaning?", "Hi, it's Chris, I'd like an oil change on Friday at 3 pm",
    "I would like to book a cleaning appointment.", "my brakes are squeaking can you have a look at them tomorrow",
])  # fmt: skip
def test_asking_for_work_on_a_day_is_a_booking(line: str) -> None:
    assert wants_booking(line)


@pytest.mark.parametrize("line", [
    "are you open on Saturday?", "I would like to know your hours on Saturday", "do you have parking?",
    "is Dr. Patel working today?", "I want to talk to the dentist", "I'd like to cancel my appointment",
    "I'd like to leave a message for Dr Smith on Friday", "could you have a look at the address for me",
])  # fmt: skip
def test_other_lines_are_no_booking(line: str) -> None:
    assert not wants_booking(line)


def test_parsing_gaps_the_dialogue_benchmark_found() -> None:
    assert find_day("Thursday the 10th at 2", FRIDAY) == date(2026, 12, 10)  # the date wins over the weekday
    assert find_day("the first one", FRIDAY) is None  # a choice among offered slots, not the 1st of a month
    assert find_name("Hi, this is Ben Kenobi. Can you tell her I'm late?", asked=False) == "Ben Kenobi"
    assert find_name("uh, Monica Geller", asked=True) == "Monica Geller"
    assert find_name("er, it's Bob Stone", asked=True) == "Bob Stone"


def test_a_holiday_or_special_day_by_its_name(calendar: AppointmentBook) -> None:
    d = BookingDialogue(calendar)
    r = d.handle("a check-up on Christmas Day at 10")
    assert r.text.startswith("Sorry, we are closed on Christmas Day.") and "Saturday December 26" in r.text


def test_a_full_booking_in_several_turns(calendar: AppointmentBook) -> None:
    ref = caller_reference("+1 415 555 0199", b"k")
    d = BookingDialogue(calendar, caller_ref=ref)
    r = d.handle("hi i'd like to book an appointment")
    assert r.state == "collecting" and "What would you like to book?" in r.text and "cleaning" in r.text
    assert "Which day" in d.handle("a teeth cleaning please").text
    r = d.handle("next tuesday")
    assert r.text.startswith("On Tuesday December 8 I have 8 am or 8:30 am.") and "time" in r.text
    assert d.handle("10:30 in the morning").text == "May I have your name, please?"
    r = d.handle("Anna Smith.")
    assert r.state == "confirming"
    assert r.text == "So that's a cleaning on Tuesday December 8 at 10:30 am, for Anna Smith. Shall I book it?"
    assert booked(calendar, TUESDAY) == []  # nothing in the calendar before the yes
    r = d.handle("yes please")
    assert r.state == "booked" and r.appointment is not None
    assert r.text == "You're booked: a cleaning on Tuesday December 8 at 10:30 am. See you then!"
    assert booked(calendar, TUESDAY) == [(at(TUESDAY, 10, 30), "cleaning", "Anna Smith")]
    assert [a.uid for a in calendar.find(caller_ref=ref)] == [r.appointment.uid]


def test_everything_in_one_line(calendar: AppointmentBook) -> None:
    d = BookingDialogue(calendar)
    r = d.handle("hello this is bob jones i'd like a checkup on monday at 3")
    assert r.text == "So that's a check-up on Monday December 7 at 3 pm, for Bob Jones. Shall I book it?"
    assert d.handle("yeah that's right").state == "booked"
    assert booked(calendar, MONDAY) == [(at(MONDAY, 15), "check-up", "Bob Jones")]


def test_a_part_of_the_day_picks_an_offered_time_only_when_one_fits(calendar: AppointmentBook) -> None:
    # CI heard "At ten in the morning, please." as "As and in the morning, please.": "please" is a
    # yes, but with 8 am and 8:30 am offered the morning chooses neither, so the agent asks again
    # instead of booking the first.
    d = BookingDialogue(calendar)
    talk(d, "a cleaning please")
    assert d.handle("next tuesday").text.startswith("On Tuesday December 8 I have 8 am or 8:30 am.")
    r = d.handle("As and in the morning, please.")
    assert d.minutes is None and r.text.startswith("On Tuesday December 8 I have 8 am or 8:30 am.")
    assert d.handle("at 10 am please").text == "May I have your name, please?"
    d = BookingDialogue(calendar)
    talk(d, "a cleaning please", "next tuesday")
    d.offered = [at(TUESDAY, 11, 30), at(TUESDAY, 14)]  # one in the morning, one in the afternoon
    assert d.handle("the afternoon please").text == "May I have your name, please?" and d.minutes == 14 * 60


@pytest.mark.parametrize("line, why", [("a checkup on sunday at 10", "on Sunday"),
                                       ("a checkup on december 25th at 10", "on Christmas Day")])
def test_a_closed_day_is_refused_with_alternatives(calendar: AppointmentBook, line: str, why: str) -> None:
    d = BookingDialogue(calendar)
    r = d.handle(line)
    assert r.text.startswith(f"Sorry, we are closed {why}.") and r.state == "collecting"
    assert "The nearest free times are" in r.text and "Would one of those work?" in r.text
    next_open = MONDAY if "Sunday" in why else date(2026, 12, 26)
    first = "8 am" if next_open.weekday() < 5 else "9 am"
    assert f"{next_open:%A} {next_open:%B} {next_open.day} at {first}" in r.text
    r = d.handle("the first one")
    assert r.text == "May I have your name, please?"
    r = d.handle("it's carla")
    assert r.state == "confirming" and f"{next_open:%A}" in r.text and f"at {first}" in r.text
    assert d.handle("yes").state == "booked"
    assert booked(calendar, next_open)[0][0] == at(next_open, 8 if next_open.weekday() < 5 else 9)


def test_a_time_outside_the_hours_gets_the_nearest_open_times(calendar: AppointmentBook) -> None:
    d = BookingDialogue(calendar, name="Dan")
    r = d.handle("a cleaning on saturday at 2 pm")
    assert r.text.startswith("Sorry, tomorrow, Saturday December 5, we are open from 9 am to 1 pm.")  # that day's hours
    assert "The nearest free times are tomorrow, Saturday December 5, at 11:30 am or noon." in r.text
    assert booked(calendar, date(2026, 12, 5)) == []


def test_a_taken_slot_offers_the_nearest_free_ones(calendar: AppointmentBook) -> None:
    calendar.book(at(MONDAY, 10), CHECKUP, "Someone Else")
    d = BookingDialogue(calendar, name="Eve")
    r = d.handle("can i book a checkup on monday at 10 am")
    assert r.text == ("Sorry, 10 am is not available. The nearest free times are Monday December 7 at 9:30 am or "
                      "10:30 am. Would one of those work?")  # fmt: skip
    r = d.handle("10:30 then")
    assert r.state == "confirming" and "Monday December 7 at 10:30 am, for Eve" in r.text
    assert d.handle("yes").state == "booked"
    assert [s for s, _, _ in booked(calendar, MONDAY)] == [at(MONDAY, 10), at(MONDAY, 10, 30)]


def test_a_slot_taken_between_read_back_and_yes(calendar: AppointmentBook) -> None:
    d = BookingDialogue(calendar, name="Fay")
    assert d.handle("a checkup monday at 11 am").state == "confirming"
    calendar.book(at(MONDAY, 11), CHECKUP, "Faster Caller")  # another call takes it meanwhile
    r = d.handle("yes")
    assert r.state == "collecting" and r.text.startswith("Sorry, that time was just taken.")
    assert "10:30 am" in r.text and "11:30 am" in r.text
    assert d.handle("the second one").state == "confirming"
    assert d.handle("yes").state == "booked"
    assert [n for _, _, n in booked(calendar, MONDAY)] == ["Faster Caller", "Fay"]


def test_no_at_the_read_back_changes_the_time(calendar: AppointmentBook) -> None:
    d = BookingDialogue(calendar)
    talk(d, "i need a cleaning", "tomorrow", "at 10", "my name is gus")
    assert d.state == "confirming"
    r = d.handle("no")
    assert r.state == "collecting" and r.text == "No problem. Which day and time would suit you better?"
    r = d.handle("11:30 in the morning")
    assert r.text == ("So that's a cleaning tomorrow, Saturday December 5, at 11:30 am, for Gus. "
                      "Shall I book it?")  # fmt: skip
    r = d.handle("no actually make it monday at 4 pm")
    assert r.state == "confirming" and "Monday December 7 at 4 pm, for Gus" in r.text
    assert d.handle("yes").state == "booked"
    assert booked(calendar, date(2026, 12, 5)) == []
    assert booked(calendar, MONDAY) == [(at(MONDAY, 16), "cleaning", "Gus")]


def test_unparseable_input_asks_again(calendar: AppointmentBook) -> None:
    d = BookingDialogue(calendar)
    assert d.handle("i'd like a cleaning").text == "Which day would suit you?"
    r = d.handle("um well let me think")
    assert r.text == "Sorry, I didn't catch that. Which day would suit you?" and d.day is None
    d.handle("monday")
    r = d.handle("hmm")
    assert r.text == "Sorry, I didn't catch that. I can offer Monday December 7 at 8 am or 8:30 am. Which would you like?"
    d.handle("at 9")
    assert d.handle("uh").text == "Sorry, I didn't catch that. May I have your name, please?"
    d.handle("harry")
    assert d.state == "confirming"
    assert d.handle("what").text == "Sorry, shall I book it? Please say yes or no."
    assert booked(calendar, MONDAY) == []


def test_the_caller_can_give_up(calendar: AppointmentBook) -> None:
    d = BookingDialogue(calendar)
    talk(d, "a cleaning on monday at 10", "my name is jo")
    assert d.state == "confirming"
    r = d.handle("actually never mind")
    assert r.state == "abandoned" and "won't book" in r.text
    assert booked(calendar, MONDAY) == []


def test_a_calendar_that_fails_never_leaves_the_caller_without_an_answer(tmp_path: Path) -> None:
    down = CalDAVCalendar("http://127.0.0.1:9/", "u", "p", "Appointments", timeout=5)
    d = BookingDialogue(AppointmentBook(down, FACTS, clock=NOW.timestamp), name="Ivy")
    r = d.handle("a checkup on monday at 9 am")
    assert r.state == "failed" and "can't reach our calendar" in r.text and "message" in r.text
    assert r.error and "CalendarUnavailable" in r.error and "127.0.0.1:9" in r.error


def test_one_service_needs_no_question(tmp_path: Path) -> None:
    facts = Facts.model_validate({"timezone": "Europe/Paris", "hours": {"monday": "09:00-12:00"},
                                  "services": [{"name": "consultation", "duration_min": 60}]})  # fmt: skip
    monday_paris = datetime(2026, 12, 7, 9, tzinfo=__import__("zoneinfo").ZoneInfo("Europe/Paris"))
    cal = AppointmentBook(ICSCalendar(tmp_path / "c.ics"), facts, clock=(monday_paris - timedelta(days=3)).timestamp)
    d = BookingDialogue(cal)
    r = d.handle("can i come monday morning")
    assert r.text == "On Monday December 7 I have 9 am or 9:30 am. Which time would suit you?"
    assert "Sorry" not in BookingDialogue(cal).handle("i want to make an appointment").text
    assert ZONE != cal.zone


async def run_call_turns(lines: list[str], booking, engine) -> tuple[list[str], object]:  # noqa: ANN001
    """Caller turns through the LLM processor (as in a call); the agent's reply to each."""
    from processor_turns import processor_replies

    from voicecore.agent.facts import FactBook
    from voicecore.config import LLMParams
    from voicecore.services.conversation import Conversation, PassThroughContext
    from voicecore.services.llm import LlamaLLMProcessor

    proc = LlamaLLMProcessor(engine, Conversation(system_prompt="s", context=PassThroughContext()), LLMParams(),
                             fallback_reply="Sorry?", facts=FactBook(FACTS, clock=NOW.timestamp), booking=booking)  # fmt: skip
    return await processor_replies(proc, lines), proc


async def test_the_dialogue_takes_the_booking_turns_of_a_call(tmp_path: Path) -> None:
    from test_facts import ScriptedEngine

    engine = ScriptedEngine(["The model", " speaking."])
    path = tmp_path / "calendar.ics"

    def new_dialogue() -> BookingDialogue:
        return BookingDialogue(AppointmentBook(ICSCalendar(path), FACTS, min_notice_minutes=60, clock=NOW.timestamp))

    replies, proc = await run_call_turns([
        "how much is a cleaning?", "i'd like to book a cleaning", "how much is a cleaning?", "monday at 10 am",
        "my name is anna", "yes", "thanks, bye",
    ], new_dialogue, engine)  # fmt: skip
    assert replies[:6] == [
        "A cleaning costs 95 dollars.",
        "Which day would suit you?",
        "A cleaning costs 95 dollars. Which day would suit you?",
        "May I have your name, please?",
        "So that's a cleaning on Monday December 7 at 10 am, for Anna. Shall I book it?",
        "You're booked: a cleaning on Monday December 7 at 10 am. See you then!",
    ]
    assert engine.calls == 1 and replies[6] == "The model speaking."  # after the booking, the model talks again
    assert [(b["service"], b["name"], b["start"]) for b in proc.bookings] == [  # type: ignore[attr-defined]
        ("cleaning", "Anna", "2026-12-07T10:00:00-05:00")]
    fresh = AppointmentBook(ICSCalendar(path), FACTS, clock=NOW.timestamp)
    assert [a.start for a in fresh.find(name="anna")] == [at(MONDAY, 10)]


async def test_a_calendar_that_cannot_be_opened_is_recorded_and_said(tmp_path: Path) -> None:
    from test_facts import ScriptedEngine

    from voicecore.agent.calendar import CalendarAuthError

    def no_calendar() -> BookingDialogue:
        raise CalendarAuthError("tools.book_appointment.calendar.caldav.password_env: CALDAV_PW is not set")

    replies, proc = await run_call_turns(["can i book an appointment", "yes please"], no_calendar, ScriptedEngine(["x"]))
    assert replies == ["I'm sorry, I can't book appointments right now. I can take a message and we'll call you "
                       "back to book. Would you like to leave one?",
                       # the yes takes the offer, though the pipeline declares no take_message
                       "Of course. What would you like me to tell the team?"]  # fmt: skip
    assert [(c.tool, c.outcome, c.ok) for c in proc.tool_calls] == [("book_appointment", "failed", False)]  # type: ignore[attr-defined]
    assert proc.tool_failures == [{"tool": "book_appointment",  # type: ignore[attr-defined]
                                   "error": "CalendarAuthError: tools.book_appointment.calendar.caldav.password_env: "
                                            "CALDAV_PW is not set"}]  # fmt: skip


@pytest.mark.models
async def test_a_booking_in_a_call_lands_in_the_calendar_and_the_stored_call_without_the_name(
    tmp_path: Path, pool, receptionist, monkeypatch
) -> None:  # fmt: skip
    """The shipped receptionist, through the session a phone call takes (in text): the booking is
    in its .ics calendar and in the stored call's flags, the caller's name only in the calendar."""
    from voicecore.simulate import TextCall
    from voicecore.storage import Store

    monkeypatch.setenv("VOICECORE_DATA_DIR", str(tmp_path / "data"))
    store = Store(tmp_path / "data")
    store.tenants.create("acme", actor="test")
    call = await TextCall.open(receptionist, pool, store=store, tenant="acme")
    await call.next_reply()  # the greeting
    replies = [(await call.say(line))[0] for line in
               ("i'd like to book a cleaning", "next monday at 10 am", "my name is anna", "yes")]  # fmt: skip
    assert replies[-1] is not None and replies[-1].startswith("You're booked"), replies
    record = await call.close()
    (booked,) = record.flags["appointments"]
    assert booked["service"].lower() == "cleaning" and "T10:00:00" in booked["start"] and "name" not in booked
    assert "Anna" in (tmp_path / "data" / "calendars" / "receptionist.ics").read_text()
    stored = store.calls.get("acme", record.call_id, actor="test")
    assert stored.flags["appointments"] == record.flags["appointments"]
    assert "Anna" not in str(stored.flags)
    store.close()


@pytest.mark.parametrize("line", ["Can you repeat that, please?", "Could you say the time again please",
                                  "What was the date again, please?"])  # fmt: skip
def test_a_question_at_the_confirmation_is_no_yes(line: str) -> None:
    from voicecore.agent.booking import read_turn

    heard = read_turn(line, [], date(2026, 12, 7), "confirm")
    assert not heard.yes  # "please" in a question asks for something: nothing is booked on it
    for yes in ("Yes, please.", "Could you book it, please?", "Sounds good."):
        assert read_turn(yes, [], date(2026, 12, 7), "confirm").yes
