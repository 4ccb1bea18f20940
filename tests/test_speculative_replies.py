"""Speculative replies (issue 15): the reply to the words up to a pause is started while the turn may go
on, held back, released when the turn ends with the same words and dropped without a trace when
the caller goes on. On the real SmolLM2 model and Piper voice, through Pipecat's test runner."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator

import pytest
from pipecat.frames.frames import (
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.tests.utils import SleepFrame, run_test

from voicecore.agent.facts import FactBook
from voicecore.config import LLMParams, Voice, load_pipeline
from voicecore.frames import SpeculativeClauseFrame, SpeculativeTranscriptFrame
from voicecore.records import TurnTimeline
from voicecore.services.conversation import Conversation, PassThroughContext
from voicecore.services.llm import LlamaLLMProcessor
from voicecore.services.speculation import HELD_MAX_TOKENS, first_clause_done
from voicecore.services.tts import PiperTTSProcessor

pytestmark = pytest.mark.models

SYSTEM = "You are a friendly receptionist at a dental office. Answer in one short sentence."
PARAMS = LLMParams(max_tokens=24, temperature=0.0)
QUESTION = "Can you tell me a little about what a dentist does?"


@pytest.fixture(scope="module")
def engine(pool):
    return pool.llm("default")


def processor(engine, *, speculate: bool = True, **kwargs) -> LlamaLLMProcessor:  # noqa: ANN001, ANN003
    return LlamaLLMProcessor(engine, Conversation(system_prompt=SYSTEM, context=PassThroughContext()), PARAMS,
                             fallback_reply="Sorry?", speculate=speculate, **kwargs)  # fmt: skip


def no_calendar():  # noqa: ANN201
    raise RuntimeError("no calendar in this test")


def paused(pause_id: int) -> VADUserStoppedSpeakingFrame:
    frame = VADUserStoppedSpeakingFrame()
    frame.metadata["pause_id"] = pause_id
    return frame


def final(text: str, timeline: TurnTimeline) -> TranscriptionFrame:
    frame = TranscriptionFrame(text=text, user_id="caller", timestamp="now", finalized=True)
    frame.metadata["timeline"] = timeline
    return frame


def replies(frames: list) -> list[str]:
    out, current = [], ""
    for f in frames:
        if isinstance(f, LLMTextFrame):
            current += f.text
        elif isinstance(f, LLMFullResponseEndFrame):
            out.append(current)
            current = ""
    return out


def answered(proc: LlamaLLMProcessor, timeout_s: float = 60.0) -> Iterator[SleepFrame]:
    """Short sleeps until ``proc`` has answered (run_test takes its frames lazily): a busy machine
    takes longer, and a quiet one does not wait for nothing."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (proc.busy or not any(m.role == "assistant" for m in proc.conversation.messages)):
        yield SleepFrame(0.05)
    yield SleepFrame(0.2)


def turn(proc: LlamaLLMProcessor, pause_text: str, final_text: str, timeline: TurnTimeline, *,
         hold_s: float = 1.5) -> Iterator:  # fmt: skip
    """A caller turn: speech, a pause whose transcript is ``pause_text``, ``hold_s`` of silence
    before the end of turn, then the final transcript and the reply."""
    yield from [UserStartedSpeakingFrame(), paused(1), SpeculativeTranscriptFrame(pause_id=1, text=pause_text),
                SleepFrame(hold_s)]  # fmt: skip
    yield from held_done(proc)
    yield from [UserStoppedSpeakingFrame(), final(final_text, timeline)]
    yield from answered(proc)


def held_done(proc: LlamaLLMProcessor, timeout_s: float = 60.0) -> Iterator[SleepFrame]:
    """Short sleeps until the held reply (if any) has its first clause."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc._held is not None and proc._held.task is not None \
            and not proc._held.task.done():  # fmt: skip
        yield SleepFrame(0.05)
    yield SleepFrame(0.05)


def test_a_first_clause_is_a_clause_mark_after_a_word_or_eight_words() -> None:
    assert first_clause_done("Sure,") and first_clause_done("Of course! ")
    assert not first_clause_done("Sure") and not first_clause_done(" ,")
    assert first_clause_done("one two three four five six seven eight nine")


async def test_a_held_reply_is_released_when_the_turn_ends_with_the_same_words(engine) -> None:
    # the reply without speculation, from the same conversation state
    plain = processor(engine, speculate=False)
    down, _ = await run_test(plain, frames_to_send=turn(plain, QUESTION, QUESTION, TurnTimeline()), expected_down_frames=None)
    expected = replies(down)
    assert len(expected) == 1 and expected[0].strip()
    engine.forget(plain.conversation.key)

    proc = processor(engine)
    timeline = TurnTimeline()
    down, _ = await run_test(proc, frames_to_send=turn(proc, QUESTION, QUESTION, timeline), expected_down_frames=None)
    names = [type(f).__name__ for f in down]
    # held back: nothing of the reply went downstream before the turn ended, only the TTS's hint
    assert names.index("SpeculativeClauseFrame") < names.index("UserStoppedSpeakingFrame") \
        < names.index("LLMFullResponseStartFrame")  # fmt: skip
    hint = next(f for f in down if isinstance(f, SpeculativeClauseFrame))
    assert first_clause_done(hint.text) or len(engine.tokenize(hint.text)) >= HELD_MAX_TOKENS - 1
    got = replies(down)
    # the reply starts with the held first clause, which is what the model says without speculation
    # (after it, generation goes on from the held tokens: llama.cpp's single-token and batched
    # kernels round differently, so a near tie later on may go either way)
    assert len(got) == 1 and got[0].startswith(hint.text) and expected[0].startswith(hint.text)
    assert len(got[0]) > len(hint.text)  # and it went on after the held part
    assert proc.speculation.started == 1 and proc.speculation.used == 1 and proc.speculation.wasted == 0
    assert timeline.speculative
    # the conversation holds the turn once, and the reply as released
    assert [m.role for m in proc.conversation.messages] == ["user", "assistant"]
    assert proc.conversation.messages[0].content == QUESTION
    assert proc.conversation.messages[1].content == got[0].strip()
    # the next turn finds the whole reply in the KV cache: only the new words are evaluated
    proc.conversation.add_caller("Thank you.")
    prompt = engine.prompt_tokens(proc.conversation.prompt_messages(), proc.conversation.generated)
    nxt = await engine.generate(proc.conversation.key, prompt, PARAMS, threading.Event())
    assert nxt.stats.evaluated_prompt_tokens < 20
    engine.forget(proc.conversation.key)


async def test_speech_after_the_pause_drops_the_held_reply_without_a_trace(engine) -> None:
    proc = processor(engine)
    timeline = TurnTimeline()
    frames = [UserStartedSpeakingFrame(), paused(1), SpeculativeTranscriptFrame(pause_id=1, text="Can you tell me"),
              SleepFrame(1.0), VADUserStartedSpeakingFrame(), paused(2), SleepFrame(0.3), UserStoppedSpeakingFrame(),
              final(QUESTION, timeline)]  # fmt: skip
    down, _ = await run_test(proc, frames_to_send=itertools.chain(frames, answered(proc)), expected_down_frames=None)
    assert proc.speculation.started == 1 and proc.speculation.wasted == 1 and proc.speculation.used == 0
    assert proc.speculation.wasted_model_s > 0  # what the dropped reply cost is counted
    assert not timeline.speculative
    assert len(replies(down)) == 1
    # no text of the dropped reply: the only caller message is the final one
    assert [m.content for m in proc.conversation.messages if m.role == "user"] == [QUESTION]
    engine.forget(proc.conversation.key)


async def test_a_final_transcript_that_differs_generates_anew(engine) -> None:
    proc = processor(engine)
    timeline = TurnTimeline()
    down, _ = await run_test(proc, frames_to_send=turn(proc, "Can you tell me about a dentist?", QUESTION, timeline),
                             expected_down_frames=None)  # fmt: skip
    assert proc.speculation.wasted == 1 and proc.speculation.used == 0 and not timeline.speculative
    assert len(replies(down)) == 1 and replies(down)[0].strip()
    engine.forget(proc.conversation.key)


async def test_a_stale_pause_starts_nothing(engine) -> None:
    proc = processor(engine)
    frames = [UserStartedSpeakingFrame(), paused(2), SpeculativeTranscriptFrame(pause_id=1, text=QUESTION),
              SleepFrame(0.5), UserStoppedSpeakingFrame(), final(QUESTION, TurnTimeline())]  # fmt: skip
    frames = itertools.chain(frames, answered(proc))
    down, _ = await run_test(proc, frames_to_send=frames, expected_down_frames=None)
    assert proc.speculation.started == 0 and not any(isinstance(f, SpeculativeClauseFrame) for f in down)
    engine.forget(proc.conversation.key)


async def test_a_reply_from_the_facts_is_held_and_released_and_a_booking_is_never_speculated(engine) -> None:
    config = load_pipeline("pipelines/receptionist.yaml")
    assert config.facts is not None
    proc = processor(engine, facts=FactBook(config.facts))
    timeline = TurnTimeline()
    question = "Where are you located?"
    down, _ = await run_test(proc, frames_to_send=turn(proc, question, question, timeline, hold_s=0.3),
                             expected_down_frames=None)  # fmt: skip
    (hint,) = [f for f in down if isinstance(f, SpeculativeClauseFrame)]
    assert replies(down) == [hint.text] and config.facts.address in hint.text
    assert proc.speculation.used == 1 and timeline.speculative
    engine.forget(proc.conversation.key)

    # a booking goes to the calendar dialogue, which reads and writes the calendar: only on the final
    booking = processor(engine, facts=FactBook(config.facts), booking=no_calendar)
    line = "I'd like to book a cleaning next Tuesday."
    down, _ = await run_test(booking, frames_to_send=turn(booking, line, line, TurnTimeline(), hold_s=0.3),
                             expected_down_frames=None)  # fmt: skip
    assert booking.speculation.started == 0 and not any(isinstance(f, SpeculativeClauseFrame) for f in down)
    engine.forget(booking.conversation.key)


async def test_no_speculation_while_other_calls_wait_for_the_model(engine) -> None:
    other = Conversation(system_prompt=SYSTEM, context=PassThroughContext())
    other.add_caller("Tell me a very long story about teeth and dentists.")
    prompt = engine.prompt_tokens(other.prompt_messages())
    stop = threading.Event()
    long_reply = asyncio.ensure_future(engine.generate(other.key, prompt, LLMParams(max_tokens=400), stop))
    while engine.live_turns == 0:
        await asyncio.sleep(0.01)
    proc = processor(engine)
    frames = [UserStartedSpeakingFrame(), paused(1), SpeculativeTranscriptFrame(pause_id=1, text=QUESTION),
              SleepFrame(0.2)]  # fmt: skip
    await run_test(proc, frames_to_send=frames, expected_down_frames=None)
    stop.set()
    await long_reply
    assert proc.speculation.started == 0 and proc.speculation.skipped_busy == 1
    engine.forget(other.key)
    engine.forget(proc.conversation.key)


async def test_the_tts_synthesises_a_held_first_clause_ahead_and_speaks_it(pool) -> None:
    tts_engine = pool.tts("default")
    voice = Voice()
    clause = "We are open from nine to five on weekdays,"
    tts = PiperTTSProcessor(tts_engine, voice)
    used_before = tts_engine.prepared_used
    frames = [SpeculativeClauseFrame(text=f"{clause} and on Saturday morning."), SleepFrame(1.0),
              LLMFullResponseStartFrame(), LLMTextFrame(text=f"{clause} and on Saturday morning."),
              LLMFullResponseEndFrame(), SleepFrame(0.5)]  # fmt: skip
    down, _ = await run_test(tts, frames_to_send=frames, expected_down_frames=None)
    assert tts.prepared_clauses == 1 and tts.prepared_spoken == 1
    assert tts_engine.prepared_used == used_before + 1
    assert sum(1 for f in down if type(f).__name__ == "TTSAudioRawFrame") >= 2  # both clauses spoken

    # the caller went on: the prepared clause is dropped, and a later reply synthesises its own
    tts = PiperTTSProcessor(tts_engine, voice)
    other = "Our address is on the website,"
    # (speaking frames are system frames: they overtake queued data frames, hence the sleep)
    frames = [SpeculativeClauseFrame(text=f"{other} please have a look."), SleepFrame(0.3), VADUserStartedSpeakingFrame(),
              LLMFullResponseStartFrame(), LLMTextFrame(text=f"{other} please have a look."),
              LLMFullResponseEndFrame(), SleepFrame(0.5)]  # fmt: skip
    used_before = tts_engine.prepared_used
    await run_test(tts, frames_to_send=frames, expected_down_frames=None)
    assert tts.prepared_clauses == 1 and tts.prepared_spoken == 0
    assert tts_engine.prepared_used == used_before
