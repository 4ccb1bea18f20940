"""Do-not-call phrase matcher: did the caller ask not to be called again?

A small, deterministic matcher (the LLM is not trusted with this). It errs on the
side of precision for ordinary requests ("can you call me again tomorrow" is not
an opt-out, neither is "don't call me before noon") while catching the usual
ways English speakers say it:

* "don't call me again", "never call me again", "please do not call this number anymore"
* "stop calling me", "quit calling", "stop contacting me"
* "remove me from your list", "take me off your calling list", "delete my number"
* "put me on the do not call list", "do not call"
* "unsubscribe", "opt out", "no more calls", "I don't want any more calls", "lose my number"

Policies can add phrases (``optout.extra_phrases``); they match as whole words,
case- and punctuation-insensitively.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from voicecore.policy.models import Policy

_NOT = r"(?:do not|dont|don't|never|please don't|please do not)"
_CALL = r"(?:call|ring|phone|contact|text|bother)"
_CALLING = r"(?:calling|ringing|phoning|contacting|texting|bothering)"
_ME = r"(?:me|us|this number|my number|here|this line)"
_AGAIN = r"(?:again|anymore|any more|ever again|from now on|in future|in the future)"
_LIST = r"(?:(?:call|calling|contact|phone|mailing|marketing|dialing|dialling) )?(?:list|database|system|records)"

_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        # don't call me again / never call this number anymore / don't ever contact us again
        rf"\b{_NOT} (?:ever )?{_CALL}(?: {_ME})?(?: \w+)? {_AGAIN}\b",
        # stop calling (me) / quit calling / stop contacting this number
        # (not when the caller speaks about themself: "I'll stop calling", "should I stop calling you")
        (
            rf"(?<!\bi )(?<!\bi'll )(?<!\bwill )(?<!\bwe )(?<!\bshould )(?<!\bcan )"
            rf"\b(?:stop|quit|cease) {_CALLING}(?: {_ME})?(?: {_AGAIN})?(?: please)?(?:$| and| or| it| ok| okay| now)"
        ),
        # remove me from your list / take me off the calling list / delete my number
        (
            r"\b(?:remove|take|delete|drop|erase|strike|scratch) (?:me|my number|my phone number|my details|us) "
            rf"(?:off|from|out of) (?:of )?(?:your |the |this |all )?(?:{_LIST})\b"
        ),
        r"\b(?:remove|delete|erase|forget|lose) my (?:phone )?number\b",
        # do not call list / do-not-call register
        r"\bdo not call (?:list|register|registry)\b",
        # a bare "do not call" at the end of what was said
        r"\b(?:do not|don't|dont) call(?: me| us)?(?: please)?$",
        r"\bunsubscribe\b",
        r"\bopt(?: |-)?out\b",
        r"\bno more (?:phone )?calls\b",
        (
            r"\b(?:i|we) (?:do not|don't|dont) want (?:any more|anymore|more|any|to (?:receive|get)(?: any)?(?: more)?)"
            r"(?: of)?(?: (?:your|these|those|the))? (?:phone )?calls\b"
        ),
        rf"\b(?:i|we) (?:do not|don't|dont) want (?:you|anyone|you guys) to {_CALL}(?: {_ME})? {_AGAIN}\b",
        rf"\b(?:i|we) (?:do not|don't|dont) want to be {_CALL}ed {_AGAIN}\b",
        r"\bnever (?:want to )?hear from you again\b",
    )
)


def normalize_utterance(text: str) -> str:
    """Lower-case, straight apostrophes, punctuation to spaces (keeping apostrophes), single spaces."""
    t = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    t = re.sub(r"[^\w'\s]", " ", t)
    t = re.sub(r"\s+", " ", t).strip()
    # keep "don't" and "dont" equivalent by spelling both ways in the patterns
    return t


@dataclass(frozen=True)
class OptOutMatcher:
    """Matches caller utterances that ask not to be called again."""

    extra_phrases: tuple[str, ...] = ()
    _extra: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        compiled = tuple(
            re.compile(r"\b" + re.escape(normalize_utterance(p)).replace(r"\ ", " ") + r"\b")
            for p in self.extra_phrases
            if normalize_utterance(p)
        )
        object.__setattr__(self, "_extra", compiled)

    @classmethod
    def for_policy(cls, policy: Policy) -> OptOutMatcher:
        return cls(tuple(policy.optout.extra_phrases))

    def matches(self, text: str | None) -> bool:
        if not text:
            return False
        t = normalize_utterance(text)
        return any(p.search(t) for p in _PATTERNS) or any(p.search(t) for p in self._extra)


def is_optout_request(text: str | None, extra_phrases: Iterable[str] = ()) -> bool:
    """Whether ``text`` asks not to be called again (see module docstring for what matches)."""
    return OptOutMatcher(tuple(extra_phrases)).matches(text)


def optout_requested(policy: Policy, text: str | None) -> bool:
    """The policy-aware decision: ``False`` when the policy disables opt-out detection."""
    return policy.optout.enabled and OptOutMatcher.for_policy(policy).matches(text)
