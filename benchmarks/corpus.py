"""The caller corpus: utterances a dental receptionist hears, spoken by espeak-ng, some with noise.

Each utterance is generated once into a cache folder (``benchmarks/results/corpus-cache/``
by default) and reused: the file name is a hash of everything that shapes the audio
(text, voice, speed, pitch, noise, the espeak-ng and sox versions), and sox runs in
repeatable mode (``-R``: fixed noise seed), so the same corpus comes out every time.

Audio is 16 kHz mono int16: ``PAD_S`` of lead-in and tail around the speech, with the
noise (when there is some) over the whole file, as a phone line would carry it. Where
the speech ends is measured on the clean speech *before* noise is mixed in (the last
10 ms window whose RMS is over ``VOICED_RMS``), so the end of caller speech is known
exactly even in noisy utterances.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR
from voicecore.testing.callers import voiced_bounds
from voicecore.transports.file import read_audio, write_wav

SAMPLE_RATE = 16000
PAD_S = 0.3
VOICED_RMS = 300.0  # int16 RMS over a 10 ms window (about -40 dBFS)
DEFAULT_CACHE = RESULTS_DIR / "corpus-cache"


@dataclass(frozen=True)
class UtteranceSpec:
    id: str
    text: str
    voice: str = "en-us"
    speed: int = 150  # words per minute
    pitch: int = 50
    noise: str | None = None  # sox noise colour: whitenoise, pinknoise, brownnoise
    noise_level: float = 0.0  # sox "vol" factor of the noise (0.02 ≈ -34 dBFS)


# 24 utterances: 7 voices, 125-185 wpm, 8 with noise. Spoken numbers are written as
# words, so the reference is what the caller said, not a format.
CORPUS: tuple[UtteranceSpec, ...] = (
    UtteranceSpec("u01", "What are your opening hours?", "en-us", 150),
    UtteranceSpec("u02", "Yes, please.", "en-gb", 140),
    UtteranceSpec("u03", "I would like to book a cleaning for next Tuesday morning.", "en-us+f3", 160),
    UtteranceSpec("u04", "Are you open on Saturday?", "en-gb-x-rp", 145, noise="pinknoise", noise_level=0.03),
    UtteranceSpec("u05", "Where is the office?", "en-029", 150),
    UtteranceSpec("u06", "Hi, my name is Anna Miller and I have a toothache since yesterday evening.", "en-us", 170),
    UtteranceSpec("u07", "Do you do teeth whitening?", "en-gb-scotland", 140, noise="whitenoise", noise_level=0.01),
    UtteranceSpec("u08", "Thank you very much.", "en-us+m3", 155),
    UtteranceSpec("u09", "Can I come in on Friday afternoon at three?", "en-us", 135, noise="brownnoise", noise_level=0.05),
    UtteranceSpec("u10", "How much does a check-up cost without insurance?", "en-gb", 165),
    UtteranceSpec("u11", "Is there parking near the office?", "en-us+f3", 150, noise="pinknoise", noise_level=0.02),
    UtteranceSpec("u12", "Okay, sounds good.", "en-us", 130),
    UtteranceSpec(
        "u13",
        "I need to move my appointment from Monday to Wednesday because I have to work that day.",
        "en-gb-x-rp", 175,
    ),
    UtteranceSpec("u14", "Are you closed on Sunday?", "en-029", 140, noise="whitenoise", noise_level=0.015),
    UtteranceSpec("u15", "My daughter needs a check-up before school starts.", "en-us+m3", 150),
    UtteranceSpec("u16", "Good morning, I am calling about a filling.", "en-gb", 150, noise="pinknoise", noise_level=0.03),
    UtteranceSpec("u17", "What time do you close today?", "en-us", 185),
    UtteranceSpec("u18", "Could you tell me the address again, please?", "en-gb-scotland", 150),
    UtteranceSpec("u19", "Tuesday at ten would be perfect.", "en-us+f3", 140, noise="brownnoise", noise_level=0.05),
    UtteranceSpec("u20", "Do you take new patients?", "en-gb-x-rp", 155),
    UtteranceSpec(
        "u21",
        "Hello, I broke a tooth this morning and it hurts a lot, can someone see me today?",
        "en-us", 180, noise="pinknoise", noise_level=0.02,
    ),
    UtteranceSpec("u22", "No, that is all, thank you.", "en-029", 145),
    UtteranceSpec("u23", "Do you open early on Monday?", "en-us+m3", 125),
    UtteranceSpec("u24", "Please book me for Saturday at nine.", "en-gb", 150),
)

SMOKE_IDS = ("u01", "u04")


@dataclass
class Utterance:
    """One corpus utterance, ready to play: 16 kHz int16 audio and where its speech is."""

    spec: UtteranceSpec
    path: Path
    samples: np.ndarray
    voiced_start: int  # first voiced sample
    voiced_end: int  # one past the last voiced sample

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def text(self) -> str:
        return self.spec.text

    @property
    def noisy(self) -> bool:
        return self.spec.noise is not None

    @property
    def seconds(self) -> float:
        return self.samples.size / SAMPLE_RATE

    @property
    def speech_seconds(self) -> float:
        return (self.voiced_end - self.voiced_start) / SAMPLE_RATE

    def describe(self) -> dict:
        return {
            "id": self.id,
            "text": self.text,
            "voice": self.spec.voice,
            "speed_wpm": self.spec.speed,
            "noise": self.spec.noise,
            "noise_level": self.spec.noise_level or None,
            "duration_s": round(self.seconds, 2),
            "speech_s": round(self.speech_seconds, 2),
        }


def _tool_version(exe: str, flag: str = "--version") -> str:
    try:
        return subprocess.run([exe, flag], capture_output=True, text=True, check=False).stdout.strip()[:80]
    except OSError:
        return "missing"


def _require_tools() -> tuple[str, str]:
    espeak = shutil.which("espeak-ng")
    sox = shutil.which("sox")
    missing = [n for n, p in (("espeak-ng", espeak), ("sox", sox)) if p is None]
    if missing:
        raise RuntimeError(f"the benchmark corpus needs {' and '.join(missing)} (apt-get install espeak-ng sox)")
    return espeak, sox  # type: ignore[return-value]


def _key(spec: UtteranceSpec, versions: str) -> str:
    raw = repr((spec, SAMPLE_RATE, PAD_S, VOICED_RMS, versions)).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def _generate(spec: UtteranceSpec, dest: Path, espeak: str, sox: str) -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "speech.wav"
        clean = Path(tmp) / "clean.wav"
        subprocess.run([espeak, "-v", spec.voice, "-s", str(spec.speed), "-p", str(spec.pitch), "-w", str(raw),
                        spec.text], check=True, capture_output=True)
        # 16 kHz mono, PAD_S of silence before and after the speech.
        subprocess.run([sox, "-R", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(clean),
                        "pad", str(PAD_S), str(PAD_S)], check=True, capture_output=True)
        speech = read_audio(clean).samples
        start, end = voiced_bounds(speech, SAMPLE_RATE, threshold=VOICED_RMS, window_ms=10.0)
        if spec.noise is None:
            write_wav(dest, speech, SAMPLE_RATE)
            return start, end
        seconds = speech.size / SAMPLE_RATE
        noise = Path(tmp) / "noise.wav"
        subprocess.run([sox, "-R", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(noise),
                        "synth", f"{seconds:.4f}", spec.noise, "vol", str(spec.noise_level)],
                       check=True, capture_output=True)
        mixed = Path(tmp) / "mixed.wav"
        subprocess.run([sox, "-R", "-m", "-v", "1", str(clean), "-v", "1", str(noise), "-b", "16", str(mixed)],
                       check=True, capture_output=True)
        audio = read_audio(mixed).samples[: speech.size]
        write_wav(dest, audio, SAMPLE_RATE)
        return start, end


def load_corpus(ids: tuple[str, ...] | list[str] | None = None, cache_dir: Path | None = None) -> list[Utterance]:
    """The corpus (or the utterances ``ids``), generating what is not in the cache yet."""
    return load_utterances([s for s in CORPUS if ids is None or s.id in ids], cache_dir)


def clean_spec(spec: UtteranceSpec) -> UtteranceSpec:
    """The same utterance with no noise mixed in."""
    return replace(spec, noise=None, noise_level=0.0)


def load_utterances(specs: list[UtteranceSpec], cache_dir: Path | None = None) -> list[Utterance]:
    """These utterances, generating what is not in the cache yet."""
    espeak, sox = _require_tools()
    versions = _tool_version(espeak) + "|" + _tool_version(sox)
    cache = Path(cache_dir or DEFAULT_CACHE)
    cache.mkdir(parents=True, exist_ok=True)
    out: list[Utterance] = []
    for spec in specs:
        key = _key(spec, versions)
        wav = cache / f"{spec.id}-{key}.wav"
        bounds = cache / f"{spec.id}-{key}.bounds"
        if not (wav.exists() and bounds.exists()):
            start, end = _generate(spec, wav, espeak, sox)
            bounds.write_text(f"{start} {end}\n")
        start, end = (int(v) for v in bounds.read_text().split())
        samples = read_audio(wav).samples
        out.append(Utterance(spec, wav, samples, start, end))
    return out
