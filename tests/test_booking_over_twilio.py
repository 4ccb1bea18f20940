"""A spoken booking over a Twilio media stream, through the real default models, into a real CalDAV
calendar (Radicale on 127.0.0.1), and into the call's record and its post-call report (issue 13, Tests).

The caller (espeak-ng, 8 kHz μ-law as Twilio sends it) asks for a cleaning next Tuesday morning at
ten, gives a name and says yes to the read-back. Afterwards the event is read from Radicale with
the caldav client (not through the code under test): the right day, time and service.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from caldav_server import PASSWORD, USER, events, radicale_server
from conftest import TelephonyServer
from test_telephony_calls import (
    QUESTION_VOICE,
    converse,
    server_session,
    stored_call,
    wait_greeting,
)

from voicecore.config import load_pipeline
from voicecore.testing.callers import TwilioClient

pytestmark = pytest.mark.asyncio(loop_scope="session")

RECEPTIONIST = Path(__file__).resolve().parent.parent / "pipelines" / "receptionist.yaml"
CALENDAR = "Front desk"
OPENING = "I would like to book a cleaning appointment."
ANSWERS = [  # what the agent asked → what the caller says
    ("name", "My name is John Smith."),
    ("which day", "Next Tuesday morning at ten, please."),
    # (espeak's "ten" alone over 8 kHz is often heard as "and"; "10 am" after the day is not)
    ("time", "Next Tuesday morning at 10 am, please."),
    ("which would you like", "Next Tuesday morning at 10 am, please."),
    ("would one of those", "Next Tuesday morning at 10 am, please."),
    ("would you like to book", "A cleaning, please."),
]


def answer(asked: str) -> str:
    """What this caller says to the agent's last words (lower case), as a person would."""
    if "shall i book" in asked:  # a read-back: yes when it is what was asked for, else say so again
        # (not "Yes, please.": espeak's comma pause ends the turn at "Yes.")
        return "Yes please." if "tuesday" in asked and "at 10 am" in asked else "No, ten o'clock please."
    return next((ln for cue, ln in ANSWERS if cue in asked), OPENING)


def last_agent_text(server: TelephonyServer, client: TwilioClient) -> str:
    session = server_session(server, client)
    replies = [t.text for t in session.record.turns if t.role == "agent"] if session is not None else []
    return replies[-1] if replies else ""


@pytest.mark.models
async def test_a_spoken_twilio_booking_lands_in_radicale_and_the_record(pool, say, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from voicecore.server import create_app, running_server
    from voicecore.storage import Store

    monkeypatch.setenv("VC_TEST_CALDAV_PASSWORD", PASSWORD)
    with radicale_server(tmp_path / "radicale", calendar=CALENDAR) as url:
        base = load_pipeline(RECEPTIONIST)
        data = base.model_dump(mode="json", exclude_none=True)
        data["name"] = "desk-caldav"
        data["tools"]["book_appointment"]["calendar"] = {"caldav": {
            "url": url, "username": USER, "password_env": "VC_TEST_CALDAV_PASSWORD", "calendar": CALENDAR}}
        config = type(base).model_validate(data)
        assert config.tools.book_appointment.calendar.caldav is not None
        store = Store(tmp_path / "data")
        key = store.tenants.create("acme", actor="test")
        app = create_app(data_dir=tmp_path / "data", pool=pool, store=store, pipeline=config.name,
                         pipelines={config.name: config}, preload=False)  # fmt: skip
        try:
            async with running_server(app) as base_url:
                server = TelephonyServer(base_url, app, store, {"acme": key}, tmp_path / "data")
                client = TwilioClient(server.ws_url("twilio"), token=key, caller="+14155550100", label="caldav-booking")
                try:
                    assert await client.start()
                    await wait_greeting(client, server=server)
                    # The caller answers what the agent asked (read from the server's session, as a
                    # person would hear it): Whisper tiny.en over 8 kHz μ-law mishears now and then, and
                    # the agent asks again; a caller then answers again.
                    said = []
                    for _ in range(10):
                        asked = last_agent_text(server, client).lower()
                        if "booked" in asked:
                            break
                        line = answer(asked)
                        said.append(line)
                        await converse(client, say(line, voice=QUESTION_VOICE, speed=130), server=server)
                    await client.hangup()
                finally:
                    await client.close()
                call = await stored_call(server, client, tenant="acme")
                # serve writes the post-call report (about 10 s of the model after the hang-up)
                report = None
                deadline = asyncio.get_running_loop().time() + 180
                while report is None and asyncio.get_running_loop().time() < deadline:
                    report = await asyncio.to_thread(store.calls.get_report, "acme", call.call_id, actor="test")
                    if report is None:
                        await asyncio.sleep(0.5)
        finally:
            store.close()
        heard = "\n".join(f"{t.role}: {t.text}" for t in call.turns if t.role in ("caller", "agent"))
        booked = events(url, CALENDAR)
        assert len(booked) == 1, (said, heard)
    zone = ZoneInfo(config.facts.timezone)
    start = booked[0].decoded("DTSTART").astimezone(zone)
    today = datetime.now(zone).date()
    assert start.strftime("%A %H:%M") == "Tuesday 10:00", heard
    assert today < start.date() <= today + timedelta(days=14)
    assert "cleaning" in str(booked[0].get("SUMMARY")).lower()
    # the report's slot is the booking's (from the tool record, not from what the model heard)
    assert report is not None and report.status == "ready", report
    assert report.body["appointment"]["status"] == "booked", report.body
    # (the report's slot is the business's wall-clock time, as its other fields)
    assert datetime.fromisoformat(report.body["appointment"]["slot"]) == start.replace(tzinfo=None), report.body
    assert report.body["purpose"] == "book an appointment", report.body
    (appointment,) = call.flags["appointments"]
    assert appointment["service"] == "cleaning"
    assert datetime.fromisoformat(appointment["start"]).astimezone(zone) == start
