"""Capacity and draining of a ``serve`` worker (issue 12, item 5), as a load balancer and a
provider see them: ``GET /healthz/ready``, the close code of a refused media stream, and what
SIGTERM does to the calls in progress.

The in-process tests need no model (a refused stream is refused before any model runs; the
model guard of ``conftest.py`` fails them otherwise). The others run ``voicecore serve`` as a
real process on 127.0.0.1 with the default models and send it real signals.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_workers import (
    aget,
    greeted_call,
    start_worker,
    stop_worker,
    stored_calls,
    wait_exit,
)

from voicecore.model_pool import ModelPool
from voicecore.server import create_app, running_server
from voicecore.server.guard import AuthThrottle
from voicecore.storage import Store
from voicecore.testing.callers import TwilioClient

ROOT = Path(__file__).resolve().parent.parent
TRY_AGAIN_LATER = 1013


async def refused_stream(ws_base: str, key: str) -> TwilioClient:
    """A Twilio stream that a full or draining worker refuses at the upgrade (HTTP 503, so a load
    balancer can hand it to another worker); returns the client."""
    client = TwilioClient(f"{ws_base}/ws/twilio", token=key, label="refused")
    try:
        assert not await client.connect(), "a full or draining worker accepted the stream"
    finally:
        await client.close()
    assert client.handshake_status == 503, client.handshake_status
    return client


# --------------------------------------------------------------------------- in process, no model


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data")
    try:
        yield s
    finally:
        s.close()


async def test_readiness_and_refusal_while_draining(store: Store, tmp_path: Path) -> None:
    key = store.tenants.create("acme", actor="test")
    app = create_app(data_dir=tmp_path / "data", store=store, pool=ModelPool(), preload=False, max_calls=2,
                     auth_throttle=AuthThrottle(burst=1000))  # fmt: skip
    state = app.state.vc
    async with running_server(app) as base:
        ws = base.replace("http", "ws")
        assert await aget(f"{base}/healthz/ready") == (200, {"status": "ready", "active_calls": 0, "max_calls": 2})
        # a stream whose upgrade went through just before the worker started draining: refused at
        # its start message, before any model runs, with 1013 (try again later)
        late = TwilioClient(f"{ws}/ws/twilio", token=key, label="late")
        try:
            assert await late.connect()
            state.draining = True  # what the first SIGTERM does (see the process tests below)
            await late.open()
            assert await late.wait_closed(10), "the stream was not closed"
        finally:
            await late.close()
        assert late.close_code == TRY_AGAIN_LATER, (late.close_code, late.close_reason)
        assert "draining" in (late.close_reason or "") and not late.media
        status, body = await aget(f"{base}/healthz/ready")
        assert (status, body["status"]) == (503, "draining")
        assert (await aget(f"{base}/healthz"))[0] == 200  # liveness is not readiness
        await refused_stream(ws, key)  # a new stream: refused at the upgrade
        metrics = state.metrics.render()
        assert 'voicecore_streams_rejected_total{transport="twilio",reason="draining"} 2' in metrics, metrics
        assert not state.calls and state.opening_calls == 0


def test_bad_capacity_settings_are_refused_with_their_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_calls must be at least 1"):
        create_app(data_dir=tmp_path, pool=ModelPool(), preload=False, max_calls=0)
    with pytest.raises(ValueError, match="drain timeout"):
        create_app(data_dir=tmp_path, pool=ModelPool(), preload=False, drain_timeout_s=-1)
    done = subprocess.run([sys.executable, "-m", "voicecore", "serve", "--max-calls", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "--max-calls" in done.stderr, done.stderr


# --------------------------------------------------------------------------- a real worker process


@pytest.mark.models
async def test_max_calls_refuses_the_next_stream_and_frees_its_place(tmp_path: Path) -> None:
    worker = await start_worker(tmp_path, "--max-calls", "1")
    try:
        assert await aget(f"{worker.base}/healthz/ready") == (200, {"status": "ready", "active_calls": 0,
                                                                     "max_calls": 1})  # fmt: skip
        first = await greeted_call(worker.ws, worker.key, "first", worker.output)
        assert await aget(f"{worker.base}/healthz/ready") == (503, {"status": "full", "active_calls": 1,
                                                                     "max_calls": 1})  # fmt: skip
        await refused_stream(worker.ws, worker.key)
        assert not first.closed.is_set(), "the call in progress was disturbed"
        await first.hangup()
        await first.close()
        deadline = time.monotonic() + 15
        while (await aget(f"{worker.base}/healthz/ready"))[0] != 200:
            assert time.monotonic() < deadline, "the place of the ended call was never freed"
            await asyncio.sleep(0.1)
        third = await greeted_call(worker.ws, worker.key, "third", worker.output)  # the freed place takes a call again
        await third.hangup()
        await third.close()
        _s, metrics = await asyncio.to_thread(lambda: (0, urllib.request.urlopen(f"{worker.base}/metrics").read()))
        assert b'voicecore_streams_rejected_total{transport="twilio",reason="full"} 1' in metrics
    finally:
        worker.proc.send_signal(signal.SIGTERM)
        await wait_exit(worker, 60)
        stop_worker(worker)
    first_call, third_call = stored_calls(worker.data_dir, [first, third])
    assert first_call is not None and third_call is not None


@pytest.mark.models
async def test_sigterm_drains_the_calls_in_progress(tmp_path: Path, say) -> None:
    worker = await start_worker(tmp_path, "--drain-timeout", "60")
    try:
        call = await greeted_call(worker.ws, worker.key, "in-progress", worker.output)
        assert await call.wait_agent_quiet(quiet=0.8, timeout=30)
        worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while (await aget(f"{worker.base}/healthz/ready"))[1].get("status") != "draining":
            assert time.monotonic() < deadline, "the worker never said it was draining"
            await asyncio.sleep(0.1)
        status, body = await aget(f"{worker.base}/healthz/ready")
        assert (status, body["active_calls"]) == (503, 1)
        await refused_stream(worker.ws, worker.key)
        # the call in progress goes on: the caller asks, the agent answers
        asked_at = time.monotonic()
        await call.say_and_wait(say("What time do you open on Saturday?"), timeout=30)
        assert await call.wait_media_after(asked_at + 0.5, 30) is not None, f"no reply while draining\n{worker.output()}"
        assert await call.wait_agent_quiet(quiet=0.8, timeout=30)
        assert worker.proc.poll() is None and not call.closed.is_set(), "the call was cut while draining"
        await call.hangup()  # Twilio's stop: the last call ends, the worker exits on its own
        await call.close()
        assert await wait_exit(worker, 60) == 0, worker.output()
    finally:
        stop_worker(worker)
    (stored,) = stored_calls(worker.data_dir, [call])
    assert stored is not None and stored.ended_at is not None
    assert stored.end_reason == "stop", stored.end_reason
    assert "drained" in worker.output()


@pytest.mark.models
async def test_drain_timeout_ends_the_calls_left(tmp_path: Path) -> None:
    worker = await start_worker(tmp_path, "--drain-timeout", "2")
    try:
        call = await greeted_call(worker.ws, worker.key, "stays", worker.output)
        await call.wait_agent_quiet(quiet=0.8, timeout=30)
        signalled = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        assert await call.wait_closed(40), "the worker never closed the call left after the drain timeout"
        assert time.monotonic() - signalled >= 1.5, "the call was ended before the drain timeout"
        assert await wait_exit(worker, 60) == 0, worker.output()
        await call.close()
    finally:
        stop_worker(worker)
    (stored,) = stored_calls(worker.data_dir, [call])
    assert stored is not None and stored.end_reason == "server_shutdown", stored and stored.end_reason
    assert "drain timeout" in worker.output()
