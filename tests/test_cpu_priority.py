"""Urgent model work (a caller waiting) pauses background token generation, for a bounded time.

Behaviour only, by events and ordering: how long the fast path, a wake-up or the bound take
on this machine is measured by ``python -m benchmarks.cpu_priority`` (targets there).
"""

from __future__ import annotations

import threading
import time

import pytest

from voicecore.services.cpu import CpuPriority

NEVER_S = 60.0  # a bound no correct wait reaches in these tests


def test_no_urgent_work_means_no_wait():
    cpu = CpuPriority(max_pause_s=NEVER_S)
    assert cpu.yield_to_urgent() == 0.0  # the fast path: not even a clock read
    assert cpu.pauses == 0


def test_waits_until_urgent_work_ends():
    cpu = CpuPriority(max_pause_s=NEVER_S)
    started, release, returned = threading.Event(), threading.Event(), threading.Event()
    released_at: list[float] = []
    result: list[tuple[float, float]] = []

    def urgent_job():
        with cpu.urgent():
            started.set()
            release.wait(NEVER_S)
            released_at.append(time.monotonic())

    def background_step():
        waited = cpu.yield_to_urgent()
        result.append((waited, time.monotonic()))
        returned.set()

    job = threading.Thread(target=urgent_job)
    job.start()
    assert started.wait(10)
    step = threading.Thread(target=background_step)
    step.start()
    # while the urgent job runs, the background step stays paused (the bound is a minute away)
    assert not returned.wait(0.3), "yield_to_urgent returned while urgent work was still running"
    assert cpu.urgent_running == 1
    release.set()
    assert returned.wait(10), "yield_to_urgent did not return once the urgent work ended"
    job.join(10)
    step.join(10)
    (waited, returned_at), = result
    assert returned_at >= released_at[0]  # it went on only after the urgent work ended
    assert waited > 0.0
    assert cpu.pauses == 1 and cpu.urgent_running == 0


def test_wait_is_bounded_so_background_work_never_starves():
    cpu = CpuPriority(max_pause_s=0.05)
    with cpu.urgent():
        waited = cpu.yield_to_urgent()  # urgent work never ends here: only the bound lets it go
        assert cpu.urgent_running == 1
    assert waited >= 0.05  # it waited out the bound (how far past it: the benchmark)
    assert cpu.pauses == 1


def test_nested_and_concurrent_urgent_blocks_count():
    cpu = CpuPriority()
    with cpu.urgent():
        with cpu.urgent():
            assert cpu.urgent_running == 2
        assert cpu.urgent_running == 1
    assert cpu.urgent_running == 0


def test_urgent_count_recovers_after_an_exception():
    cpu = CpuPriority()
    with pytest.raises(RuntimeError):
        with cpu.urgent():
            raise RuntimeError("model failed")
    assert cpu.urgent_running == 0
