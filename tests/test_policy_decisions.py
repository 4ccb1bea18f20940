"""Recording, retention, consent and processing-location decisions."""

from __future__ import annotations

import pytest

from voicecore.policy import (
    BackendInfo,
    LocationViolation,
    Policy,
    check_pipeline_location,
    consent_answer,
    expires_at,
    is_stored,
    load_policy_text,
    location_violations,
    may_record,
    recording_decision,
)

CONSENT = Policy.model_validate(
    {"recording": {"mode": "consent", "announcement": "May we record?"}, "retention": {"recordings": 30}}
)
ON = Policy.model_validate({"recording": {"mode": "on"}, "retention": {"recordings": 30}})
OFF = Policy()


@pytest.mark.parametrize(
    ("policy", "consent", "allowed"),
    [
        (OFF, None, False),
        (OFF, True, False),  # consent does not override "off"
        (ON, None, True),
        (CONSENT, None, False),  # no answer = no recording
        (CONSENT, False, False),
        (CONSENT, True, True),
    ],
)
def test_may_record(policy: Policy, consent: bool | None, allowed: bool) -> None:
    assert may_record(policy, consent) is allowed


def test_recording_decision() -> None:
    d = recording_decision(CONSENT)
    assert d.ask_consent and not d.start_immediately and d.announcement == "May we record?"
    d = recording_decision(ON)
    assert d.start_immediately and not d.ask_consent
    d = recording_decision(OFF)
    assert not d.start_immediately and not d.ask_consent and d.announcement is None


@pytest.mark.parametrize(
    ("text", "dtmf", "expected"),
    [
        ("Yes.", None, True),
        ("yeah sure, go ahead", None, True),
        ("Okay", None, True),
        ("No problem", None, True),
        ("No thanks", None, False),
        ("I don't want that", None, False),
        ("yes, actually no", None, False),
        ("what was that?", None, None),
        ("", None, None),
        (None, "1", True),
        (None, "2", False),
        ("no", "1", True),  # the key press is unambiguous
    ],
)
def test_consent_answer(text: str | None, dtmf: str | None, expected: bool | None) -> None:
    assert consent_answer(text, dtmf) is expected


def test_expiry_per_data_class() -> None:
    p = Policy()
    assert expires_at(p, "transcripts", 1000.0) == 1000.0 + 30 * 86400
    assert expires_at(p, "metadata", 0.0) == 365 * 86400
    assert expires_at(p, "recordings", 0.0) is None
    assert not is_stored(p, "recordings") and is_stored(p, "transcripts")
    with pytest.raises(ValueError, match="unknown data class"):
        expires_at(p, "audio", 0.0)


LOCAL = BackendInfo("stt", is_local=True)


def test_local_only_refuses_remote_backend_with_reason() -> None:
    remote = BackendInfo.from_endpoint("llm", "https://api.example.com/v1", region="us")
    assert not remote.is_local
    with pytest.raises(LocationViolation) as info:
        check_pipeline_location(Policy(), [LOCAL, remote])
    assert "llm" in str(info.value) and "api.example.com" in str(info.value) and "local" in str(info.value)
    check_pipeline_location(Policy(), [LOCAL, BackendInfo.from_endpoint("llm", "http://127.0.0.1:8080")])


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        (None, True),
        ("http://localhost:8000", True),
        ("http://127.0.0.1:9000/v1", True),
        ("http://[::1]:8000", True),
        ("unix:///run/llm.sock", True),
        ("https://api.openai.com/v1", False),
        ("10.0.0.5:8000", False),
        ("http://localhost.evil.com", False),
    ],
)
def test_backend_locality_from_endpoint(endpoint: str | None, local: bool) -> None:
    assert BackendInfo.from_endpoint("llm", endpoint).is_local is local


def test_allowed_regions() -> None:
    p = load_policy_text("processing:\n  local_only: false\n  allowed_regions: [eu, uk]\n")
    ok = BackendInfo("llm", False, "eu", "https://eu.example.com")
    us = BackendInfo("tts", False, "us", "https://us.example.com")
    unknown = BackendInfo("stt", False, None, "https://x.example.com")
    assert location_violations(p, [LOCAL, ok]) == []
    reasons = location_violations(p, [us, unknown])
    assert len(reasons) == 2
    assert "'us'" in reasons[0] and "declares no region" in reasons[1]
    # no region list: any remote backend is fine
    anywhere = load_policy_text("processing:\n  local_only: false\n")
    assert location_violations(anywhere, [us, unknown]) == []


def test_outbound_refusal():
    from voicecore.policy import outbound_refusal

    assert outbound_refusal(opted_out=False, restricted=False) is None
    assert "opt-out" in outbound_refusal(opted_out=True, restricted=False)
    assert "restricted" in outbound_refusal(opted_out=False, restricted=True)
