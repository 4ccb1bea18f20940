"""Redaction of caller text: phone numbers, e-mail addresses, card numbers, IBANs, spoken digits, names.

Pure functions of (text, categories, region). Each sensitive span is replaced by a
placeholder the agent can still talk about ("[phone number]", "[email address]",
"[card number]", "[IBAN]", "[number]"), so a reply such as "thanks, I have your
phone number" still makes sense.

Detection order (a span found by an earlier step is masked for the later ones):

1. ``email``: written (``ada@example.com``) and spoken (``ada dot lovelace at
   example dot com``) addresses, and the forms a speech recogniser makes of a
   spoken address: the "at" dropped (``john.smith.example.com``: three or more
   labels before the top-level domain), misheard or set off by punctuation
   (``jon.mit. At. Example.com``), and after "my email is" / "e-mail me at"
   everything up to the last domain ending within 60 characters.
2. ``iban``: candidates validated with :mod:`stdnum.iban` (mod-97 check).
3. ``card``: 13-19 digits, optionally grouped by spaces, dashes or ", " / ". "
   (how a recogniser writes read-out groups), passing the Luhn check
   (:mod:`stdnum.luhn`).
4. ``spoken_digits``: runs of digits said as words ("four one five", "oh",
   "double five", "triple seven", "twenty one", "eight hundred"), mixed with
   written digits. A run needs at least 4 digits (5 if it uses tens/teens/hundred
   words, so "nineteen eighty five" or "twenty twenty four" survive) and at least
   one word. The placeholder says what the digits are: a Luhn-valid 13-19 digit
   run is a card, a possible phone number is a phone number, anything else a number.
5. ``phone``: :class:`phonenumbers.PhoneNumberMatcher` with the policy's default
   region, then a fallback for any remaining run of 6 or more digits (dates
   such as 2024-05-01 excepted), which becomes "[number]".
6. ``name`` (only when asked for: not in the default categories of a policy):
   a name after "my name is", "name's" (up to three words), or after "this
   is", "I'm", "it's", "call me", "for", "from" when capitalised as a name
   ("this is Maria Lopez", "for Anna Lopez" as the agent reads a booking back,
   not "this is great"), becomes "[name]". Free text is not searched for names
   otherwise (a name said alone is kept); a tool's name argument is redacted
   whole (:func:`voicecore.policy.context.redact_tool_arguments`).

A number announced as sensitive ("my card number is 4539", "my pin is one two
three", "the last digits are 647") is redacted from 3 digits on: a recogniser
drops digits or cuts a read-out number into pieces, and a caller's pause can
end the turn in the middle of a number.

Not redacted on purpose: times and small numbers ("at ten or eleven", "10:30"),
years, amounts with few digits, a 16-digit number failing Luhn is not a card (it
still becomes "[number]" under ``phone``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn

from voicecore.policy.models import REDACTION_CATEGORIES

PLACEHOLDERS: dict[str, str] = {
    "phone": "[phone number]",
    "email": "[email address]",
    "card": "[card number]",
    "iban": "[IBAN]",
    "number": "[number]",
    "name": "[name]",
}

MIN_FALLBACK_DIGITS = 6  # written digit runs at least this long are a "[number]"
MIN_SPOKEN_DIGITS = 4  # spoken runs of single digits
MIN_SPOKEN_DIGITS_WITH_TENS = 5  # spoken runs that use tens/teens/hundred words
MIN_CUED_DIGITS = 3  # any digit run this long right after "card number is", "my pin is", ...

_MASK = "#"


@dataclass(frozen=True)
class Finding:
    """One sensitive span of the input text."""

    start: int
    end: int
    kind: str  # phone | email | card | iban | number | name
    digits: str | None = None  # for numbers: the digits the span stands for ("+" kept for international)

    @property
    def placeholder(self) -> str:
        return PLACEHOLDERS[self.kind]


# --------------------------------------------------------------------------- e-mail

_TLDS = (
    "com|org|net|edu|gov|mil|int|info|biz|io|co|ai|app|dev|me|tv|eu|uk|us|ca|au|nz|de|fr|es|it|nl|be|ch|at|"
    "se|no|dk|fi|ie|pl|pt|cz|gr|hu|ro|jp|cn|in|br|mx|za|sg|hk|kr|ru|tr|il"
)
_EMAIL_WRITTEN = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})"
    r"(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b"
)
_LABEL = r"[A-Za-z0-9][A-Za-z0-9_+-]{0,62}"
_SEP = r"(?:\.|\s+dot\s+)"
# "at" as a speech recogniser writes it: "smith at example", "smith. At. Example", "smith, at example".
_AT = r"(?:\s*@\s*|[.,]?\s+at[.,]?\s+)"
_EMAIL_SPOKEN = re.compile(
    rf"\b{_LABEL}(?:{_SEP}{_LABEL})*{_AT}{_LABEL}(?:{_SEP}{_LABEL})*{_SEP}(?:{_TLDS})\b",
    re.IGNORECASE,
)
# The recogniser often drops the "at": "john.smith.example.com". Three or more labels
# before the top-level domain ("www.example.com" has two and a "www" is a website).
_EMAIL_DOTTED = re.compile(
    rf"(?<![\w.@-])(?!www\.){_LABEL}(?:\.{_LABEL}){{2,}}\.(?:{_TLDS})\b",
    re.IGNORECASE,
)
# After "my email is" / "e-mail me at" whatever follows up to the first top-level domain
# is the address, however garbled ("jah.mit. And, example.com", "john dot miss and
# example dot com", "jah-dot-mithen-emple-dot-com").
_EMAIL_CUE = re.compile(
    r"\be-?mail(?:\s+address)?(?:'s|\s+(?:is|was|it's|it is)|\s+me\s+(?:at|on)|\s+at|\s*:)?[\s,:]+",
    re.IGNORECASE,
)
_EMAIL_CUE_WINDOW = 60  # characters after the cue searched for the end of the address
# ".com", ". com", " dot com", "-dot-com" (after a ". " only long TLDs: ". In the morning" is a sentence).
_TLD_END = re.compile(
    rf"(?:\.(?:{_TLDS})|\.\s(?:com|org|net|edu|gov|info|biz)|[\s-]+dot[\s-]+(?:{_TLDS}))\b", re.IGNORECASE
)
_HANDLE = re.compile(r"[^\s,]*\w[.@_-]\w[^\s,]*")


def _find_cued_emails(text: str) -> list[Finding]:
    found: list[Finding] = []
    for cue in _EMAIL_CUE.finditer(text):
        start = cue.end()
        if start >= len(text) or text[start] == _MASK:
            continue
        window = re.split(r"[?!]", text[start : start + _EMAIL_CUE_WINDOW], maxsplit=1)[0]
        if _MASK in window:
            window = window[: window.index(_MASK)]
        ends = list(_TLD_END.finditer(window))
        if ends:  # the last domain ending in the window: "jon.mit. At. Example.com"
            found.append(Finding(start, start + ends[-1].end(), "email"))
            continue
        handle = _HANDLE.match(window)  # no domain heard: the first word, if it looks like a handle
        if handle is not None:
            found.append(Finding(start, start + handle.end(), "email"))
    return found


def _find_emails(text: str) -> list[Finding]:
    found: list[Finding] = []
    masked = text
    for pattern in (_EMAIL_WRITTEN, None, _EMAIL_SPOKEN, _EMAIL_DOTTED):
        if pattern is None:
            new = _find_cued_emails(masked)
        else:
            new = [Finding(m.start(), m.end(), "email") for m in pattern.finditer(masked)]
        found += new
        masked = _mask(masked, new)
    return found


# --------------------------------------------------------------------------- IBAN

_IBAN_CANDIDATE = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,34}", re.IGNORECASE)


def _find_ibans(text: str) -> list[Finding]:
    found: list[Finding] = []
    for m in _IBAN_CANDIDATE.finditer(text):
        candidate = m.group()
        # The pattern is greedy and may run into following words: try the
        # longest prefix that ends on a boundary and validates.
        for end in range(len(candidate), 14, -1):
            if end < len(candidate) and candidate[end].isalnum():
                continue
            if candidate[end - 1] == " ":
                continue
            if stdnum_iban.is_valid(candidate[:end]):
                found.append(Finding(m.start(), m.start() + end, "iban"))
                break
    return found


# --------------------------------------------------------------------------- cards

# Digit groups as written or as a speech recogniser writes read-out groups ("4539, 1488, 0343").
_GROUP_SEP = r"(?:[ -]|[.,]\s+)"
_DIGIT_GROUPS = re.compile(rf"(?<!\d)\d+(?:{_GROUP_SEP}\d+)*(?!\d)")


def _best_card_window(groups: list[re.Match[str]]) -> tuple[int, int] | None:
    """Longest run of consecutive digit groups with 13-19 digits passing Luhn."""
    best: tuple[int, int] | None = None
    best_len = 0
    for i in range(len(groups)):
        digits = ""
        for j in range(i, len(groups)):
            digits += groups[j].group()
            if len(digits) > 19:
                break
            if len(digits) >= 13 and len(digits) > best_len and luhn.is_valid(digits):
                best, best_len = (i, j), len(digits)
    return best


def _find_cards(text: str) -> list[Finding]:
    found: list[Finding] = []
    for m in _DIGIT_GROUPS.finditer(text):
        groups = list(re.finditer(r"\d+", m.group()))
        while groups:
            window = _best_card_window(groups)
            if window is None:
                break
            i, j = window
            start = m.start() + groups[i].start()
            end = m.start() + groups[j].end()
            digits = "".join(g.group() for g in groups[i : j + 1])
            found.append(Finding(start, end, "card", digits))
            groups = groups[j + 1 :]
    return found


# --------------------------------------------------------------------------- spoken digits

_UNITS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}
_ZEROS = {"zero", "oh", "o", "nought", "nil"}
_TEENS = {
    "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14",
    "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19",
}  # fmt: skip
_TENS = {
    "twenty": 2,
    "thirty": 3,
    "forty": 4,
    "fourty": 4,
    "fifty": 5,
    "sixty": 6,
    "seventy": 7,
    "eighty": 8,
    "ninety": 9,
}
_REPEAT = {"double": 2, "triple": 3}
_NUMBER_WORDS = set(_UNITS) | _ZEROS | set(_TEENS) | set(_TENS) | set(_REPEAT) | {"hundred"}

_TOKEN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*|\d+")
_RUN_GAP = re.compile(r"[\s,.\-]*")


@dataclass
class _Tok:
    start: int
    end: int
    word: str  # lower-case word, or the digit string


def _single_digit(tok: _Tok) -> str | None:
    if tok.word.isdigit():
        return tok.word if len(tok.word) == 1 else None
    if tok.word in _UNITS:
        return str(_UNITS[tok.word])
    if tok.word in _ZEROS:
        return "0"
    return None


@dataclass
class _SpokenRun:
    start: int
    end: int
    digits: str
    has_word: bool
    uses_tens: bool


def _parse_run(toks: list[_Tok], text: str) -> list[_SpokenRun]:
    """Turn a maximal run of number-ish tokens into digit runs (split where parsing breaks)."""
    runs: list[_SpokenRun] = []
    i = 0
    current: _SpokenRun | None = None

    def close() -> None:
        nonlocal current
        if current is not None and current.digits:
            runs.append(current)
        current = None

    def emit(tok_start: int, tok_end: int, digits: str, is_word: bool, tens: bool) -> None:
        nonlocal current
        if current is None:
            current = _SpokenRun(tok_start, tok_end, "", False, False)
        current.end = tok_end
        current.digits += digits
        current.has_word = current.has_word or is_word
        current.uses_tens = current.uses_tens or tens

    while i < len(toks):
        tok = toks[i]
        w = tok.word
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if w.isdigit():
            emit(tok.start, tok.end, w, False, False)
        elif w in _UNITS or w in _ZEROS:
            # A leading "oh"/"o" set off by punctuation is an interjection ("Oh, one more thing").
            if w in ("oh", "o") and current is None and nxt is not None:
                gap = text[tok.end : nxt.start]
                if any(c in gap for c in ",.!?"):
                    i += 1
                    continue
            if w in _UNITS and nxt is not None and nxt.word == "hundred":
                emit(tok.start, nxt.end, str(_UNITS[w]) + "00", True, True)
                i += 2
                continue
            emit(tok.start, tok.end, _single_digit(tok) or "", True, False)
        elif w in _TEENS:
            emit(tok.start, tok.end, _TEENS[w], True, True)
        elif w in _TENS:
            if nxt is not None and nxt.word in _UNITS:
                emit(tok.start, nxt.end, f"{_TENS[w]}{_UNITS[nxt.word]}", True, True)
                i += 2
                continue
            emit(tok.start, tok.end, f"{_TENS[w]}0", True, True)
        elif w in _REPEAT:
            digit = _single_digit(nxt) if nxt is not None else None
            if digit is None:
                close()  # "double" not followed by a digit is an ordinary word
            else:
                emit(tok.start, nxt.end, digit * _REPEAT[w], True, False)  # type: ignore[union-attr]
                i += 2
                continue
        else:  # "hundred" with nothing before it
            close()
        i += 1
    close()
    return runs


def _spoken_runs(text: str) -> list[_SpokenRun]:
    toks = [_Tok(m.start(), m.end(), m.group().lower()) for m in _TOKEN.finditer(text)]
    groups: list[list[_Tok]] = []
    current: list[_Tok] = []
    for tok in toks:
        numberish = tok.word.isdigit() or tok.word in _NUMBER_WORDS
        if numberish and current and _RUN_GAP.fullmatch(text[current[-1].end : tok.start]) is None:
            groups.append(current)
            current = []
        if numberish:
            current.append(tok)
        elif current:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    runs: list[_SpokenRun] = []
    for group in groups:
        runs.extend(_parse_run(group, text))
    return runs


def _plus_before(text: str, start: int) -> int | None:
    m = re.search(r"\bplus\s+$", text[:start], re.IGNORECASE)
    return m.start() if m else None


def _looks_like_phone(digits: str, region: str) -> bool:
    bare = digits.lstrip("+")
    if len(bare) < 7 or len(bare) > 15:
        return False
    try:
        number = phonenumbers.parse(digits, None if digits.startswith("+") else region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_possible_number(number)


# A number the caller announces as sensitive: "my card number is 4539", "the last digits are 647".
# A recogniser cuts read-out numbers into pieces (or the caller pauses and the turn ends),
# so a short piece right after such words is redacted too.
_NUMBER_CUE = re.compile(
    r"\b(?:card|account|phone|mobile|cell|telephone|number|pin|passcode|password|cvv|cvc|security code|"
    r"digits|ssn|social security|routing|sort code|iban|reference)\b[^\d.!?#]{0,24}$",
    re.IGNORECASE,
)


def _cued(text: str, start: int) -> bool:
    return _NUMBER_CUE.search(text[max(0, start - 60) : start]) is not None


def _find_spoken(text: str, categories: frozenset[str], region: str) -> list[Finding]:
    found: list[Finding] = []
    for run in _spoken_runs(text):
        if not run.has_word:
            continue
        need = MIN_SPOKEN_DIGITS_WITH_TENS if run.uses_tens else MIN_SPOKEN_DIGITS
        if _cued(text, run.start):
            need = min(need, MIN_CUED_DIGITS)
        if len(run.digits) < need:
            continue
        start, digits = run.start, run.digits
        plus_at = _plus_before(text, start)
        if plus_at is not None:
            start, digits = plus_at, "+" + digits
        bare = digits.lstrip("+")
        if "card" in categories and 13 <= len(bare) <= 19 and luhn.is_valid(bare):
            kind = "card"
        elif "phone" in categories and _looks_like_phone(digits, region):
            kind = "phone"
        else:
            kind = "number"
        found.append(Finding(start, run.end, kind, digits))
    return found


# --------------------------------------------------------------------------- phone numbers

_DIGIT_RUN = re.compile(r"(?<![\w+])\+?\(?\d(?:(?:[ .\-]|[.,]\s+|\)\s?|\s?\()?\d)*\)?")
_DATE = re.compile(r"^(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4})$")


def _find_phones(text: str, region: str) -> list[Finding]:
    found: list[Finding] = []
    for match in phonenumbers.PhoneNumberMatcher(text, region):
        e164 = phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164)
        found.append(Finding(match.start, match.end, "phone", e164))
    return found


def _find_digit_runs(text: str, min_digits: int = MIN_FALLBACK_DIGITS, *, cued: bool = False) -> list[Finding]:
    """Runs of at least ``min_digits`` digits; with ``cued`` also shorter runs (``MIN_CUED_DIGITS``)
    announced as sensitive ("my card number is 4539")."""
    found: list[Finding] = []
    for m in _DIGIT_RUN.finditer(text):
        raw = m.group()
        digits = re.sub(r"\D", "", raw)
        need = min(min_digits, MIN_CUED_DIGITS) if cued and _cued(text, m.start()) else min_digits
        if len(digits) < need or _DATE.match(raw):
            continue
        found.append(Finding(m.start(), m.end(), "number", ("+" if raw.startswith("+") else "") + digits))
    return found


# --------------------------------------------------------------------------- names

# "my name is maria lopez": whatever words follow (a recogniser writes names in lower case too)
_NAME_CUE = re.compile(r"\b(?:my name is|my name's|my names|name is|name's)\s+", re.IGNORECASE)
# "this is Maria", "for Anna" (a read-back): only a capitalised word ("this is great", "I'm calling",
# "for Monday" are no names)
_NAME_CUE_CAPITALISED = re.compile(r"\b(?:this is|i am|i'm|it's|it is|call me|for|from)\s+", re.IGNORECASE)
_NAME_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")
_NOT_NAME_WORDS = frozenset(
    """a an the and or but so i id i'd im i'm for on at in to of with my me from please thanks thank you calling
    speaking here again just about would want like wanted need looking trying hoping going is was be not no yes
    yeah ok okay sure hi hello hey well um uh today tomorrow tonight next this that it morning afternoon evening
    monday tuesday wednesday thursday friday saturday sunday mr mrs ms dr doctor january february march april may
    june july august september october november december christmas easter""".split()
)
MAX_NAME_WORDS = 3


def _find_names(text: str) -> list[Finding]:
    spans: dict[tuple[int, int], Finding] = {}
    for cue, capitalised in ((_NAME_CUE, False), (_NAME_CUE_CAPITALISED, True)):
        for m in cue.finditer(text):
            pos, start, end = m.end(), -1, -1
            for _ in range(MAX_NAME_WORDS):
                w = _NAME_WORD.match(text, pos)
                if w is None or w.group().lower() in _NOT_NAME_WORDS or (capitalised and not w.group()[0].isupper()):
                    break
                start, end = (w.start() if start < 0 else start), w.end()
                gap = re.match(r"[ \t]+", text[end:])
                if gap is None:
                    break
                pos = end + gap.end()
            if start >= 0:
                spans[(start, end)] = Finding(start, end, "name")
    found = sorted(spans.values(), key=lambda f: (f.start, -f.end))
    kept: list[Finding] = []
    for f in found:  # "my name is X" and "name is X" find the same span
        if not kept or f.start >= kept[-1].end:
            kept.append(f)
    return kept


# --------------------------------------------------------------------------- public API


def _mask(text: str, findings: Iterable[Finding]) -> str:
    chars = list(text)
    for f in findings:
        chars[f.start : f.end] = _MASK * (f.end - f.start)
    return "".join(chars)


def _check_categories(categories: Iterable[str]) -> frozenset[str]:
    cats = frozenset(categories)
    unknown = cats - set(REDACTION_CATEGORIES)
    if unknown:
        raise ValueError(
            f"unknown redaction categories: {', '.join(sorted(unknown))}; known: {', '.join(REDACTION_CATEGORIES)}"
        )
    return cats


#: What :func:`find_sensitive` and :func:`redact` look for unless told: every category but ``name``.
DEFAULT_CATEGORIES: tuple[str, ...] = tuple(c for c in REDACTION_CATEGORIES if c != "name")


def find_sensitive(text: str, categories: Iterable[str] = DEFAULT_CATEGORIES, region: str = "US") -> list[Finding]:
    """Every sensitive span of ``text`` for the given categories, sorted, non-overlapping."""
    cats = _check_categories(categories)
    findings: list[Finding] = []
    masked = text
    steps: list[tuple[str, object]] = [
        ("email", _find_emails),
        ("iban", _find_ibans),
        ("card", _find_cards),
        ("spoken_digits", lambda t: _find_spoken(t, cats, region)),
        ("phone", lambda t: _find_phones(t, region)),
        ("phone", lambda t: _find_digit_runs(t, cued=True)),
        ("name", _find_names),
    ]
    for category, step in steps:
        if category not in cats:
            continue
        new = step(masked)  # type: ignore[operator]
        findings.extend(new)
        masked = _mask(masked, new)
    findings.sort(key=lambda f: f.start)
    return findings


def redact(text: str, categories: Iterable[str] = DEFAULT_CATEGORIES, region: str = "US") -> str:
    """``text`` with every sensitive span replaced by its placeholder. Idempotent."""
    if not text:
        return text
    out = text
    for f in sorted(find_sensitive(text, categories, region), key=lambda f: f.start, reverse=True):
        out = out[: f.start] + f.placeholder + out[f.end :]
    return out


def spoken_to_digits(text: str) -> str:
    """The digits of every spoken-number run in ``text`` (words and digits), concatenated.

    ``"four one five double five"`` → ``"41555"``. Meant for tests and matching,
    not for redaction decisions.
    """
    return "".join(run.digits for run in _spoken_runs(text))


def number_mentions(text: str, region: str = "US") -> list[Finding]:
    """Every span that may be a phone number, in any form: written, national, E.164 or spoken.

    Broader than redaction (any run of 4 or more digits counts), used to find a
    data subject's number in free text for erasure.
    """
    findings: list[Finding] = []
    masked = text
    for step in (
        lambda t: [f for f in _find_spoken(t, frozenset({"phone"}), region) if len(f.digits or "") >= 4],
        lambda t: _find_phones(t, region),
        lambda t: _find_digit_runs(t, min_digits=4),
    ):
        new = step(masked)
        findings.extend(new)
        masked = _mask(masked, new)
    findings.sort(key=lambda f: f.start)
    return findings


def digits_match_number(digits: str, e164: str) -> bool:
    """Whether a digit string is ``e164`` written in some form (international, national, trunk prefix)."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return False
    nsn = phonenumbers.national_significant_number(number)
    cc = str(number.country_code)
    bare = re.sub(r"\D", "", digits)
    if not nsn or not bare.endswith(nsn):
        return False
    prefix = bare[: len(bare) - len(nsn)]
    return prefix in ("", "0", cc, "0" + cc, "00" + cc, "011" + cc, "1")


def scrub_number(text: str, e164: str, region: str = "US", placeholder: str = "[erased]") -> tuple[str, int]:
    """Replace every mention of the phone number ``e164`` in ``text`` (any form); returns (text, count)."""
    hits = [f for f in number_mentions(text, region) if f.digits and digits_match_number(f.digits, e164)]
    out = text
    for f in sorted(hits, key=lambda f: f.start, reverse=True):
        out = out[: f.start] + placeholder + out[f.end :]
    return out, len(hits)
