"""The checks before every outbound dial, as one pure decision.

The dialer looks up what storage knows (opt-out list, restriction, the attempts to this
number across the tenant's campaigns, the calls in progress) and passes it in with the
instant of the dial; :func:`dial_decision` applies the checks in a fixed order and answers
allowed, or refused with a machine-readable reason code, a sentence for ``campaigns status``
and, where the refusal is only for now, the earliest instant worth trying again.

Order (the first that refuses wins): ``invalid_number``, ``opted_out`` (do-not-call list or
restriction: never dial, whatever the time), ``attempt_cap``, ``unknown_time_zone`` /
``unknown_holidays`` (the window cannot be judged: refuse rather than guess),
``public_holiday``, ``outside_window``, ``concurrency`` (last: it is the only one that clears
within seconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from voicecore.outbound.windows import (
    ATTEMPT_PERIOD,
    DEFAULT_HORIZON,
    Callee,
    CallingWindow,
    InvalidNumber,
    check_window,
    next_allowed_time,
    parse_window,
    resolve_callee,
)

RefusalReason = Literal[
    "invalid_number",
    "opted_out",
    "attempt_cap",
    "unknown_time_zone",
    "unknown_holidays",
    "public_holiday",
    "outside_window",
    "concurrency",
]
REFUSAL_REASONS: tuple[str, ...] = RefusalReason.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class DialDecision:
    """Dial or not. When refused: ``reason`` (a :data:`RefusalReason`) and ``message`` say why;
    ``retry_at`` is the earliest instant the refusing check would pass (``None``: never, unknown,
    or — for ``concurrency`` — as soon as a call ends)."""

    allowed: bool
    reason: RefusalReason | None = None
    message: str = ""
    retry_at: datetime | None = None
    e164: str | None = None
    zones: tuple[str, ...] = ()
    holiday: str | None = None
    notes: tuple[str, ...] = ()  # assumptions made (fallback zone), worth showing next to the decision


def effective_attempt_cap(window: CallingWindow | None, max_attempts: int | None) -> int | None:
    """The lower of the campaign's cap and the window's (a preset's legal cap cannot be raised)."""
    caps = [c for c in (max_attempts, window.max_attempts if window else None) if c is not None]
    return min(caps) if caps else None


def _attempt_refusal(
    attempts: int | Sequence[datetime], cap: int, period: timedelta, now: datetime
) -> tuple[str, datetime | None] | None:
    if isinstance(attempts, int):
        if attempts < cap:
            return None
        return f"{attempts} attempts to this number in the last {period.days} days (cap {cap})", None
    for moment in attempts:
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError("attempt timestamps must be aware datetimes")
    recent = sorted(t for t in attempts if now - period < t <= now)
    if len(recent) < cap:
        return None
    # the count drops below the cap once the (len - cap + 1) oldest recent attempts leave the period
    retry_at = recent[len(recent) - cap] + period
    return f"{len(recent)} attempts to this number in the last {period.days} days (cap {cap})", retry_at


def dial_decision(
    number: str,
    *,
    now: datetime,
    window: CallingWindow | str | None = None,
    default_region: str = "US",
    fallback_zone: str | None = None,
    opted_out: bool = False,
    restricted: bool = False,
    attempts: int | Sequence[datetime] = 0,
    max_attempts: int | None = None,
    active_calls: int = 0,
    max_concurrent: int | None = None,
    horizon: timedelta = DEFAULT_HORIZON,
) -> DialDecision:
    """May ``number`` be dialed at ``now`` (an aware datetime)?

    ``number``: the contact's number (E.164, or national in ``default_region``, the tenant
    policy's ``phone_region``). ``window``: a :class:`CallingWindow`, spec text or preset name,
    ``None`` for no time restriction. ``opted_out``/``restricted``: whether the tenant's
    do-not-call list holds the number / its owner restricted processing. ``attempts``: the
    attempts to this number across the tenant's campaigns, as timestamps (those within the
    window's attempt period, 30 days by default, count) or as a count already limited to that
    period. ``max_attempts``: the campaign's cap; the window's own cap (``fr-prospecting``: 4)
    applies too, the lower wins. ``active_calls``/``max_concurrent``: the tenant's calls in
    progress and its limit.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime (with a time zone)")
    if isinstance(window, str):
        window = parse_window(window)
    try:
        callee: Callee = resolve_callee(number, default_region=default_region, fallback_zone=fallback_zone)
    except InvalidNumber as exc:
        return DialDecision(False, "invalid_number", f"{number!r} cannot be dialed: {exc}")
    known = {"e164": callee.e164, "zones": callee.zones, "notes": callee.notes}

    if opted_out:
        return DialDecision(False, "opted_out", "the number asked not to be called again (opt-out list)", **known)
    if restricted:
        return DialDecision(
            False, "opted_out", "the number's owner restricted processing of their data", **known
        )

    cap = effective_attempt_cap(window, max_attempts)
    if cap is not None:
        period = window.attempt_period if window is not None and window.max_attempts is not None else ATTEMPT_PERIOD
        refusal = _attempt_refusal(attempts, cap, period, now)
        if refusal is not None:
            message, retry_at = refusal
            if retry_at is not None and window is not None:
                retry_at = next_allowed_time(window, callee, retry_at, horizon=horizon).at
            return DialDecision(False, "attempt_cap", message, retry_at=retry_at, **known)

    if window is not None:
        verdict = check_window(window, callee, now)
        if not verdict.allowed:
            retry_at = next_allowed_time(window, callee, now, horizon=horizon).at
            message = verdict.message
            if verdict.reason in ("public_holiday", "outside_window"):
                message += (
                    f"; next allowed {retry_at.isoformat()}" if retry_at else f"; never in the next {horizon.days} days"
                )
            reason: RefusalReason = verdict.reason  # type: ignore[assignment]
            return DialDecision(False, reason, message, retry_at=retry_at, holiday=verdict.holiday, **known)

    if max_concurrent is not None and active_calls >= max_concurrent:
        return DialDecision(
            False, "concurrency", f"{active_calls} calls in progress, the limit is {max_concurrent}", **known
        )
    return DialDecision(True, None, "allowed", **known)


__all__ = ["REFUSAL_REASONS", "DialDecision", "RefusalReason", "dial_decision", "effective_attempt_cap"]
