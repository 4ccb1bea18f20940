"""``voicecore serve`` workers as real processes on 127.0.0.1, for the tests of capacity, draining
and many workers: started on a free port with a data directory, ready once ``/healthz/ready``
says so, stopped with signals."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicecore.storage import Store
from voicecore.testing.callers import TwilioClient, find_stored_call
from voicecore.testing.inference import free_port

ROOT = Path(__file__).resolve().parent.parent


def http_get(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


async def aget(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    return await asyncio.to_thread(http_get, url, 5.0, headers)


@dataclass
class Worker:
    proc: subprocess.Popen
    base: str
    data_dir: Path
    key: str
    log: Path

    @property
    def ws(self) -> str:
        return self.base.replace("http", "ws")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def make_tenant(data_dir: Path, name: str = "acme") -> str:
    store = Store(data_dir)
    try:
        return store.tenants.create(name, actor="test")
    finally:
        store.close()


async def start_worker(tmp_path: Path, *args: str, data_dir: Path | None = None, key: str | None = None,
                       name: str = "serve", env: dict[str, str] | None = None, port: int | None = None,
                       ) -> Worker:  # fmt: skip
    """``voicecore serve`` on a free port (tenant ``acme`` made first unless ``key`` is given), with
    ``env`` added to this process's environment; returns once it is ready (its models loaded)."""
    data_dir = data_dir or tmp_path / "data"
    key = key or make_tenant(data_dir)
    port = port or free_port()
    log = tmp_path / f"{name}-{port}-{time.monotonic_ns()}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VOICECORE_LOG_LEVEL": "INFO", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "voicecore", "serve", "--port", str(port), "--data-dir", str(data_dir), *args],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    worker = Worker(proc, f"http://127.0.0.1:{port}", data_dir, key, log)
    deadline = time.monotonic() + 180  # the models load before the worker says it is ready
    while True:
        assert proc.poll() is None, f"serve exited with {proc.returncode}:\n{worker.output()}"
        try:
            if (await aget(f"{worker.base}/healthz/ready"))[0] == 200:
                return worker
        except (OSError, ValueError):
            pass
        assert time.monotonic() < deadline, f"serve never became ready:\n{worker.output()}"
        await asyncio.sleep(0.2)


def stop_worker(worker: Worker) -> None:
    if worker.proc.poll() is None:
        worker.proc.kill()
        worker.proc.wait(10)


async def wait_exit(worker: Worker, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while worker.proc.poll() is None:
        assert time.monotonic() < deadline, f"serve did not exit within {timeout} s:\n{worker.output()}"
        await asyncio.sleep(0.1)
    return worker.proc.returncode


async def greeted_call(ws_base: str, key: str, label: str, output: Any = None) -> TwilioClient:
    """A Twilio call on ``ws_base`` that got the agent's greeting."""
    client = TwilioClient(f"{ws_base}/ws/twilio", token=key, label=label)
    assert await client.start(), f"{label}: upgrade refused: HTTP {client.handshake_status}"
    assert await client.wait_media_after(0.0, 30) is not None, (
        f"{label}: no greeting (closed {client.close_code} {client.close_reason!r})\n{output() if output else ''}"
    )
    return client


def stored_calls(data_dir: Path, clients: list[TwilioClient], tenant: str = "acme") -> list[Any]:
    store = Store(data_dir)
    try:
        return [find_stored_call(store, tenant, c.ids) for c in clients]
    finally:
        store.close()
