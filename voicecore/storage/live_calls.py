"""Writing a call while it runs: its row kept current, and the final record stored through outages.

A ``serve`` worker saves each open call (``calls.save`` with the worker's id, ``ended_at``
None) when it starts and after every finished turn, so that when the worker dies another
worker can close the call as ``worker_lost`` with what was said kept (as the policy allows:
``calls.save`` decides what is stored). The saves run in a thread, one at a time per call,
coalesced: a change is saved :data:`DEBOUNCE_S` after it, with whatever else changed meanwhile
(a caller's turn and the reply to it usually go in one save), and only the turns that changed
are written.

When the database is unreachable (a PostgreSQL restart, a failover) a save is retried with
backoff and the call goes on; the record is held in the worker until the database is back,
then written: nothing said is lost. The final save at hang-up retries the same way, for up to
``retry_for_s`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from loguru import logger
from sqlalchemy.exc import DBAPIError, OperationalError

from voicecore.records import CallRecord

if TYPE_CHECKING:
    from voicecore.policy import Policy
    from voicecore.storage.store import Store

RETRY_FOR_S = 600.0  # how long the final save of a call keeps trying while the database is down
DEBOUNCE_S = 4.0  # a change is saved this long after it (at most what a dead worker can lose of a call)
_FIRST_BACKOFF_S = 0.25
_MAX_BACKOFF_S = 4.0


def database_unreachable(exc: BaseException) -> bool:
    """The error is the database being away (connection refused or lost, server restarting):
    worth trying again, unlike a refused write."""
    while exc is not None:
        if isinstance(exc, OperationalError):
            return True
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def unchanged_turns(saved: list[str], record: CallRecord) -> int:
    """How many of the record's first turns are as they were saved (``saved``: their reprs)."""
    n = 0
    for before, turn in zip(saved, record.turns):
        if before != repr(turn):
            break
        n += 1
    return n


async def save_call(
    store: Store,
    record: CallRecord,
    policy: Policy | None,
    *,
    worker_id: str | None = None,
    turns_from: int | None = None,
    retry_for_s: float = RETRY_FOR_S,
    sleep: Callable[[float], object] = asyncio.sleep,
) -> bool:
    """``store.calls.save`` in a thread, retried with backoff while the database is unreachable
    (up to ``retry_for_s``; then the last error is raised). Other errors are raised at once."""
    deadline = time.monotonic() + retry_for_s
    delay = _FIRST_BACKOFF_S
    warned = False
    while True:
        try:
            stored = await asyncio.to_thread(store.calls.save, record, policy, worker_id=worker_id,
                                             turns_from=turns_from)  # fmt: skip
        except Exception as e:
            if not database_unreachable(e) or time.monotonic() + delay > deadline:
                raise
            if not warned:
                logger.warning(f"call {record.call_id[:8]}: the database is unreachable; the call record is held "
                               f"and written when it is back ({type(e).__name__})")  # fmt: skip
                warned = True
            await sleep(delay)  # type: ignore[misc]
            delay = min(delay * 2, _MAX_BACKOFF_S)
            continue
        if warned:
            logger.info(f"call {record.call_id[:8]}: the database is back; the call record is written")
        return stored


class LiveCallWriter:
    """Keeps one open call's row current in the database while the call runs (see the module).

    ``changed()`` from the event loop after the record changed (a turn finished); ``await
    finish(record)`` at the end writes the closed record (retrying through outages) and
    returns what ``calls.save`` returned.
    """

    def __init__(self, store: Store, record: CallRecord, policy: Policy | None, worker_id: str,
                 *, retry_for_s: float = RETRY_FOR_S, debounce_s: float = DEBOUNCE_S):  # fmt: skip
        self._store = store
        self._record = record
        self._policy = policy
        self.worker_id = worker_id
        self._retry_for_s = retry_for_s
        self._debounce_s = debounce_s
        self._dirty = False
        self._finished = False
        self._task: asyncio.Task[None] | None = None
        self._finishing = asyncio.Event()
        self.saves = 0  # checkpoints written (for tests and metrics)
        self._saved_turns: list[str] = []  # repr of each turn as last written: only changes are written

    def changed(self) -> None:
        """The record changed: write it soon (coalesced with a save in flight)."""
        if self._finished:
            return
        self._dirty = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._checkpoints(), name=f"checkpoint-{self._record.call_id[:8]}")

    async def _checkpoints(self) -> None:
        delay = _FIRST_BACKOFF_S
        # A caller's turn and the reply to it usually come within a second or two: one save for both.
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(self._finishing.wait(), self._debounce_s)
        while self._dirty and not self._finished:
            self._dirty = False
            # The loop goes on changing the record (agent turns are filled in as they play):
            # the thread writes a copy taken now.
            snapshot = copy.deepcopy(self._record)
            try:
                await asyncio.to_thread(self._store.calls.save, snapshot, self._policy, worker_id=self.worker_id,
                                        turns_from=unchanged_turns(self._saved_turns, snapshot))  # fmt: skip
            except Exception as e:  # the call goes on either way
                if not database_unreachable(e):
                    logger.error(f"call {self._record.call_id[:8]}: the open call could not be saved "
                                 f"({type(e).__name__})")  # fmt: skip
                    return
                self._dirty = True  # held until the database is back (or written by finish())
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await asyncio.wait_for(self._finishing.wait(), delay)
                delay = min(delay * 2, _MAX_BACKOFF_S)
                continue
            delay = _FIRST_BACKOFF_S
            self._saved_turns = [repr(t) for t in snapshot.turns]
            self.saves += 1

    async def finish(self, record: CallRecord) -> bool:
        """Write the closed record, retrying through outages. A checkpoint in flight completes
        first (never cancelled mid-write: an open-call save landing after the final one would
        reopen the call)."""
        self._finished = True
        self._finishing.set()
        task = self._task
        if task is not None and not task.done():
            try:
                await task
            except Exception:  # logged by the task
                pass
        return await save_call(self._store, record, self._policy, worker_id=self.worker_id,
                               turns_from=unchanged_turns(self._saved_turns, record),
                               retry_for_s=self._retry_for_s)  # fmt: skip
