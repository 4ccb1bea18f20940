"""The Whisper engine on the default model: silence and noise give no words, long turns keep their start."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def engine(pool):
    return pool.stt("default")


def speech(say, text: str) -> np.ndarray:
    a = say(text)
    return soxr.resample(a.samples.astype(np.float32) / 32768, a.sample_rate, 16000).astype(np.float32)


def test_silence_and_noise_are_no_words(engine):
    assert engine.transcribe_sync(np.zeros(32000, np.float32)) == ""
    rng = np.random.default_rng(7)
    # Whisper answers white noise with ". . . ." — punctuation only is no words
    assert engine.transcribe_sync((rng.standard_normal(32000) * 0.01).astype(np.float32)) == ""


def test_a_short_turn_is_transcribed(engine, say):
    text = engine.transcribe_sync(speech(say, "Thank you very much.")).lower()
    assert "thank you" in text


def test_a_turn_longer_than_whisper_window_keeps_its_beginning_and_end(engine, say):
    first = speech(say, "Thank you very much.")
    last = speech(say, "My name is John Smith.")
    gap = np.zeros(int(16000 * 32), np.float32)  # 32 s: past the 30 s window
    text = engine.transcribe_sync(np.concatenate([first, gap, last])).lower()
    assert "thank you" in text and "smith" in text, text
