"""The do-not-call phrase matcher."""

from __future__ import annotations

import pytest

from voicecore.policy import Policy, is_optout_request, optout_requested
from voicecore.policy.optout import OptOutMatcher

OPT_OUT = [
    "Don't call me again!",
    "don’t call me again",  # curly apostrophe from STT
    "Please do not call this number anymore.",
    "Never call me again.",
    "Don't ever call us again",
    "Stop calling me.",
    "stop calling",
    "Just stop calling, OK?",
    "I need you to stop calling me",
    "Quit calling me and leave me alone",
    "Remove me from your list",
    "Take me off your calling list please",
    "take me off the list",
    "delete my number",
    "Put me on the do not call list",
    "Do not call.",
    "Unsubscribe",
    "I want to opt out",
    "No more calls, thanks",
    "I don't want any more calls",
    "I don't want you to call me again",
    "I don't want to be called again",
    "lose my number",
]

NOT_OPT_OUT = [
    "Can you call me again tomorrow?",
    "Please call me back",
    "Don't call me before noon",
    "Do not call after 5",
    "Don't call me Shirley",
    "I'll stop calling my mother",
    "should I stop calling you",
    "remove me from the waiting list",
    "I don't want to miss your call",
    "call me any time",
    "Stop, I need to call my wife",
    "I was calling about my order",
    "Can you take me off the morning shift?",
    "",
]


@pytest.mark.parametrize("text", OPT_OUT)
def test_opt_out_phrases_match(text: str) -> None:
    assert is_optout_request(text)


@pytest.mark.parametrize("text", NOT_OPT_OUT)
def test_ordinary_requests_do_not_match(text: str) -> None:
    assert not is_optout_request(text)


def test_policy_extra_phrases() -> None:
    p = Policy.model_validate({"optout": {"extra_phrases": ["never ring this number again"]}})
    assert optout_requested(p, "Please, never ring this number again!")
    assert not optout_requested(p, "ring this number")
    assert OptOutMatcher.for_policy(p).matches("NEVER ring this number again")


def test_disabled_policy_never_matches() -> None:
    p = Policy.model_validate({"optout": {"enabled": False}})
    assert not optout_requested(p, "stop calling me")
    assert optout_requested(Policy(), "stop calling me")


def test_none_is_not_a_request() -> None:
    assert not is_optout_request(None)
