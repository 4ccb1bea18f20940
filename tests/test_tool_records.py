"""Tool calls on the record (issue 13, items 3 and 4): each tool call is an event turn of kind
``tool`` (its arguments redacted by the tenant policy, its result or which part failed and why) and
an audit entry ``tool.called`` (no call content); a failing tool never leaves the caller in silence
(an apology and a message offered, which a yes takes); and the report takes the slot, purpose and
need from what the tools recorded.

Calls go through the session a phone call takes (in text, with the real default models) into a
real Radicale CalDAV server on 127.0.0.1 — stopped mid-booking for the failure — and, for the
transfer, through the fake Twilio API, which refuses to update a call it does not know (404)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from voicecore.policy import load_policy_text, redact, redact_tool_arguments
from voicecore.policy.models import DEFAULT_POLICY
from voicecore.records import ToolCall, Turn
from voicecore.reports.grounding import summary_problems
from voicecore.reports.tools import template_summary, tool_facts

CALDAV_USER, CALDAV_PASSWORD, PASSWORD_ENV = "front-desk", "s3cret-pw", "TOOLREC_CALDAV_PASSWORD"
# Names redacted, as well as numbers: a tool's name argument is kept as "[name]".
REDACT_NAMES = """version: 1
name: redact-names
redaction:
  enabled: true
  categories: [phone, email, card, iban, spoken_digits, name]
"""
NO_REDACTION = """version: 1
name: verbatim
redaction:
  enabled: false
  categories: []
transcripts:
  store_redacted: false
"""


# --- pure: the record, the redaction of arguments, the summary check ------------------------------


def test_a_tool_call_is_one_line_of_json_that_reads_back() -> None:
    call = ToolCall("book_appointment", "booked", arguments={"service": "cleaning", "name": "Anna"},
                    result={"start": "2026-12-10T14:00:00-05:00", "end": "2026-12-10T14:45:00-05:00"})  # fmt: skip
    text = call.to_text()
    assert "\n" not in text and json.loads(text)["outcome"] == "booked"
    assert ToolCall.from_text(text) == call
    assert ToolCall.from_text("Message from Anna: hi") is None and ToolCall.from_text(None) is None
    failed = ToolCall("transfer", "failed", ok=False, arguments={"to": "+14155550199"}, error="20404: not found")
    assert ToolCall.from_text(failed.to_text()) == failed
    assert failed.describe() == "transfer → failed (to: +14155550199): 20404: not found"
    assert "Anna" not in repr(call)  # arguments never reach a log through repr


def test_a_transcript_shows_the_tool_call_in_words() -> None:
    from voicecore.records import CallRecord
    from voicecore.views import transcript_text

    rec = CallRecord(turns=[Turn("caller", "yes please"), Turn("event", ToolCall(
        "book_appointment", "booked", arguments={"service": "cleaning", "name": "[name]"},
        result={"start": "2026-12-10T14:00:00-05:00"}).to_text(), kind="tool")])  # fmt: skip
    assert transcript_text(rec).splitlines()[-1] == (
        "  [tool] book_appointment → booked (service: cleaning, name: [name]) → start: 2026-12-10T14:00:00-05:00")


def test_the_callers_arguments_are_redacted_as_the_policy_says() -> None:
    args = {"service": "cleaning", "start": "2026-12-10T14:00:00-05:00", "name": "Anna Lopez",
            "phone": "+1 415 555 2671", "to": "+14155550199"}  # fmt: skip
    names = redact_tool_arguments(load_policy_text(REDACT_NAMES), args)
    assert names == {**args, "name": "[name]", "phone": "[phone number]"}  # the business's data is kept
    default = redact_tool_arguments(DEFAULT_POLICY, args)
    assert default == {**args, "phone": "[phone number]"}  # the default policy lets names through
    assert redact_tool_arguments(load_policy_text(NO_REDACTION), args) == args


def test_names_in_what_is_said_are_redacted_only_when_the_policy_asks() -> None:
    cats = ["phone", "name"]
    assert redact("hi this is Maria Lopez and I'd like a cleaning", cats) == "hi this is [name] and I'd like a cleaning"
    assert redact("my name is anna smith, 415 555 2671", cats) == "my name is [name], [phone number]"
    assert redact("I'm Bob. Call me Robert Miles please", cats) == "I'm [name]. Call me [name] please"
    # the agent's read-backs ("for Anna Lopez", "From Anna Lopez:")
    assert redact("So that's a cleaning on Monday at 10 am, for Anna Lopez. Shall I book it?", cats) == (
        "So that's a cleaning on Monday at 10 am, for [name]. Shall I book it?")
    assert redact("From Anna Lopez: Please call me back.", cats) == "From [name]: Please call me back."
    for said in ("this is great", "I'm calling about my appointment", "it's Tuesday at ten", "I'm looking to book",
                 "a cleaning for Thursday", "Thank you for calling. How can I help?", "please call me back"):
        assert redact(said, cats) == said
    assert redact("my name is Anna") == "my name is Anna"  # not one of the default categories
    assert load_policy_text(REDACT_NAMES).redaction.categories[-1] == "name"


WEDNESDAY = date(2026, 12, 9)
BOOKED = ToolCall("book_appointment", "booked", arguments={"service": "cleaning", "name": "Maria Lopez"},
                  result={"start": "2026-12-10T14:00:00-05:00", "end": "2026-12-10T14:45:00-05:00",
                          "service": "cleaning"})  # fmt: skip
TRANSCRIPT = ("Agent: Thank you for calling. How can I help you today?\n"
              "Caller: I'd like to book a cleaning for Thursday afternoon. We close at 6 pm, right?\n"
              "Agent: Yes, we close at 6 pm. Two cleanings cost 190 dollars. Our address is 12 Main Street.")  # fmt: skip


@pytest.mark.parametrize("summary, problem", [
    ("The caller wanted a cleaning on Thursday at 2 pm.", "time 'at 2 pm'"),  # no tool said 2 pm: not grounded
    ("The caller wanted a cleaning tomorrow at 12pm on Thursday.", "time 'at 12pm'"),  # the invented time
    ("The caller wanted a cleaning on Friday.", "day 'on Friday'"),
    ("The caller wanted a cleaning today.", "day 'today'"),  # the agent's greeting is no day
    ("The caller booked two cleanings for 150 dollars.", "price '150 dollars'"),
    ("The caller asked for our office at 14 Main Street.", "address '14 Main Street'"),
    ("The caller gave 415 555 2671 as the number.", "a phone number"),
])  # fmt: skip
def test_a_summary_stating_what_nobody_said_is_caught(summary: str, problem: str) -> None:
    problems = summary_problems(summary, TRANSCRIPT, WEDNESDAY)
    assert any(p.startswith(problem) for p in problems), problems


def test_a_summary_stating_what_was_said_or_booked_passes() -> None:
    grounds = TRANSCRIPT + "\n" + tool_facts([Turn("event", BOOKED.to_text(), kind="tool")], DEFAULT_POLICY).grounds_text()
    for summary in ("The caller wanted a cleaning on Thursday afternoon.",
                    "The caller wanted a cleaning tomorrow; we close at 6 pm.",  # tomorrow is Thursday
                    "Two cleanings cost 190 dollars at 12 Main Street.",
                    "The caller booked a cleaning on Thursday, December 10 at 2 pm."):  # the booking's result
        assert summary_problems(summary, grounds, WEDNESDAY) == [], summary
    assert summary_problems("The caller booked a cleaning at 2 pm.", TRANSCRIPT, WEDNESDAY)  # without the booking


def test_the_tool_records_give_the_report_fields_and_the_template() -> None:
    turns = [Turn("caller", "I'd like a cleaning"), Turn("event", BOOKED.to_text(), kind="tool"),
             Turn("event", ToolCall("take_message", "taken", arguments={"name": "Maria Lopez", "for": "Dr Smith"}).to_text(),
                  kind="tool"),
             Turn("event", "Message from Maria Lopez: please call me back on 415 555 2671", kind="message")]  # fmt: skip
    facts = tool_facts(turns, DEFAULT_POLICY)
    assert (facts.slot, facts.status, facts.service) == ("2026-12-10T14:00:00", "booked", "cleaning")
    assert facts.purpose == "book an appointment" and facts.name == "Maria Lopez"
    assert facts.need == "please call me back on [phone number]"  # as the policy lets it reach the report
    assert facts.skipped_questions() == {"purpose", "appointment_day", "appointment_time", "need", "caller_name"}
    assert template_summary(facts, "book an appointment") == (
        "Maria Lopez booked a cleaning on Thursday, December 10 at 2 pm. They left a message for Dr Smith.")
    hidden = tool_facts(turns, load_policy_text(REDACT_NAMES))
    assert hidden.name is None and hidden.messages[0].name is None  # "[name]" is no name
    failed = tool_facts([Turn("event", ToolCall("book_appointment", "failed", ok=False, error="CalendarUnavailable: x")
                              .to_text(), kind="tool")], DEFAULT_POLICY)  # fmt: skip
    assert (failed.slot, failed.status, failed.purpose) == (None, "failed", "book an appointment")
    assert template_summary(failed, "book an appointment") == (
        "The caller asked to book an appointment, but the calendar could not be used.")
    refused = tool_facts([Turn("event", ToolCall("transfer", "failed", ok=False).to_text(), kind="tool")], DEFAULT_POLICY)
    assert refused.purpose == "speak to someone"


# --- calls through the session --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Radicale:
    """A Radicale server on 127.0.0.1 with an "Appointments" calendar; :meth:`stop` takes it down."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        (root / "users").write_text(f"{CALDAV_USER}:{CALDAV_PASSWORD}\n")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "radicale", "--server-hosts", f"127.0.0.1:{self.port}",
             "--storage-filesystem-folder", str(root / "collections"), "--auth-type", "htpasswd",
             "--auth-htpasswd-filename", str(root / "users"), "--auth-htpasswd-encryption", "plain",
             "--logging-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=open(root / "radicale.log", "w"))  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("radicale did not start: " + (root / "radicale.log").read_text()) from None
                time.sleep(0.1)
        import caldav

        principal = caldav.DAVClient(url=self.url, username=CALDAV_USER, password=CALDAV_PASSWORD).principal()
        principal.make_calendar(name="Appointments", cal_id="appointments")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)

    def events(self) -> list[str]:
        import caldav

        cal = caldav.DAVClient(url=self.url, username=CALDAV_USER, password=CALDAV_PASSWORD).principal().calendar(
            name="Appointments")
        return [e.data for e in cal.events()]


@pytest.fixture
def radicale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Radicale]:
    monkeypatch.setenv(PASSWORD_ENV, CALDAV_PASSWORD)
    server = Radicale(tmp_path / "radicale")
    try:
        yield server
    finally:
        server.stop()


def with_caldav(config: Any, url: str, *, messages: bool = False, transfer_to: str | None = None) -> Any:
    from voicecore.config import BookAppointmentTool, TakeMessageTool, TransferTool

    book = BookAppointmentTool.model_validate({"calendar": {"caldav": {
        "url": url, "username": CALDAV_USER, "password_env": PASSWORD_ENV, "calendar": "Appointments"}}})  # fmt: skip
    tools = config.tools.model_copy(update={
        "book_appointment": book, "take_message": TakeMessageTool() if messages else None,
        "transfer": TransferTool(to=transfer_to) if transfer_to else None})  # fmt: skip
    return config.model_copy(update={"tools": tools})


def open_weekday(config: Any) -> date:
    """A weekday at least three days ahead that the business is open on at 10 am (no holiday)."""
    from voicecore.agent.facts import FactBook

    book = FactBook(config.facts)
    day = datetime.now(ZoneInfo(config.facts.timezone)).date() + timedelta(days=3)
    while day.weekday() > 4 or not any(a <= 600 < b for a, b in book.hours_on(day)[0]):
        day += timedelta(days=1)
    return day


def tool_turns(turns: list[Any]) -> list[ToolCall]:
    return [c for c in (ToolCall.from_text(t.text) for t in turns if t.kind == "tool") if c is not None]


def tool_audit(store: Any, tenant: str, call_id: str) -> list[str]:
    """The ``tool.called`` entries of a call, oldest first (their object ids)."""
    return [e.object_id for e in reversed(store.audit.list(tenant, limit=500))
            if e.action == "tool.called" and e.object_id.startswith(f"call:{call_id} ")]  # fmt: skip


async def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    import asyncio

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.mark.models
async def test_a_booking_is_a_tool_turn_an_audit_entry_and_the_reports_slot(
    tmp_path: Path, pool: Any, receptionist: Any, radicale: Radicale, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    """Under a policy that redacts names: the booking is in the CalDAV calendar with the caller's
    name, and in the stored call as a ``tool`` turn whose name argument is "[name]"; the audit log
    says a tool was called and what came of it, with no call content; the report made from the call
    has the booked start as its slot and "book an appointment" as its purpose."""
    from voicecore.reports import generate_report
    from voicecore.simulate import TextCall
    from voicecore.storage import Store

    monkeypatch.setenv("VOICECORE_DATA_DIR", str(tmp_path / "data"))
    store = Store(tmp_path / "data")
    store.tenants.create("acme", policy_yaml=REDACT_NAMES, actor="test")
    config = with_caldav(receptionist, radicale.url)
    day = open_weekday(config)
    call = await TextCall.open(config, pool, store=store, tenant="acme")
    await call.next_reply()  # the greeting
    replies = [(await call.say(line))[0] for line in
               (f"i'd like to book a cleaning on {day:%B} {day.day} at 10 am", "my name is Anna Lopez", "yes")]  # fmt: skip
    record = await call.close()  # (asserts after the call ends: a failed one leaves no pipeline running)
    assert replies[-1] is not None and replies[-1].startswith("You're booked"), replies
    (event,) = radicale.events()
    assert "Anna Lopez" in event  # the calendar is the business's: it has the name
    stored = store.calls.get("acme", record.call_id, actor="test")
    (booked,) = tool_turns(stored.turns)
    start = f"{day.isoformat()}T10:00:00"
    assert (booked.tool, booked.outcome, booked.ok) == ("book_appointment", "booked", True)
    assert booked.arguments["name"] == "[name]" and booked.arguments["service"] == "cleaning"
    assert booked.result["start"].startswith(start) and booked.result["service"] == "cleaning"
    assert "Anna" not in json.dumps([t.text for t in stored.turns])  # nor in the caller's turn: "[name]"
    assert stored.flags["tool_calls"] == [{"tool": "book_appointment", "outcome": "booked"}]
    assert tool_audit(store, "acme", record.call_id) == [f"call:{record.call_id} tool:book_appointment outcome:booked"]
    assert store.audit.verify().ok

    result = await generate_report(store, pool.llm("default"), "acme", record.call_id, turns=record.turns)
    assert result.status == "ready", result.error
    r = result.report
    assert r["appointment"]["slot"] == start and r["appointment"]["status"] == "booked"
    assert r["appointment"]["service"] == "cleaning" and r["purpose"] == "book an appointment"
    assert r["contact"]["name"] is None  # the policy redacts names
    store.close()


@pytest.mark.models
async def test_caldav_down_mid_booking_gets_an_apology_and_a_message_on_the_record(
    tmp_path: Path, pool: Any, receptionist: Any, radicale: Radicale, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    """The CalDAV server stops between two turns of a booking: the caller hears that the calendar
    cannot be reached and is offered a message, which a yes takes; the record has the failed
    ``book_appointment`` (which part failed and why) and the message taken, each audited; the
    report's need is the message and its purpose the booking the caller asked for."""
    from voicecore.reports import generate_report
    from voicecore.simulate import TextCall
    from voicecore.storage import Store

    monkeypatch.setenv("VOICECORE_DATA_DIR", str(tmp_path / "data"))
    store = Store(tmp_path / "data")
    store.tenants.create("acme", actor="test")
    config = with_caldav(receptionist, radicale.url)  # no take_message declared: a failure takes one anyway
    day = open_weekday(config)
    call = await TextCall.open(config, pool, store=store, tenant="acme")
    await call.next_reply()
    asked = (await call.say(f"i'd like to book a cleaning on {day:%B} {day.day} at 10 am"))[0]
    radicale.stop()
    replies = [(await call.say(line))[0] for line in ("my name is Anna Lopez", "yes",
               "Please call me back to book a cleaning next week.", "Anna Lopez", "yes")]  # fmt: skip
    record = await call.close()
    assert asked == "May I have your name, please?"  # the calendar answered: 10 am is free
    assert replies[0] == ("I'm sorry, I can't reach our calendar right now. I can take a message and we'll call you "
                          "back to book. Would you like to leave one?")  # fmt: skip
    assert replies[1] == "Of course. What would you like me to tell the team?"
    assert replies[2] == "Got it. And who is the message from?"
    assert replies[3].startswith("Let me read that back. From Anna Lopez: call me back to book")
    assert replies[4].startswith("Thank you, I'll pass your message on to the team.")
    stored = store.calls.get("acme", record.call_id, actor="test")
    failed, taken = tool_turns(stored.turns)
    assert (failed.tool, failed.outcome, failed.ok) == ("book_appointment", "failed", False)
    # which part failed and why (the stored text is redacted as transcripts are: the address's digits go)
    assert failed.error.startswith("CalendarUnavailable: CalDAV calendar 'Appointments' at http://")
    assert f":{radicale.port}/: server unreachable while listing events" in failed.error
    assert failed.arguments["service"] == "cleaning" and failed.arguments["start"].startswith(f"{day.isoformat()}T10:00")
    assert (taken.tool, taken.outcome, taken.arguments) == ("take_message", "taken", {"name": "Anna Lopez",
                                                                                     "for": "the team"})  # fmt: skip
    assert "call me back" not in json.dumps(taken.arguments)  # the text is only in the message turn
    assert [f["tool"] for f in stored.flags["tool_failures"]] == ["book_appointment"]
    assert stored.flags["tool_calls"] == [{"tool": "book_appointment", "outcome": "failed"},
                                          {"tool": "take_message", "outcome": "taken"}]  # fmt: skip
    assert tool_audit(store, "acme", record.call_id) == [
        f"call:{record.call_id} tool:book_appointment outcome:failed error:CalendarUnavailable",
        f"call:{record.call_id} tool:take_message outcome:taken"]  # fmt: skip

    result = await generate_report(store, pool.llm("default"), "acme", record.call_id, turns=record.turns)
    assert result.status == "ready", result.error
    r = result.report
    assert r["purpose"] == "book an appointment" and r["appointment"]["status"] == "failed"
    assert r["need"] == "call me back to book a cleaning next week" and r["contact"]["name"] == "Anna Lopez"
    store.close()


@pytest.mark.models
async def test_a_calendar_that_cannot_be_opened_is_said_and_recorded(tmp_path: Path, pool: Any, receptionist: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from voicecore.simulate import TextCall
    from voicecore.storage import Store

    monkeypatch.delenv(PASSWORD_ENV, raising=False)  # the password is not in the environment
    store = Store(tmp_path / "data")
    store.tenants.create("acme", actor="test")
    call = await TextCall.open(with_caldav(receptionist, "http://127.0.0.1:9/", messages=True), pool, store=store,
                               tenant="acme")  # fmt: skip
    await call.next_reply()
    replies = [(await call.say(line))[0] for line in ("can i book a cleaning please", "yes")]
    record = await call.close()
    assert replies == ["I'm sorry, I can't book appointments right now. I can take a message and we'll call you back "
                       "to book. Would you like to leave one?", "Of course. What would you like me to tell the team?"]  # fmt: skip
    (failed,) = tool_turns(record.turns)
    assert failed.outcome == "failed" and failed.error.startswith("CalendarAuthError: ") and PASSWORD_ENV in failed.error
    await wait_for(lambda: tool_audit(store, "acme", record.call_id))
    assert tool_audit(store, "acme", record.call_id) == [
        f"call:{record.call_id} tool:book_appointment outcome:failed error:CalendarAuthError"]
    store.close()


TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-auth-token-for-the-fake-0001"
TARGET = "+14155550199"


@pytest.mark.models
async def test_a_transfer_the_provider_refuses_is_said_recorded_and_a_message_taken(
    tmp_path: Path, pool: Any, receptionist: Any, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    """A Twilio call whose "Update a Call" the provider refuses (404: a call it does not know): the
    caller hears the announcement, then that they could not be put through and a message is offered;
    the record has the failed ``transfer`` with Twilio's error, audited; the call goes on."""
    from voicecore.records import CallRecord
    from voicecore.session import open_call
    from voicecore.simulate import TextCall
    from voicecore.storage import Store
    from voicecore.testing.provider_apis import FakeTwilioApi
    from voicecore.transports.file import TextTransport

    store = Store(tmp_path / "data")
    store.tenants.create("acme", actor="test")
    store.providers.set("acme", "twilio", {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN}, actor="test")
    config = with_caldav(receptionist, "http://127.0.0.1:9/", messages=True, transfer_to=TARGET)
    async with FakeTwilioApi(TWILIO_SID, TWILIO_TOKEN) as fake:
        monkeypatch.setenv("VOICECORE_TWILIO_API_BASE", fake.base_url)
        transport = TextTransport()
        record = CallRecord(pipeline=config.name, transport="twilio", provider_ids={"call_id": "CA" + "9" * 32},
                            caller="+14155550123")  # fmt: skip
        session = await open_call(pool=pool, config=config, transport=transport, store=store, tenant="acme",
                                  record=record)  # fmt: skip
        call = TextCall(session, transport)
        await call.next_reply()
        announcement = (await call.say("Can I speak to a real person please?"))[0]
        apology = await call.next_reply()
        offer = (await call.say("yes"))[0]
        went_on = not call.ended  # the call goes on after the refusal
        record = await call.close()
        assert announcement == config.tools.transfer.announcement
        assert apology == "I'm sorry, I couldn't put you through right now. Would you like to leave a message instead?"
        assert offer == "Of course. What would you like me to tell the team?" and went_on
        (update,) = fake.updates
        assert update.status == 404 and update.authorized
    stored = store.calls.get("acme", record.call_id, actor="test")
    (refused,) = tool_turns(stored.turns)
    assert (refused.tool, refused.outcome, refused.ok, refused.result) == ("transfer", "failed", False,
                                                                          {"provider": "twilio"})  # fmt: skip
    assert refused.error.startswith("20404: ")
    assert stored.flags["transfer"]["ok"] is False and stored.flags["tool_failures"][0]["tool"] == "transfer"
    assert tool_audit(store, "acme", record.call_id) == [
        f"call:{record.call_id} tool:transfer outcome:failed error:20404"]
    assert "4155550123" not in json.dumps([e.object_id for e in store.audit.list("acme", limit=500)])
    store.close()

