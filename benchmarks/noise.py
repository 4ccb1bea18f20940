"""Synthesised background noise for the endpointing benchmark: street, office and phone-line noise.

Each kind is a few components made by ``sox synth`` (repeatable: ``-R``, fixed seed) and
mixed by ``sox -m`` at fixed levels relative to each other (dB of RMS):

- **street**: traffic rumble (brown noise, low-passed at 600 Hz; 0 dB) + cars passing
  (pink noise band-passed 200–3000 Hz, swelling in and out every ~4 s: a triangle
  amplitude modulation at 0.23 Hz; −3 dB) + short bursts (white noise band-passed
  1–4 kHz, a ~90 ms burst every ~1.1 s: brakes, a door, a bus's air; −6 dB);
- **office**: air conditioning (pink noise low-passed at 1.2 kHz; 0 dB) + typing
  (white noise high-passed at 2 kHz, ~5 ms clicks at 7.3 per second in runs of ~1.8 s
  every 3.2 s; −3 dB);
- **line**: telephone hiss (white noise band-limited to the 300–3400 Hz phone band;
  0 dB) + mains hum (60 Hz with its 3rd and 5th harmonics; −6 dB).

:func:`mix_at_snr` puts the noise under speech with ``sox -m`` at a signal-to-noise ratio
counted against the speech's *active* level (the RMS of its 10 ms windows over the
corpus's voiced threshold, in the spirit of ITU-T P.56) and the noise's RMS.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from voicecore.transports.file import read_audio, write_wav

SAMPLE_RATE = 16000

# kind -> [(what follows "sox -n out.wav synth <seconds>": a synth type and effects, level dB)]
RECIPES: dict[str, list[tuple[str, float]]] = {
    "street": [
        ("brownnoise vol 0.25 lowpass 600", 0.0),
        ("pinknoise vol 0.25 sinc 200-3000 synth {s} triangle amod 0.23 0 25", -3.0),
        ("whitenoise vol 0.25 sinc 1000-4000 synth {s} trapezium amod 0.9 0 0 2 8 10", -6.0),
    ],
    "office": [
        ("pinknoise vol 0.25 lowpass 1200", 0.0),
        ("whitenoise vol 0.25 highpass 2000 synth {s} trapezium amod 7.3 0 0 1 3 4 synth {s} square amod 0.31 0 0 55",
         -3.0),
    ],
    "line": [
        ("whitenoise vol 0.25 sinc 300-3400", 0.0),
        ("sine 60 vol 0.25 synth {s} sine mix 180 synth {s} sine mix 300", -6.0),
    ],
}
KINDS = tuple(RECIPES)
DESCRIPTIONS = {
    "street": "traffic rumble (brown) + passing cars (pink 200-3000 Hz, swelling) + 90 ms bursts (1-4 kHz)",
    "office": "air conditioning (pink < 1.2 kHz) + keyboard clicks (white > 2 kHz, 5 ms, in typing runs)",
    "line": "phone-band hiss (white 300-3400 Hz) + 60 Hz mains hum with harmonics",
}


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if samples.size else 0.0


def active_level(samples: np.ndarray, threshold: float = 300.0, window: int = 160) -> float:
    """RMS of the 10 ms windows of ``samples`` whose own RMS is over ``threshold`` (int16 units)."""
    n = samples.size // window
    frames = samples[: n * window].astype(np.float64).reshape(n, window)
    energy = (frames**2).mean(axis=1)
    loud = energy[energy > threshold**2]
    return float(np.sqrt(loud.mean())) if loud.size else 0.0


def _sox(*args: str) -> None:
    subprocess.run(["sox", *args], check=True, capture_output=True)


def make_noise(kind: str, seconds: float, cache_dir: Path) -> np.ndarray:
    """``seconds`` of ``kind`` noise (int16, 16 kHz), made once into ``cache_dir`` and reused."""
    if kind not in RECIPES:
        raise ValueError(f"unknown noise {kind!r} (known: {', '.join(KINDS)})")
    key = hashlib.sha256(repr((RECIPES[kind], round(seconds, 3), SAMPLE_RATE)).encode()).hexdigest()[:12]
    dest = Path(cache_dir) / f"noise-{kind}-{key}.wav"
    if not dest.exists():
        s = f"{seconds:.3f}"
        with tempfile.TemporaryDirectory() as tmp:
            parts: list[str] = []
            for i, (effects, level_db) in enumerate(RECIPES[kind]):
                part = Path(tmp) / f"part{i}.wav"
                _sox("-R", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(part), "synth", s,
                     *effects.replace("{s}", s).split())
                # each component to -30 dBFS RMS and then to its level in the recipe
                gain = 10 ** ((-30.0 + level_db) / 20) * 32768 / max(rms(read_audio(part).samples), 1e-9)
                parts += ["-v", f"{gain:.6f}", str(part)]
            _sox("-R", "-m", *parts, "-b", "16", str(dest))
    samples = read_audio(dest).samples
    n = int(round(seconds * SAMPLE_RATE))
    return np.pad(samples, (0, max(0, n - samples.size)))[:n]


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, speech_level: float, work_dir: Path) -> np.ndarray:
    """``speech`` + ``noise`` (same length, int16) by ``sox -m``, the noise scaled so that the
    speech's active level ``speech_level`` stands ``snr_db`` over the noise's RMS."""
    gain = speech_level / (max(rms(noise), 1e-9) * 10 ** (snr_db / 20))
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        a, b, out = Path(tmp) / "speech.wav", Path(tmp) / "noise.wav", Path(tmp) / "mixed.wav"
        write_wav(a, speech, SAMPLE_RATE)
        write_wav(b, noise, SAMPLE_RATE)
        _sox("-R", "-m", "-v", "1", str(a), "-v", f"{gain:.6f}", str(b), "-b", "16", str(out))
        mixed = read_audio(out).samples
    return mixed[: speech.size]


def telephone(samples: np.ndarray) -> np.ndarray:
    """What the server hears of 16 kHz audio sent over a Twilio stream: 8 kHz μ-law, back to 16 kHz
    (the same codec tables, and the caller-audio resampler the runtime uses)."""
    from voicecore.audio.codecs import ulaw_decode, ulaw_encode
    from voicecore.audio.resample import LiveResampler, StreamResampler

    down = StreamResampler(SAMPLE_RATE, 8000).process(samples.astype(np.int16), last=True)
    line = np.frombuffer(ulaw_decode(ulaw_encode(down.astype(np.int16).tobytes())), dtype=np.int16)
    up = LiveResampler(8000, SAMPLE_RATE).process(line, last=True)
    return np.pad(up, (0, max(0, samples.size - up.size)))[: samples.size]


# What the agent says while a caller may barge in (the echo conditions of `bench endpointing`).
AGENT_LINES = (
    "Thank you for calling Bright Smile Dental. How can I help you today?",
    "We offer cleanings, fillings, crowns, whitening and emergency care, and our hygienists are very gentle.",
    "Our address is 12 Main Street, and we are open from eight to six on weekdays, nine to one on Saturdays.",
    "Sure, I can book that for you. Would Tuesday at nine thirty work, or would you prefer the afternoon?",
    "A check-up without insurance is ninety five dollars, and a cleaning is one hundred and twenty.",
)
AGENT_PAUSE_S = 0.25  # between the agent's sentences


def agent_track(seconds: float, cache_dir: Path, voice: str, make_tts: Callable[[], Any]) -> np.ndarray:
    """``seconds`` of the agent talking (the Piper voice ``voice`` names, :data:`AGENT_LINES` over
    and over, 16 kHz int16) at the level it is sent at, made once into ``cache_dir`` (Piper's
    synthesis varies run to run; the cached file keeps the benchmark repeatable) with the engine
    ``make_tts()`` returns (a ``PiperEngine``; called only the first time)."""
    from voicecore.audio.resample import StreamResampler

    key = hashlib.sha256(repr((AGENT_LINES, AGENT_PAUSE_S, voice)).encode()).hexdigest()[:12]
    dest = Path(cache_dir) / f"agent-{key}.wav"
    if not dest.exists():
        tts = make_tts()
        pieces = []
        for line in AGENT_LINES:
            pcm = np.frombuffer(tts.synthesize_sync(line), dtype=np.int16)
            pieces += [pcm, np.zeros(int(AGENT_PAUSE_S * tts.sample_rate), np.int16)]
        track = StreamResampler(tts.sample_rate, SAMPLE_RATE).process(np.concatenate(pieces), last=True)
        write_wav(dest, track, SAMPLE_RATE)
    track = read_audio(dest).samples
    n = int(round(seconds * SAMPLE_RATE))
    return np.resize(track, n)  # repeated to the length
