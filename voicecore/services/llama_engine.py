"""The model behind the LLM service: llama-cpp-python in process, one GGUF per process, every
call's generations on one inference thread, each conversation's prefix kept in the KV cache.

A conversation's prompt is built as token lists (the preset's ``chat_format``: ChatML or Llama 3,
see :mod:`voicecore.services.chat_format`), and the tokens the model generated for an agent reply are
kept as they were, so the next turn's prompt starts with exactly the tokens
already in the KV cache and only the new ones are evaluated. When calls take turns on the shared
model, the KV state of the call that used it last is saved and the next call's state is restored.
With the preset's ``parallel_sequences`` N > 1, generations are instead decoded together by a
:class:`~voicecore.services.llama_batch.BatchDecoder`: one context with N KV sequences, each
conversation keeping its own (nothing is swapped while it has one), one ``llama_decode`` per step
for every reply in progress. Grammar-constrained generations and ``complete_json`` (post-call
reports) run there too, on a sequence of their own with a grammar sampler; ``yield_after`` is then
never needed (no reply waits for another) and is ignored.
The Pipecat shells over it are :class:`voicecore.services.llm.LlamaLLMProcessor` (voicecore's calls) and
:class:`voicecore.services.llama_service.LlamaLLMService` (a Pipecat ``LLMService`` over ``LLMContext``).
"""

from __future__ import annotations

import asyncio
import codecs
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from voicecore.config import LLMParams, LLMPreset
from voicecore.services.chat_format import CHATML, Piece, template_for
from voicecore.services.conversation import ChatMessage
from voicecore.services.cpu import CpuPriority
from voicecore.services.generation import Generation, GenerationStats

__all__ = ["CLAUSE_ENDS", "IM_END", "IM_START", "Generation", "GenerationStats", "LlamaEngine"]

if TYPE_CHECKING:
    from voicecore.services.llama_batch import BatchDecoder, Sampling

CLAUSE_ENDS = (".", ",", "!", "?", ";", ":")
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


@dataclass
class _KVState:
    """One conversation's KV cache cells (llama.cpp sequence state) and the tokens they hold."""

    kv: bytes
    input_ids: Any
    n_tokens: int


class LlamaEngine:
    """One llama.cpp model per process, shared by every call: one inference thread and one KV
    sequence swapped between conversations, or (``parallel_sequences`` > 1) a batched decoder."""

    MAX_SAVED_STATES = 32
    ACTIVE_CALL_S = 20.0  # a conversation that generated this recently counts as a call in progress

    def __init__(self, gguf_path: str, preset: LLMPreset, cpu: CpuPriority | None = None):
        from llama_cpp import Llama

        self.path = gguf_path
        self.preset = preset
        self.cpu = cpu or CpuPriority()
        self.parallel_sequences = preset.parallel_sequences
        batched = self.parallel_sequences > 1
        self._llm = Llama(
            model_path=gguf_path,
            # batched, this context only serves the tokenizer: the decoder has a context of its own
            n_ctx=256 if batched else preset.n_ctx,
            n_threads=preset.n_threads,
            n_threads_batch=preset.n_threads,
            n_batch=preset.n_batch,
            verbose=False,
        )
        self._batch: BatchDecoder | None = None
        if batched:
            from voicecore.services.llama_batch import BatchDecoder

            self._batch = BatchDecoder(self._llm._model, sequences=self.parallel_sequences, n_ctx=preset.n_ctx,
                                       n_batch=preset.n_batch, n_threads=preset.n_threads, cpu=self.cpu,
                                       max_saved=self.MAX_SAVED_STATES, like=self._llm.context_params)  # fmt: skip
        # batched: threads that wait on the decoder for a generation (generate_sync), many at once
        self._executor = ThreadPoolExecutor(max_workers=4 * self.parallel_sequences + 4 if batched else 1,
                                            thread_name_prefix="llm")  # fmt: skip
        self._live_turns = 0  # live generations queued or running (background work waits for them)
        self._waiting_turns = 0  # live generations queued behind the running one
        self._count_lock = threading.Lock()
        # conversation -> when it last generated: calls still in progress (background work waits)
        self._active_owners: dict[str, float] = {}
        self._last_live_at = 0.0
        self._owner: str | None = None  # conversation whose tokens are in the KV cache
        self._saved: OrderedDict[str, object] = OrderedDict()
        self._token_cache: dict[tuple[str, str], list[int]] = {}
        self.template = template_for(preset.chat_format)
        self._eos = {self._llm.token_eos()}
        for special in self.template.stops:  # the end of a turn, and the start of another
            toks = self._llm.tokenize(special.encode(), add_bos=False, special=True)
            if len(toks) == 1:
                self._eos.add(toks[0])
        self.n_ctx = preset.n_ctx

    # -- prompt building -------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def detokenize(self, tokens: list[int]) -> str:
        return self._llm.detokenize(tokens).decode("utf-8", errors="replace")

    def piece_tokens(self, piece: Piece) -> list[int]:
        """One prompt piece's tokens: chat markup with its special tokens; message text as plain text
        (the caller's or agent's special-token look-alikes stay text); generated tokens as they are."""
        if piece.kind == "tokens":
            return list(piece.tokens)
        key = (piece.kind, piece.text)
        toks = self._token_cache.get(key)
        if toks is None:
            special = piece.kind == "markup"
            toks = self._llm.tokenize(piece.text.encode("utf-8"), add_bos=False, special=special)
            if len(self._token_cache) > 4096:
                self._token_cache.clear()
            self._token_cache[key] = toks
        return list(toks)

    def tokens_for(self, pieces: list[Piece]) -> list[int]:
        out: list[int] = []
        for piece in pieces:
            out += self.piece_tokens(piece)
        return out

    def prompt_tokens(
        self,
        messages: list[ChatMessage],
        generated: dict[str, list[int]] | None = None,
        *,
        generation_header: bool = True,
    ) -> list[int]:
        """The tokens of ``messages`` in the model's chat format, followed by the assistant header.

        ``generated`` maps an assistant text to the exact tokens the model produced
        for it, so the prompt matches the KV cache token for token.
        """
        return self.tokens_for(self.template.pieces(messages, generated, generation_header=generation_header))

    @staticmethod
    def render(messages: list[ChatMessage]) -> str:
        """The prompt as ChatML text (what the model is shown), for logs at DEBUG and tests;
        :meth:`prompt_text` renders it in this model's own chat format."""
        return CHATML.render(messages)

    def prompt_text(self, messages: list[ChatMessage]) -> str:
        return self.template.render(messages)

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
        if self._batch is not None:
            return self._batch.submit(self._job(owner, prompt, 0, None, threading.Event())).result() \
                .stats.evaluated_prompt_tokens  # fmt: skip
        self._switch_to(owner)
        cached = self.cached_prefix(prompt)
        if cached >= len(prompt):
            return 0
        self._llm.n_tokens = cached
        self._llm.eval(prompt[cached:])
        return len(prompt) - cached

    async def prefill(self, owner: str, prompt: list[int]) -> int:
        if self._batch is not None:
            job = self._job(owner, prompt, 0, None, threading.Event())
            return (await asyncio.wrap_future(self._batch.submit(job))).stats.evaluated_prompt_tokens
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.prefill_sync, owner, prompt)

    def forget(self, owner: str) -> None:
        """Drop a finished conversation's saved state (batched: free its sequence)."""
        self._active_owners.pop(owner, None)
        if self._batch is not None:
            self._batch.forget(owner)
        self._saved.pop(owner, None)
        if self._owner == owner:
            self._owner = None

    def close(self) -> None:
        """Stop the batched decoder's thread and free its context (the model pool's engines live
        as long as the process; this is for engines made on the side, e.g. in tests)."""
        if self._batch is not None:
            self._batch.close()
        self._executor.shutdown(wait=False)

    def _job(self, owner: str, prompt: list[int], max_tokens: int, sampling: Sampling | None,
             cancel: threading.Event, on_text: Callable[[str], None] | None = None, *, any_end: bool = False,
             adjust: Callable[[list[int], Any], None] | None = None, background: bool = False) -> Any:  # fmt: skip
        """A :class:`~voicecore.services.llama_batch.BatchJob`. ``any_end``: stop at every
        end-of-generation token of the vocabulary, not only this chat format's."""
        import llama_cpp

        from voicecore.services.llama_batch import BatchJob

        eos, vocab = self._eos, self._llm._model.vocab
        if any_end:
            is_end = lambda t: t in eos or llama_cpp.llama_vocab_is_eog(vocab, t)  # noqa: E731
        else:
            is_end = eos.__contains__
        return BatchJob(owner, list(prompt), max_tokens, sampling, cancel, is_end,
                        lambda t: self._llm.detokenize([t]), on_text, adjust, background)  # fmt: skip

    def cached_prefix(self, tokens: list[int]) -> int:
        """Tokens of ``tokens`` already in the single sequence's KV cache (one sequence only)."""
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
        grammar: object | None = None,
    ) -> Generation:
        """Generate a reply; blocking (runs on the engine's thread).

        ``said``: tokens of this reply generated before (a continuation; ``prompt`` ends with
        them), for detokenising. ``yield_after``: once this many tokens are out, stop at the
        next clause end when another call's turn is waiting (``stats.yielded``); the caller
        continues later with ``prompt + tokens``. A waiting caller then hears its first
        clause after one clause of the other reply, not after all of it. ``grammar``: a
        ``llama_cpp.LlamaGrammar`` the reply must follow (e.g. a forced tool call); it then also
        ends at any end-of-generation token of the vocabulary.

        Batched (``parallel_sequences`` > 1): the generation joins the decoder's batch and this
        thread waits for it; ``said`` and ``yield_after`` are not needed there."""
        if self._batch is not None:
            from voicecore.services.llama_batch import Sampling

            sampling = Sampling(params.temperature, params.top_p, params.repeat_penalty, params.seed, grammar)
            job = self._job(owner, prompt, params.max_tokens, sampling, cancel, on_text, any_end=grammar is not None)
            return self._batch.submit(job).result()
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
            grammar=grammar,
        )
        is_eog = None
        if grammar is not None:
            import llama_cpp

            vocab = self._llm._model.vocab
            is_eog = lambda t: llama_cpp.llama_vocab_is_eog(vocab, t)  # noqa: E731
        try:
            for tok in gen:
                if stats.first_token_s is None:
                    stats.first_token_s = time.monotonic() - t0
                if tok in self._eos or (is_eog is not None and is_eog(tok)):
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
        grammar: object | None = None,
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
            return self.generate_sync(owner, prompt, params, cancel, on_text, said=said, yield_after=yield_after,
                                      grammar=grammar)

        try:
            return await loop.run_in_executor(self._executor, run)
        finally:
            if not started:  # cancelled while queued
                with self._count_lock:
                    self._waiting_turns -= 1
            self._live_turns -= 1
            self._last_live_at = time.monotonic()

    @property
    def live_turns(self) -> int:
        """Live generations queued or running now (a speculative reply waits when any is)."""
        return self._live_turns

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
        import llama_cpp
        import numpy as np

        banned_after = self._repeated_words() if no_repeat_words else None
        if self._batch is not None:
            from voicecore.services.llama_batch import Sampling

            def adjust(generated: list[int], logits: np.ndarray) -> None:
                banned = banned_after(generated) if banned_after is not None else None
                if banned:
                    logits[banned] -= 100.0

            sampling = Sampling(temperature, 0.9, repeat_penalty, seed, grammar)
            job = self._job(owner, prompt, max_tokens, sampling, threading.Event(), any_end=True,
                            adjust=adjust if banned_after is not None else None, background=True)  # fmt: skip
            result = self._batch.submit(job).result()
            result.text = self.detokenize(result.tokens)
            return result
        stats, t0, limit = self._start_generation(owner, prompt, max_tokens, seed)
        vocab = self._llm._model.vocab
        processors = None
        if banned_after is not None:
            start = len(prompt)

            def no_repeat(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
                banned = banned_after(list(input_ids[start:]))
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

    def _repeated_words(self) -> Callable[[list[int]], list[int] | None]:
        """For ``no_repeat_words``: the tokens that would repeat the last word of generated tokens."""
        import re

        words: dict[str, list[int]] | None = getattr(self, "_word_tokens", None)
        if words is None:  # word -> the tokens that spell exactly it (" at", "At", "at.", ...), built once
            words = {}
            for i in range(self._llm.n_vocab()):
                m = re.fullmatch(r" ?([A-Za-z0-9']+)[.,]?", self._llm.detokenize([i]).decode("utf-8", "ignore"))
                if m:
                    words.setdefault(m.group(1).lower(), []).append(i)
            self._word_tokens = words

        def banned_after(generated: list[int]) -> list[int] | None:
            text = self._llm.detokenize(generated).decode("utf-8", "ignore")
            m = re.search(r"([A-Za-z0-9']+)[ ,]*$", text)
            return words.get(m.group(1).lower()) if m else None

        return banned_after

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
        queued meanwhile waits for one chunk, not for a whole transcript. (Batched, the decoder
        takes a prompt ``n_batch`` tokens a step, live calls' prompts first.)"""
        loop = asyncio.get_running_loop()
        if self._batch is not None:
            await self.wait_until_no_live_turn()
            return await loop.run_in_executor(self._executor, lambda: self.complete_json_sync(
                owner, prompt, grammar, max_tokens=max_tokens, temperature=temperature, seed=seed,
                repeat_penalty=repeat_penalty, no_repeat_words=no_repeat_words))  # fmt: skip
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
