"""Policy files: shipped examples load, bad files are rejected naming the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from voicecore.policy import (
    DEFAULT_POLICY,
    Policy,
    PolicyError,
    load_policy,
    load_policy_text,
    policy_from_data,
    policy_to_yaml,
)

POLICIES = Path(__file__).resolve().parent.parent / "policies"


def test_default_yaml_is_privacy_first_and_equals_code_defaults() -> None:
    p = load_policy(POLICIES / "default.yaml")
    assert p.recording.mode == "off"
    assert p.retention.recordings == 0
    assert p.retention.transcripts == 30
    assert p.retention.metadata == 365
    assert p.redaction.enabled is True
    assert set(p.redaction.categories) == {"phone", "email", "card", "iban", "spoken_digits"}
    assert p.processing.local_only is True
    # The file and the code defaults (what a tenant without a policy gets) agree.
    assert p.model_dump(exclude={"description"}) == DEFAULT_POLICY.model_dump(exclude={"description"})


def test_recorded_consent_yaml() -> None:
    p = load_policy(POLICIES / "recorded-consent.yaml")
    assert p.recording.mode == "consent"
    assert p.recording.announcement and "record" in p.recording.announcement
    assert p.retention.recordings > 0
    assert p.processing.local_only is False and p.processing.allowed_regions


def test_no_storage_yaml_stores_only_metadata() -> None:
    p = load_policy(POLICIES / "no-storage.yaml")
    r = p.retention
    assert (r.recordings, r.transcripts, r.reports, r.contacts) == (0, 0, 0, 0)
    assert r.metadata > 0
    assert p.recording.mode == "off"


def test_yaml12_booleans_mode_off_unquoted() -> None:
    # In YAML 1.1 `off`/`on` are booleans; the policy loader reads them as the strings they look like.
    assert load_policy_text("recording:\n  mode: off\n").recording.mode == "off"
    p = load_policy_text("recording:\n  mode: on\nretention:\n  recordings: 7\n")
    assert p.recording.mode == "on"


def test_round_trip_to_yaml() -> None:
    p = load_policy(POLICIES / "recorded-consent.yaml")
    assert load_policy_text(policy_to_yaml(p)) == p


INVALID: list[tuple[str, str, str]] = [
    # (name, yaml text, field the error must name)
    ("unknown top-level key", "recordings: off\n", "recordings"),
    ("unknown nested key", "retention:\n  transcript: 30\n", "retention.transcript"),
    ("negative lifetime", "retention:\n  transcripts: -1\n", "retention.transcripts"),
    ("absurd lifetime", "retention:\n  metadata: 100000\n", "retention.metadata"),
    ("lifetime as string", "retention:\n  reports: '30'\n", "retention.reports"),
    ("lifetime as float", "retention:\n  contacts: 2.5\n", "retention.contacts"),
    ("lifetime as bool", "retention:\n  contacts: true\n", "retention.contacts"),
    ("unknown recording mode", "recording:\n  mode: sometimes\n", "recording.mode"),
    (
        "consent without announcement",
        "recording:\n  mode: consent\nretention:\n  recordings: 5\n",
        "recording.announcement",
    ),
    ("recording on but never stored", "recording:\n  mode: on\nretention:\n  recordings: 0\n", "retention.recordings"),
    ("metadata shorter than transcripts", "retention:\n  transcripts: 90\n  metadata: 30\n", "retention.metadata"),
    ("unknown redaction category", "redaction:\n  categories: [phone, ssn]\n", "redaction.categories[1]"),
    ("duplicate redaction category", "redaction:\n  categories: [phone, phone]\n", "redaction.categories"),
    ("redaction enabled not a bool", "redaction:\n  enabled: yes\n", "redaction.enabled"),
    (
        "unknown region",
        "processing:\n  local_only: false\n  allowed_regions: [eu, mars]\n",
        "processing.allowed_regions[1]",
    ),
    (
        "regions with local_only",
        "processing:\n  local_only: true\n  allowed_regions: [eu]\n",
        "processing.allowed_regions",
    ),
    ("history bound zero", "context:\n  max_history_turns: 0\n", "context.max_history_turns"),
    ("history bound absurd", "context:\n  max_history_turns: 100000\n", "context.max_history_turns"),
    ("bad contact field name", "context:\n  contact_fields: ['Name; drop']\n", "context.contact_fields[0]"),
    ("unknown phone region", "phone_region: XX\n", "phone_region"),
    (
        "bad consent dtmf",
        "recording:\n  mode: consent\n  announcement: ok?\n  consent_dtmf: '12'\nretention:\n  recordings: 5\n",
        "recording.consent_dtmf",
    ),
    ("unknown version", "version: 2\n", "version"),
    ("opt-out phrase too short", "optout:\n  extra_phrases: ['no']\n", "optout.extra_phrases[0]"),
    ("unknown opt-out key", "optout:\n  phrases: [stop]\n", "optout.phrases"),
    ("section not a mapping", "retention: 30\n", "retention"),
    ("duplicate key", "retention:\n  transcripts: 1\n  transcripts: 2\n", "transcripts"),
    ("not yaml", "retention: [\n", "<yaml>"),
    ("empty file", "", "<policy>"),
    ("top level list", "- a\n- b\n", "<policy>"),
]


@pytest.mark.parametrize(("name", "text", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_policy_file_rejected_naming_file_and_field(tmp_path: Path, name: str, text: str, field: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    err = info.value
    assert err.field == field, f"{name}: expected field {field!r}, got {err.field!r} ({err})"
    assert str(path) in str(err)
    assert field in str(err)


def test_at_least_fifteen_invalid_cases() -> None:
    assert len(INVALID) >= 15


def test_all_problems_are_reported() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text("retention:\n  transcripts: -1\n  reports: -2\n")
    fields = [f for f, _ in info.value.problems]
    assert "retention.transcripts" in fields and "retention.reports" in fields


def test_unknown_key_error_lists_allowed_keys() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text("retention:\n  transcript: 3\n")
    assert "transcripts" in info.value.message


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "nope.yaml")
    assert info.value.field == "<file>"


def test_policy_from_plain_yaml11_data_maps_booleans() -> None:
    # Someone loading with yaml.safe_load gets mode: False; it still means "off".
    assert policy_from_data({"recording": {"mode": False}}).recording.mode == "off"


def test_policy_is_immutable() -> None:
    p = Policy()
    with pytest.raises(ValidationError, match="frozen"):
        p.recording = None  # type: ignore[misc,assignment]
