"""How ``bench dialogue`` scores a conversation (issue 13, item 6), without a model: hand-made agent
replies are checked against the pipeline's facts by the runtime's own checker (a wrong day, time,
price, phone number or address is an error; a booking's offered slot is checked against that
day's hours), the calendar is read from the ``.ics`` file the real calendar wrote, and the shipped
dialogue sets are well formed: enough caller lines, every expected booking on a day and at a time
the business is open."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.dialogue_scoring import (  # noqa: E402
    DIALOGUES_DIR,
    Conversation,
    calendar_events,
    fact_errors,
    load_dialogues,
    local,
    messages_of,
    outcome_problems,
    score_transcript,
)
from voicecore.agent.calendar import AppointmentBook, ICSCalendar  # noqa: E402
from voicecore.agent.facts import FactBook  # noqa: E402
from voicecore.config import load_pipeline, resolve_pipeline_path  # noqa: E402
from voicecore.records import Turn  # noqa: E402

RECEPTIONIST = load_pipeline(ROOT / "pipelines" / "receptionist.yaml")
ZONE = ZoneInfo("America/New_York")
NOW = datetime(2026, 12, 2, 10, 0, tzinfo=ZONE)  # Wednesday, the receptionist set's "now"


def book() -> FactBook:
    return FactBook(RECEPTIONIST.facts, clock=NOW.timestamp)  # type: ignore[arg-type]


@pytest.mark.parametrize(("reply", "why"), [
    ("Yes, we're open on Sunday from 8 am to 5 pm.", "Sunday is said open"),
    ("We are open Saturday from 9 am to 12 pm.", "12 pm"),
    ("A cleaning costs 80 dollars.", "80 dollars"),
    ("Sure. Our number is 555 123 4567.", "555 123 4567"),
    ("We are at 45 Oak Avenue. See you soon!", "45 oak avenue"),
    ("On Christmas Day we are open from 8 am to 6 pm.", "Christmas Day is said open"),
    ("I can book you on Monday December 8 at 10 am.", "December 8 is a Tuesday"),
])  # fmt: skip
def test_a_wrong_fact_in_a_reply_is_an_error(reply: str, why: str) -> None:
    errors = fact_errors(book(), reply)
    assert errors and any(why in e for e in errors), errors


@pytest.mark.parametrize("reply", [
    "We are open Monday to Friday from 8 am to 6 pm, and Saturday from 9 am to 1 pm. We are closed on Sunday.",
    "On Christmas Eve we are open from 8 am to noon.",
    "On Thursday, Thanksgiving Day, we are closed.",  # a holiday closes a weekday that is open otherwise
    "A whitening costs 250 dollars. Our phone number is +1 555 010 0123.",
    "Hello! How can I help you today?",
])  # fmt: skip
def test_what_the_facts_back_is_no_error(reply: str) -> None:
    assert fact_errors(book(), reply) == []


def test_offered_slots_are_checked_against_that_days_hours() -> None:
    ok = "Sorry, we are closed on Sunday. The nearest free times are Monday December 7 at 8 am or 8:30 am."
    assert fact_errors(book(), ok, slots=True) == []
    assert fact_errors(book(), ok) != []  # 8:30 am is no opening time: only an offered slot may say it
    late = "On Saturday December 5 I have 3 pm or 3:30 pm."
    assert any("3 pm" in e for e in fact_errors(book(), late, slots=True))


def test_the_words_of_a_message_read_back_are_the_callers() -> None:
    reply = "Let me read that back. From Jenny: call me at 555 867 5309 tomorrow at 7 am. Shall I pass that on?"
    assert fact_errors(book(), reply) == []
    assert fact_errors(book(), "Call us at 555 867 5309.") != []


def test_a_hand_made_transcript_is_scored_line_by_line() -> None:
    conv = Conversation.model_validate({"id": "t", "lines": [
        {"say": "are you open Sunday?", "says": ["closed"]},
        {"say": "how much is a cleaning", "says": ["95 dollars"]},
        {"say": "do you do braces?", "offer": True},
    ]})  # fmt: skip
    right = score_transcript(book(), conv, [("On Sunday we are closed.", "facts"),
                                           ("A cleaning costs 95 dollars.", "facts"),
                                           ("I'm sorry, I don't know. I can take a message.", "tools")])  # fmt: skip
    assert [r["fact_errors"] + r["problems"] for r in right] == [[], [], []]
    wrong = score_transcript(book(), conv, [("Yes, we're open on Sunday from 9 am to 1 pm.", "model"),
                                           ("A cleaning costs 120 dollars.", "model"),
                                           ("Yes, we do braces.", "model")])  # fmt: skip
    assert wrong[0]["fact_errors"] and wrong[0]["problems"] == ["does not say 'closed'"]
    assert any("120 dollars" in e for e in wrong[1]["fact_errors"])
    assert wrong[2]["problems"] == ["offers neither a message nor a transfer"]


def test_the_calendar_is_read_from_the_file_the_agent_wrote(tmp_path: Path) -> None:
    ics = tmp_path / "calendar.ics"
    calendar = AppointmentBook(ICSCalendar(ics), RECEPTIONIST.facts, clock=NOW.timestamp)  # type: ignore[arg-type]
    start = datetime(2026, 12, 4, 10, 0, tzinfo=ZONE)
    calendar.book(start, calendar.service_named("cleaning"), "Ann Lee")
    events = calendar_events(ics, ZONE)
    assert [(e["service"], e["start"], e["name"]) for e in events] == [("cleaning", start.isoformat(), "Ann Lee")]
    conv = Conversation.model_validate({"id": "b", "lines": ["x"], "booking": {
        "service": "cleaning", "start": "2026-12-04T10:00", "name": "Ann Lee"}})  # fmt: skip
    assert outcome_problems(conv, events=events, messages=[], transfer=None, transfer_to=None, hung_up=False,
                            zone=ZONE) == []  # fmt: skip
    later = conv.model_copy(update={"booking": conv.booking.model_copy(update={"start": datetime(2026, 12, 4, 11)})})
    assert outcome_problems(later, events=events, messages=[], transfer=None, transfer_to=None, hung_up=False,
                            zone=ZONE)[0].startswith("no cleaning at Fri 2026-12-04 11:00")  # fmt: skip
    nothing = Conversation.model_validate({"id": "n", "lines": ["x"]})
    assert "booked without being asked" in outcome_problems(
        nothing, events=events, messages=[], transfer=None, transfer_to=None, hung_up=False, zone=ZONE)[0]


def test_messages_transfers_and_hang_ups_come_from_the_call_record() -> None:
    turns = [Turn(role="caller", text="leave a message"), Turn(role="event", kind="message",
                                                               text="Message from Ann Lee: I'll be late")]  # fmt: skip
    assert messages_of(turns) == [{"name": "Ann Lee", "text": "I'll be late"}]
    conv = Conversation.model_validate({"id": "m", "lines": ["x"], "message": {"name": "Ann Lee", "contains": ["late"]},
                                        "transfer": True})  # fmt: skip
    ok = outcome_problems(conv, events=[], messages=messages_of(turns), transfer={"to": "+15550100100", "ok": False},
                          transfer_to="+15550100100", hung_up=False, zone=ZONE)  # fmt: skip
    assert ok == []
    bad = outcome_problems(conv, events=[], messages=[], transfer=None, transfer_to="+15550100100", hung_up=True,
                           zone=ZONE)  # fmt: skip
    assert len(bad) == 3  # no message, no transfer, hung up unasked


@pytest.mark.parametrize(("name", "min_lines"), [("receptionist", 150), ("garage", 50)])
def test_the_shipped_dialogue_sets_are_well_formed(name: str, min_lines: int) -> None:
    ds = load_dialogues(DIALOGUES_DIR / f"{name}.yaml")
    assert ds.pipeline == name and ds.lines >= min_lines
    config = load_pipeline(resolve_pipeline_path(ds.pipeline))
    assert config.facts is not None and config.tools.book_appointment is not None
    facts = FactBook(config.facts)
    services = {s.name for s in config.facts.services}
    tags = {t for c in ds.conversations for t in c.tags}
    assert {"hours", "price", "booking", "message", "transfer", "unknown", "holiday", "outside-hours",
            "hesitation"} <= tags  # fmt: skip
    for c in ds.conversations:
        if c.booking is None:
            continue
        assert c.booking.service in services, c.id
        start = local(c.booking.start, facts.zone)
        length = next(s.duration_min for s in config.facts.services if s.name == c.booking.service) or 30
        ranges, _ = facts.hours_on(start.date())
        minutes = start.hour * 60 + start.minute
        assert any(a <= minutes and minutes + length <= b for a, b in ranges), f"{c.id}: closed at {start}"
        assert start >= local(c.now or ds.now, facts.zone) + timedelta(minutes=config.tools.book_appointment
                                                                        .min_notice_minutes), c.id  # fmt: skip


def test_a_bad_dialogue_set_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("pipeline: receptionist\nnow: '2026-12-02T10:00'\nconversations:\n- id: a\n  lines: [hi]\n"
                    "  booking: {service: cleaning}\n")  # fmt: skip
    with pytest.raises(ValueError, match="bad.yaml"):
        load_dialogues(path)
