"""The thread that puts database recordings' chunks into ``recording_chunks`` (the PostgreSQL mode).

:meth:`RecordingWriter.write <voicecore.storage.recording.RecordingWriter.write>` runs where the
audio arrives (a call's recording stream); a database round trip must not run there. The writer
hands each encrypted chunk to :meth:`ChunkSpool.put` (a queue append) and one daemon thread per
store inserts them, several chunks per transaction, in order. When the database is unreachable (a
PostgreSQL restart, a network cut: ``OperationalError``) the thread keeps every chunk queued in
memory and retries with backoff (0.2 s doubling up to 5 s), so nothing is lost once the database
is back; memory is bounded only by the outage, and past :attr:`ChunkSpool.warn_bytes` queued
bytes a warning says so (chunks are never dropped silently). Inserts are idempotent
(``ON CONFLICT DO NOTHING``: a retry after a commit whose answer was lost inserts nothing twice).

A recording whose row is gone (erased, expired, its tenant deleted) while chunks were queued:
those chunks are dropped with a warning, never inserted (the foreign key refuses them anyway),
so an erasure leaves no chunk row behind.

:meth:`ChunkSpool.finish` queues the end of a recording: once its last chunk is in, the thread
sets the row's ``bytes`` and ``complete``; the writer's ``close()`` waits for that (bounded).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loguru import logger
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from voicecore.storage.database import Database
from voicecore.storage.tables import recording_chunks

if TYPE_CHECKING:
    from voicecore.storage.recording import RecordingWriter

#: Chunks inserted per transaction at most.
BATCH = 32


@dataclass
class _Chunk:
    recording_id: str
    idx: int
    data: bytes


@dataclass
class _End:
    recording_id: str
    bytes_written: int
    done: threading.Event
    ok: bool = False


class ChunkSpool:
    """One store's queue of database recording chunks and the thread that inserts them."""

    def __init__(
        self,
        db: Database,
        *,
        warn_bytes: int = 64 * 1024 * 1024,
        finish_timeout: float = 30.0,
        max_backoff: float = 5.0,
    ):
        self._db = db
        self.warn_bytes = warn_bytes
        self.finish_timeout = finish_timeout
        self.max_backoff = max_backoff
        self._items: deque[_Chunk | _End] = deque()
        self._cond = threading.Condition()
        self._queued_bytes = 0
        self._warned = False
        self._stopping = False
        self._stop = threading.Event()
        self._failing_since: float | None = None
        self.inserted = 0  # chunk rows inserted (tests, metrics)
        self.dropped = 0  # chunks of recordings whose row was gone
        self._thread = threading.Thread(target=self._run, name="recording-chunks", daemon=True)
        self._thread.start()

    # -- the writers' side (any thread, never blocks on the database) -------------------

    @property
    def pending(self) -> int:
        """Chunks (and recording ends) not yet in the database."""
        with self._cond:
            return len(self._items)

    @property
    def queued_bytes(self) -> int:
        with self._cond:
            return self._queued_bytes

    def put(self, recording_id: str, idx: int, data: bytes) -> None:
        with self._cond:
            if self._stopping:
                raise RuntimeError("the store is closed")
            self._items.append(_Chunk(recording_id, idx, data))
            self._queued_bytes += len(data)
            if self._queued_bytes > self.warn_bytes and not self._warned:
                self._warned = True
                logger.warning(
                    "{} MiB of recording chunks are waiting for the database (kept in memory, none dropped)",
                    self._queued_bytes // (1024 * 1024),
                )
            self._cond.notify()

    def finish(self, writer: RecordingWriter) -> bool:
        """Queue the end of ``writer``'s recording and wait (up to ``finish_timeout``) until its
        chunks are in and its row is marked complete. ``False``: still queued (the database is
        unreachable); the thread completes it once the database is back."""
        end = _End(writer.recording_id, writer.bytes_written, threading.Event())
        with self._cond:
            if self._stopping:
                raise RuntimeError("the store is closed")
            self._items.append(end)
            self._cond.notify()
        if not end.done.wait(self.finish_timeout):
            logger.warning(
                "recording {}: the database is unreachable; its last chunks stay queued until it is back",
                writer.recording_id[:8],
            )
            return False
        return end.ok

    def flush(self, timeout: float) -> bool:
        """Wait until the queue is empty (``True``) or ``timeout`` seconds passed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._items:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return True

    def close(self, timeout: float = 30.0) -> None:
        """Insert what is queued (up to ``timeout``), then stop the thread. What could not be
        inserted by then (the database still unreachable) is said in an error log."""
        self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._stop.set()
            left = [i for i in self._items if isinstance(i, _Chunk)]
            self._cond.notify_all()
        self._thread.join(timeout=10)
        if left:
            logger.error(
                "store closed with {} recording chunks of {} recordings not in the database (unreachable)",
                len(left), len({c.recording_id for c in left}),
            )  # fmt: skip

    # -- the thread ----------------------------------------------------------------------

    def _next_batch(self) -> list[_Chunk | _End] | None:
        with self._cond:
            while not self._items:
                if self._stopping:
                    return None
                self._cond.wait()
            if self._stopping and self._failing_since is not None:
                return None
            batch: list[_Chunk | _End] = []
            for item in self._items:
                if len(batch) >= BATCH:
                    break
                batch.append(item)
            return batch

    def _run(self) -> None:
        backoff = 0.2
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._write(batch)
            except Exception as exc:
                # OperationalError while PostgreSQL restarts, a cut connection; IntegrityError: a
                # recording erased between the check and the insert (the next round drops its chunks)
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    logger.warning(
                        "recording chunks cannot be written ({}); {} queued, retrying",
                        type(exc).__name__, self.pending,
                    )  # fmt: skip
                if self._stop.wait(backoff):  # not woken by new chunks: a real backoff
                    return
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if self._failing_since is not None:
                logger.info(
                    "recording chunks written again after {:.1f} s without the database",
                    time.monotonic() - self._failing_since,
                )
                self._failing_since = None
            backoff = 0.2
            with self._cond:
                for _ in batch:
                    item = self._items.popleft()
                    if isinstance(item, _Chunk):
                        self._queued_bytes -= len(item.data)
                if self._queued_bytes <= self.warn_bytes // 2:
                    self._warned = False
                self._cond.notify_all()
            for item in batch:
                if isinstance(item, _End):
                    item.done.set()

    def _write(self, batch: list[_Chunk | _End]) -> None:
        """One transaction: the batch's chunks (of recordings whose row still exists), then the
        ends of recordings (bytes, complete) in the batch."""
        db = self._db
        ids = sorted({i.recording_id for i in batch})
        insert = (pg_insert if db.is_postgresql else sqlite_insert)(recording_chunks).on_conflict_do_nothing()
        with db.tx():
            marks = ",".join("?" * len(ids))
            alive = {r["id"] for r in db.rows(f"SELECT id FROM recordings WHERE id IN ({marks})", ids)}
            rows = [{"recording_id": c.recording_id, "idx": c.idx, "data": c.data}
                    for c in batch if isinstance(c, _Chunk) and c.recording_id in alive]  # fmt: skip
            if rows:
                db.execute(insert, rows)
            for end in batch:
                if isinstance(end, _End) and end.recording_id in alive:
                    db.execute("UPDATE recordings SET bytes = ?, complete = 1 WHERE id = ?",
                               (end.bytes_written, end.recording_id))  # fmt: skip
        gone = [c for c in batch if isinstance(c, _Chunk) and c.recording_id not in alive]
        self.inserted += len(rows)
        for end in batch:
            if isinstance(end, _End):
                end.ok = end.recording_id in alive
        if gone:
            self.dropped += len(gone)
            logger.warning(
                "{} recording chunks dropped: their recording was deleted (erased or expired) while they were queued",
                len(gone),
            )
