"""Report fields from what the call's tools recorded, not from anyone's words.

A call's ``tool`` turns (:class:`~voicecore.records.ToolCall`, the caller's part of the arguments
already redacted by the tenant policy) and ``message`` turns give, wherever they can:

* the appointment: the start of what was booked, moved or cancelled (as the calendar has it, in
  the business's time zone: ISO 8601 without an offset), its service and what happened to it;
* the purpose, from the tool the caller's request reached (:data:`PURPOSE_OF_TOOL`);
* the need, from a message taken (the caller's own words, redacted as for the model);
* the caller's name, as given to a tool (unless the policy redacts names).

The model is not asked what these give (:meth:`ToolFacts.skipped_questions`): it only summarises.
:func:`template_summary` is the deterministic summary of the same records, used when the model's
summary states a fact that neither the transcript nor the tools' results hold
(:func:`voicecore.reports.grounding.summary_problems`). Pure functions: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from voicecore.agent.facts import spoken_time
from voicecore.policy.context import redact_caller_text, redact_tool_arguments
from voicecore.policy.models import Policy
from voicecore.records import TOOL_TURN_KIND, ToolCall

__all__ = ["PURPOSE_OF_TOOL", "TakenMessage", "ToolFacts", "template_summary", "tool_facts"]

#: The purpose a tool's call gives the report (the intent that reached the tool).
PURPOSE_OF_TOOL: dict[str, str] = {
    "book_appointment": "book an appointment",
    "reschedule_appointment": "change an appointment",
    "cancel_appointment": "cancel an appointment",
    "take_message": "leave a message",
    "transfer": "speak to someone",
}
#: Tools that change the calendar, and what the appointment's status is after each outcome.
CALENDAR_TOOLS: dict[str, str] = {
    "book_appointment": "booked",
    "reschedule_appointment": "rescheduled",
    "cancel_appointment": "cancelled",
}
NEED_MAX_CHARS = 300
MESSAGE_TURN = re.compile(r"^Message(?: from (?P<name>[^:\n]{1,100}))?: (?P<body>.*)$", re.DOTALL)


@dataclass(frozen=True)
class TakenMessage:
    name: str | None  # None: not given, or redacted by the policy
    text: str  # redacted as caller text is for the model


def _placeholder(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("[") and value.endswith("]")


def _local_start(call: ToolCall, key: str = "start") -> datetime | None:
    value = call.result.get(key)
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def spoken_slot(start: datetime) -> str:
    """``Thursday, December 10 at 2 pm``."""
    return f"{start:%A}, {start:%B} {start.day} at {spoken_time(start.hour * 60 + start.minute)}"


@dataclass
class ToolFacts:
    """What a call's tool calls and messages give its report."""

    calls: list[ToolCall] = field(default_factory=list)
    messages: list[TakenMessage] = field(default_factory=list)

    @property
    def appointment(self) -> ToolCall | None:
        """The calendar change the report is about: the last one done, else the last one tried."""
        tried = [c for c in self.calls if c.tool in CALENDAR_TOOLS]
        done = [c for c in tried if c.ok]
        return done[-1] if done else (tried[-1] if tried else None)

    @property
    def slot(self) -> str | None:
        """The appointment's start as the calendar has it (ISO 8601, the business's wall clock)."""
        a = self.appointment
        start = _local_start(a) if a is not None and a.ok else None
        return start.replace(tzinfo=None).isoformat() if start is not None else None

    @property
    def status(self) -> str | None:
        a = self.appointment
        if a is None:
            return None
        return CALENDAR_TOOLS[a.tool] if a.ok else "failed"

    @property
    def service(self) -> str | None:
        a = self.appointment
        if a is None:
            return None
        value = a.result.get("service") or a.arguments.get("service")
        return str(value) if value else None

    @property
    def purpose(self) -> str | None:
        """A calendar change done, else one tried, else a message taken, else a transfer asked for."""
        if self.appointment is not None:
            return PURPOSE_OF_TOOL[self.appointment.tool]
        if self.messages or any(c.tool == "take_message" for c in self.calls):
            return PURPOSE_OF_TOOL["take_message"]
        if any(c.tool == "transfer" for c in self.calls):
            return PURPOSE_OF_TOOL["transfer"]
        return None

    @property
    def need(self) -> str | None:
        """The first message taken, in the caller's words."""
        if not self.messages:
            return None
        text = re.sub(r"\s+", " ", self.messages[0].text).strip()
        if len(text) > NEED_MAX_CHARS:
            text = text[: NEED_MAX_CHARS - 1].rsplit(" ", 1)[0] + "…"
        return text or None

    @property
    def name(self) -> str | None:
        """The name the caller gave a tool (a booking's, a message's), unless redacted."""
        names = [c.arguments.get("name") for c in self.calls if c.ok] + [m.name for m in self.messages]
        for n in names:
            if isinstance(n, str) and n.strip() and not _placeholder(n) and len(n) <= 100:
                return n.strip()
        return None

    def skipped_questions(self) -> frozenset[str]:
        """The report questions the tools answer: the model is not asked them."""
        skip = set()
        if self.purpose:
            skip.add("purpose")
        if self.slot:
            skip.update({"appointment_day", "appointment_time"})
        if self.need:
            skip.add("need")
        if self.name:
            skip.add("caller_name")
        return frozenset(skip)

    def grounds_text(self) -> str:
        """What the tools' results state, in words (days, dates, times), for the summary check."""
        lines = []
        for c in self.calls:
            for key in ("start", "previous_start"):
                start = _local_start(c, key)
                if start is not None:
                    lines.append(f"{spoken_slot(start)} ({start.date().isoformat()}).")
        lines += [m.text for m in self.messages]
        return "\n".join(lines)


def tool_facts(turns: Iterable[Any], policy: Policy) -> ToolFacts:
    """The tool calls and messages among a call's turns (the session's, a report job's or stored
    ones: objects with ``role``, ``kind`` and ``text``), the caller's part redacted by ``policy``
    (again: what the session kept is already redacted, and redaction is idempotent)."""
    facts = ToolFacts()
    for t in turns:
        if getattr(t, "role", None) != "event" or not isinstance(getattr(t, "text", None), str):
            continue
        kind = getattr(t, "kind", None)
        if kind == TOOL_TURN_KIND:
            call = ToolCall.from_text(t.text)
            if call is not None:
                facts.calls.append(replace(call, arguments=redact_tool_arguments(policy, call.arguments)))
        elif kind == "message":
            m = MESSAGE_TURN.match(t.text)
            if m is None:
                continue
            name = redact_tool_arguments(policy, {"name": m.group("name")})["name"] if m.group("name") else None
            body = str(redact_caller_text(policy, m.group("body").strip()))
            if body:
                facts.messages.append(TakenMessage(None if _placeholder(name) else name, body))
    return facts


def template_summary(facts: ToolFacts, purpose: str, name: str | None = None) -> str:
    """The summary built from the tool records alone (every fact it states is one of their results)."""
    who = name or facts.name or "The caller"
    sentences: list[str] = []

    def say(rest: str) -> None:
        sentences.append(f"{who if not sentences else 'They'} {rest}")

    a = facts.appointment
    if a is not None:
        service = facts.service or "appointment"
        article = "an" if service[:1].lower() in "aeiou" else "a"
        start = _local_start(a) if a.ok else None
        when = f" on {spoken_slot(start)}" if start is not None else ""
        if not a.ok:
            verb = {"book_appointment": "book", "reschedule_appointment": "move", "cancel_appointment": "cancel"}[a.tool]
            say(f"asked to {verb} an appointment, but the calendar could not be used.")
        elif a.tool == "book_appointment":
            say(f"booked {article} {service}{when}.")
        elif a.tool == "reschedule_appointment":
            say(f"moved their {service} to {spoken_slot(start)}." if start is not None else f"moved their {service}.")
        else:
            say(f"cancelled their {service}{when}.")
    message_calls = [c for c in facts.calls if c.tool == "take_message"]
    if facts.messages or message_calls:
        for_whom = next((str(c.arguments["for"]) for c in message_calls if c.arguments.get("for")), "the team")
        say(f"left a message for {for_whom}.")
    transfers = [c for c in facts.calls if c.tool == "transfer"]
    if transfers:
        say("asked to speak to someone and was put through." if transfers[-1].ok
            else "asked to speak to someone, but the call could not be put through.")  # fmt: skip
    if not sentences:
        say("asked not to be called again." if purpose == "stop calls"
            else "called." if purpose == "other" else f"called to {purpose}.")  # fmt: skip
    text = " ".join(sentences)
    return text if len(text) >= 10 else f"The caller called to {purpose}."
