"""Batched decoding (``parallel_sequences`` > 1): several conversations' replies in one llama.cpp batch,
one KV sequence each, on the real SmolLM2 model.

The reference for "the right answer" is the single-sequence engine (``parallel_sequences: 1``) doing
the same turns: at temperature 0 the batched engine must produce the very same tokens, alone or
beside other replies. That holds exactly, not just nearly, because a conversation's tokens are
evaluated in the same chunks on both engines (prompts in multi-token chunks, replies a token at a
time) and a row's result does not depend on other conversations' rows in the batch. What does
change the rounding is evaluating a token alone instead of inside a longer chunk (llama.cpp's
one-token kernels), so a reference is either the same turns replayed on the single engine or, for
a prompt evaluated from scratch, a single-engine run whose KV cache shares no tokens with it
(:func:`fresh`). Every test uses prompts of its own, so no cache holds another test's prompt."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest
from pydantic import ValidationError

from voicecore.config import LLMParams, LLMPreset
from voicecore.services.conversation import Conversation, PassThroughContext

GREEDY = LLMParams(max_tokens=16, temperature=0.0)
models = pytest.mark.models
SEQUENCES = 3


@pytest.fixture(scope="module")
def single(pool):
    from voicecore.config import resolve_llm

    preset, _path = resolve_llm("default", pool.presets)
    return pool.llm(preset.model_copy(update={"parallel_sequences": 1}))


@pytest.fixture(scope="module")
def batched(pool):
    from voicecore.config import resolve_llm

    preset, _path = resolve_llm("default", pool.presets)
    engine = pool.llm(preset.model_copy(update={"parallel_sequences": SEQUENCES}))
    assert engine._batch is not None and engine._batch.sequences == SEQUENCES
    return engine


def conversation(question: str, system: str = "You are a helpful receptionist at a dental office.") -> Conversation:
    conv = Conversation(system_prompt=system, context=PassThroughContext(8))
    conv.add_caller(question)
    return conv


def prompt_of(engine, conv: Conversation) -> list[int]:
    return engine.prompt_tokens(conv.prompt_messages(), conv.generated)


async def fresh(single, conv: Conversation, params: LLMParams = GREEDY):
    """The single engine's reply to ``conv`` evaluated from its first token: a prompt sharing no
    token with conversations goes through first, so nothing of theirs is reused from its cache."""
    await single.generate("flush", single.tokenize("Flush."), LLMParams(max_tokens=1), threading.Event())
    single.forget("flush")
    key = f"fresh-{conv.key}"
    try:
        return await single.generate(key, prompt_of(single, conv), params, threading.Event())
    finally:
        single.forget(key)


@contextmanager
def cpu_held(work: Callable[[], AbstractContextManager[None]]) -> Iterator[None]:
    """Model work (``work``: ``cpu.urgent`` or ``cpu.running``) held in another thread for the block."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with work():
            held.set()
            release.wait(30)

    worker = threading.Thread(target=hold, daemon=True)
    worker.start()
    held.wait(5)
    try:
        yield
    finally:
        release.set()
        worker.join()


QUESTIONS = ["What are your opening hours?", "Where is your office?", "Do you take walk-in patients?"]


@models
async def test_concurrent_replies_are_token_for_token_the_replies_alone(single, batched):
    convs = [conversation(q, "You are a helpful receptionist at a dental office.") for q in QUESTIONS]
    references = [await fresh(single, c) for c in convs]
    decoder = batched._batch
    decoder.widest_step = 0
    together = await asyncio.gather(*[batched.generate(c.key, prompt_of(batched, c), GREEDY, threading.Event())
                                      for c in convs])  # fmt: skip
    assert decoder.widest_step >= 2  # the replies were decoded side by side, not one after another
    for ref, got in zip(references, together):
        assert got.tokens == ref.tokens, (ref.text, got.text)
        assert got.text == ref.text and got.text.strip()
        assert not got.stats.yielded
    for c in convs:
        batched.forget(c.key)


@models
async def test_a_second_turn_evaluates_only_its_new_tokens(single, batched):
    conv = conversation("What are your opening hours?", system="You are agent Q, at a garage that repairs cars.")
    ref_key = f"replay-{conv.key}"
    first = await batched.generate(conv.key, prompt_of(batched, conv), GREEDY, threading.Event())
    assert first.tokens == (await single.generate(ref_key, prompt_of(single, conv), GREEDY, threading.Event())).tokens
    conv.add_agent(first.text.strip(), first.tokens)
    conv.add_caller("And on Saturday?")
    second = await batched.generate(conv.key, prompt_of(batched, conv), GREEDY, threading.Event())
    assert first.stats.evaluated_prompt_tokens > first.stats.prompt_tokens // 2
    assert second.stats.prompt_tokens > first.stats.prompt_tokens
    assert second.stats.evaluated_prompt_tokens < 30  # the new user message and its markup
    assert not second.stats.state_restored  # its cells stayed in its sequence
    replayed = await single.generate(ref_key, prompt_of(single, conv), GREEDY, threading.Event())
    assert second.stats.evaluated_prompt_tokens == replayed.stats.evaluated_prompt_tokens
    assert second.tokens == replayed.tokens  # the cells hold the right context
    batched.forget(conv.key)
    single.forget(ref_key)


@models
async def test_cancelling_one_reply_leaves_the_others_as_they_would_be(single, batched):
    system = "You are a dentist's assistant in Leeds."
    long_conv = conversation("Tell me a very long story about teeth.", system)
    others = [conversation(q, system) for q in QUESTIONS[:2]]
    references = [await fresh(single, c) for c in others]

    def cancel_after(n: int) -> tuple[threading.Event, Callable[[str], None]]:
        cancel, pieces = threading.Event(), []

        def on_text(piece: str) -> None:
            pieces.append(piece)
            if len(pieces) == n:
                cancel.set()

        return cancel, on_text

    long = LLMParams(max_tokens=200, temperature=0.0)
    jobs = [batched.generate(long_conv.key, prompt_of(batched, long_conv), long, *cancel_after(3))]
    jobs += [batched.generate(c.key, prompt_of(batched, c), GREEDY, threading.Event()) for c in others]
    stopped, *rest = await asyncio.gather(*jobs)
    assert stopped.stats.cancelled and 3 <= stopped.stats.generated_tokens <= 4
    for ref, got in zip(references, rest):
        assert not got.stats.cancelled and got.tokens == ref.tokens, (ref.text, got.text)
    # the cancelled conversation's sequence goes on serving it: the same as the single engine after a cancel
    again = await batched.generate(long_conv.key, prompt_of(batched, long_conv), GREEDY, threading.Event())
    ref_key = f"replay-{long_conv.key}"
    replay_stopped = await single.generate(ref_key, prompt_of(single, long_conv), long, *cancel_after(3))
    replayed = await single.generate(ref_key, prompt_of(single, long_conv), GREEDY, threading.Event())
    assert replay_stopped.tokens == stopped.tokens
    assert again.stats.evaluated_prompt_tokens == replayed.stats.evaluated_prompt_tokens == 1
    assert again.tokens == replayed.tokens, (replayed.text, again.text)
    for c in (long_conv, *others):
        batched.forget(c.key)
    single.forget(ref_key)


async def turns_around_an_eviction(single, batched, saved: int, system: str):
    """Conversation A's first turn, then more conversations than sequences (A loses its sequence),
    then A's second turn. Returns (first, second) on the batched engine, and A's two turns on the
    single engine (which keeps A's cells in between)."""
    decoder = batched._batch
    keep, decoder.max_saved = decoder.max_saved, saved
    a = conversation("My name is Zelda. What are your opening hours?", system)
    crowd = [conversation(q, system=f"You are agent {i}, a travel agent.") for i, q in enumerate(QUESTIONS)]
    ref_key = f"replay-{a.key}"
    try:
        first = await batched.generate(a.key, prompt_of(batched, a), GREEDY, threading.Event())
        first_ref = await single.generate(ref_key, prompt_of(single, a), GREEDY, threading.Event())
        a.add_agent(first.text.strip(), first.tokens)
        evictions = decoder.evictions
        await asyncio.gather(*[batched.generate(c.key, prompt_of(batched, c), GREEDY, threading.Event())
                               for c in crowd])  # fmt: skip
        assert decoder.evictions > evictions and a.key not in decoder._lru  # A lost its sequence
        a.add_caller("What is my name?")
        second = await batched.generate(a.key, prompt_of(batched, a), GREEDY, threading.Event())
        if saved:
            second_ref = await single.generate(ref_key, prompt_of(single, a), GREEDY, threading.Event())
        else:
            second_ref = await fresh(single, a)
        return (first, second), (first_ref, second_ref)
    finally:
        decoder.max_saved = keep
        for key in (a.key, *(c.key for c in crowd)):
            batched.forget(key)
        single.forget(ref_key)


@models
async def test_an_evicted_conversation_comes_back_from_its_saved_cells(single, batched):
    (first, second), (first_ref, second_ref) = await turns_around_an_eviction(
        single, batched, saved=32, system="You work at the front desk of a vet.")
    assert first.tokens == first_ref.tokens
    assert second.stats.state_restored and second.stats.evaluated_prompt_tokens < 30
    assert second.stats.evaluated_prompt_tokens == second_ref.stats.evaluated_prompt_tokens
    assert second.tokens == second_ref.tokens, (second_ref.text, second.text)


@models
async def test_an_evicted_conversation_without_saved_cells_is_evaluated_again(single, batched):
    (first, second), (first_ref, second_ref) = await turns_around_an_eviction(
        single, batched, saved=0, system="You answer the phone at a bike shop.")
    assert first.tokens == first_ref.tokens
    assert not second.stats.state_restored
    # all but the chat markup it shares with the conversation that held the sequence
    assert second.stats.evaluated_prompt_tokens > second.stats.prompt_tokens - 10
    assert second.tokens == second_ref.tokens, (second_ref.text, second.text)


@models
async def test_a_new_conversation_keeps_the_prefix_a_finished_one_left(batched):
    system = "You are the receptionist of Bright Smile Dental. Answer in one short sentence, politely."
    a, b = conversation("Where is your office?", system), conversation("Do you treat children?", system)
    first = await batched.generate(a.key, prompt_of(batched, a), GREEDY, threading.Event())
    batched.forget(a.key)  # the call ended: its sequence is free, its cells stay for the next one
    nxt = await batched.generate(b.key, prompt_of(batched, b), GREEDY, threading.Event())
    assert first.stats.evaluated_prompt_tokens > 20
    shared = len(batched.prompt_tokens(b.prompt_messages()[:1], generation_header=False))
    assert nxt.stats.evaluated_prompt_tokens <= nxt.stats.prompt_tokens - shared
    batched.forget(b.key)


@models
async def test_prefill_then_generate_evaluates_only_the_rest(single, batched):
    conv = conversation("Do you take walk-in patients?", system="You are agent P, at a bakery.")
    system_only = batched.prompt_tokens(conv.prompt_messages()[:1], generation_header=False)
    assert await batched.prefill(conv.key, system_only) > 0
    assert await batched.prefill(conv.key, system_only) == 0  # already there
    result = await batched.generate(conv.key, prompt_of(batched, conv), GREEDY, threading.Event())
    assert result.stats.evaluated_prompt_tokens == result.stats.prompt_tokens - len(system_only)
    assert result.tokens == (await fresh(single, conv)).tokens
    batched.forget(conv.key)


@models
async def test_grammar_constrained_json_is_the_single_engines(single, batched):
    from llama_cpp import LlamaGrammar

    schema = {"type": "object", "properties": {"summary": {"type": "string", "maxLength": 80}},
              "required": ["summary"]}  # fmt: skip
    grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    conv = conversation("Summarise this call as JSON: the caller booked a cleaning on Tuesday at 9.",
                        system="You write short call reports.")  # fmt: skip
    await single.generate("flush", single.tokenize("Flush."), LLMParams(max_tokens=1), threading.Event())
    single.forget("flush")  # (a conversation in progress holds reports back)
    out = []
    for engine in (single, batched):
        key = f"report-{id(engine)}"
        out.append(await engine.complete_json(key, prompt_of(engine, conv), grammar, max_tokens=60,
                                              repeat_penalty=1.3, no_repeat_words=True))  # fmt: skip
        engine.forget(key)
    assert out[1].tokens == out[0].tokens
    assert isinstance(json.loads(out[1].text)["summary"], str)


@models
async def test_replies_past_their_first_clause_pause_for_urgent_work(batched):
    """While a caller waits for recognition or a first clause, the rest of the replies whose
    first clause is out waits (``CpuPriority``), for a bounded time."""
    from voicecore.services.llama_batch import first_clause_out

    conv = conversation("Tell me a long story about teeth.", system="You are agent U, at a toy shop.")
    release, held = threading.Event(), threading.Event()
    pieces: list[str] = []

    def hold_cpu() -> None:
        with batched.cpu.urgent():
            held.set()
            release.wait(5)

    def on_text(piece: str) -> None:
        pieces.append(piece)
        if not held.is_set() and first_clause_out("".join(pieces)):
            threading.Thread(target=hold_cpu, daemon=True).start()
            held.wait(2)
            threading.Timer(0.15, release.set).start()

    result = await batched.generate(conv.key, prompt_of(batched, conv), LLMParams(max_tokens=60, temperature=0.0),
                                    threading.Event(), on_text)  # fmt: skip
    assert held.is_set(), f"the reply never got past a first clause: {result.text!r}"
    assert result.stats.generated_tokens > len(pieces) // 2
    assert result.stats.paused_s >= 0.1, result.stats
    batched.forget(conv.key)


@models
async def test_beside_other_model_work_the_decoder_uses_half_its_threads_and_the_same_tokens(single, batched):
    """While other model work runs (a transcription, a synthesis), decodes run on half the threads
    (llama.cpp's spinning threads would fight theirs for the cores); the reply is token for token
    the one the single engine gives on all its threads."""
    conv = conversation("Do you fix chipped teeth?", system="You are agent W, at a dental office.")
    reference = await fresh(single, conv)
    decoder = batched._batch
    assert decoder.n_threads == 2 and decoder.n_threads_shared == 1  # the default preset, on 2 cores
    decoder.shared_steps = 0
    with cpu_held(batched.cpu.running):
        shared = await batched.generate(conv.key, prompt_of(batched, conv), GREEDY, threading.Event())
    assert decoder.shared_steps >= shared.stats.generated_tokens > 0  # every decode of it on one thread
    assert shared.tokens == reference.tokens, (reference.text, shared.text)
    batched.forget(conv.key)
    decoder.shared_steps = 0
    alone = await batched.generate(conv.key, prompt_of(batched, conv), GREEDY, threading.Event())
    assert decoder.shared_steps == 0 and alone.tokens == reference.tokens
    batched.forget(conv.key)


@models
async def test_a_reply_short_of_its_first_clause_does_not_pause(batched):
    """A reply that has no clause out yet is itself what a caller waits for: urgent work running
    all along does not pause it (under load, such pauses starved first clauses)."""
    conv = conversation("Tell me a long story about dolls.", system="You are agent V, at a toy shop.")
    with cpu_held(batched.cpu.urgent):
        # three tokens are never four words and a clause end: the reply stays short of its first clause
        result = await batched.generate(conv.key, prompt_of(batched, conv), LLMParams(max_tokens=3, temperature=0.0),
                                        threading.Event())  # fmt: skip
    assert result.stats.generated_tokens == 3
    assert result.stats.paused_s == 0.0, result.stats
    batched.forget(conv.key)


@models
async def test_a_prompt_longer_than_a_sequence_is_refused(batched):
    with pytest.raises(ValueError, match="does not fit"):
        await batched.generate("too-long", [198] * batched.n_ctx, GREEDY, threading.Event())
    ok = await batched.generate("short-after", batched.tokenize("Hello"), LLMParams(max_tokens=2), threading.Event())
    assert ok.stats.evaluated_prompt_tokens >= 1  # the decoder goes on
    batched.forget("short-after")


def test_parallel_sequences_is_checked():
    assert LLMPreset(package="x", file="y.gguf").parallel_sequences == 1
    assert LLMPreset(package="x", file="y.gguf", parallel_sequences=8).parallel_sequences == 8
    with pytest.raises(ValidationError):
        LLMPreset(package="x", file="y.gguf", parallel_sequences=0)
    with pytest.raises(ValidationError, match="n_batch"):
        LLMPreset(package="x", file="y.gguf", parallel_sequences=16, n_batch=8)
    with pytest.raises(ValidationError, match="slots"):
        LLMPreset(endpoint="http://127.0.0.1:8080/v1", parallel_sequences=4)


@models
def test_the_benchmark_writes_its_figures(tmp_path):
    """``python -m benchmarks.llm_batch --smoke``: the JSON's schema (benchmarks/README.md), never the figures."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "VOICECORE_LOG_LEVEL": "WARNING",
           "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "benchmarks.llm_batch", "--smoke", "--out", str(tmp_path)], cwd=root,
                          env=env, capture_output=True, text=True, check=False, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((tmp_path / "llm_batch.json").read_text())
    assert doc["schema"] == "voicecore.bench/1" and doc["benchmark"] == "llm_batch" and doc["smoke"] is True
    s = doc["summary"]
    assert set(s["engines"]) == {"swapping", "batched"} and s["memory_mb"]["batched_sequences"] == 2
    for rows in s["engines"].values():
        assert [r["n"] for r in rows] == doc["config"]["levels"] == [1, 2]
        for r in rows:
            assert r["tokens"] > 0 and r["tokens_per_s"] > 0 and r["ttft_ms"]["n"] >= 1
            assert r["evaluated_first_turn"]["n"] == r["n"] and r["evaluated_later_turns"]["n"] == r["n"]
    assert [x["n"] for x in s["side_by_side"]] == [1, 2]
    assert "tok/s batched/swapping" in done.stdout


EXIT_SCRIPT = """
import atexit
import threading
from voicecore.config import LLMParams
from voicecore.model_pool import ModelPool
from voicecore.services.conversation import Conversation, PassThroughContext

engines = []

def after_the_engines_exit_handlers():  # registered first, so it runs last
    decoder = engines[0]._batch
    print("decoder thread alive at teardown:", decoder._thread.is_alive(), flush=True)

atexit.register(after_the_engines_exit_handlers)
engine = ModelPool().llm("default")
engines.append(engine)
assert engine._batch is not None
conv = Conversation(system_prompt="You are a receptionist.", context=PassThroughContext(8))
conv.add_caller("Tell me a long story about your day.")
prompt = engine.prompt_tokens(conv.prompt_messages(), conv.generated)
# a generation still under way on the decoder's thread when the process exits (a post-call report)
started = threading.Event()
threading.Thread(target=lambda: engine.generate_sync("exit-test", prompt, LLMParams(max_tokens=400), threading.Event(),
                                                     lambda text: started.set()), daemon=True).start()
assert started.wait(60)
"""


@models
def test_a_process_exiting_mid_generation_stops_the_decoder_before_teardown():
    """Regression: a process that exited while the decoder's thread was inside ``llama_decode``
    (a post-call report, say) freed the model under it: `voicecore chat` died with SIGSEGV about
    one run in four. The decoder is now stopped by an exit handler, before the interpreter's
    teardown frees anything."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", EXIT_SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert "decoder thread alive at teardown: False" in out.stdout, out.stdout


@pytest.mark.parametrize("text,out", [
    ("Sure,", False),  # too short to play while the rest is generated
    ("Sure, we are open", False),  # no clause end yet
    ("Sure, we are open on Saturday,", True),
    ("We are open on Saturday. And", True),
    ("Our hours are 8:30", False),  # "8:" is no clause end
])  # fmt: skip
def test_when_a_reply_is_ahead(text, out):
    from voicecore.services.llama_batch import first_clause_out

    assert first_clause_out(text) is out


def test_a_one_word_clause_is_out_but_not_ahead():
    from voicecore.services.llama_batch import first_clause_out

    assert first_clause_out("Sure, we", 1) and not first_clause_out("Sure, we")
    assert not first_clause_out("Sure", 1)


@models
async def test_replies_ahead_wait_while_a_new_reply_reaches_its_first_clause(single, batched):
    """A reply whose first clause is out takes part in one step in three while another reply
    waits for its first clause; both still come out token for token as alone."""
    system = "You are the receptionist of a dental office in Bristol."
    long_conv = conversation("Tell me a very long story about your office.", system)
    new_conv = conversation("Where is your office?", system)
    long = LLMParams(max_tokens=120, temperature=0.0)
    refs = [await fresh(single, long_conv, long), await fresh(single, new_conv)]
    decoder = batched._batch
    ahead = asyncio.Event()
    loop = asyncio.get_running_loop()
    text: list[str] = []

    def on_text(piece: str) -> None:
        text.append(piece)
        if first_clause_of("".join(text)):
            loop.call_soon_threadsafe(ahead.set)

    from voicecore.services.llama_batch import first_clause_out as first_clause_of

    narrowed = decoder.narrowed_steps
    first = asyncio.ensure_future(batched.generate(long_conv.key, prompt_of(batched, long_conv), long,
                                                   threading.Event(), on_text))  # fmt: skip
    await asyncio.wait_for(ahead.wait(), 60)
    assert not first.done(), "the long reply ended before the second one started: nothing to test"
    second = await batched.generate(new_conv.key, prompt_of(batched, new_conv), GREEDY, threading.Event())
    first_result = await first
    assert decoder.narrowed_steps > narrowed  # the reply ahead sat out steps
    assert first_result.tokens == refs[0].tokens, (refs[0].text, first_result.text)
    assert second.tokens == refs[1].tokens, (refs[1].text, second.text)
    for c in (long_conv, new_conv):
        batched.forget(c.key)
