"""Urgent model work (a caller waiting) pauses background token generation, for a bounded time."""

from __future__ import annotations

import threading
import time

import pytest

from voicecore.services.cpu import CpuPriority


def test_no_urgent_work_means_no_wait():
    cpu = CpuPriority()
    t0 = time.monotonic()
    assert cpu.yield_to_urgent() == 0.0
    assert time.monotonic() - t0 < 0.01
    assert cpu.pauses == 0


def test_waits_until_urgent_work_ends():
    cpu = CpuPriority(max_pause_s=5.0)
    started = threading.Event()

    def urgent_job():
        with cpu.urgent():
            started.set()
            time.sleep(0.2)

    t = threading.Thread(target=urgent_job)
    t.start()
    started.wait(2)
    waited = cpu.yield_to_urgent()
    t.join()
    assert 0.1 < waited < 2.0
    assert cpu.pauses == 1 and cpu.urgent_running == 0


def test_wait_is_bounded_so_background_work_never_starves():
    cpu = CpuPriority(max_pause_s=0.05)
    with cpu.urgent():
        waited = cpu.yield_to_urgent()
    assert 0.04 < waited < 1.0


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
