"""Phone number normalisation to E.164 (the key data subjects are found by)."""

from __future__ import annotations

import pytest

from voicecore.policy import InvalidPhoneNumber, normalize_phone, try_normalize_phone
from voicecore.policy.phone import subject_key


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+14155552671", "US", "+14155552671"),
        ("(415) 555-2671", "US", "+14155552671"),
        ("415.555.2671", "US", "+14155552671"),
        ("1-415-555-2671", "US", "+14155552671"),
        ("tel:+14155552671", "US", "+14155552671"),
        ("sip:+14155552671@pbx.example.com", "US", "+14155552671"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("0044 20 7946 0958", "US", "+442079460958"),
        ("+44 20 7946 0958", "US", "+442079460958"),
        ("030 123456", "DE", "+4930123456"),
    ],
)
def test_normalize_phone(raw: str, region: str, expected: str) -> None:
    assert normalize_phone(raw, region) == expected


@pytest.mark.parametrize("raw", ["", "   ", "not a number", "12", "anonymous"])
def test_invalid_numbers_are_rejected_without_echoing_them(raw: str) -> None:
    with pytest.raises(InvalidPhoneNumber) as info:
        normalize_phone(raw)
    if raw.strip():
        assert raw not in str(info.value)
    assert try_normalize_phone(raw) is None


def test_subject_key_for_non_numbers_is_stable() -> None:
    assert subject_key(" Anonymous ") == "anonymous"
    assert subject_key("client:Alice") == "client:alice"
    assert subject_key("(415) 555-2671") == "+14155552671"
