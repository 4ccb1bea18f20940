"""Phone number normalisation to E.164, the one form storage keys data subjects by."""

from __future__ import annotations

import re

import phonenumbers


class InvalidPhoneNumber(ValueError):
    """The text is not a phone number that can be read in the given region."""


_URI_PREFIX = re.compile(r"^(?:tel:|sip:|sips:)", re.IGNORECASE)


def parse_phone(raw: str, region: str = "US") -> phonenumbers.PhoneNumber:
    """``raw`` parsed by phonenumbers (numbers without a country code read in ``region``).

    Accepts "+1 415-555-2671", "(415) 555-2671", "0033 6…", "tel:+14155552671",
    "sip:+14155552671@host". Raises :class:`InvalidPhoneNumber` when the text is not a
    possible phone number.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidPhoneNumber("empty phone number")
    text = _URI_PREFIX.sub("", raw.strip())
    if "@" in text:  # SIP URI user part
        text = text.split("@", 1)[0]
    if text.startswith("00") and text[2:3].isdigit():
        text = "+" + text[2:]
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber(f"not a phone number ({exc._msg})") from None
    if not phonenumbers.is_possible_number(number):
        raise InvalidPhoneNumber(f"not a possible phone number for region {region}")
    return number


def normalize_phone(raw: str, region: str = "US") -> str:
    """``raw`` as E.164 (``+14155552671``); see :func:`parse_phone` for what is accepted.
    Raises :class:`InvalidPhoneNumber` when the text is not a possible phone number."""
    return phonenumbers.format_number(parse_phone(raw, region), phonenumbers.PhoneNumberFormat.E164)


def try_normalize_phone(raw: str | None, region: str = "US") -> str | None:
    """Like :func:`normalize_phone`, but ``None`` for missing or unreadable input."""
    if raw is None:
        return None
    try:
        return normalize_phone(raw, region)
    except InvalidPhoneNumber:
        return None


def subject_key(raw: str, region: str = "US") -> str:
    """The canonical text a caller identifier is keyed by: E.164 if it is a number, else the trimmed,
    lower-cased identifier (``anonymous``, ``client:alice``), so the same caller always gets the same key."""
    e164 = try_normalize_phone(raw, region)
    return e164 if e164 is not None else raw.strip().lower()
