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


@pytest.fixture(scope="session")
def pool():
    from voicecore.models import ModelPool

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
    from voicecore.simulate import espeak

    def _say(text: str, voice: str = "en-us", speed: int = 140):
        return espeak(text, voice=voice, speed=speed)

    return _say
