"""Shorter replies and first clauses when the machine is loaded (issue 15): with other calls' replies
on the model a reply gets fewer tokens, and with other syntheses on the voice a reply's first
clause is cut after fewer words (heard sooner). Real SmolLM2 model and Piper voice."""

from __future__ import annotations

import asyncio
import itertools
import threading

import pytest
from pipecat.frames.frames import (
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
)
from pipecat.tests.utils import SleepFrame, run_test

from voicecore.config import LLMParams, Voice
from voicecore.frames import AgentClauseFrame
from voicecore.services.conversation import Conversation, PassThroughContext
from voicecore.services.llm import LlamaLLMProcessor
from voicecore.services.tts import PiperTTSProcessor

pytestmark = pytest.mark.models

SYSTEM = "You are a friendly receptionist at a dental office."
PARAMS = LLMParams(max_tokens=30, temperature=0.0)


async def reply_tokens(engine, *, others: int) -> tuple[int, LlamaLLMProcessor]:  # noqa: ANN001
    """One reply's generated tokens while ``others`` long replies of other calls run on the model."""
    stop = threading.Event()
    jobs = []
    for i in range(others):
        other = Conversation(system_prompt=SYSTEM, context=PassThroughContext())
        other.add_caller(f"Tell me a very long story about teeth, number {i}.")
        prompt = engine.prompt_tokens(other.prompt_messages())
        jobs.append((other.key, asyncio.ensure_future(engine.generate(other.key, prompt, LLMParams(max_tokens=400), stop))))
    while engine.live_turns < others:
        await asyncio.sleep(0.01)
    proc = LlamaLLMProcessor(engine, Conversation(system_prompt=SYSTEM, context=PassThroughContext()), PARAMS,
                             fallback_reply="Sorry?")  # fmt: skip
    line = TranscriptionFrame(text="Please describe everything a dental check-up involves, step by step.",
                              user_id="caller", timestamp="now", finalized=True)  # fmt: skip

    def answered():  # noqa: ANN202
        while proc.busy or not proc.stats:
            yield SleepFrame(0.05)

    await run_test(proc, frames_to_send=itertools.chain([line, SleepFrame(0.1)], answered()), expected_down_frames=None)
    stop.set()
    for key, job in jobs:
        await job
        engine.forget(key)
    engine.forget(proc.conversation.key)
    return proc.stats[-1].generated_tokens, proc


async def test_a_reply_gets_fewer_tokens_while_other_calls_load_the_model(pool) -> None:
    engine = pool.llm("default")
    alone, proc = await reply_tokens(engine, others=0)
    assert proc.shortened_replies == 0 and alone == PARAMS.max_tokens  # (a long answer: it uses them all)
    loaded, proc = await reply_tokens(engine, others=LlamaLLMProcessor.LOADED_LIVE_TURNS)
    assert proc.shortened_replies == 1
    assert loaded <= int(PARAMS.max_tokens * LlamaLLMProcessor.LOADED_TOKENS_SHARE)


async def test_a_first_clause_is_cut_shorter_while_the_voice_is_busy(pool) -> None:
    engine = pool.tts("default")
    text = "We are open from nine in the morning until five in the evening and on Saturday until one"

    async def first_clause(busy: bool) -> tuple[str, PiperTTSProcessor]:
        tts = PiperTTSProcessor(engine, Voice(first_clause_max_words=8))
        other = asyncio.ensure_future(engine.synthesize(" ".join([text] * 4))) if busy else None
        while busy and engine.in_flight == 0:
            await asyncio.sleep(0.01)
        frames = [LLMFullResponseStartFrame(), LLMTextFrame(text=text + " "), LLMFullResponseEndFrame(), SleepFrame(0.5)]
        down, _ = await run_test(tts, frames_to_send=frames, expected_down_frames=None)
        if other is not None:
            await other
        return next(f.text for f in down if isinstance(f, AgentClauseFrame)), tts

    quiet, tts = await first_clause(busy=False)
    assert len(quiet.split()) == 8 and tts.short_first_clauses == 0
    loaded, tts = await first_clause(busy=True)
    assert len(loaded.split()) == PiperTTSProcessor.LOADED_FIRST_CLAUSE_WORDS and tts.short_first_clauses == 1
