"""Shared fixtures: the real default models (loaded once per test session) and spoken caller audio.

Two guards run around every test (see ``tests/suite_guards.py``):

* **models**: a test not marked ``models`` that loads or uses a model (an engine constructor,
  or the shared ``ModelPool``) fails, naming the model and the test, so ``pytest -m "not models"``
  really runs without them;
* **logs**: every log record at INFO or above — loguru's and stdlib ``logging``'s (uvicorn,
  websockets, aiohttp, ...) — is searched for API keys, one-time call tokens, webhook secrets,
  stream secrets (by pattern, and literally for every secret and provider credential created
  in this process) and for the sentences callers said; a test whose logs hold one fails at
  teardown, naming the logger and level and showing the secret masked.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import suite_guards as guards  # tests/suite_guards.py (pytest puts tests/ on sys.path for this conftest)
from loguru import logger

ROOT = Path(__file__).resolve().parent.parent


def _stderr_masked(message) -> None:
    """loguru's WARNING+ lines on stderr (pytest shows them for a failed test), secrets masked."""
    sys.stderr.write(guards.LOG_WATCH.masked(str(message)))


def pytest_configure(config):
    logger.remove()
    logger.add(_stderr_masked, level="WARNING",
               format="{time:HH:mm:ss.SSS} | {level: <8} | {name}:{function}:{line} - {message}\n{exception}")
    guards.install_model_guard()
    guards.install_log_watch()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    guards.MODEL_GUARD.enter(item)  # before any fixture of the test (session-scoped ones too) is set up


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    item.stash.setdefault(guards.REPORTS, []).append(report)
    return report


@pytest.fixture(autouse=True)
def _models_only_when_marked(request):
    """Fails a test not marked ``models`` that loaded or used a model (even where the load was
    caught, e.g. in the server's threads), unless its own error already said so."""
    yield
    violations = guards.MODEL_GUARD.take_violations()
    said = " ".join(r.longreprtext for r in request.node.stash.get(guards.REPORTS, []) if r.failed)
    violations = [v for v in violations if v not in said]
    if violations:
        pytest.fail("\n".join(violations), pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _log_watch():
    """Watches every log record of the session; the check of what is left after the last test
    (server shut-downs at session end) runs here."""
    guards.LOG_WATCH.start()
    yield guards.LOG_WATCH
    problems = guards.LOG_WATCH.check()
    guards.LOG_WATCH.stop()
    if problems:
        pytest.fail(problems, pytrace=False)


@pytest.fixture(autouse=True)
def _no_secrets_in_logs(_log_watch):
    """Privacy rule: no key, token, webhook secret or caller sentence in any log record at INFO or
    above during the test (set-up and teardown of its fixtures included)."""
    yield _log_watch
    problems = _log_watch.check()
    if problems:
        pytest.fail(problems, pytrace=False)


@pytest.fixture(autouse=True)
def _no_env_master_key(monkeypatch):
    """Stores keep their master key in a key file unless a test sets VOICECORE_MASTER_KEY itself."""
    from voicecore.storage import MASTER_KEY_ENV

    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)


@pytest.fixture
def store(tmp_path, request):
    """A fresh Store in ``tmp_path/data`` holding the test module's ``TENANTS``
    (tenant name → policy YAML, ``None`` for the privacy-first default policy); webhooks to
    local receivers when the module sets ``ALLOW_INSECURE_WEBHOOKS = True``."""
    from voicecore.storage import Store

    if "database" in request.fixturenames:
        request.getfixturevalue("database")  # VOICECORE_DATABASE_URL set before the store opens
    s = Store(tmp_path / "data", allow_insecure_webhooks=getattr(request.module, "ALLOW_INSECURE_WEBHOOKS", False))
    for name, policy_yaml in getattr(request.module, "TENANTS", {}).items():
        s.tenants.create(name, policy_yaml=policy_yaml, actor="test")
    yield s
    s.close()


@pytest.fixture(scope="session")
def pool():
    from voicecore.model_pool import ModelPool

    return ModelPool()


@pytest.fixture(scope="session")
def receptionist():
    from voicecore.config import load_pipeline

    return load_pipeline(ROOT / "pipelines" / "receptionist.yaml")


@pytest.fixture(scope="session")
def say():
    """Speak text with espeak-ng (a voice unlike the agent's): returns voicecore.simulate.Audio."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is required for the spoken-audio tests (apt-get install espeak-ng); "
                    "the README test command installs it")
    from voicecore.transports.file import espeak

    def _say(text: str, voice: str = "en-us", speed: int = 140):
        guards.LOG_WATCH.add_sentence(text)  # what a caller says never reaches a log
        return espeak(text, voice=voice, speed=speed)

    return _say


# --------------------------------------------------------------------------- telephony server


class TelephonyServer:
    """A running ``voicecore serve`` app on 127.0.0.1 (ephemeral port) with tenants acme and globex."""

    def __init__(self, base_url: str, app, store, keys: dict[str, str], data_dir: Path):
        self.base_url = base_url
        self.app = app
        self.store = store
        self.keys = keys
        self.data_dir = data_dir

    def ws_url(self, provider: str, **query: str) -> str:
        from urllib.parse import urlencode

        url = "ws" + self.base_url.removeprefix("http") + f"/ws/{provider}"
        return f"{url}?{urlencode(query)}" if query else url

    @property
    def calls_started(self) -> int:
        """Pipelines actually started so far (after auth)."""
        return self.app.state.vc.calls_started

    @property
    def active_calls(self) -> dict:
        return self.app.state.vc.calls


@pytest.fixture(scope="session")
async def telephony_server(pool, tmp_path_factory):
    """One server for the telephony tests: the real models (loaded for the first test marked
    ``models`` that uses it, see ``_models_loaded_for_server_tests``), a fresh data dir. uvicorn
    logs at INFO, so its connection lines go through the log check too."""
    import asyncio

    from voicecore.server import create_app, running_server
    from voicecore.server.guard import AuthThrottle
    from voicecore.storage import Store

    data_dir = tmp_path_factory.mktemp("telephony-data")
    store = Store(data_dir, allow_insecure_webhooks=True)  # webhook receivers on 127.0.0.1
    keys = {name: store.tenants.create(name, actor="test") for name in ("acme", "globex")}
    # Every test here comes from 127.0.0.1 and some send wrong keys on purpose: a budget no
    # test run exhausts (the throttle has tests of its own).
    app = create_app(data_dir=data_dir, pool=pool, store=store, preload=False,
                     auth_throttle=AuthThrottle(burst=100_000))  # fmt: skip
    async with running_server(app, log_level="info") as base_url:
        yield TelephonyServer(base_url, app, store, keys, data_dir)
    await asyncio.sleep(0)
    store.close()


@pytest.fixture(autouse=True)
def _models_loaded_for_server_tests(request):
    """A ``models`` test on the shared server finds the default pipeline's models loaded (as
    ``serve`` preloads them), so its calls are not slowed by a load; a test not marked ``models``
    loads nothing (a call it starts would, and the model guard fails it)."""
    if "telephony_server" in request.fixturenames and request.node.get_closest_marker("models"):
        state = request.getfixturevalue("telephony_server").app.state.vc
        state.pool.for_pipeline(state.pipelines[state.default_pipeline])


# --------------------------------------------------------------------------- a webhook receiver


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    peer: tuple[str, int] = ("", 0)  # the sender's address and port (its connection)

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP endpoint on 127.0.0.1 (ephemeral port) in its own threads, whatever event loop the test
    runs in: ``mode`` ok (204) | fail (500) | hang (no answer until the test ends). ``before_answer``
    (optional) is called in the request's thread with what arrived, before the answer is sent."""

    mode: str = "ok"
    before_answer: Any = None
    received: list[Received] = field(default_factory=list)
    url: str = ""
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def events(self, kind: str | None = None) -> list[Received]:
        return [r for r in self.received if kind is None or r.headers.get("X-Voicecore-Event") == kind]

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                got = Received(dict(self.headers.items()), body, tuple(self.client_address[:2]))
                receiver.received.append(got)
                receiver.arrived.set()
                if receiver.before_answer is not None:
                    receiver.before_answer(got)
                if receiver.mode == "hang":
                    receiver.release.wait(120)
                    return
                self.send_response(500 if receiver.mode == "fail" else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), r.handler())
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    r.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield r
    r.release.set()
    server.shutdown()
    server.server_close()


# --------------------------------------------------------------------------- SQLite and PostgreSQL
# A module whose tests run against both databases says so with
#     pytestmark = pytest.mark.usefixtures("database")
# (and ``@pytest.mark.databases("sqlite")`` on a test about the SQLite file itself); every Store the
# test opens then uses that database (through VOICECORE_DATABASE_URL).


def pytest_generate_tests(metafunc):
    if "database" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("databases")  # @pytest.mark.databases("sqlite")
        backends = only.args if only else getattr(metafunc.module, "DATABASES", ("sqlite", "postgresql"))
        metafunc.parametrize("database", backends, indirect=True)


@pytest.fixture(scope="session")
def pg_cluster():
    """A real PostgreSQL server (Debian's package) for the session: tests/pg.py."""
    import pg

    cluster = pg.PostgresCluster().start()
    pg.CURRENT = cluster
    yield cluster
    pg.CURRENT = None
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster, monkeypatch):
    """A fresh database on the session's cluster, in ``VOICECORE_DATABASE_URL``, with one master key
    in ``VOICECORE_MASTER_KEY``: what several workers of one deployment share."""
    from voicecore.storage import DATABASE_URL_ENV

    name = pg_cluster.create_database()
    url = pg_cluster.url(name)
    monkeypatch.setenv(DATABASE_URL_ENV, url)
    monkeypatch.setenv("VOICECORE_MASTER_KEY", "A" * 43 + "=")
    yield url
    pg_cluster.drop_database(name)


@pytest.fixture
def database(request, monkeypatch):
    """``sqlite``: the data directory's file; ``postgresql``: a fresh database on the session's
    cluster. Returns the URL (``None`` for SQLite) and sets VOICECORE_DATABASE_URL to it."""
    from voicecore.storage import DATABASE_URL_ENV

    if request.param == "sqlite":
        monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
        yield None
        return
    cluster = request.getfixturevalue("pg_cluster")
    name = cluster.create_database()
    url = cluster.url(name)
    guards.LOG_WATCH.add_secret(cluster.password)  # a log line holding the password fails the test
    monkeypatch.setenv(DATABASE_URL_ENV, url)
    yield url
    cluster.drop_database(name)


def undo_revisions_after_0003(conn) -> None:
    """What revisions 0004 and later added, removed: the file as the code before them left it."""
    for table in ("call_attempts", "campaign_contacts", "campaigns", "contact_segments", "recording_chunks",
                  "report_jobs", "workers"):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("DROP INDEX calls_open")
    conn.execute("ALTER TABLE calls DROP COLUMN worker_id")
    conn.execute("ALTER TABLE recordings DROP COLUMN location")
