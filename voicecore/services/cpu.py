"""Who gets the CPU when a caller is waiting.

On two cores, the LLM generating the rest of a reply and Piper synthesising its
first clause slow each other down by 2–2.5× (a 100 ms clause took 250 ms while
llama.cpp generated beside it). Model work a caller is waiting for right now —
speech recognition of a finished turn, the first clause of a reply — is
*urgent*; token generation past a reply's first clause is not (that clause
plays for a second or more, far longer than the rest takes to generate). (The
single-sequence engine pauses past the first token; the batched decoder only once
a reply's first clause is out: under load, pausing replies still short of theirs
for other calls' first clauses starved them.) The
LLM checks between tokens and pauses while urgent work runs, for a bounded time
so it never starves when urgent work never stops (many concurrent calls).

Other model work running beside the LLM (any transcription or synthesis, urgent or not:
:meth:`CpuPriority.running`) also makes the batched LLM decode on fewer threads (half, at
least one): llama.cpp's threads wait for each other by spinning, and beside Whisper's and
Piper's threads on two cores they spun more than they computed (at N = 8 calls on 2 cores,
voice-to-voice p95 2.0-3.6 s with the LLM on 2 threads, 1.4 s on 1; on 1 thread alone a
single call's p95 rose 700 → 810 ms: hence only while other work runs).

One arbiter per process, shared by every model through the model pool.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class CpuPriority:
    def __init__(self, max_pause_s: float = 0.3):
        self.max_pause_s = max_pause_s
        self._urgent = 0
        self._running = 0  # model work of any kind (urgent or not) running now
        self._cond = threading.Condition()
        self.pauses = 0  # times a background step waited (for benchmarks and tests)

    @property
    def urgent_running(self) -> int:
        return self._urgent

    @property
    def others_running(self) -> int:
        """Model work other than the LLM running now (:meth:`running`, :meth:`urgent`)."""
        return self._running

    @contextmanager
    def running(self) -> Iterator[None]:
        """Run the block as model work beside the LLM (thread-safe, re-entrant)."""
        with self._cond:
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1

    @contextmanager
    def urgent(self) -> Iterator[None]:
        """Run the block as urgent work (thread-safe, re-entrant); it is also :meth:`running`."""
        with self._cond:
            self._urgent += 1
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._urgent -= 1
                self._running -= 1
                if self._urgent == 0:
                    self._cond.notify_all()

    def yield_to_urgent(self) -> float:
        """Called by interruptible work between steps: wait while urgent work runs, at
        most ``max_pause_s``. Returns the seconds waited (0.0 on the fast path)."""
        if not self._urgent:  # unlocked read: a stale value costs one step at most
            return 0.0
        t0 = time.monotonic()
        with self._cond:
            if self._urgent:
                self.pauses += 1
                self._cond.wait_for(lambda: self._urgent == 0, timeout=self.max_pause_s)
        return time.monotonic() - t0
