"""The agent's "now": the wall clock, unless a test or a benchmark pins it for the calls it runs.

"Tomorrow", "on Friday", "are you open today?" and the free slots all depend on the date of the
call. :class:`~voicecore.agent.facts.FactBook` and :class:`~voicecore.agent.calendar.AppointmentBook`
read :func:`agent_now` unless they are given a clock of their own, so a scripted conversation can
run on a fixed date through the whole call path (``voicecore bench dialogue``)::

    with pinned_now(datetime(2026, 12, 2, 10, 0, tzinfo=ZoneInfo("America/New_York"))):
        call = await TextCall.open(config, pool)   # its tasks and threads see the pinned instant

The pin is a context variable: it holds in the task that set it and in the tasks and
``asyncio.to_thread`` calls started from there (a call's pipeline, its booking dialogue), and
nowhere else — other calls of the process keep the wall clock.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime

__all__ = ["agent_now", "pinned_now"]

_PINNED: ContextVar[float | None] = ContextVar("voicecore_agent_now", default=None)


def agent_now() -> float:
    """Epoch seconds: the pinned instant in this context, else the wall clock."""
    pinned = _PINNED.get()
    return time.time() if pinned is None else pinned


@contextmanager
def pinned_now(when: datetime | float) -> Iterator[float]:
    """Within the block (and what it starts), :func:`agent_now` is ``when`` (it does not tick).
    A datetime must carry its time zone."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise ValueError("pinned_now needs an aware datetime (with its time zone)")
        when = when.timestamp()
    token = _PINNED.set(float(when))
    try:
        yield float(when)
    finally:
        _PINNED.reset(token)
