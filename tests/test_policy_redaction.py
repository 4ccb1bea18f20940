"""Redaction of caller text: a table of what must and must not be redacted."""

from __future__ import annotations

import pytest

from voicecore.policy.redaction import (
    digits_match_number,
    find_sensitive,
    number_mentions,
    redact,
    scrub_number,
    spoken_to_digits,
)

REDACTED: list[tuple[str, str]] = [
    # phone numbers, written
    ("Call me at 415 555 2671 please", "Call me at [phone number] please"),
    ("my number is (415) 555-2671.", "my number is [phone number]."),
    ("it's +44 20 7946 0958", "it's [phone number]"),
    ("4155552671", "[phone number]"),
    # e-mail, written and spoken
    ("mail ada.lovelace@example.com today", "mail [email address] today"),
    ("it's ada dot lovelace at example dot com", "it's [email address]"),
    ("John.Smith@Example.co.uk", "[email address]"),
    # cards (Luhn)
    ("card 4111 1111 1111 1111 expires soon", "card [card number] expires soon"),
    ("5500-0000-0000-0004", "[card number]"),
    ("378282246310005", "[card number]"),
    # a 16-digit number failing Luhn is not a card, but still a long number
    ("4111 1111 1111 1112", "[number]"),
    # IBAN (mod 97), grouped or not, followed by words
    ("IBAN GB82 WEST 1234 5698 7654 32 thanks", "IBAN [IBAN] thanks"),
    ("DE89370400440532013000", "[IBAN]"),
    # digits spoken as words
    ("four one five five five five two six seven one", "[phone number]"),
    ("my pin is one two three four", "my pin is [number]"),
    ("it's four one five, five five five, twenty six seventy one", "it's [phone number]"),
    # a UK national number read with the default region US is still redacted, as a number
    ("oh two oh seven nine four six oh nine five eight", "[number]"),
    ("double five triple seven one two", "[phone number]"),
    ("plus four four two zero seven nine four six zero nine five eight", "[phone number]"),
    ("one eight hundred five five five one two one two", "[phone number]"),
    ("four one one one one one one one one one one one one one one one", "[card number]"),
    # spoken mixed with digits
    ("call 4 1 5 five five five 2671", "call [phone number]"),
    ("the code is 7 seven 3 one", "the code is [number]"),
    # long digit runs (fallback)
    ("order 12345678 shipped", "order [number] shipped"),
    ("reference 554-221-09", "reference [number]"),
    # what Whisper (tiny.en) wrote for read-out numbers in real calls: groups cut by ", " or ". ",
    # digits lost, a number cut short or split over turns
    ("My card number is 4539, 1488, 0343, 6467.", "My card number is [card number]."),
    ("My current number is 4539, 148, 0343, 647", "My current number is [number]"),
    ("My card number is 4539, 1 488, 0343647", "My card number is [number]"),
    ("My card number is 453 9 1 4 8 8 0 3 4 3 6 4 6 7", "My card number is [card number]"),
    ("My card number is 4539.", "My card number is [number]."),
    ("the last digits are 647", "the last digits are [number]"),
    ("You can reach me at 415, 555, 0132.", "You can reach me at [number]."),
    ("You can reach me at 415, 515, 515, 0132.", "You can reach me at [number]."),
    ("You can reach me at 415. 515. 0132.", "You can reach me at [phone number]."),
    # ... and for spoken e-mail addresses: the "at" dropped, misheard or cut off by punctuation
    ("My email address is john.smith.example.com", "My email address is [email address]"),
    ("My email is jah.miss.miss.mimple.com", "My email is [email address]"),
    ("My email is jon.mit. At. Example.com.", "My email is [email address]."),
    ("My email is jah.mit. And, example.com.", "My email is [email address]."),
    ("My email is marry.jones and outlook.com", "My email is [email address]"),
    ("My email is john dot miss and example dot com", "My email is [email address]"),
    ("My email address is jah-dot-mithen-emple-dot-com", "My email address is [email address]"),
    ("My email address is john smith at example.com", "My email address is [email address]"),
    ("email me at john.mit.example.com", "email me at [email address]"),
    ("My email is jah.mit.e.e.e", "My email is [email address]"),
]

NOT_REDACTED: list[str] = [
    "I'm free at ten or eleven",
    "Oh, one more thing",
    "I need two tickets for the nine o'clock show",
    "room four oh four",
    "nineteen eighty five",
    "twenty twenty four",
    "meeting on 2024-05-01 at 10:30",
    "It costs 1,500 dollars",
    "I have 3 kids aged 5 and 7",
    "the zip is 94107",
    "at seven thirty tomorrow",
    "I'll be there at 9.",
    "one or two people",
    "We're at the office now",
    "double check please",
    "triple A membership",
    "My email is not working, can you help?",
    "I sent an email to the office yesterday.",
    "Visit www.example.com for more",
    "My email is down. In the morning I will call",
    "I'll be there at 9. 10 of us are coming.",
    "I can come at 10, 11 or 12",
    "my number is on the form",
]


@pytest.mark.parametrize(("text", "expected"), REDACTED)
def test_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", NOT_REDACTED)
def test_not_redacted(text: str) -> None:
    assert redact(text) == text
    assert find_sensitive(text) == []


@pytest.mark.parametrize(("text", "_expected"), REDACTED)
def test_redaction_is_idempotent(text: str, _expected: str) -> None:
    once = redact(text)
    assert redact(once) == once


def test_categories_are_respected() -> None:
    text = "card 4111 1111 1111 1111, mail a@b.com, call 415 555 2671"
    assert redact(text, ["email"]) == "card 4111 1111 1111 1111, mail [email address], call 415 555 2671"
    assert redact(text, ["card"]) == "card [card number], mail a@b.com, call 415 555 2671"
    assert redact(text, []) == text
    # spoken digits are only redacted with spoken_digits
    assert redact("four one five five five five two six seven one", ["phone"]) == (
        "four one five five five five two six seven one"
    )


def test_unknown_category_is_an_error() -> None:
    with pytest.raises(ValueError, match="ssn"):
        redact("x", ["ssn"])


def test_default_region_reads_national_numbers() -> None:
    assert redact("ring 020 7946 0958", region="GB") == "ring [phone number]"
    assert redact("oh two oh seven nine four six oh nine five eight", region="GB") == "[phone number]"


def test_findings_carry_digits() -> None:
    (f,) = find_sensitive("four one five five five five two six seven one")
    assert f.kind == "phone" and f.digits == "4155552671"


def test_spoken_to_digits() -> None:
    assert spoken_to_digits("four one five double five") == "41555"
    assert spoken_to_digits("triple oh") == "000"


def test_number_mentions_and_matching() -> None:
    e164 = "+14155552671"
    for form in ("+14155552671", "(415) 555-2671", "1-415-555-2671", "four one five five five five two six seven one"):
        mentions = number_mentions(f"reach me at {form} ok")
        assert any(m.digits and digits_match_number(m.digits, e164) for m in mentions), form
    assert not digits_match_number("4155552672", e164)


def test_scrub_number_replaces_every_form_and_nothing_else() -> None:
    text = (
        "mine is four one five five five five two six seven one, or (415) 555-2671, or +14155552671; "
        "my wife's is 415 555 2672"
    )
    out, n = scrub_number(text, "+14155552671")
    assert n == 3
    assert "2671" not in out and "seven one" not in out
    assert "415 555 2672" in out
