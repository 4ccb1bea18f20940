"""Two ``voicecore serve`` workers behind nginx (Debian's package), configured with the file in
``deploy/nginx/voicecore.conf`` (only the addresses changed for 127.0.0.1 and free ports, no TLS):
Twilio calls through nginx spread over both workers, every call is stored once and listed by
either worker's API; with both workers full, nginx tries each and the caller gets 503.

On SQLite both workers share one data directory (the default; several processes on one
machine); on PostgreSQL (the ``database`` fixture, tests/pg.py) each has its own data directory
and they share the database URL and the master key (``VOICECORE_MASTER_KEY``), as workers on
several machines do.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_workers import (
    Worker,
    aget,
    greeted_call,
    make_tenant,
    start_worker,
    stop_worker,
    stored_calls,
)

from voicecore.testing.callers import TwilioClient
from voicecore.testing.inference import free_port

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "deploy" / "nginx" / "voicecore.conf"

pytestmark = [
    pytest.mark.models,
    # scripts/setup.sh installs Debian's nginx when run as root (as CI does): there a missing nginx fails
    pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists() and os.geteuid() != 0,
                       reason="nginx is not installed (scripts/setup.sh installs Debian's package as root)"),
]  # fmt: skip


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def render_recipe(listen_port: int, worker_ports: list[int]) -> str:
    """The deploy recipe for this test: listen on 127.0.0.1 without TLS, the workers' ports."""
    text = RECIPE.read_text()
    text = re.sub(r"listen 443 ssl;", f"listen 127.0.0.1:{listen_port};", text)
    text = re.sub(r"\n\s*ssl_certificate[^\n]*", "", text)
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=2 fail_timeout=10s;\n" for p in worker_ports)
    text = re.sub(r"(upstream voicecore \{\n\s*least_conn;[^\n]*\n)(?:\s*server [^\n]*\n)+", r"\g<1>" + servers, text)
    assert all(f"127.0.0.1:{p}" in text for p in worker_ports) and "ssl" not in text.replace("ssl_", ""), text
    return text


class Nginx:
    def __init__(self, folder: Path, worker_ports: list[int]):
        self.port = free_port()
        self.folder = folder
        (folder / "conf.d").mkdir(parents=True)
        (folder / "conf.d" / "voicecore.conf").write_text(render_recipe(self.port, worker_ports))
        (folder / "nginx.conf").write_text(f"""
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    include {folder}/conf.d/*.conf;
}}
""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [nginx_binary(), "-p", str(self.folder), "-c", str(self.folder / "nginx.conf"), "-g", "daemon off;"]
        check = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, f"the recipe does not load in nginx:\n{check.stderr}"
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def nginx_factory(tmp_path: Path) -> Iterator[list[Nginx]]:
    started: list[Nginx] = []
    yield started
    for n in started:
        n.stop()


async def two_workers(tmp_path: Path, *args: str, shared_data_dir: bool = True) -> tuple[list[Worker], str]:
    """Two workers on one data directory, or (``shared_data_dir=False``: PostgreSQL) one each."""
    dirs = [tmp_path / "data"] * 2 if shared_data_dir else [tmp_path / "data0", tmp_path / "data1"]
    key = make_tenant(dirs[0])
    workers = []
    for i in range(2):
        workers.append(await start_worker(tmp_path, *args, data_dir=dirs[i], key=key, name=f"worker{i}"))
    return workers, key


async def active_calls(worker: Worker) -> int:
    return int((await aget(f"{worker.base}/healthz"))[1]["active_calls"])


async def wait_nginx(nginx: Nginx) -> None:
    for _ in range(100):
        try:
            if (await aget(f"{nginx.base}/healthz"))[0] == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("nginx never answered")


async def test_calls_through_nginx_spread_over_two_workers_and_both_list_them(
    tmp_path: Path, nginx_factory, database: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    if database is not None:  # PostgreSQL: a data directory per worker, one database and one master key
        monkeypatch.setenv("VOICECORE_MASTER_KEY", "A" * 43 + "=")
    workers, key = await two_workers(tmp_path, shared_data_dir=database is None)
    for w in workers:  # the database each worker says it uses
        assert ("database: PostgreSQL database" in w.output()) == (database is not None), w.output()
    nginx = Nginx(tmp_path / "nginx", [int(w.base.rsplit(":", 1)[1]) for w in workers])
    nginx_factory.append(nginx)
    clients: list[TwilioClient] = []
    try:
        nginx.start()
        await wait_nginx(nginx)
        ws = nginx.base.replace("http", "ws")
        for i in range(4):  # held open together: least_conn sends each to the worker with fewer calls
            clients.append(await greeted_call(ws, key, f"via-nginx-{i}"))
        per_worker = [await active_calls(w) for w in workers]
        assert per_worker == [2, 2], per_worker
        for c in clients:
            await c.hangup()
            await c.close()
        stored = []
        for _ in range(100):
            stored = await asyncio.to_thread(stored_calls, workers[0].data_dir, clients)  # through the database
            if all(s is not None and s.ended_at is not None for s in stored):
                break
            await asyncio.sleep(0.1)
        assert all(s is not None and s.ended_at is not None for s in stored), stored
        ids = {s.call_id for s in stored}
        assert len(ids) == 4  # each call stored once
        for w in workers:  # either worker's API lists every call, whichever worker took it
            status, body = await aget(f"{w.base}/v1/calls?limit=100", {"Authorization": f"Bearer {key}"})
            assert status == 200, body
            assert ids <= {c["call_id"] for c in body["calls"]}, body
    finally:
        for c in clients:
            await c.close()
        for w in workers:
            stop_worker(w)


async def test_with_every_worker_full_nginx_answers_503(tmp_path: Path, nginx_factory) -> None:
    workers, key = await two_workers(tmp_path, "--max-calls", "1")
    nginx = Nginx(tmp_path / "nginx", [int(w.base.rsplit(":", 1)[1]) for w in workers])
    nginx_factory.append(nginx)
    clients: list[TwilioClient] = []
    try:
        nginx.start()
        await wait_nginx(nginx)
        ws = nginx.base.replace("http", "ws")
        clients.append(await greeted_call(ws, key, "one"))
        clients.append(await greeted_call(ws, key, "two"))  # the first worker is full: the other takes it
        assert [await active_calls(w) for w in workers] == [1, 1]
        third = TwilioClient(f"{ws}/ws/twilio", token=key, label="three")
        assert not await third.connect(), "a third call was taken with both workers full"
        assert third.handshake_status in (502, 503), third.handshake_status
        for c in clients:
            assert not c.closed.is_set()
    finally:
        for c in clients:
            await c.hangup()
            await c.close()
        for w in workers:
            stop_worker(w)
