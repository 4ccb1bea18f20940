"""The caller-audio resampler (``LiveResampler``): exact across chunks, no audio held back, as good as soxr in the band.

soxr's stream resampler (``StreamResampler``) hands a phone line's 20 ms chunks back in bursts,
12-115 ms late; the caller's audio on its way to the turn detector (a barge-in, the end of a turn)
goes through ``LiveResampler`` instead, whose only delay is its filter's (under 4 ms).
"""

from __future__ import annotations

import numpy as np
import pytest

from voicecore.audio.resample import LiveResampler, RateFollower, StreamResampler

RATES = (8000, 11025, 22050, 24000, 44100, 48000)


def _speechlike(rate: int, seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """Harmonics of a gliding 90-220 Hz voice up to just under the rate's Nyquist frequency,
    with a syllable envelope, and a little noise: int16 at ``rate``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 150 + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    top = min(rate, 16000) / 2 * 0.9
    x = sum(np.sin(k * phase) / k for k in range(1, int(top / 220)))
    x *= 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    x = x / np.abs(x).max() * 12000 + rng.normal(0, 30, t.size)
    return x.astype(np.int16)


@pytest.mark.parametrize("rate", RATES)
def test_any_chunking_gives_the_whole_signals_samples(rate):
    x = _speechlike(rate)
    whole = LiveResampler(rate, 16000).process(x, last=True)
    rng = np.random.default_rng(rate)
    r, parts, i = LiveResampler(rate, 16000), [], 0
    while i < x.size:
        n = int(rng.integers(0, 3 * rate // 50))  # 0-60 ms, empty chunks too
        parts.append(r.process(x[i: i + n]))
        i += n
    parts.append(r.process(np.zeros(0, np.int16), last=True))
    chunked = np.concatenate(parts)
    assert chunked.dtype == np.int16
    assert np.array_equal(chunked, whole)
    assert whole.size == round(x.size * 16000 / rate) == StreamResampler(rate, 16000).process(x, last=True).size


@pytest.mark.parametrize("rate", (8000, 22050, 48000))
def test_no_audio_is_held_back_beyond_the_filters_delay(rate):
    """After every 20 ms chunk of input, the output covers all of it but the filter's delay (< 4 ms)."""
    x = _speechlike(rate)
    r, step, given, out = LiveResampler(rate, 16000), rate // 50, 0, 0
    for i in range(0, x.size - step + 1, step):
        out += r.process(x[i: i + step]).size
        given += step
        assert given * 1000 / rate - out / 16 < 4.0, (given, out)


@pytest.mark.parametrize("rate", (8000, 22050, 48000))
def test_the_speech_band_matches_soxr(rate):
    """Both are low-pass filters with their edge near the lower Nyquist frequency: below 3 kHz
    (where a phone line's speech is) they agree to 60 dB; they differ in their transition band."""
    x = _speechlike(rate, seed=1)
    live = LiveResampler(rate, 16000).process(x, last=True).astype(np.float64)
    sox = StreamResampler(rate, 16000).process(x, last=True).astype(np.float64)
    spectrum = np.fft.rfftfreq(live.size, 1 / 16000) < 3000
    a, b = np.fft.rfft(live)[spectrum], np.fft.rfft(sox)[spectrum]
    snr_db = 10 * np.log10(np.sum(np.abs(b) ** 2) / np.sum(np.abs(a - b) ** 2))
    assert snr_db > 60, f"{snr_db:.1f} dB"


def test_same_rate_passes_through_and_bad_rates_are_refused():
    x = _speechlike(16000, 0.1)
    assert LiveResampler(16000, 16000).process(x) is x
    with pytest.raises(ValueError, match="positive"):
        LiveResampler(0, 16000)


def test_the_rate_follower_starts_afresh_when_the_rate_changes():
    follower = RateFollower(16000, live=True)
    a = follower.process(_speechlike(8000, 0.2), 8000)
    b = follower.process(_speechlike(48000, 0.2), 48000)
    assert abs(a.size - 0.2 * 16000) <= 64 and abs(b.size - 0.2 * 16000) <= 64
    assert isinstance(follower._current, LiveResampler) and follower._current.from_rate == 48000
    plain = RateFollower(16000)  # the TTS's and the recorder's: soxr
    plain.process(_speechlike(8000, 0.2), 8000)
    assert isinstance(plain._current, StreamResampler)
