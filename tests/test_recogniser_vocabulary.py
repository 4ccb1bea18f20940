"""The facts prime the recogniser, and the demo's conversation books what it asks for (issue 13).

A caller's "Next Tuesday at ten" was heard by Whisper tiny.en as "next 2 steps", and "book a
cleaning appointment" as "work at cleaning appointments": the business's own words (its name,
services and open days, from ``facts:``) go into Whisper's prompt. The demo call is then checked
end to end on the real models: the appointment it asks for is in its calendar afterwards.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import icalendar
import numpy as np
import pytest

from voicecore.agent.facts import FactBook
from voicecore.config import PipelineConfig, load_pipeline
from voicecore.pipeline import recogniser_prompt

ROOT = Path(__file__).resolve().parent.parent
RECEPTIONIST = ROOT / "pipelines" / "receptionist.yaml"


def test_the_hint_names_the_business_its_services_and_open_days() -> None:
    config = load_pipeline(RECEPTIONIST)
    hint = FactBook(config.facts).recogniser_hint()
    assert hint == (
        "Bright Smile Dental. Book a cleaning, check-up, filling or whitening appointment on "
        "Monday, Tuesday, Wednesday, Thursday, Friday or Saturday."
    )
    assert "Sunday" not in hint  # a closed day is not suggested


def test_the_pipeline_hint_follows_the_facts_and_either_can_be_off() -> None:
    config = load_pipeline(RECEPTIONIST)
    facts = FactBook(config.facts)
    with_hint = config.model_copy(update={"stt_hint": "Invisalign"})
    assert recogniser_prompt(with_hint, facts).endswith("Saturday. Invisalign")
    off = with_hint.model_copy(update={"stt_vocabulary_from_facts": False})
    assert recogniser_prompt(off, facts) == "Invisalign"
    assert recogniser_prompt(off.model_copy(update={"stt_hint": ""}), facts) is None
    assert recogniser_prompt(with_hint, None) == "Invisalign"  # a pipeline without facts


def test_an_unknown_vocabulary_switch_is_refused(tmp_path: Path) -> None:
    from voicecore.config import ConfigError

    bad = tmp_path / "p.yaml"
    bad.write_text(RECEPTIONIST.read_text().replace("greeting:", "stt_vocabulary_from_facts: maybe\ngreeting:", 1))
    with pytest.raises(ConfigError, match="stt_vocabulary_from_facts"):
        load_pipeline(bad)


@pytest.mark.models
def test_the_facts_hint_makes_whisper_hear_the_service_and_the_day(pool) -> None:  # noqa: ANN001
    from benchmarks.corpus import load_corpus

    config = load_pipeline(RECEPTIONIST)
    engine = pool.stt("default")
    hint = recogniser_prompt(config, FactBook(config.facts))
    # u16 "Good morning, I am calling about a filling." (pink noise), u19 "Tuesday at ten would
    # be perfect." (brown noise): without the hint, "a feeling" and "To state and ..."
    for utterance, word in zip(load_corpus(["u16", "u19"]), ["filling", "tuesday"], strict=True):
        x = utterance.samples.astype(np.float32) / 32768
        plain = engine.transcribe_sync(x, None).lower()
        hinted = engine.transcribe_sync(x, hint).lower()
        assert word not in plain, plain  # what the test is about: without the hint, the word is lost
        assert word in hinted, hinted


@pytest.mark.models
async def test_the_demo_books_the_appointment_it_asks_for(pool, tmp_path: Path) -> None:  # noqa: ANN001
    from voicecore.simulate import DEMO_CALLER_LINES, run_demo

    config: PipelineConfig = load_pipeline(RECEPTIONIST)
    assert any("Tuesday morning at ten" in line for line in DEMO_CALLER_LINES)
    result = await run_demo(config, pool, tmp_path, realtime=False)
    assert result.calendar_path == (tmp_path / "demo-calendar.ics").resolve()
    assert result.calendar_path.exists(), "\n".join(f"{t.role}: {t.text}" for t in result.record.turns)
    events = icalendar.Calendar.from_ical(result.calendar_path.read_bytes()).walk("VEVENT")
    assert len(events) == 1, [str(e.get("SUMMARY")) for e in events]
    zone = ZoneInfo(config.facts.timezone)
    start = events[0].decoded("DTSTART").astimezone(zone)
    today = datetime.now(zone).date()
    assert start.strftime("%A %H:%M") == "Tuesday 10:00"
    assert today < start.date() <= today + timedelta(days=14)
    assert "cleaning" in str(events[0].get("SUMMARY")).lower()
    assert result.record.flags["appointments"][0]["service"] == "cleaning"
    assert result.record.end_reason in ("agent_hangup", "completed", "end_call"), result.record.end_reason
    # a second run starts from an empty calendar again
    again = await run_demo(config, pool, tmp_path, realtime=False)
    assert again.calendar_path.exists(), "\n".join(f"{t.role}: {t.text}" for t in again.record.turns)
    assert len(icalendar.Calendar.from_ical(again.calendar_path.read_bytes()).walk("VEVENT")) == 1
