"""Cancelling and moving the caller's own booking (issue 13, ``cancel_appointment`` and
``reschedule_appointment``): scripted caller lines, as Whisper tiny.en writes them, go through
:class:`ChangeDialogue` into a real .ics calendar and a real Radicale CalDAV server. The booking is
found by the caller's number (its keyed reference) or the name it is under, read back from the
calendar, and cancelled or moved only after a yes; a move to a closed or taken time gets the
nearest free slots (the booking's own slot counts as free); "no" keeps it; nothing found offers a
new booking or a message; a calendar that fails is said and recorded. Through the processor the
results land in ``cancellations``/``reschedules``; through the real session and model, a caller
who booked in one call cancels it from the same number in a second call."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from test_calendar import FACTS, KEY, NOW, PASSWORD, at, radicale  # noqa: F401  (radicale: the server fixture)

from voicecore.agent.appointment_changes import (
    ChangeDialogue,
    change_intent,
    split_request,
)
from voicecore.agent.calendar import (
    AppointmentBook,
    CalDAVCalendar,
    ICSCalendar,
    caller_on_file,
    caller_reference,
)
from voicecore.config import ConfigError, load_pipeline

CLEANING, CHECKUP = FACTS.services
FRIDAY = NOW.date()  # Friday 4 December 2026, 3 pm in New York
MONDAY, THURSDAY, NEXT_FRIDAY = date(2026, 12, 7), date(2026, 12, 10), date(2026, 12, 11)
ANNA = caller_reference("+1 415 555 0199", KEY)
BOB = caller_reference("+1 415 555 0123", KEY)


def appointments(backend) -> AppointmentBook:  # noqa: ANN001
    return AppointmentBook(backend, FACTS, slot_minutes=30, min_notice_minutes=60, clock=NOW.timestamp)


@pytest.fixture
def calendar(tmp_path: Path) -> AppointmentBook:
    return appointments(ICSCalendar(tmp_path / "appointments.ics"))


def talk(dialogue: ChangeDialogue, *lines: str) -> list[str]:
    return [dialogue.handle(line).text for line in lines]


def in_calendar(calendar: AppointmentBook) -> list[tuple[datetime, str, str]]:
    """Every booking in the calendar, read back by a fresh reader (another call would see this)."""
    fresh = appointments(calendar.backend)
    return [(a.start, a.service, a.name) for a in fresh.find(name="anna smith") + fresh.find(name="bob jones")]


# --- recognising the request ---------------------------------------------------------------------


@pytest.mark.parametrize("line, kind", [
    ("I need to cancel my appointment", "cancel"), ("can you cancel it please", "cancel"),
    ("i'd like to cancel", "cancel"), ("cancel my cleaning", "cancel"), ("Cancel.", "cancel"),
    ("can I move my Thursday appointment to Friday at 10", "reschedule"), ("reschedule", "reschedule"),
    ("i need to change the time of my checkup", "reschedule"), ("could we push my appointment back", "reschedule"),
    ("can i move it to friday", "reschedule"), ("I want to postpone", "reschedule"),
])  # fmt: skip
def test_asking_to_cancel_or_move(line: str, kind: str) -> None:
    assert change_intent(line, FACTS.services) == kind


@pytest.mark.parametrize("line", [
    "i'd like to book a cleaning", "what is your cancellation policy?", "do you charge if I cancel?",
    "don't cancel it", "how much is a check-up", "can I leave a message", "I changed my mind about the time",
])  # fmt: skip
def test_other_turns_are_not_a_change(line: str) -> None:
    assert change_intent(line, FACTS.services) is None


def test_while_a_booking_is_taken_only_the_callers_own_booking_counts() -> None:
    assert change_intent("no cancel it", FACTS.services) == "cancel"
    assert change_intent("no cancel it", FACTS.services, own=True) is None
    assert change_intent("actually I need to cancel my cleaning on monday", FACTS.services, own=True) == "cancel"


def test_the_booking_and_the_new_time_in_one_line() -> None:
    assert split_request("can I move my Thursday appointment to Friday at 10", FRIDAY) == (
        "can I move my Thursday appointment ", " Friday at 10")
    assert split_request("I want to change my cleaning from monday to 3 pm", FRIDAY)[1] == " 3 pm"
    assert split_request("I need to reschedule my appointment", FRIDAY)[1] == ""
    assert split_request("move my appointment for anna smith to next tuesday", FRIDAY)[1] == " next tuesday"


def test_the_callers_reference_is_the_numbers_whatever_its_format() -> None:
    key = b"tenant-hash-key"
    one = caller_on_file("+1 (415) 555-0199", key)
    assert one.reference and one.phone is None
    assert caller_on_file("4155550199", key, region="US").reference == one.reference
    assert caller_on_file("+14155550199", b"another-tenant").reference != one.reference
    assert caller_on_file("+14155550198", key).reference != one.reference
    assert caller_on_file("anonymous", key).reference == "" and caller_on_file(None, key).reference == ""
    assert caller_on_file("+14155550199", key, keep_number=True).phone == "+14155550199"


# --- cancelling --------------------------------------------------------------------------------


def test_a_booking_found_by_the_callers_number_is_cancelled_after_a_yes(calendar: AppointmentBook) -> None:
    booked = calendar.book(at(THURSDAY, 14), CLEANING, "Anna Smith", caller_ref=ANNA)
    calendar.book(at(THURSDAY, 16), CHECKUP, "Bob Jones", caller_ref=BOB)
    d = ChangeDialogue(calendar, caller_ref=ANNA)
    r = d.handle("I need to cancel my appointment")
    assert r.text == "I have your cleaning on Thursday December 10 at 2 pm. Shall I cancel it?"
    assert r.state == "confirming" and r.tool == "cancel_appointment"
    assert len(in_calendar(calendar)) == 2  # nothing changes before the yes
    r = d.handle("yes please cancel it")
    assert r.state == "cancelled" and r.appointment is not None and r.appointment.uid == booked.uid
    assert r.text == "Done. Your cleaning on Thursday December 10 at 2 pm is cancelled. Is there anything else I can help with?"
    assert in_calendar(calendar) == [(at(THURSDAY, 16), "check-up", "Bob Jones")]
    assert at(THURSDAY, 14) in calendar.free_slots(THURSDAY, CLEANING)


def test_no_keeps_the_booking(calendar: AppointmentBook) -> None:
    calendar.book(at(THURSDAY, 14), CLEANING, "Anna Smith", caller_ref=ANNA)
    d = ChangeDialogue(calendar, caller_ref=ANNA)
    assert d.handle("can you cancel my cleaning").state == "confirming"
    assert d.handle("hmm").text == "Sorry, shall I cancel your cleaning on Thursday December 10 at 2 pm? Please say yes or no."
    r = d.handle("no, don't")
    assert r.state == "kept" and r.appointment is None
    assert r.text == ("No problem, I'll keep your cleaning on Thursday December 10 at 2 pm as it is. Is there anything "
                      "else I can help with?")  # fmt: skip
    assert in_calendar(calendar) == [(at(THURSDAY, 14), "cleaning", "Anna Smith")]


def test_a_booking_found_by_the_name_it_is_under(calendar: AppointmentBook) -> None:
    calendar.book(at(MONDAY, 9), CHECKUP, "Anna Smith")  # booked without a number (a text call, a withheld id)
    d = ChangeDialogue(calendar, caller_ref=BOB)
    r = d.handle("hi, i'd like to cancel my appointment")
    assert r.text == "I couldn't find an appointment for the number you're calling from. What name is the appointment under?"
    assert d.handle("it's under anna smith").text == "I have your check-up on Monday December 7 at 9 am. Shall I cancel it?"
    assert d.handle("yes").state == "cancelled"
    assert in_calendar(calendar) == []
    # with no number at all the name is asked first
    calendar.book(at(MONDAY, 9), CHECKUP, "Anna Smith")
    d = ChangeDialogue(calendar)
    assert talk(d, "cancel my appointment please", "Anna Smith.") == [
        "What name is the appointment under?", "I have your check-up on Monday December 7 at 9 am. Shall I cancel it?"]


def test_a_booking_made_from_a_number_is_not_found_by_its_name_from_another(calendar: AppointmentBook) -> None:
    # Knowing someone's name must not tell a stranger when they come in (nor let them cancel it).
    calendar.book(at(MONDAY, 9), CHECKUP, "Anna Smith", caller_ref=ANNA)
    for d in (ChangeDialogue(calendar, caller_ref=BOB), ChangeDialogue(calendar)):
        replies = talk(d, "i'd like to cancel my appointment", "it's under anna smith")
        assert d.finished and "couldn't find an appointment under the name Anna Smith" in replies[-1], replies
        assert not any("Monday" in r or "9 am" in r for r in replies), replies
    assert in_calendar(calendar) == [(at(MONDAY, 9), "check-up", "Anna Smith")]


def test_nothing_found_offers_a_new_booking_or_a_message(calendar: AppointmentBook) -> None:
    calendar.book(at(MONDAY, 9), CHECKUP, "Anna Smith", caller_ref=ANNA)
    d = ChangeDialogue(calendar, caller_ref=BOB)
    talk(d, "i need to cancel my appointment")
    r = d.handle("my name is bob jones")
    assert r.state == "not_found" and d.finished
    assert r.text == ("I'm sorry, I couldn't find an appointment under the name Bob Jones. Would you like to book a "
                      "new appointment, or leave a message?")  # fmt: skip
    d = ChangeDialogue(calendar, caller_ref=BOB, take_message=False)
    assert talk(d, "cancel my appointment", "bob jones")[1].endswith("Bob Jones. Would you like to book a new appointment?")
    assert in_calendar(calendar) == [(at(MONDAY, 9), "check-up", "Anna Smith")]


def test_several_bookings_the_agent_asks_which(calendar: AppointmentBook) -> None:
    calendar.book(at(MONDAY, 9), CLEANING, "Anna Smith", caller_ref=ANNA)
    calendar.book(at(THURSDAY, 14), CHECKUP, "Anna Smith", caller_ref=ANNA)
    d = ChangeDialogue(calendar, caller_ref=ANNA)
    r = d.handle("I need to cancel my appointment")
    assert r.state == "finding" and r.text == (
        "I see 2 appointments: a cleaning on Monday December 7 at 9 am and a check-up on Thursday December 10 at 2 pm. "
        "Which one would you like to cancel?")  # fmt: skip
    assert d.handle("um").text.startswith("Sorry, which one: the cleaning on Monday December 7 at 9 am or the check-up")
    assert d.handle("the one on thursday").text == "I have your check-up on Thursday December 10 at 2 pm. Shall I cancel it?"
    assert d.handle("yes").state == "cancelled"
    assert in_calendar(calendar) == [(at(MONDAY, 9), "cleaning", "Anna Smith")]
    # what the caller says about it picks one at once
    calendar.book(at(THURSDAY, 14), CHECKUP, "Anna Smith", caller_ref=ANNA)
    d = ChangeDialogue(calendar, caller_ref=ANNA)
    assert d.handle("cancel my thursday appointment").text.startswith("I have your check-up on Thursday")
    d = ChangeDialogue(calendar, caller_ref=ANNA)
    assert d.handle("cancel my appointment on wednesday").text == (
        "I see 2 appointments: a cleaning on Monday December 7 at 9 am and a check-up on Thursday December 10 at 2 pm. "
        "Which one would you like to cancel?")  # fmt: skip
    assert d.handle("the first one").text.startswith("I have your cleaning on Monday")


def test_one_number_several_people_the_name_is_asked(calendar: AppointmentBook) -> None:
    calendar.book(at(MONDAY, 9), CLEANING, "Anna Smith", caller_ref=ANNA)
    calendar.book(at(MONDAY, 10), CLEANING, "Tom Smith", caller_ref=ANNA)  # one family, one phone
    d = ChangeDialogue(calendar, caller_ref=ANNA)
    assert d.handle("can i cancel my appointment").text == (
        "I see more than one appointment for this number. What name is the appointment under?")
    assert d.handle("tom smith").text == "I have your cleaning on Monday December 7 at 10 am. Shall I cancel it?"


# --- moving ------------------------------------------------------------------------------------


def test_a_move_read_back_and_confirmed_moves_the_event_and_frees_the_old_slot(calendar: AppointmentBook) -> None:
    booked = calendar.book(at(THURSDAY, 14), CLEANING, "Anna Smith", caller_ref=ANNA)
    d = ChangeDialogue(calendar, caller_ref=ANNA)
    r = d.handle("can I move my Thursday appointment to Friday at 10")
    assert r.tool == "reschedule_appointment" and r.state == "moving"
    assert r.text == ("So I'll move your cleaning on Thursday December 10 at 2 pm to Friday December 11 at 10 am. "
                      "Shall I do that?")  # fmt: skip
    assert in_calendar(calendar) == [(at(THURSDAY, 14), "cleaning", "Anna Smith")]
    r = d.handle("yes")
    assert r.state == "moved" and r.text == "Done. Your cleaning is now on Friday December 11 at 10 am. See you then!"
    assert r.appointment is not None and r.appointment.uid == booked.uid and r.appointment.start == at(NEXT_FRIDAY, 10)
    assert in_calendar(calendar) == [(at(NEXT_FRIDAY, 10), "cleaning", "Anna Smith")]
    assert at(THURSDAY, 14) in calendar.free_slots(THURSDAY, CLEANING)  # the old slot is free
    assert at(NEXT_FRIDAY, 10) not in calendar.free_slots(NEXT_FRIDAY, CLEANING)
    calendar.book(at(THURSDAY, 14), CLEANING, "Bob Jones", caller_ref=BOB)  # and can be booked again


def test_a_move_to_a_closed_day_or_hour_gets_the_nearest_free_slots(calendar: AppointmentBook) -> None:
    calendar.book(at(THURSDAY, 14), CLEANING, "Anna Smith", caller_ref=ANNA)
    d = ChangeDialogue(calendar, caller_ref=ANNA)
    r = d.handle("i need to reschedule my cleaning")
    assert r.text == "I have your cleaning on Thursday December 10 at 2 pm. Which day and time would you like instead?"
    r = d.handle("sunday at 10")
    assert r.text == ("Sorry, we are closed on Sunday. The nearest free times are Monday December 7 at 8 am or 8:30 am. "
                      "Would one of those work?")  # fmt: skip
    r = d.handle("saturday at 2 pm")
    assert r.text.startswith("Sorry, tomorrow, Saturday December 5, we are open from 9 am to 1 pm. The nearest free "
                             "times are tomorrow, Saturday December 5, at 11:30 am or noon.")  # fmt: skip
    r = d.handle("the second one")
    assert r.text == ("So I'll move your cleaning on Thursday December 10 at 2 pm to tomorrow, Saturday December 5, at "
                      "noon. Shall I do that?")  # fmt: skip
    assert d.handle("yes").state == "moved"
    assert in_calendar(calendar) == [(at(date(2026, 12, 5), 12), "cleaning", "Anna Smith")]


def test_the_bookings_own_slot_is_not_busy_and_others_are(calendar: AppointmentBook) -> None:
    calendar.book(at(THURSDAY, 14), CLEANING, "Anna Smith", caller_ref=ANNA)  # 2:00-2:45 pm
    calendar.book(at(THURSDAY, 16), CHECKUP, "Bob Jones", caller_ref=BOB)
    d = ChangeDialogue(calendar, caller_ref=ANNA)
    r = d.handle("can i move my appointment to 4 pm")  # the same day; taken by someone else
    assert r.text == ("I have your cleaning on Thursday December 10 at 2 pm. Sorry, 4 pm is not available. The nearest "
                      "free times are Thursday December 10 at 3 pm or 4:30 pm. Would one of those work?")  # fmt: skip
    r = d.handle("no, make it 2:30 pm")  # overlaps only the booking itself
    assert r.text == ("So I'll move your cleaning on Thursday December 10 at 2 pm to Thursday December 10 at 2:30 pm. "
                      "Shall I do that?")  # fmt: skip
    assert d.handle("yes go ahead").state == "moved"
    assert in_calendar(calendar) == [(at(THURSDAY, 14, 30), "cleaning", "Anna Smith"),
                                     (at(THURSDAY, 16), "check-up", "Bob Jones")]  # fmt: skip


def test_no_at_the_read_back_keeps_the_booking(calendar: AppointmentBook) -> None:
    calendar.book(at(THURSDAY, 14), CLEANING, "Anna Smith", caller_ref=ANNA)
    d = ChangeDialogue(calendar, caller_ref=ANNA)
    assert d.handle("can I move my appointment to monday at 11").text.startswith("So I'll move your cleaning")
    r = d.handle("no")
    assert r.state == "kept" and r.text.startswith("No problem, I'll keep your cleaning on Thursday December 10 at 2 pm")
    assert in_calendar(calendar) == [(at(THURSDAY, 14), "cleaning", "Anna Smith")]
    # a "no" with another time goes on to that time; "never mind" keeps it
    d = ChangeDialogue(calendar, caller_ref=ANNA)
    talk(d, "reschedule please", "monday at 11")
    assert d.handle("no, tuesday at 11 instead").text.endswith("to Tuesday December 8 at 11 am. Shall I do that?")
    assert d.handle("actually never mind").state == "kept"
    assert in_calendar(calendar) == [(at(THURSDAY, 14), "cleaning", "Anna Smith")]


def test_a_move_can_become_a_cancellation(calendar: AppointmentBook) -> None:
    calendar.book(at(THURSDAY, 14), CLEANING, "Anna Smith", caller_ref=ANNA)
    d = ChangeDialogue(calendar, caller_ref=ANNA)
    talk(d, "i want to move my appointment")
    assert d.handle("actually just cancel it").text == "I have your cleaning on Thursday December 10 at 2 pm. Shall I cancel it?"
    assert d.handle("yes").state == "cancelled" and in_calendar(calendar) == []


def test_a_change_the_pipeline_does_not_offer_is_refused(calendar: AppointmentBook) -> None:
    calendar.book(at(THURSDAY, 14), CLEANING, "Anna Smith", caller_ref=ANNA)
    d = ChangeDialogue(calendar, caller_ref=ANNA, kinds=frozenset({"cancel"}))
    r = d.handle("can i reschedule my appointment")
    assert r.state == "refused" and r.text == ("I'm sorry, I can't move appointments over the phone. I can take a "
                                               "message for the team.")  # fmt: skip
    assert in_calendar(calendar) == [(at(THURSDAY, 14), "cleaning", "Anna Smith")]


@pytest.mark.parametrize("line, verb", [("cancel my appointment please", "cancel"),
                                        ("move my appointment to monday at 9", "move")])
def test_a_calendar_that_fails_is_said_and_recorded(line: str, verb: str) -> None:
    down = CalDAVCalendar("http://127.0.0.1:9/", "u", "p", "Appointments", timeout=5)
    r = ChangeDialogue(appointments(down), caller_ref=ANNA).handle(line)
    assert r.state == "failed" and r.offers_message
    assert r.text == (f"I'm sorry, I can't {verb} appointments right now. I can take a message and we'll call you "
                      "back. Would you like to leave one?")  # fmt: skip
    assert r.tool == ("cancel_appointment" if verb == "cancel" else "reschedule_appointment")
    assert r.error is not None and "CalendarUnavailable" in r.error and "127.0.0.1:9" in r.error


# --- a real CalDAV server ----------------------------------------------------------------------


@pytest.fixture
def dav(radicale: str) -> AppointmentBook:  # noqa: F811
    import caldav

    name = f"Changes {datetime.now().timestamp()}"  # a fresh calendar per test
    caldav.DAVClient(url=radicale, username="front-desk", password=PASSWORD).principal().make_calendar(name=name)
    return appointments(CalDAVCalendar(radicale, "front-desk", PASSWORD, name))


def test_a_cancellation_in_a_caldav_calendar(dav: AppointmentBook) -> None:
    dav.book(at(THURSDAY, 14), CLEANING, "Anna Smith", caller_ref=ANNA)
    dav.book(at(THURSDAY, 15), CHECKUP, "Bob Jones", caller_ref=BOB)
    d = ChangeDialogue(appointments(dav.backend), caller_ref=ANNA)
    assert talk(d, "I need to cancel my appointment", "yes") == [
        "I have your cleaning on Thursday December 10 at 2 pm. Shall I cancel it?",
        "Done. Your cleaning on Thursday December 10 at 2 pm is cancelled. Is there anything else I can help with?"]
    assert in_calendar(dav) == [(at(THURSDAY, 15), "check-up", "Bob Jones")]


def test_a_move_in_a_caldav_calendar(dav: AppointmentBook) -> None:
    booked = dav.book(at(THURSDAY, 14), CLEANING, "Anna Smith", caller_ref=ANNA)
    d = ChangeDialogue(appointments(dav.backend), caller_ref=ANNA)
    r = d.handle("can I move my Thursday appointment to Friday at 10")
    assert r.text.endswith("to Friday December 11 at 10 am. Shall I do that?")
    assert d.handle("yes").state == "moved"
    fresh = appointments(dav.backend)
    (moved,) = fresh.find(caller_ref=ANNA)
    assert (moved.uid, moved.start, moved.end) == (booked.uid, at(NEXT_FRIDAY, 10), at(NEXT_FRIDAY, 10, 45))
    assert at(THURSDAY, 14) in fresh.free_slots(THURSDAY, CLEANING)


# --- the pipeline ------------------------------------------------------------------------------


def test_the_tools_in_the_pipeline_file(tmp_path: Path) -> None:
    receptionist = load_pipeline(Path(__file__).parent.parent / "pipelines" / "receptionist.yaml")
    assert receptionist.tools.cancel_appointment is not None and receptionist.tools.reschedule_appointment is not None

    def write(tools: str) -> Path:
        path = tmp_path / "p.yaml"
        path.write_text("name: p\nsystem_prompt: s\nfacts: {hours: {monday: '08:00-12:00'}, services: [{name: x}]}\n"
                        f"tools: {tools}\n")  # fmt: skip
        return path

    with pytest.raises(ConfigError, match="tools.cancel_appointment: needs tools.book_appointment"):
        load_pipeline(write("{cancel_appointment: {}}"))
    with pytest.raises(ConfigError, match=r"tools.reschedule_appointment.notice"):
        load_pipeline(write("{book_appointment: {calendar: {ics: a.ics}}, reschedule_appointment: {notice: 3}}"))
    ok = load_pipeline(write("{book_appointment: {calendar: {ics: a.ics}}, reschedule_appointment: {}}"))
    assert ok.tools.reschedule_appointment is not None and ok.tools.cancel_appointment is None


async def run_call_turns(lines: list[str], calendar_path: Path, *, caller_ref: str = ANNA, tools=None):  # noqa: ANN001
    """Caller turns through the LLM processor (as in a call), with the booking and change tools on
    one .ics calendar; the agent's reply to each turn, and the processor."""
    from processor_turns import processor_replies
    from test_facts import ScriptedEngine

    from voicecore.agent.booking import BookingDialogue
    from voicecore.agent.facts import FactBook
    from voicecore.config import LLMParams
    from voicecore.services.conversation import Conversation, PassThroughContext
    from voicecore.services.llm import LlamaLLMProcessor

    def book() -> AppointmentBook:
        return appointments(ICSCalendar(calendar_path))

    proc = LlamaLLMProcessor(ScriptedEngine(["The model."]), Conversation(system_prompt="s", context=PassThroughContext()),  # type: ignore[arg-type]
                             LLMParams(), fallback_reply="Sorry?", facts=FactBook(FACTS, clock=NOW.timestamp),
                             booking=lambda: BookingDialogue(book(), caller_ref=caller_ref),
                             changes=lambda: ChangeDialogue(book(), caller_ref=caller_ref), tools=tools)  # fmt: skip
    return await processor_replies(proc, lines), proc


async def test_the_processor_records_what_was_cancelled_and_moved(tmp_path: Path) -> None:
    path = tmp_path / "calendar.ics"
    replies, proc = await run_call_turns([
        "i'd like to book a cleaning", "monday at 10 am", "my name is anna smith", "yes",
        "sorry, can I move my appointment to tuesday at 9", "how much is a cleaning?", "yes",
        "actually I need to cancel my appointment", "yes", "thanks",
    ], path)  # fmt: skip
    assert replies[3] == "You're booked: a cleaning on Monday December 7 at 10 am. See you then!"
    assert replies[4] == ("So I'll move your cleaning on Monday December 7 at 10 am to Tuesday December 8 at 9 am. "
                          "Shall I do that?")  # fmt: skip
    assert replies[5] == "A cleaning costs 95 dollars. Shall I move it?"  # a question in between, then back
    assert replies[6] == "Done. Your cleaning is now on Tuesday December 8 at 9 am. See you then!"
    assert replies[7] == "I have your cleaning on Tuesday December 8 at 9 am. Shall I cancel it?"
    assert replies[8].startswith("Done. Your cleaning on Tuesday December 8 at 9 am is cancelled.")
    assert replies[9] == "The model."  # the dialogues are finished: the model talks again
    (booked,), (moved,), (cancelled,) = proc.bookings, proc.reschedules, proc.cancellations  # type: ignore[attr-defined]
    assert booked["uid"] == moved["uid"] == cancelled["uid"]
    assert moved["start"] == "2026-12-08T09:00:00-05:00" and cancelled["start"] == moved["start"]
    assert set(cancelled) == set(booked) and proc.tool_failures == []  # type: ignore[attr-defined]
    assert appointments(ICSCalendar(path)).find(name="anna smith") == []
    # each change is a tool call on the record: the move says where it was and where it is now
    calls = [(c.tool, c.outcome) for c in proc.tool_calls]  # type: ignore[attr-defined]
    assert calls == [("book_appointment", "booked"), ("reschedule_appointment", "rescheduled"),
                     ("cancel_appointment", "cancelled")]  # fmt: skip
    move = proc.tool_calls[1]  # type: ignore[attr-defined]
    assert move.result["start"] == "2026-12-08T09:00:00-05:00"
    assert move.result["previous_start"] == booked["start"] == "2026-12-07T10:00:00-05:00"


async def test_a_change_that_finds_nothing_hands_a_new_booking_over(tmp_path: Path) -> None:
    replies, proc = await run_call_turns(["i need to cancel my appointment", "bob jones",
                                          "ok then book a new one please"], tmp_path / "c.ics", caller_ref=BOB)  # fmt: skip
    assert replies[1].startswith("I'm sorry, I couldn't find an appointment under the name Bob Jones.")
    assert replies[2].startswith("What would you like to book?")
    assert proc.cancellations == [] and proc.bookings == []  # type: ignore[attr-defined]
    # asked for the name, the caller wants a new booking instead: the booking dialogue takes the turn
    replies, _ = await run_call_turns(["i need to cancel my appointment", "actually i'd like to book a new cleaning"],
                                      tmp_path / "c.ics", caller_ref=BOB)  # fmt: skip
    assert replies == ["I couldn't find an appointment for the number you're calling from. What name is the "
                       "appointment under?", "Which day would suit you?"]  # fmt: skip


async def test_a_calendar_that_fails_mid_call_is_recorded_and_a_message_offered(tmp_path: Path) -> None:
    from voicecore.agent.call_tools import CallTools
    from voicecore.config import TakeMessageTool, Tools

    tools = CallTools(Tools(take_message=TakeMessageTool()))
    (tmp_path / "calendar.ics").write_text("this is not a calendar")
    replies, proc = await run_call_turns(["I need to cancel my appointment", "yes"], tmp_path / "calendar.ics",
                                         tools=tools)  # fmt: skip
    assert replies[0] == ("I'm sorry, I can't cancel appointments right now. I can take a message and we'll call you "
                          "back. Would you like to leave one?")  # fmt: skip
    assert replies[1] == "Of course. What would you like me to tell the team?"  # the yes took the offer
    (failure,) = proc.tool_failures  # type: ignore[attr-defined]
    assert failure["tool"] == "cancel_appointment" and "not a valid iCalendar file" in failure["error"]


# --- a real call, the real model -----------------------------------------------------------------


def _open_weekday(book: AppointmentBook) -> date:
    """A day at least three days ahead when the receptionist is open at 10 am and 11 am."""
    day = book.today() + timedelta(days=3)
    while day.weekday() >= 5 or not any(a.hour <= 10 and b.hour >= 12 for a, b in book.opening(day)):
        day += timedelta(days=1)
    return day


@pytest.mark.models
async def test_a_caller_cancels_in_a_second_call_the_booking_made_in_the_first(
    tmp_path: Path, pool, receptionist, monkeypatch
) -> None:  # fmt: skip
    """The shipped receptionist through the session a phone call takes (in text), with the real
    default model: a caller books; calling again from the same number (another format of it) they
    are read their booking back without giving a name, and cancel it. Another number does not find
    it. The stored calls' flags hold what was booked and cancelled, never the name."""
    from voicecore.agent.calendar import open_appointment_book
    from voicecore.records import CallRecord
    from voicecore.session import open_call
    from voicecore.simulate import TextCall
    from voicecore.storage import Store
    from voicecore.transports.file import TextTransport

    data = tmp_path / "data"
    monkeypatch.setenv("VOICECORE_DATA_DIR", str(data))
    store = Store(data)
    store.tenants.create("acme", actor="test")
    assert receptionist.tools.book_appointment is not None and receptionist.facts is not None
    book = open_appointment_book(receptionist.tools.book_appointment, receptionist.facts, data)
    day = _open_weekday(book)

    async def call_from(number: str) -> TextCall:
        transport = TextTransport()
        record = CallRecord(pipeline=receptionist.name, transport=transport.name, caller=number)
        session = await open_call(pool=pool, config=receptionist, transport=transport, store=store, tenant="acme",
                                  record=record)  # fmt: skip
        call = TextCall(session, transport)
        await call.next_reply()  # the greeting
        return call

    first = await call_from("+14155550199")
    replies = [(await first.say(line))[0] for line in
               ("i'd like to book a cleaning", f"on {day:%B} {day.day} at 10 am", "my name is anna", "yes")]  # fmt: skip
    assert replies[-1] is not None and replies[-1].startswith("You're booked"), replies
    booked = (await first.close()).flags["appointments"][0]

    other = await call_from("+14155550123")
    assert (await other.say("I need to cancel my appointment"))[0] == (
        "I couldn't find an appointment for the number you're calling from. What name is the appointment under?")
    await other.close()

    second = await call_from("(415) 555-0199")
    read_back = (await second.say("hi, I need to cancel my appointment"))[0]
    assert read_back == f"I have your cleaning on {day:%A} {day:%B} {day.day} at 10 am. Shall I cancel it?"
    done = (await second.say("yes please"))[0]
    assert done is not None and done.startswith("Done. Your cleaning") and "is cancelled" in done
    after, stats = await second.say("no thank you")  # the dialogue is over: the model answers again
    assert after and stats is not None and stats.generated_tokens > 0
    record = await second.close()
    assert record.flags["cancellations"] == [booked] and "name" not in booked
    assert book.find(name="anna") == []
    assert record.flags.get("tool_failures") is None
    stored = store.calls.get("acme", record.call_id, actor="test")
    assert stored.flags["cancellations"] == [booked] and "Anna" not in str(stored.flags)
    store.close()
