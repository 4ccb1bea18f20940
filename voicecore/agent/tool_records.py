"""What each tool call leaves in the call record: a :class:`~voicecore.records.ToolCall` per call.

The agent's tools (the booking dialogue, ``take_message``, ``transfer``, ``end_call``, and the
calendar changes) describe each call they make here, the same way: the arguments the tool was
given (the caller's part is redacted by the session under the tenant policy before it is kept),
its outcome and what it returned that a report may use, or which part failed and why. Pure
functions of the tool's state: no I/O, no event loop.
"""

from __future__ import annotations

from datetime import datetime, time
from typing import Any

from voicecore.agent.booking import BookingDialogue, BookingReply
from voicecore.agent.calendar import Appointment
from voicecore.agent.call_tools import ToolAction
from voicecore.records import ToolCall

__all__ = ["appointment_change", "booking_call", "calendar_unavailable", "end_call_call", "message_call",
           "transfer_record"]  # fmt: skip

BOOK = "book_appointment"


def _booking_arguments(dialogue: BookingDialogue) -> dict[str, Any]:
    """What the booking was asked for so far: the service, the slot (ISO, the business's time zone)
    and the caller's name (and number, when the booking writes it into the event)."""
    args: dict[str, Any] = {}
    if dialogue.service is not None:
        args["service"] = dialogue.service.name
    if dialogue.day is not None and dialogue.minutes is not None:
        at = time(dialogue.minutes // 60, dialogue.minutes % 60)
        args["start"] = datetime.combine(dialogue.day, at, dialogue.calendar.zone).isoformat()
    if dialogue.name:
        args["name"] = dialogue.name
    if dialogue.phone:
        args["phone"] = dialogue.phone
    return args


def booking_call(dialogue: BookingDialogue, reply: BookingReply) -> ToolCall:
    """The ``book_appointment`` call a dialogue's reply made: ``booked`` (the slot and service in the
    result) or ``failed`` (the calendar error)."""
    args = _booking_arguments(dialogue)
    if reply.error:
        return ToolCall(BOOK, "failed", ok=False, arguments=args, error=reply.error)
    a = reply.appointment
    assert a is not None, "a booking reply with neither an appointment nor an error"
    args.update({"service": a.service, "start": a.start.isoformat(), "name": a.name})
    return ToolCall(BOOK, "booked", arguments=args,
                    result={"start": a.start.isoformat(), "end": a.end.isoformat(), "service": a.service})  # fmt: skip


def calendar_unavailable(error: str, tool: str = BOOK) -> ToolCall:
    """A calendar tool could not even open its calendar (a missing password, a bad server)."""
    return ToolCall(tool, "failed", ok=False, error=error)


def appointment_change(tool: str, appointment: Appointment | None, *, previous: Appointment | None = None,
                       error: str | None = None, arguments: dict[str, Any] | None = None) -> ToolCall:  # fmt: skip
    """``cancel_appointment`` (``appointment``: the one cancelled) or ``reschedule_appointment``
    (``appointment``: where it is now, ``previous``: where it was), or either failing with ``error``.
    The result holds the appointment's ``start``/``end``/``service`` (a report's slot) and, for a
    move, ``previous_start``."""
    args = dict(arguments or {})
    if error is not None or appointment is None:
        return ToolCall(tool, "failed", ok=False, arguments=args, error=error or "no appointment")
    args.setdefault("name", appointment.name)
    result = {"start": appointment.start.isoformat(), "end": appointment.end.isoformat(), "service": appointment.service}
    if previous is not None:
        result["previous_start"] = previous.start.isoformat()
    outcome = "rescheduled" if tool == "reschedule_appointment" else "cancelled"
    return ToolCall(tool, outcome, arguments=args, result=result)


def message_call(action: ToolAction, for_whom: str | None = None) -> ToolCall:
    """``take_message``: who left it and for whom; its text stays in the call's ``message`` turn."""
    args: dict[str, Any] = {"name": action.name} if action.name else {}
    if for_whom:
        args["for"] = for_whom
    return ToolCall("take_message", "taken", arguments=args)


def end_call_call(action: ToolAction) -> ToolCall:
    """``end_call``: the goodbye is said and the line hung up."""
    return ToolCall("end_call", "ended")


def transfer_record(to: str, provider: str | None, ok: bool, error: str | None = None) -> ToolCall:
    """``transfer``: handed over through ``provider``, or which part refused and why."""
    result = {"provider": provider} if provider else {}
    if ok:
        return ToolCall("transfer", "transferred", arguments={"to": to}, result=result)
    return ToolCall("transfer", "failed", ok=False, arguments={"to": to}, result=result, error=error or "failed")
