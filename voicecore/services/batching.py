"""Requests that wait for a busy model run together, as one batch.

A model shared by every call of the process works on one request at a time in its
own thread. ``BatchQueue`` sits in front of that thread: a request that finds the
thread free runs at once, alone; requests that arrive while a batch runs wait,
and when the thread is free again the waiting ones (up to ``max_batch``, oldest
first) are taken together and handed to ``run`` as one list. Nothing waits on
purpose for a batch to fill: batches form only from requests that would have
queued anyway.

The queue knows nothing of the model: ``run(items) -> results`` (one result per
item, in order) is the only call it makes, in its thread. It is thread-safe and
serves any number of event loops (each request's result goes back to the loop
that asked). A request cancelled while it waits is dropped before its batch is
formed; one cancelled while its batch runs is computed and its result thrown
away. When a batch of several fails, each of its requests is run again alone, so
one request that breaks the model does not fail the others with it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from loguru import logger

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class _Request(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    loop: asyncio.AbstractEventLoop

    def settle(self, result: R | None = None, error: BaseException | None = None) -> None:
        """Hand the outcome to the asking loop (from the queue's thread)."""

        def _set() -> None:
            if self.future.done():  # cancelled meanwhile: nobody wants the result
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)  # type: ignore[arg-type]

        try:
            self.loop.call_soon_threadsafe(_set)
        except RuntimeError:  # the asking loop is closed: nobody is waiting any more
            pass


class BatchQueue(Generic[T, R]):
    """One worker thread running ``run`` on batches of the requests that waited for it."""

    def __init__(self, run: Callable[[list[T]], Sequence[R]], *, max_batch: int, name: str = "batch"):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1 (got {max_batch})")
        self._run = run
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._waiting: deque[_Request[T, R]] = deque()
        self._draining = False  # the worker thread is taking batches (guarded by _lock)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.batches_run = 0
        self.batch_sizes: Counter[int] = Counter()  # batch size -> how many batches had it
        self.dropped = 0  # requests cancelled while they waited

    @property
    def waiting(self) -> int:
        """Requests waiting for the worker thread (not counting the batch it runs)."""
        with self._lock:
            return len(self._waiting)

    @property
    def busy(self) -> bool:
        """A batch is running or requests are waiting for one."""
        with self._lock:
            return self._draining

    async def submit(self, item: T) -> R:
        """``item``'s result, computed in a batch with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        request: _Request[T, R] = _Request(item, loop.create_future(), loop)
        with self._lock:
            self._waiting.append(request)
            start = not self._draining
            self._draining = True
        if start:
            self._executor.submit(self._drain)
        try:
            return await request.future
        except asyncio.CancelledError:
            with self._lock:
                try:
                    self._waiting.remove(request)
                    self.dropped += 1
                except ValueError:
                    pass  # already in the running batch: its result is dropped when it comes
            raise

    def take(self) -> list[_Request[T, R]]:
        """The next batch: the oldest waiting requests, at most ``max_batch``. An empty list
        means nothing waits, and the worker thread stops (the next ``submit`` starts it)."""
        with self._lock:
            batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
            if not batch:
                self._draining = False
            return batch

    def _drain(self) -> None:
        """The worker thread: batch after batch until nothing waits."""
        try:
            while batch := self.take():
                self._run_batch(batch)
        except BaseException:
            with self._lock:
                self._draining = False  # a later submit starts the thread again
            raise

    def _run_batch(self, batch: list[_Request[T, R]]) -> None:
        self.batches_run += 1
        self.batch_sizes[len(batch)] += 1
        try:
            results = list(self._run([r.item for r in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} gave {len(results)} results")
        except Exception as e:
            if len(batch) > 1:
                logger.warning(f"a batch of {len(batch)} failed ({type(e).__name__}); running each alone")
                for request in batch:
                    self._run_batch([request])
                return
            batch[0].settle(error=e)
            return
        except BaseException:  # the thread itself is going down: nobody must wait for it
            for request in batch:
                request.settle(error=RuntimeError("the model's worker thread stopped"))
            raise
        for request, result in zip(batch, results, strict=True):
            request.settle(result)
