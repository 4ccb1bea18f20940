"""Barge-in onset: caller speech over the agent interrupts it sooner than a turn starts, noise and echo do not.

The turn detector a call runs (``TurnDetector``: Silero VAD and the turn bookkeeping) on espeak-ng
speech that went through a phone line (16 kHz → 8 kHz μ-law → 16 kHz, the runtime's codec and
caller-audio resampler), fed in 20 ms chunks as a call feeds it. Every decision is placed in audio
samples, never on a clock. While the agent speaks (``agent_speaking``; its audio reported frame by
frame with ``agent_audio``, as the call's output does) a turn starts on ``barge_in_ms`` of windows
Silero is sure of, each over the echo floor; when the agent is silent on ``speech_start_ms``.
How much sooner, on the benchmark corpus and in noise, is a figure of ``bench endpointing``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from voicecore.audio.codecs import ulaw_decode, ulaw_encode
from voicecore.audio.resample import LiveResampler, StreamResampler
from voicecore.config import ConfigError, TurnTaking, load_pipeline
from voicecore.services.vad import ECHO_MARGIN_DB, TurnDetector, TurnEvent
from voicecore.services.vad_analyzers import SileroVADEngine, make_analyzer
from voicecore.testing.callers import voiced_bounds

SR = 16000
CHUNK = 320  # 20 ms: a Twilio media message
CALLER_DBFS = -26.0  # a caller's active speech level on the line
AGENT_DBFS = -14.0  # the agent's (Piper's voice peaks at -8 dBFS; its active level is about -20)


def ms(samples: int) -> float:
    return samples * 1000 / SR


def _active_rms(x: np.ndarray) -> float:
    frames = x[: x.size // 160 * 160].astype(np.float64).reshape(-1, 160)
    energy = (frames**2).mean(axis=1)
    return float(np.sqrt(energy[energy > 300.0**2].mean()))


def _at_level(x: np.ndarray, dbfs: float) -> np.ndarray:
    return x.astype(np.float64) * 32768 * 10 ** (dbfs / 20) / _active_rms(x)


def _phone_line(x: np.ndarray) -> np.ndarray:
    """16 kHz audio as a call hears it over a Twilio stream."""
    down = StreamResampler(SR, 8000).process(np.clip(x, -32768, 32767).astype(np.int16), last=True)
    line = np.frombuffer(ulaw_decode(ulaw_encode(down.astype(np.int16).tobytes())), dtype=np.int16)
    return LiveResampler(8000, SR).process(line, last=True)


def _speech(say, text: str, voice: str, dbfs: float) -> np.ndarray:
    audio = say(text, voice=voice)
    return _at_level(StreamResampler(audio.sample_rate, SR).process(audio.samples, last=True), dbfs)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR))


def _starts(params: TurnTaking, engine, audio: np.ndarray, *, agent_speaking: bool,
            agent: np.ndarray | None = None, chunk: int = CHUNK) -> list[tuple[int, bool]]:
    """(sample, started by a barge-in onset) of every start of speech; ``agent``: the agent's audio
    as sent, reported 20 ms by 20 ms before the caller audio of the same offset."""
    det = TurnDetector(params, make_analyzer(params, engine))
    det.agent_speaking = agent_speaking
    starts = []
    for off in range(0, audio.size, chunk):
        if agent is not None:
            det.agent_audio(agent[off: off + chunk].astype(np.int16))
        if TurnEvent.SPEECH_STARTED in det.feed(audio[off: off + chunk].astype(np.int16).tobytes()):
            starts.append((det.samples, det.barged_in))
    return starts


@pytest.fixture(scope="module")
def silero():
    return SileroVADEngine()


@pytest.fixture(scope="module")
def interruption(say) -> tuple[np.ndarray, int]:
    """A caller cutting in after 1 s of line silence: the audio and the true start of its speech."""
    words = _speech(say, "Hello, wait a moment please.", "en-us", CALLER_DBFS)
    audio = _phone_line(np.concatenate([_silence(1.0), words, _silence(1.0)]))
    start, _ = voiced_bounds(audio, SR, threshold=300.0, window_ms=10.0)
    return audio, start


# --------------------------------------------------------------------------- the shorter onset


@pytest.mark.models
def test_caller_speech_over_the_agent_barges_in_before_a_turn_would_start(silero, interruption):
    audio, start = interruption
    params = TurnTaking(smart_turn=False)
    over_agent = _starts(params, silero, audio, agent_speaking=True)
    agent_silent = _starts(params, silero, audio, agent_speaking=False)
    assert [b for _, b in over_agent] == [True], over_agent
    assert [b for _, b in agent_silent] == [False], agent_silent
    barge_in, turn_start = over_agent[0][0], agent_silent[0][0]
    assert start < barge_in < turn_start
    # one window Silero is sure of (64 ms = its 32 ms onset lag + one 32 ms window), heard in 20 ms chunks
    assert ms(barge_in - start) <= params.barge_in_ms + 32 + 20, f"barge-in {ms(barge_in - start):.0f} ms after onset"
    # a turn's start needs three voiced windows of the main grid: two more, less half a window at most
    assert ms(turn_start - barge_in) >= 2 * 32 - 16 - 20, (ms(barge_in - start), ms(turn_start - start))


@pytest.mark.models
def test_barge_in_ms_counts_the_audio_of_consecutive_onset_windows(silero, interruption):
    """``barge_in_ms`` is audio, counted in samples: 120 ms (three windows with Silero's onset lag)
    comes two windows (1024 samples) after 64 ms (one), or up to half a window less when the
    second grid's windows, half a window later, reach three first. Fed in 16 ms chunks, every
    window's end is a chunk's end, so the decisions fall on whole windows."""
    audio, _ = interruption
    quick, slow = TurnTaking(smart_turn=False), TurnTaking(smart_turn=False, barge_in_ms=120)
    assert TurnDetector(quick, make_analyzer(quick, silero)).barge_in_samples == 512
    assert TurnDetector(slow, make_analyzer(slow, silero)).barge_in_samples == 3 * 512
    (one, _), = _starts(quick, silero, audio, agent_speaking=True, chunk=256)
    (three, _), = _starts(slow, silero, audio, agent_speaking=True, chunk=256)
    assert 1024 - 256 <= three - one <= 1024, (one, three)


def test_webrtcvad_barges_in_after_speech_start_ms():
    """webrtcvad hears steady noise as speech: with it a barge-in needs a turn's whole onset."""
    params = TurnTaking(vad="webrtc", barge_in_ms=40)
    assert TurnDetector(params, make_analyzer(params)).barge_in_samples == params.speech_start_ms * SR // 1000


# --------------------------------------------------------------------------- noise and echo


NOISES = {"pink": ["pinknoise"], "brown": ["brownnoise"], "hiss": ["whitenoise", "sinc", "300-3400"]}


def _sox_noise(kind: str, seconds: float) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "n.raw"
        subprocess.run(["sox", "-R", "-n", "-r", str(SR), "-c", "1", "-b", "16", "-e", "signed", str(out),
                        "synth", f"{seconds:.3f}", NOISES[kind][0], "vol", "0.25", *NOISES[kind][1:]],
                       check=True, capture_output=True)
        x = np.frombuffer(out.read_bytes(), dtype=np.int16).astype(np.float64)
    return x * 32768 * 10 ** ((CALLER_DBFS - 5.0) / 20) / np.sqrt(np.mean(x**2))  # 5 dB under a caller


@pytest.fixture(scope="module")
def agent_voice(say) -> np.ndarray:
    """The agent talking for a few seconds (a voice unlike the caller's) at its level as sent."""
    return _speech(say, "We offer cleanings, fillings, crowns and whitening, and our hygienists are very gentle "
                        "with nervous patients, so there is nothing to worry about.", "en-gb-x-rp", AGENT_DBFS)


@pytest.mark.models
@pytest.mark.skipif(shutil.which("sox") is None, reason="sox is needed for the noise")
@pytest.mark.parametrize("kind", list(NOISES))
def test_steady_noise_while_the_agent_speaks_does_not_barge_in(silero, agent_voice, kind):
    noise = _phone_line(_sox_noise(kind, 6.0))
    agent = np.resize(agent_voice, noise.size)
    params = TurnTaking(smart_turn=False)
    assert _starts(params, silero, noise, agent_speaking=True, agent=agent) == []
    if kind == "pink":  # the same noise under webrtcvad, which hears it as speech, does cut the agent off
        assert _starts(TurnTaking(vad="webrtc", smart_turn=False), None, noise, agent_speaking=True, agent=agent)


@pytest.mark.models
def test_the_agents_echo_does_not_barge_in_but_the_caller_over_it_does(silero, say, agent_voice):
    """The agent's voice coming back 35 dB under it, 200 ms late (a line whose echo canceller is
    poor): Silero hears it as speech — reported without the agent's audio, it barges in — but it
    stays under the echo floor (ECHO_MARGIN_DB under the agent's loudest recent audio). A caller
    speaking at an ordinary level over that echo barges in."""
    assert ECHO_MARGIN_DB < 35.0
    agent = np.concatenate([agent_voice, agent_voice])
    echo = np.concatenate([_silence(0.2), agent[: agent.size - int(0.2 * SR)]]) * 10 ** (-35.0 / 20)
    params = TurnTaking(smart_turn=False)
    heard = _phone_line(echo)
    assert _starts(params, silero, heard, agent_speaking=True) != [], "Silero did not hear the echo as speech"
    assert _starts(params, silero, heard, agent_speaking=True, agent=agent) == []

    caller = _speech(say, "Sorry, can I ask something?", "en-us+m3", CALLER_DBFS)
    at = int(3.0 * SR)
    over = echo.copy()
    over[at: at + caller.size] += caller
    heard = _phone_line(over)
    start, _ = voiced_bounds(_phone_line(np.concatenate([_silence(3.0), caller])), SR, threshold=300.0,
                             window_ms=10.0)
    starts = _starts(params, silero, heard, agent_speaking=True, agent=agent)
    assert [b for _, b in starts] == [True], starts
    assert 0 < ms(starts[0][0] - start) <= 150, f"barge-in {ms(starts[0][0] - start):.0f} ms after the caller's onset"


# --------------------------------------------------------------------------- configuration

VALID = """
name: test-agent
system_prompt: You are a test.
greeting: Hello.
turn_taking:
"""


def test_barge_in_ms_is_shorter_than_a_turns_onset_by_default():
    t = TurnTaking()
    assert 20 <= t.barge_in_ms < t.speech_start_ms


@pytest.mark.parametrize(("lines", "expected"), [
    ("  barge_in_ms: 200\n", "barge_in_ms (200) must not be longer than speech_start_ms (120)"),
    ("  speech_start_ms: 60\n  barge_in_ms: 64\n", "barge_in_ms (64) must not be longer than speech_start_ms (60)"),
    ("  barge_in_ms: 5\n", "turn_taking.barge_in_ms"),
    ("  barge_in_ms: soon\n", "turn_taking.barge_in_ms"),
])
def test_barge_in_ms_is_validated_naming_the_field(tmp_path, lines, expected):
    path = tmp_path / "agent.yaml"
    path.write_text(textwrap.dedent(VALID) + lines)
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    message = str(err.value)
    assert str(path) in message and "turn_taking" in message and expected in message, message


@pytest.mark.parametrize(("lines", "barge_in_ms"), [
    ("  speech_start_ms: 60\n  barge_in_ms: 40\n", 40),
    ("  speech_start_ms: 50\n", 50),  # a pipeline written before barge_in_ms: unset, it is no longer
    ("  speech_start_ms: 200\n", 64),
])
def test_a_pipeline_with_its_own_speech_start_loads(tmp_path, lines, barge_in_ms):
    path = tmp_path / "agent.yaml"
    path.write_text(textwrap.dedent(VALID) + lines)
    assert load_pipeline(path).turn_taking.barge_in_ms == barge_in_ms
