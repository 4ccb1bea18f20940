"""The dialogue sets of ``bench dialogue`` and how a conversation is scored (pure: no model, no call).

A dialogue set (``benchmarks/dialogues/<pipeline>.yaml``) names its pipeline, the "now" its
conversations happen at (local time in the facts' time zone), and the conversations. Each
conversation is a list of caller lines, each with what its reply must (``says``, ``says_any``)
and must not (``not_says``) say, or that it must offer a message or a transfer (``offer``), and
what the call must have done by its end: the appointment in the calendar (``booking``; without
one the calendar must stay empty), a message taken (``message``), a transfer asked of the
provider (``transfer``), the agent hanging up (``end_call``).

Facts are scored with the runtime's own checker, :meth:`voicecore.agent.facts.FactBook.check`,
sentence by sentence over every reply (the booking dialogue's replies with ``slots=True``: an
offered time is backed when we are open then); the words a caller asked to be passed on, read
back to them, are theirs and are not checked. Calendar outcomes are read from the ``.ics`` file
itself (``icalendar``), not from the agent's words.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from voicecore.agent.facts import FactBook

DIALOGUES_DIR = Path(__file__).resolve().parent / "dialogues"
SOURCES = ("facts", "booking", "tools", "model")
# an offer of the tools, after a question the facts cannot answer
OFFER = re.compile(r"\b(take a message|leave a message|put you through|transfer)\b", re.IGNORECASE)
# "Let me read that back. From Ann: <the caller's own words>. Shall I pass that on ..."
READ_BACK = re.compile(r"(Let me read that back\. From [^:]*:).*?(?=Shall I pass)", re.DOTALL)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Line(_Strict):
    """One caller line and what the agent's reply to it must (not) say (case is ignored)."""

    say: Annotated[str, Field(min_length=1)]
    says: list[str] = Field(default_factory=list)  # every one of these
    says_any: list[str] = Field(default_factory=list)  # at least one of these
    not_says: list[str] = Field(default_factory=list)
    offer: bool = False  # offers to take a message or put the caller through


class ExpectedBooking(_Strict):
    service: str
    start: datetime  # local time of the facts' time zone ("2026-12-04T10:00")
    name: str | None = None


class ExpectedMessage(_Strict):
    name: str | None = None  # who left it, as the agent wrote it down
    contains: list[str] = Field(default_factory=list)  # words of the message (case ignored)


class Conversation(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$")]
    tags: list[str] = Field(default_factory=list)
    smoke: bool = False  # one of the conversations of --smoke
    now: datetime | None = None  # instead of the set's
    lines: list[Line] = Field(min_length=1)
    booking: ExpectedBooking | None = None  # None: nothing may be booked
    message: ExpectedMessage | None = None
    transfer: bool = False
    end_call: bool = False

    @field_validator("lines", mode="before")
    @classmethod
    def _plain_lines(cls, v: Any) -> Any:
        return [{"say": x} if isinstance(x, str) else x for x in v] if isinstance(v, list) else v


class DialogueSet(_Strict):
    pipeline: str
    now: datetime
    conversations: list[Conversation] = Field(min_length=1)
    path: str = ""

    @property
    def lines(self) -> int:
        return sum(len(c.lines) for c in self.conversations)


def load_dialogues(path: str | Path) -> DialogueSet:
    """A dialogue set; raises ``ValueError`` naming the file and what is wrong."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
        data["path"] = str(p)
        ds = DialogueSet.model_validate(data)
    except (OSError, yaml.YAMLError, TypeError, ValidationError) as e:
        raise ValueError(f"{p}: {e}") from None
    ids = [c.id for c in ds.conversations]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"{p}: conversation ids used twice: {', '.join(dupes)}")
    return ds


def local(when: datetime, zone: ZoneInfo) -> datetime:
    """A set's naive local time in the business's zone (an aware one is converted)."""
    return when.replace(tzinfo=zone) if when.tzinfo is None else when.astimezone(zone)


# --------------------------------------------------------------------------- replies


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def fact_errors(book: FactBook, reply: str, *, slots: bool = False) -> list[str]:
    """Each fact ``reply`` states that the pipeline's facts do not back (the runtime's own
    checker, sentence by sentence; a message read back to its caller is not checked)."""
    text = READ_BACK.sub(r"\1 ", reply)
    return [p for s in sentences(text) for p in book.check(s, slots=slots)]


def _norm(text: str) -> str:
    return " ".join(text.lower().replace("’", "'").split())


def line_problems(line: Line, reply: str | None) -> list[str]:
    """What the reply to ``line`` says that it should not, or lacks."""
    if reply is None:
        return ["no reply"]
    low = _norm(reply)
    out = [f"does not say {s!r}" for s in line.says if _norm(s) not in low]
    if line.says_any and not any(_norm(s) in low for s in line.says_any):
        out.append(f"says none of {line.says_any!r}")
    out += [f"says {s!r}" for s in line.not_says if _norm(s) in low]
    if line.offer and not OFFER.search(reply):
        out.append("offers neither a message nor a transfer")
    return out


# --------------------------------------------------------------------------- outcomes


def calendar_events(path: Path, zone: ZoneInfo) -> list[dict[str, Any]]:
    """The appointments in an ``.ics`` file, read with ``icalendar`` (not through the agent)."""
    import icalendar

    if not path.exists():
        return []
    cal = icalendar.Calendar.from_ical(path.read_bytes())
    out = []
    for ev in cal.walk("VEVENT"):
        start = ev.decoded("dtstart")
        if not isinstance(start, datetime):
            start = datetime.combine(start, datetime.min.time())
        start = start.replace(tzinfo=zone) if start.tzinfo is None else start.astimezone(zone)
        out.append({"start": start.isoformat(), "service": str(ev.get("X-VOICECORE-SERVICE", "")),
                    "name": str(ev.get("X-VOICECORE-NAME", "")), "summary": str(ev.get("summary", ""))})  # fmt: skip
    return sorted(out, key=lambda e: e["start"])


def booking_matches(expected: ExpectedBooking, event: dict[str, Any], zone: ZoneInfo) -> bool:
    if _norm(event["service"]) != _norm(expected.service):
        return False
    if datetime.fromisoformat(event["start"]) != local(expected.start, zone):
        return False
    return expected.name is None or _norm(event["name"]) == _norm(expected.name)


def message_matches(expected: ExpectedMessage, message: dict[str, str]) -> bool:
    if expected.name is not None and _norm(message.get("name") or "") != _norm(expected.name):
        return False
    body = _norm(message.get("text") or "")
    return all(_norm(w) in body for w in expected.contains)


def messages_of(turns: list[Any]) -> list[dict[str, str]]:
    """The messages a call took, from its record's ``message`` event turns."""
    out = []
    for t in turns:
        if getattr(t, "role", None) == "event" and getattr(t, "kind", None) == "message":
            m = re.match(r"Message(?: from (.*?))?: (.*)$", t.text, re.DOTALL)
            out.append({"name": (m.group(1) or "") if m else "", "text": m.group(2) if m else t.text})
    return out


def outcome_problems(conv: Conversation, *, events: list[dict[str, Any]], messages: list[dict[str, str]],
                     transfer: dict[str, Any] | None, transfer_to: str | None, hung_up: bool,
                     zone: ZoneInfo) -> list[str]:  # fmt: skip
    """What the call did (calendar, messages, transfer, hang-up) against what ``conv`` expects."""
    out = []
    if conv.booking is not None:
        if not any(booking_matches(conv.booking, e, zone) for e in events):
            out.append(f"no {conv.booking.service} at {local(conv.booking.start, zone):%a %Y-%m-%d %H:%M} in the "
                       f"calendar (it holds {[(e['service'], e['start']) for e in events] or 'nothing'})")  # fmt: skip
        elif len(events) > 1:
            out.append(f"{len(events) - 1} more event(s) booked than asked for")
    elif events:
        out.append(f"booked without being asked: {[(e['service'], e['start']) for e in events]}")
    if conv.message is not None:
        if not any(message_matches(conv.message, m) for m in messages):
            out.append(f"no message {conv.message.model_dump(exclude_none=True)} taken (taken: {messages or 'none'})")
    elif messages:
        out.append("a message was taken without being asked")
    made = bool(transfer) and (transfer_to is None or (transfer or {}).get("to") == transfer_to)
    if conv.transfer and not made:
        out.append(f"no transfer to {transfer_to} asked of the provider")
    elif not conv.transfer and transfer:
        out.append("transferred without being asked")
    if conv.end_call and not hung_up:
        out.append("the agent did not hang up")
    elif not conv.end_call and hung_up:
        out.append("the agent hung up before the caller was done")
    return out


def turn_of_booking(expected: ExpectedBooking, events_after_each_line: list[list[dict[str, Any]]],
                    zone: ZoneInfo) -> int | None:  # fmt: skip
    """The caller turn (1-based) after which the expected appointment was in the calendar."""
    for i, events in enumerate(events_after_each_line, start=1):
        if any(booking_matches(expected, e, zone) for e in events):
            return i
    return None


def score_transcript(book: FactBook, conv: Conversation, replies: list[tuple[str | None, str]]) -> list[dict[str, Any]]:
    """Scores a conversation's replies (``(reply, source)`` per caller line) without a call: for each
    line, its fact errors and unmet expectations. The runner uses it, and a test feeds it a
    hand-made transcript."""
    rows = []
    for line, (reply, source) in zip(conv.lines, replies):
        errors = fact_errors(book, reply, slots=source == "booking") if reply else []
        rows.append({"say": line.say, "reply": reply, "source": source, "fact_errors": errors,
                     "problems": line_problems(line, reply)})  # fmt: skip
    return rows
