"""The LLM: llama-cpp-python in process, streaming, with the conversation prefix kept in the KV cache.

``LlamaEngine`` loads one GGUF model per process and runs every call's
generations on one inference thread. A conversation's prompt is built as token
lists (ChatML), and the tokens the model generated for an agent reply are kept
as they were, so the next turn's prompt starts with exactly the tokens already
in the KV cache and only the new ones are evaluated. When calls take turns on
the shared model, the KV state of the call that used it last is saved and the
next call's state is restored.

``LlamaLLMProcessor`` is the Pipecat shell: a final ``TranscriptionFrame`` in,
``LLMFullResponseStartFrame``, ``LLMTextFrame``\\ s and ``LLMFullResponseEndFrame``
out, over one call's :class:`~voicecore.services.conversation.Conversation`.
Everything that reaches the model passes through the policy's context builder.
"""

from __future__ import annotations

import asyncio
import codecs
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voicecore.agent.booking import FINISHED, BookingDialogue, wants_booking
from voicecore.agent.call_tools import CallTools, ToolAction, ToolReply
from voicecore.agent.facts import FactBook, FactGuard
from voicecore.config import LLMParams, LLMPreset
from voicecore.records import TurnTimeline
from voicecore.services.conversation import ChatMessage, Conversation
from voicecore.services.cpu import CpuPriority

CLAUSE_ENDS = (".", ",", "!", "?", ";", ":")
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    evaluated_prompt_tokens: int = 0  # prompt tokens not found in the KV cache
    generated_tokens: int = 0
    first_token_s: float | None = None
    total_s: float = 0.0
    state_restored: bool = False
    cancelled: bool = False
    paused_s: float = 0.0  # time spent waiting for urgent model work of calls (CpuPriority)
    yielded: bool = False  # stopped at a clause end because another call's turn was waiting
    yields: int = 0  # times a reply gave the model to other calls' turns and continued


@dataclass
class _KVState:
    """One conversation's KV cache cells (llama.cpp sequence state) and the tokens they hold."""

    kv: bytes
    input_ids: Any
    n_tokens: int


@dataclass
class Generation:
    text: str
    tokens: list[int]
    stats: GenerationStats


class LlamaEngine:
    """One llama.cpp model per process; one inference thread shared by every call."""

    MAX_SAVED_STATES = 32
    ACTIVE_CALL_S = 20.0  # a conversation that generated this recently counts as a call in progress

    def __init__(self, gguf_path: str, preset: LLMPreset, cpu: CpuPriority | None = None):
        from llama_cpp import Llama

        self.path = gguf_path
        self.preset = preset
        self.cpu = cpu or CpuPriority()
        self._llm = Llama(
            model_path=gguf_path,
            n_ctx=preset.n_ctx,
            n_threads=preset.n_threads,
            n_threads_batch=preset.n_threads,
            n_batch=preset.n_batch,
            verbose=False,
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm")
        self._live_turns = 0  # live generations queued or running (background work waits for them)
        self._waiting_turns = 0  # live generations queued behind the running one
        self._count_lock = threading.Lock()
        # conversation -> when it last generated: calls still in progress (background work waits)
        self._active_owners: dict[str, float] = {}
        self._last_live_at = 0.0
        self._owner: str | None = None  # conversation whose tokens are in the KV cache
        self._saved: OrderedDict[str, object] = OrderedDict()
        self._token_cache: dict[tuple[str, str], list[int]] = {}
        self._eos = {self._llm.token_eos()}
        for special in (IM_END, IM_START):
            toks = self._llm.tokenize(special.encode(), add_bos=False, special=True)
            if len(toks) == 1:
                self._eos.add(toks[0])
        self.n_ctx = preset.n_ctx

    # -- prompt building -------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _message_tokens(self, role: str, content: str) -> list[int]:
        key = (role, content)
        toks = self._token_cache.get(key)
        if toks is None:
            # The content is caller or agent text: its special-token look-alikes stay text.
            head = self.tokenize(f"{IM_START}{role}\n")
            body = self._llm.tokenize(content.encode("utf-8"), add_bos=False, special=False)
            tail = self.tokenize(f"{IM_END}\n")
            toks = head + body + tail
            if len(self._token_cache) > 4096:
                self._token_cache.clear()
            self._token_cache[key] = toks
        return toks

    def prompt_tokens(
        self,
        messages: list[ChatMessage],
        generated: dict[str, list[int]] | None = None,
        *,
        generation_header: bool = True,
    ) -> list[int]:
        """ChatML tokens for ``messages`` followed by the assistant header.

        ``generated`` maps an assistant text to the exact tokens the model produced
        for it, so the prompt matches the KV cache token for token.
        """
        out: list[int] = []
        for m in messages:
            if m.role == "assistant" and generated and m.content in generated:
                out += self.tokenize(f"{IM_START}assistant\n") + generated[m.content] + self.tokenize(f"{IM_END}\n")
            else:
                out += self._message_tokens(m.role, m.content)
        if generation_header:
            out += self.tokenize(f"{IM_START}assistant\n")
        return out

    @staticmethod
    def render(messages: list[ChatMessage]) -> str:
        """The prompt as text (what the model is shown), for logs at DEBUG and tests."""
        return "".join(f"{IM_START}{m.role}\n{m.content}{IM_END}\n" for m in messages) + f"{IM_START}assistant\n"

    # -- generation --------------------------------------------------------------------

    def _switch_to(self, owner: str) -> bool:
        """Make ``owner``'s KV state current; returns True when a saved state was restored."""
        if self._owner == owner:
            return False
        if self._owner is not None and self._llm.n_tokens > 0:
            self._saved[self._owner] = self._save_kv()
            self._saved.move_to_end(self._owner)
            while len(self._saved) > self.MAX_SAVED_STATES:
                self._saved.popitem(last=False)
        self._owner = owner
        state = self._saved.pop(owner, None)
        if state is not None:
            self._load_kv(state)
            return True
        return False

    def _save_kv(self) -> _KVState:
        """The current conversation's KV cells and tokens — not ``Llama.save_state``, which also
        copies the logits of a whole batch (256 × 49k floats, ~50 MB per call): the next turn
        always decodes at least one token, so no old logits are ever needed."""
        import ctypes

        import llama_cpp

        ctx = self._llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
        n_tokens = self._llm.n_tokens
        return _KVState(ctypes.string_at(buf, n), self._llm.input_ids[:n_tokens].copy(), n_tokens)

    def _load_kv(self, state: _KVState) -> None:
        import ctypes

        import llama_cpp

        self._llm._ctx.kv_cache_clear()
        buf = (ctypes.c_uint8 * len(state.kv)).from_buffer_copy(state.kv)
        if llama_cpp.llama_state_seq_set_data(self._llm._ctx.ctx, buf, len(state.kv), 0) == 0:
            self._llm.n_tokens = 0  # start this conversation over rather than decode on a broken cache
            logger.warning("LLM: a saved KV state did not load; the prompt is evaluated again")
            return
        self._llm.input_ids[: state.n_tokens] = state.input_ids
        self._llm.n_tokens = state.n_tokens
        self._llm._requires_eval = True

    def prefill_sync(self, owner: str, prompt: list[int]) -> int:
        """Evaluate ``prompt`` into ``owner``'s KV cache ahead of its first turn; returns tokens evaluated."""
        self._switch_to(owner)
        cached = self.cached_prefix(prompt)
        if cached >= len(prompt):
            return 0
        self._llm.n_tokens = cached
        self._llm.eval(prompt[cached:])
        return len(prompt) - cached

    async def prefill(self, owner: str, prompt: list[int]) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.prefill_sync, owner, prompt)

    def forget(self, owner: str) -> None:
        """Drop a finished conversation's saved state."""
        self._active_owners.pop(owner, None)
        self._saved.pop(owner, None)
        if self._owner == owner:
            self._owner = None

    def cached_prefix(self, tokens: list[int]) -> int:
        n = 0
        cached = self._llm.input_ids[: self._llm.n_tokens]
        for a, b in zip(cached, tokens):
            if a != b:
                break
            n += 1
        return n

    def _start_generation(
        self, owner: str, prompt: list[int], max_tokens: int, seed: int | None
    ) -> tuple[GenerationStats, float, int]:
        """On the engine's thread, before a generation: ``owner``'s KV state in place, the
        prompt checked against the context, the seed set. Returns (stats, start, token limit)."""
        stats = GenerationStats(prompt_tokens=len(prompt))
        t0 = time.monotonic()
        stats.state_restored = self._switch_to(owner)
        room = self.n_ctx - len(prompt)
        if room < 8:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit the context of {self.n_ctx}")
        stats.evaluated_prompt_tokens = len(prompt) - min(self.cached_prefix(prompt), len(prompt) - 1)
        if seed is not None:
            self._llm.set_seed(seed)
        return stats, t0, min(max_tokens, room - 1)

    def generate_sync(
        self,
        owner: str,
        prompt: list[int],
        params: LLMParams,
        cancel: threading.Event,
        on_text: Callable[[str], None] | None = None,
        *,
        said: list[int] | None = None,
        yield_after: int | None = None,
    ) -> Generation:
        """Generate a reply; blocking (runs on the engine's thread).

        ``said``: tokens of this reply generated before (a continuation; ``prompt`` ends with
        them), for detokenising. ``yield_after``: once this many tokens are out, stop at the
        next clause end when another call's turn is waiting (``stats.yielded``); the caller
        continues later with ``prompt + tokens``. A waiting caller then hears its first
        clause after one clause of the other reply, not after all of it."""
        stats, t0, max_tokens = self._start_generation(owner, prompt, params.max_tokens, params.seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        before = list(said or [])
        tokens: list[int] = []
        pieces: list[str] = []
        gen = self._llm.generate(
            prompt,
            temp=params.temperature,
            top_p=params.top_p,
            repeat_penalty=params.repeat_penalty,
            reset=True,
        )
        try:
            for tok in gen:
                if stats.first_token_s is None:
                    stats.first_token_s = time.monotonic() - t0
                if tok in self._eos:
                    break
                tokens.append(tok)
                piece = decoder.decode(self._llm.detokenize([tok], prev_tokens=(before + tokens[:-1]) or None))
                if piece:
                    pieces.append(piece)
                    if on_text is not None:
                        on_text(piece)
                if cancel.is_set():
                    stats.cancelled = True
                    break
                if len(tokens) >= max_tokens:
                    break
                if (yield_after is not None and len(tokens) >= yield_after and self._waiting_turns > 0
                        and piece.rstrip().endswith(CLAUSE_ENDS)):
                    stats.yielded = True
                    break
                # The rest of the reply can wait while a caller waits for recognition or first audio.
                stats.paused_s += self.cpu.yield_to_urgent()
        finally:
            gen.close()
        tail = decoder.decode(b"", final=True)
        if tail:
            pieces.append(tail)
            if on_text is not None:
                on_text(tail)
        stats.generated_tokens = len(tokens)
        stats.total_s = time.monotonic() - t0
        return Generation(text="".join(pieces), tokens=tokens, stats=stats)

    async def generate(
        self,
        owner: str,
        prompt: list[int],
        params: LLMParams,
        cancel: threading.Event,
        on_text: Callable[[str], None] | None = None,
        *,
        said: list[int] | None = None,
        yield_after: int | None = None,
    ) -> Generation:
        """A live turn: background work (post-call reports) waits while any is queued or running."""
        loop = asyncio.get_running_loop()
        self._live_turns += 1
        self._active_owners[owner] = time.monotonic()
        with self._count_lock:
            self._waiting_turns += 1
        started = False

        def run() -> Generation:
            nonlocal started
            with self._count_lock:
                self._waiting_turns -= 1
                started = True
            return self.generate_sync(owner, prompt, params, cancel, on_text, said=said, yield_after=yield_after)

        try:
            return await loop.run_in_executor(self._executor, run)
        finally:
            if not started:  # cancelled while queued
                with self._count_lock:
                    self._waiting_turns -= 1
            self._live_turns -= 1
            self._last_live_at = time.monotonic()

    async def wait_until_no_live_turn(self, quiet_s: float = 0.5, poll_s: float = 0.05, max_wait_s: float = 120.0) -> None:
        """Background work yields to live calls: it waits while a call that used the model is
        still in progress (until ``forget``) and until no live turn ran for ``quiet_s`` — but
        never longer than ``max_wait_s``, so a busy server still gets its reports."""
        deadline = time.monotonic() + max_wait_s
        while time.monotonic() < deadline:
            now = time.monotonic()
            in_call = any(now - t < self.ACTIVE_CALL_S for t in self._active_owners.values())
            if not in_call and self._live_turns == 0 and now - self._last_live_at >= quiet_s:
                return
            await asyncio.sleep(poll_s)

    # -- grammar-constrained completion (post-call reports) ---------------------------------

    def complete_json_sync(
        self,
        owner: str,
        prompt: list[int],
        grammar: object,
        *,
        max_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        repeat_penalty: float = 1.0,
        no_repeat_words: bool = False,
    ) -> Generation:
        """Generate text that ``grammar`` (a ``llama_cpp.LlamaGrammar``, e.g. from
        ``LlamaGrammar.from_json_schema``) accepts; blocking, on the engine's thread.

        ``owner`` is a KV-cache owner like a call's conversation key: the state of the
        call that used the model last is saved first and restored when it comes back,
        so live calls keep their cached prefixes. ``async`` callers use :meth:`complete_json`.
        The result stops at the end of the grammar or after ``max_tokens`` (then the
        text is incomplete and fails the caller's validation). ``no_repeat_words`` keeps a
        word from following itself ("at at"), which small models do when the grammar
        leaves them nothing better."""
        import re

        import llama_cpp
        import numpy as np

        stats, t0, limit = self._start_generation(owner, prompt, max_tokens, seed)
        vocab = self._llm._model.vocab
        processors = None
        if no_repeat_words:
            words: dict[str, list[int]] | None = getattr(self, "_word_tokens", None)
            if words is None:  # word -> the tokens that spell exactly it (" at", "At", "at.", ...), built once
                words = {}
                for i in range(self._llm.n_vocab()):
                    m = re.fullmatch(r" ?([A-Za-z0-9']+)[.,]?", self._llm.detokenize([i]).decode("utf-8", "ignore"))
                    if m:
                        words.setdefault(m.group(1).lower(), []).append(i)
                self._word_tokens = words
            start = len(prompt)

            def no_repeat(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
                text = self._llm.detokenize(list(input_ids[start:])).decode("utf-8", "ignore")
                m = re.search(r"([A-Za-z0-9']+)[ ,]*$", text)
                if m and words is not None:
                    banned = words.get(m.group(1).lower())
                    if banned:
                        scores[banned] -= 100.0
                return scores

            processors = llama_cpp.LogitsProcessorList([no_repeat])
        tokens: list[int] = []
        gen = self._llm.generate(
            prompt,
            temp=temperature,
            top_p=0.9,
            repeat_penalty=repeat_penalty,
            reset=True,
            grammar=grammar,
            logits_processor=processors,
        )
        try:
            for tok in gen:
                if stats.first_token_s is None:
                    stats.first_token_s = time.monotonic() - t0
                if tok in self._eos or llama_cpp.llama_vocab_is_eog(vocab, tok):
                    break
                tokens.append(tok)
                if len(tokens) >= limit:
                    break
                stats.paused_s += self.cpu.yield_to_urgent()  # background work: calls come first
        finally:
            gen.close()
        stats.generated_tokens = len(tokens)
        stats.total_s = time.monotonic() - t0
        text = self._llm.detokenize(tokens).decode("utf-8", errors="replace")
        return Generation(text=text, tokens=tokens, stats=stats)

    async def complete_json(
        self,
        owner: str,
        prompt: list[int],
        grammar: object,
        *,
        max_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        repeat_penalty: float = 1.0,
        no_repeat_words: bool = False,
        eval_chunk: int = 128,
    ) -> Generation:
        """:meth:`complete_json_sync` on the engine's inference thread, with the prompt's uncached
        part evaluated in jobs of at most ``eval_chunk`` tokens first, so a live call's turn
        queued meanwhile waits for one chunk, not for a whole transcript."""
        loop = asyncio.get_running_loop()
        for end in range(eval_chunk, len(prompt) - 1, eval_chunk):
            await self.wait_until_no_live_turn()
            await loop.run_in_executor(self._executor, self.prefill_sync, owner, prompt[:end])
        await self.wait_until_no_live_turn()
        return await loop.run_in_executor(
            self._executor,
            lambda: self.complete_json_sync(
                owner,
                prompt,
                grammar,
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
                repeat_penalty=repeat_penalty,
                no_repeat_words=no_repeat_words,
            ),
        )


class LlamaLLMProcessor(FrameProcessor):
    """Pipecat processor: final transcripts in, a streamed agent reply out."""

    def __init__(
        self,
        engine: LlamaEngine,
        conversation: Conversation,
        params: LLMParams,
        *,
        fallback_reply: str,
        on_caller_text: Callable[[str, TurnTimeline], bool | None] | None = None,
        on_prompt: Callable[[str], None] | None = None,
        facts: FactBook | None = None,
        booking: Callable[[], BookingDialogue] | None = None,
        tools: CallTools | None = None,
        on_tool_action: Callable[[ToolAction], None] | None = None,
        name: str | None = None,
    ):
        """``on_caller_text`` sees every final caller transcript first; returning ``False``
        means the session handles that turn itself and the model does not answer it.
        ``facts``: questions about them are answered from the data (the model is not asked),
        and a generated clause stating a fact they do not back is not spoken (:class:`FactGuard`).
        ``booking``: makes the call's :class:`BookingDialogue` (the ``book_appointment`` tool);
        once the caller asks to book, the dialogue answers the turns (the model is not asked)
        until the appointment is booked, the caller gives up or the calendar fails.
        ``tools``: the ``take_message``/``transfer``/``end_call`` tools, asked first each turn; an
        action (a message taken, a transfer, a goodbye) goes to ``on_tool_action`` (the session
        speaks a goodbye or an announcement itself and hangs up or hands the call over)."""
        super().__init__(name=name or "LlamaLLM")
        self._engine = engine
        self._conversation = conversation
        self._params = params
        self._fallback = fallback_reply
        self._on_caller_text = on_caller_text
        self._on_prompt = on_prompt
        self._task: asyncio.Task | None = None
        self._cancel = threading.Event()
        self._reply_ids = itertools.count(1)
        self._caller_speaking = False
        self.last_stats: GenerationStats | None = None
        self.stats: list[GenerationStats] = []
        self.generations_cancelled = 0
        self.backend_failures: list[dict[str, str]] = []  # {"kind", "backend", "error"} per failed turn
        self._facts = facts
        self._unanswered = ""  # the caller's words since the agent last answered (unredacted, not logged)
        self.fact_answers: list[str] = []  # topics answered from the facts, turn by turn
        self.facts_blocked: list[str] = []  # facts the model stated that the facts do not back
        self._new_booking = booking
        self._booking: BookingDialogue | None = None
        self.bookings: list[dict[str, str]] = []  # appointments booked in this call (Appointment.as_dict)
        self.tool_failures: list[dict[str, str]] = []  # {"tool", "error"}: a tool that failed, and why
        self.tools = tools if tools is not None and tools.declared else None
        self._on_tool_action = on_tool_action
        self.messages: list[dict[str, str]] = []  # {"name", "text"}: messages taken (never logged)

    @property
    def conversation(self) -> Conversation:
        return self._conversation

    @property
    def busy(self) -> bool:
        """A reply is being generated."""
        return self._task is not None and not self._task.done()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame) and direction == FrameDirection.DOWNSTREAM and not frame.text.strip():
            # A turn with no words (noise, a cough). If an earlier caller message is still
            # unanswered because the caller went on speaking, answer it now.
            msgs = self._conversation.messages
            if msgs and msgs[-1].role == "user" and not self._caller_speaking and self._task is None:
                timeline = frame.metadata.get("timeline") or TurnTimeline()
                self._cancel = threading.Event()
                self._task = self.create_task(self._respond(timeline, self._cancel))
            return
        if isinstance(frame, TranscriptionFrame) and direction == FrameDirection.DOWNSTREAM:
            timeline = frame.metadata.get("timeline") or TurnTimeline()
            if self._on_caller_text is not None and self._on_caller_text(frame.text, timeline) is False:
                # The session answered this turn itself (a consent answer, an opt-out): no reply here.
                await self._stop_generation()
                return
            self._conversation.add_caller(frame.text)
            # what the caller said as heard (the history holds it redacted): the fact answers read it
            self._unanswered = f"{self._unanswered} {frame.text}".strip()
            await self._stop_generation()
            if self._caller_speaking:
                # The caller already went on speaking: answer once their new turn ends
                # (the two parts become one message).
                return
            self._cancel = threading.Event()
            self._task = self.create_task(self._respond(timeline, self._cancel))
            return
        if isinstance(frame, UserStartedSpeakingFrame):
            self._caller_speaking = True
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._caller_speaking = False
        if isinstance(frame, (InterruptionFrame, EndFrame, CancelFrame)):
            await self._stop_generation()
        await self.push_frame(frame, direction)

    async def _stop_generation(self) -> None:
        self._cancel.set()
        task, self._task = self._task, None
        if task is not None and not task.done():
            self.generations_cancelled += 1
            await self.cancel_task(task)

    # A reply yields the model to another call's waiting turn at a clause end once this many
    # tokens are out (its first clause is then in the TTS), and continues after it.
    YIELD_AFTER_TOKENS = 6

    async def _generate_reply(
        self, prompt: list[int], cancel: threading.Event, on_text: Callable[[str], None]
    ) -> Generation:
        """The whole reply, in one generation or — when other calls' turns are waiting —
        in several, each continuing from the tokens the previous one produced."""
        key = self._conversation.key
        result = await self._engine.generate(key, prompt, self._params, cancel, on_text,
                                             yield_after=self.YIELD_AFTER_TOKENS)
        tokens, texts, stats = list(result.tokens), [result.text], result.stats
        while result.stats.yielded and not cancel.is_set():
            params = self._params.model_copy(update={"max_tokens": self._params.max_tokens - len(tokens)})
            result = await self._engine.generate(key, prompt + tokens, params, cancel, on_text, said=tokens,
                                                 yield_after=self.YIELD_AFTER_TOKENS)
            tokens += result.tokens
            texts.append(result.text)
            stats.yields += 1
            stats.cancelled = result.stats.cancelled
            stats.paused_s += result.stats.paused_s
            stats.total_s += result.stats.total_s
        if tokens:  # (a remote model reports its count in the stats and no token ids)
            stats.generated_tokens = len(tokens)
        return Generation(text="".join(texts), tokens=tokens, stats=stats)

    async def _booking_turn(self, said: str, answer: object) -> str | None:
        """The booking dialogue's reply to this turn, or None when the turn is not about booking.
        A question the facts answer, asked mid-booking, is answered and the pending question
        asked again. The dialogue reads and writes the calendar: it runs in a thread."""
        dialogue = self._booking
        if dialogue is None or dialogue.state in FINISHED:
            if not wants_booking(said):
                return None
            assert self._new_booking is not None
            try:
                dialogue = self._booking = await asyncio.to_thread(self._new_booking)
            except Exception as e:  # the calendar cannot even be opened (a missing password, ...)
                self.tool_failures.append({"tool": "book_appointment", "error": f"{type(e).__name__}: {e}"})
                logger.warning(f"{self}: book_appointment unavailable: {type(e).__name__}: {e}")
                return ("I'm sorry, I can't book appointments right now. I can take a message and we'll call "
                        "you back to book.")  # fmt: skip
        fact_text = getattr(answer, "text", None)
        if fact_text and getattr(answer, "topic", "") != "unknown" and self._facts is not None \
                and self._facts.is_question(said):  # fmt: skip
            return f"{fact_text} {dialogue.question()}"
        reply = await asyncio.to_thread(dialogue.handle, said)
        if reply.appointment is not None and reply.state == "booked":
            self.bookings.append(reply.appointment.as_dict())
        if reply.error:
            self.tool_failures.append({"tool": "book_appointment", "error": reply.error})
        return reply.text

    def _tool_turn(self, said: str) -> ToolReply | None:
        """The call tools' reply to this turn (None: not theirs). A reply without text is spoken by
        the session (``on_tool_action``: a goodbye, a transfer announcement)."""
        assert self.tools is not None
        reply = self.tools.handle(said)
        action = reply.action if reply is not None else None
        if action is not None:
            if action.kind == "message":
                self.messages.append({"name": action.name or "", "text": action.text})
            if self._on_tool_action is not None:
                self._on_tool_action(action)
            elif reply is not None and reply.text is None:
                return ToolReply(action.text)  # nobody to hang up or transfer: just say it
        return reply

    async def _respond(self, timeline: TurnTimeline, cancel: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        def on_text(piece: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, piece)

        self.last_stats = None
        reply_id = f"r{next(self._reply_ids)}"
        start = LLMFullResponseStartFrame()
        start.metadata["timeline"] = timeline
        start.metadata["reply_id"] = reply_id
        said, self._unanswered = self._unanswered, ""
        answer = self._facts.answer(said) if self._facts is not None and said else None
        tool = self._tool_turn(said) if said and self.tools is not None else None
        if tool is not None and tool.text is None:
            return  # the session says the goodbye or the announcement
        booking_reply = tool.text if tool is not None else (
            await self._booking_turn(said, answer) if said and self._new_booking is not None else None)
        if booking_reply is None and self.tools is not None and getattr(answer, "topic", None) == "unknown":
            booking_reply = self.tools.offer(answer.text)  # type: ignore[union-attr]  # a message or a person
        if booking_reply is not None or answer is not None:
            # the booking dialogue's turn, or a question about the facts: answered from the data,
            # the model is not asked
            text = booking_reply if booking_reply is not None else answer.text  # type: ignore[union-attr]
            await self.push_frame(start)
            timeline.mark("llm_first_token")
            text_frame = LLMTextFrame(text=text)
            text_frame.metadata["timeline"] = timeline
            await self.push_frame(text_frame)
            self._conversation.add_agent(text, reply_id=reply_id)
            if answer is not None:
                self.fact_answers.append(answer.topic)
            end = LLMFullResponseEndFrame()
            end.metadata["timeline"] = timeline
            end.metadata["reply_id"] = reply_id
            end.metadata["truncated"] = False
            await self.push_frame(end)
            return
        messages = self._conversation.prompt_messages()
        if self._on_prompt is not None:
            self._on_prompt(LlamaEngine.render(messages))
        prompt = self._engine.prompt_tokens(messages, self._conversation.generated)
        guard = FactGuard(self._facts) if self._facts is not None else None
        spoken: list[str] = []
        await self.push_frame(start)
        job = asyncio.ensure_future(self._generate_reply(prompt, cancel, on_text))
        job.add_done_callback(lambda _f: loop.call_soon_threadsafe(queue.put_nowait, None))
        try:
            while True:
                piece = await queue.get()
                if piece is None:
                    break
                timeline.mark("llm_first_token")
                if guard is not None:  # whole clauses, checked against the facts
                    piece = guard.feed(piece)
                    if guard.stopped:
                        cancel.set()  # the rest of this reply is not spoken: stop generating it
                    if not piece:
                        continue
                spoken.append(piece)
                text_frame = LLMTextFrame(text=piece)
                text_frame.metadata["timeline"] = timeline
                await self.push_frame(text_frame)
            if guard is not None:
                tail = guard.flush()
                if tail:
                    spoken.append(tail)
                    text_frame = LLMTextFrame(text=tail)
                    text_frame.metadata["timeline"] = timeline
                    await self.push_frame(text_frame)
                if guard.blocked:
                    self.facts_blocked += guard.blocked
                    logger.debug(f"{self}: a clause was not spoken: {'; '.join(guard.blocked)}")
            result = job.result()
            self.last_stats = result.stats
            self.stats.append(result.stats)
            logger.debug(
                f"{self}: {result.stats.generated_tokens} tokens, prompt {result.stats.prompt_tokens} "
                f"(evaluated {result.stats.evaluated_prompt_tokens}), first token "
                f"{(result.stats.first_token_s or 0) * 1000:.0f} ms"
            )
            reply = ("".join(spoken) if guard is not None else result.text).strip()
            if not reply:
                reply = self._fallback
                await self.push_frame(LLMTextFrame(text=reply))
                self._conversation.add_agent(reply, reply_id=reply_id)
            elif guard is not None and guard.blocked:
                self._conversation.add_agent(reply, reply_id=reply_id)  # what was said, not what was generated
            else:
                self._conversation.add_agent(reply, result.tokens or None, reply_id=reply_id)
        except asyncio.CancelledError:
            cancel.set()
            raise
        except Exception as e:
            # which backend failed goes to the call record (never the prompt or the reply)
            failure = {"kind": getattr(e, "kind", "llm"), "backend": getattr(e, "endpoint", "in-process"),
                       "error": getattr(e, "what", type(e).__name__)}  # fmt: skip
            self.backend_failures.append(failure)
            logger.error(f"{self}: generation failed ({failure['backend']}: {failure['error']}); "
                         "speaking the fallback reply")  # fmt: skip
            timeline.mark("llm_first_token")
            await self.push_frame(LLMTextFrame(text=self._fallback))
            self._conversation.add_agent(self._fallback, reply_id=reply_id)
        end = LLMFullResponseEndFrame()
        end.metadata["timeline"] = timeline
        end.metadata["reply_id"] = reply_id
        # Cut at max_tokens: the unfinished last clause is not spoken.
        end.metadata["truncated"] = bool(self.last_stats and self.last_stats.generated_tokens >= self._params.max_tokens)
        await self.push_frame(end)
