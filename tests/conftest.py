"""Shared fixtures: the real default models (loaded once per test session) and spoken caller audio."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from loguru import logger

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    logger.remove()
    logger.add(sys.stderr, level="WARNING")


@pytest.fixture(autouse=True)
def _no_env_master_key(monkeypatch):
    """Stores keep their master key in a key file unless a test sets VOICECORE_MASTER_KEY itself."""
    from voicecore.storage import MASTER_KEY_ENV

    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)


@pytest.fixture
def store(tmp_path, request):
    """A fresh Store in ``tmp_path/data`` holding the test module's ``TENANTS``
    (tenant name → policy YAML, ``None`` for the privacy-first default policy)."""
    from voicecore.storage import Store

    s = Store(tmp_path / "data")
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
    """One server for the telephony tests: real models (loaded at start-up), a fresh data dir."""
    import asyncio

    from voicecore.server import create_app, running_server
    from voicecore.storage import Store

    data_dir = tmp_path_factory.mktemp("telephony-data")
    store = Store(data_dir)
    keys = {name: store.tenants.create(name, actor="test") for name in ("acme", "globex")}
    app = create_app(data_dir=data_dir, pool=pool, store=store)
    async with running_server(app) as base_url:
        yield TelephonyServer(base_url, app, store, keys, data_dir)
    await asyncio.sleep(0)
    store.close()
