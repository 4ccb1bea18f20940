"""Several calls' replies decoded together: one llama.cpp context with one KV sequence per
conversation, one ``llama_decode`` per step for every reply under way.

:class:`BatchDecoder` runs on one thread of its own. It owns a llama.cpp context made on the
engine's model with ``n_seq_max`` = N sequences and a KV cache of N streams of ``n_ctx`` cells
each (``kv_unified`` off: each conversation has the same window as with one sequence, and a token
attends only to its own conversation's cells; memory grows N-fold). A conversation keeps its
sequence between turns (an LRU maps conversation keys to sequence ids), so its next turn
evaluates only the tokens not already in its cells. A new conversation takes the free sequence
whose cells share the longest prefix with its prompt (a finished call's cells stay: the next call
of the same agent reuses its system prompt); when none is free, the one used least recently by a
conversation with nothing running is evicted: its cells are copied out
(``llama_state_seq_get_data``, as the single-sequence engine swaps) and loaded back into whichever
sequence the conversation gets next; past ``max_saved`` copies the oldest are dropped, and such a
conversation is evaluated again.

Each step decodes, in one ``llama_batch``, the token every running reply sampled last; then the
prompts of newly arrived generations, each in its own decode, ``n_batch`` tokens a step in all
(a long prompt takes several steps while the replies under way go on, a token per step). Every
sequence whose logits came out samples from its own row with its own sampler chain (penalties,
grammar, top-k/top-p/min-p, temperature, seed: the chain ``llama_cpp.Llama.generate`` builds, so
at temperature 0 a reply is token for token the single-sequence engine's), streams its text
through ``on_text`` and stops at an end token, ``max_tokens`` or its cancel event. Before a step
that only continues replies whose first clause is out (see below), the decoder yields to urgent
work (:class:`~voicecore.services.cpu.CpuPriority`); a step that evaluates a live call's new
prompt or a reply still short of its first clause (a caller waits for either) does not wait.

A reply whose first clause is out (:data:`AHEAD_WORDS` words and a clause end) is *ahead*: the
caller is hearing it while the rest is generated. While another live reply still waits for its
first clause (or its prompt), replies that are ahead (and background work) take part in only
one step in :attr:`BatchDecoder.ahead_every`: a step's cost grows with its width, so the replies
with nothing to say yet get narrower, faster steps, and those ahead still make text faster than
it is spoken. Which tokens a reply gets does not depend on the steps it takes part in.
"""

from __future__ import annotations

import atexit
import codecs
import ctypes
import re
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np
from loguru import logger

from voicecore.services.cpu import CpuPriority
from voicecore.services.generation import Generation, GenerationStats

LogitsAdjust = Callable[[list[int], np.ndarray], None]  # (tokens generated so far, this row's logits)


@dataclass(frozen=True)
class Sampling:
    """How a reply's tokens are drawn (the chain ``llama_cpp.Llama`` builds for ``generate``)."""

    temperature: float
    top_p: float = 0.9
    repeat_penalty: float = 1.0
    seed: int | None = None
    grammar: Any = None  # llama_cpp.LlamaGrammar
    top_k: int = 40
    min_p: float = 0.05
    penalty_last_n: int = 64


def new_sampler(vocab: Any, n_vocab: int, s: Sampling) -> Any:
    """A llama.cpp sampler chain for ``s`` (the caller frees it with ``llama_sampler_free``)."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

    def add(sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    add(llama_cpp.llama_sampler_init_penalties(n_vocab, s.penalty_last_n, s.repeat_penalty, 0.0, 0.0))
    if s.grammar is not None:
        add(llama_cpp.llama_sampler_init_grammar(vocab, s.grammar._grammar.encode(), s.grammar._root.encode()))
    if s.temperature <= 0.0:
        add(llama_cpp.llama_sampler_init_greedy())
    else:
        add(llama_cpp.llama_sampler_init_top_k(s.top_k))
        add(llama_cpp.llama_sampler_init_typical(1.0, 1))
        add(llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
        add(llama_cpp.llama_sampler_init_min_p(s.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(s.temperature))
        add(llama_cpp.llama_sampler_init_dist(llama_cpp.LLAMA_DEFAULT_SEED if s.seed is None else s.seed))
    return chain


@dataclass(eq=False)
class BatchJob:
    """One generation (or, with ``max_tokens`` 0, one prefill) for one conversation."""

    owner: str
    prompt: list[int]
    max_tokens: int
    sampling: Sampling | None
    cancel: threading.Event
    is_end: Callable[[int], bool]
    piece_of: Callable[[int], bytes]
    on_text: Callable[[str], None] | None = None
    adjust_logits: LogitsAdjust | None = None
    background: bool = False  # post-call work: its prompt goes after live calls' prompts
    future: Future = field(default_factory=Future)
    # progress (the decoder's thread only)
    stats: GenerationStats = field(default_factory=GenerationStats)
    submitted: float = field(default_factory=time.monotonic)
    pending: list[int] = field(default_factory=list)  # prompt tokens not decoded yet
    next_token: int | None = None  # sampled, to be decoded in the next step
    tokens: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    sampler: Any = None
    decoder: Any = None
    forget_after: bool = False
    clause_out: bool = False  # a first clause is out (being spoken): urgent work may pause the rest
    ahead: bool = False  # ... of AHEAD_WORDS or more: it may also wait while other replies reach theirs

    @property
    def started(self) -> bool:
        return self.decoder is not None


# A reply is ahead once its text holds this many words and a clause end after them ("Sure, we are
# open on Saturday," — a clause the TTS speaks while the rest is generated).
AHEAD_WORDS = 4
_CLAUSE_END = re.compile(r"[.!?;:,](\s|$)")
_WORD = re.compile(r"[\w']+")


def first_clause_out(text: str, words: int = AHEAD_WORDS) -> bool:
    """``text`` holds a finished clause of at least ``words`` words (counted from the start)."""
    for m in _CLAUSE_END.finditer(text):
        if len(_WORD.findall(text[: m.start()])) >= words:
            return True
    return False


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass(eq=False)
class _Sequence:
    seq_id: int
    owner: str | None = None
    tokens: list[int] = field(default_factory=list)  # what its KV cells hold, positions 0..n-1
    job: BatchJob | None = None


@dataclass
class _Saved:
    kv: bytes
    tokens: list[int]


def _close_at_exit(ref: weakref.ref) -> None:
    decoder = ref()
    if decoder is not None:
        decoder.close()


class BatchDecoder:
    """N conversations' generations in one llama.cpp context, decoded a batch at a time on one thread."""

    def __init__(self, model: Any, *, sequences: int, n_ctx: int, n_batch: int, n_threads: int,
                 cpu: CpuPriority | None = None, max_saved: int = 32, like: Any = None,
                 ahead_every: int = 3):  # fmt: skip
        """``model``: a ``llama_cpp._internals.LlamaModel`` (``Llama._model``). ``like``: context
        parameters to start from (``Llama.context_params``: the same attention kernel and RoPE
        settings as the single-sequence engine, so a reply comes out token for token the same)."""
        from llama_cpp import _internals

        if sequences < 1 or sequences > n_batch:
            raise ValueError(f"sequences must be 1..n_batch ({n_batch}), not {sequences}")
        params = llama_cpp.llama_context_default_params()
        if like is not None:
            ctypes.pointer(params)[0] = like  # a copy of every field
        params.n_ctx = n_ctx * sequences
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = sequences
        params.kv_unified = False  # one stream of n_ctx cells per sequence
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        self._ctx = _internals.LlamaContext(model=model, params=params, verbose=False)
        self._model = model
        self._vocab = model.vocab
        self._n_vocab = model.n_vocab()
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.cpu = cpu or CpuPriority()
        # threads per decode: all of n_threads alone, half (at least one) while other model work runs
        # (CpuPriority.running: llama.cpp's spinning threads and theirs would share the cores)
        self.n_threads = n_threads
        self.n_threads_shared = max(1, n_threads // 2)
        self._threads = n_threads
        self.shared_steps = 0  # decodes on n_threads_shared (benchmarks, tests)
        self.max_saved = max_saved
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._sequences = [_Sequence(i) for i in range(sequences)]
        self._lru: OrderedDict[str, _Sequence] = OrderedDict()  # owner -> its sequence, least recent first
        self._saved: OrderedDict[str, _Saved] = OrderedDict()  # evicted conversations' cells
        self._queue: deque[BatchJob] = deque()
        self._forget: deque[str] = deque()
        self._cond = threading.Condition()
        self._closed = False
        # replies ahead (and background work) join one step in this many while another live reply
        # waits for its first clause (1: every step)
        self.ahead_every = ahead_every
        self._ahead_turn = 0
        self.narrowed_steps = 0  # steps that left replies ahead out
        self.steps = 0  # llama_decode calls (benchmarks, tests)
        self.widest_step = 0  # the most sequences one step served
        self.evictions = 0
        self._thread = threading.Thread(target=self._run, name="llm-batch", daemon=True)
        self._thread.start()
        # At exit the context must be freed before the model: left to the interpreter's teardown,
        # the two are collected in any order, and freeing a context after its model crashes.
        atexit.register(_close_at_exit, weakref.ref(self))

    @property
    def sequences(self) -> int:
        return len(self._sequences)

    # -- any thread -------------------------------------------------------------------------

    def submit(self, job: BatchJob) -> Future:
        with self._cond:
            if self._closed:
                raise RuntimeError("the batch decoder is closed")
            self._queue.append(job)
            self._cond.notify()
        return job.future

    def forget(self, owner: str) -> None:
        """Free ``owner``'s sequence and drop its saved cells (after its running generation, if any)."""
        with self._cond:
            self._forget.append(owner)
            self._cond.notify()

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def owner_of(self, seq_id: int) -> str | None:
        return self._sequences[seq_id].owner

    # -- the decoder's thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._closed or self._queue or self._forget or self._running()):
                        self._cond.wait()
                    if self._closed:
                        break
                    forget = list(self._forget)
                    self._forget.clear()
                for owner in forget:
                    self._drop(owner)
                try:
                    self._admit()
                    self._step()
                except Exception as e:  # never leave a caller waiting on a dead thread
                    logger.exception(f"LLM batch: a step failed ({type(e).__name__})")
                    for seq in self._sequences:
                        if seq.job is not None:
                            self._clear(seq)  # what its cells hold is not known any more
                            self._fail(seq, e)
        finally:
            with self._cond:
                self._closed = True
                waiting = list(self._queue)
                self._queue.clear()
            for job in waiting:
                if job.future.set_running_or_notify_cancel():
                    job.future.set_exception(RuntimeError("the batch decoder is closed"))
            for seq in self._sequences:
                if seq.job is not None:
                    self._fail(seq, RuntimeError("the batch decoder is closed"))
            llama_cpp.llama_batch_free(self._batch)
            self._ctx.close()

    def _running(self) -> bool:
        return any(seq.job is not None for seq in self._sequences)

    def _drop(self, owner: str) -> None:
        self._saved.pop(owner, None)
        seq = self._lru.get(owner)
        if seq is None:
            return
        if seq.job is not None:
            seq.job.forget_after = True
            return
        self._release(seq)

    def _release(self, seq: _Sequence) -> None:
        """Free ``seq`` for another conversation. Its cells stay: the next conversation there
        keeps the prefix they share token for token (the system prompt, its markup) and
        evaluates only the rest, as one sequence did before batching."""
        if seq.owner is not None:
            self._lru.pop(seq.owner, None)
        seq.owner = None

    def _clear(self, seq: _Sequence) -> None:
        llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq.seq_id, -1, -1)
        seq.tokens = []

    def _evict(self, seq: _Sequence) -> None:
        """Copy an idle conversation's cells out and free its sequence."""
        assert seq.owner is not None and seq.job is None
        if seq.tokens and self.max_saved > 0:
            ctx = self._ctx.ctx
            size = llama_cpp.llama_state_seq_get_size(ctx, seq.seq_id)
            buf = (ctypes.c_uint8 * size)()
            n = llama_cpp.llama_state_seq_get_data(ctx, buf, size, seq.seq_id)
            self._saved[seq.owner] = _Saved(ctypes.string_at(buf, n), list(seq.tokens))
            while len(self._saved) > self.max_saved:
                self._saved.popitem(last=False)
        self.evictions += 1
        self._release(seq)

    def _restore(self, seq: _Sequence, owner: str) -> bool:
        saved = self._saved.pop(owner, None)
        if saved is None:
            return False
        llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq.seq_id, -1, -1)
        seq.tokens = []
        buf = (ctypes.c_uint8 * len(saved.kv)).from_buffer_copy(saved.kv)
        if llama_cpp.llama_state_seq_set_data(self._ctx.ctx, buf, len(saved.kv), seq.seq_id) == 0:
            llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq.seq_id, -1, -1)
            logger.warning("LLM batch: a saved KV state did not load; the prompt is evaluated again")
            return False
        seq.tokens = saved.tokens
        return True

    def _sequence_for(self, job: BatchJob) -> _Sequence | None:
        """``job.owner``'s sequence; else the free one whose cells share the longest prefix with its
        prompt; else the least recently used one with nothing running (its conversation evicted)."""
        seq = self._lru.get(job.owner)
        if seq is not None:
            return seq if seq.job is None else None
        free = [s for s in self._sequences if s.owner is None]
        if free:
            return max(free, key=lambda s: _common_prefix(s.tokens, job.prompt))
        for seq in self._lru.values():
            if seq.job is None:
                self._evict(seq)
                return seq
        return None

    def _admit(self) -> None:
        with self._cond:
            queued = sorted(self._queue, key=lambda j: j.background)  # live calls first, FIFO within
            self._queue.clear()
        left: list[BatchJob] = []
        for job in queued:
            if job.future.cancelled():
                continue
            if job.cancel.is_set():  # stopped before it began
                job.stats.prompt_tokens = len(job.prompt)
                if job.future.set_running_or_notify_cancel():
                    self._resolve(job)
                continue
            seq = self._sequence_for(job)
            if seq is None:
                left.append(job)
                continue
            if not job.future.set_running_or_notify_cancel():
                continue  # the caller gave up on it (no result can be set from here on)
            try:
                self._begin(job, seq)
            except Exception as e:
                job.future.set_exception(e)
        if left:
            with self._cond:
                self._queue.extendleft(reversed(left))

    def _begin(self, job: BatchJob, seq: _Sequence) -> None:
        prompt, stats = job.prompt, job.stats
        stats.prompt_tokens = len(prompt)
        room = self.n_ctx - len(prompt)
        if room < 8:
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit the context of {self.n_ctx}")
        job.max_tokens = min(job.max_tokens, room - 1)
        if seq.owner != job.owner:  # (else its cells hold its conversation so far)
            seq.owner = job.owner
            stats.state_restored = self._restore(seq, job.owner)
        self._lru[job.owner] = seq
        self._lru.move_to_end(job.owner)
        cached = _common_prefix(seq.tokens, prompt)
        # a generation decodes at least its last prompt token: the logits to sample from
        keep = cached if job.max_tokens == 0 else min(cached, len(prompt) - 1)
        if keep < len(seq.tokens):
            if llama_cpp.llama_memory_seq_rm(self._ctx.memory, seq.seq_id, keep, -1):
                seq.tokens = seq.tokens[:keep]
            else:
                self._clear(seq)
                keep = 0
        job.pending = list(prompt[keep:])
        stats.evaluated_prompt_tokens = len(job.pending)
        stats.queued_s = time.monotonic() - job.submitted
        job.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        if job.max_tokens > 0:
            assert job.sampling is not None
            job.sampler = new_sampler(self._vocab, self._n_vocab, job.sampling)
        seq.job = job
        if not job.pending:  # a prefill of what is already cached
            self._finish(seq)

    def _step(self) -> None:
        """One step: the token each running reply sampled last, all in one decode; then prompt
        chunks of newly arrived generations, one decode per conversation, ``n_batch`` tokens a step.

        A prompt chunk is not put in the same decode as other conversations' tokens: llama.cpp
        would split that batch into equal shares per sequence, and a share of one token takes
        another kernel path (another rounding) than the same token inside a longer chunk. Kept
        apart, each conversation's tokens are evaluated in the chunks the single-sequence engine
        uses (its prompt in ``n_batch`` chunks, then a token at a time), so at temperature 0 a
        reply is the same token for token, alone or beside others."""
        for seq in self._sequences:  # a cancelled generation ends before the next decode
            job = seq.job
            if job is not None and job.cancel.is_set():
                job.stats.cancelled = True
                self._finish(seq)
        running = [s for s in self._sequences if s.job is not None and s.job.next_token is not None]
        prefilling = sorted((s for s in self._sequences if s.job is not None and s.job.pending),
                            key=lambda s: (s.job.background, s.job.submitted))  # type: ignore[union-attr]
        if not running and not prefilling:
            return
        running = self._narrowed(running, prefilling)
        self.widest_step = max(self.widest_step, len(running) + len(prefilling))
        if running and all(s.job.background for s in prefilling) and all(
                s.job.clause_out or s.job.background for s in running):  # type: ignore[union-attr]  # fmt: skip
            # only the rest of replies whose first clause is out (and background work): urgent work
            # first (such as that clause's audio; a reply with no clause out yet is itself urgent)
            paused = self.cpu.yield_to_urgent()
            if paused:
                for seq in running:
                    seq.job.stats.paused_s += paused  # type: ignore[union-attr]
        if running:
            for i, seq in enumerate(running):
                self._put(i, seq.job.next_token, len(seq.tokens), seq.seq_id, True)  # type: ignore[union-attr,arg-type]
            if self._decode(len(running), running):
                for i, seq in enumerate(running):
                    job = seq.job
                    assert job is not None and job.next_token is not None
                    seq.tokens.append(job.next_token)
                    job.next_token = None
                    self._sample(seq, i)
        spent = 0
        for seq in prefilling:
            job = seq.job
            if spent >= self.n_batch:
                break
            if job is None or job.cancel.is_set():
                continue  # (ended at the next step)
            take = job.pending[: self.n_batch]
            last = len(take) == len(job.pending) and job.max_tokens > 0
            for i, tok in enumerate(take):
                self._put(i, tok, len(seq.tokens) + i, seq.seq_id, last and i == len(take) - 1)
            if not self._decode(len(take), [seq]):
                continue
            spent += len(take)
            seq.tokens += take
            job.pending = job.pending[len(take):]
            if last:
                self._sample(seq, len(take) - 1)
            elif job.max_tokens == 0 and not job.pending:
                self._finish(seq)  # a prefill, evaluated

    def _narrowed(self, running: list[_Sequence], prefilling: list[_Sequence]) -> list[_Sequence]:
        """The running replies that take part in this step: all of them, unless a live reply
        waits for its first clause or prompt — then those ahead (and background work) join only
        one step in :attr:`ahead_every`."""
        if self.ahead_every <= 1:
            return running
        waiting = [s for s in running if not (s.job.ahead or s.job.background)]  # type: ignore[union-attr]
        if len(waiting) == len(running) or not (waiting or any(not s.job.background for s in prefilling)):  # type: ignore[union-attr]
            return running
        self._ahead_turn = (self._ahead_turn + 1) % self.ahead_every
        if self._ahead_turn == 0:
            return running
        self.narrowed_steps += 1
        return waiting

    def _decode(self, n: int, seqs: list[_Sequence]) -> bool:
        """Decode the batch's first ``n`` tokens; on failure the sequences' jobs fail and their cells are dropped."""
        self._batch.n_tokens = n
        threads = self.n_threads_shared if self.cpu.others_running else self.n_threads
        if threads != self._threads:
            llama_cpp.llama_set_n_threads(self._ctx.ctx, threads, threads)
            self._threads = threads
        if threads != self.n_threads:
            self.shared_steps += 1
        ret = llama_cpp.llama_decode(self._ctx.ctx, self._batch)
        self.steps += 1
        if ret == 0:
            return True
        error = RuntimeError(f"llama_decode returned {ret}")
        for seq in seqs:
            self._clear(seq)
            if seq.job is not None:
                self._fail(seq, error)
        return False

    def _put(self, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        b = self._batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq_id
        b.logits[i] = logits

    def _sample(self, seq: _Sequence, out: int) -> None:
        job = seq.job
        assert job is not None
        if job.adjust_logits is not None:
            row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx.ctx, out), shape=(self._n_vocab,))
            job.adjust_logits(job.tokens, row)
        tok = llama_cpp.llama_sampler_sample(job.sampler, self._ctx.ctx, out)
        stats = job.stats
        if stats.first_token_s is None:
            stats.first_token_s = time.monotonic() - job.submitted
        if job.is_end(tok):
            self._finish(seq)
            return
        job.tokens.append(tok)
        piece = job.decoder.decode(job.piece_of(tok))
        if piece:
            job.pieces.append(piece)
            if not job.ahead and not job.background:
                text = "".join(job.pieces)
                job.clause_out = job.clause_out or first_clause_out(text, 1)
                job.ahead = first_clause_out(text)
            if job.on_text is not None:
                try:
                    job.on_text(piece)
                except Exception as e:
                    self._fail(seq, e)
                    return
        if job.cancel.is_set():
            stats.cancelled = True
        elif len(job.tokens) < job.max_tokens:
            job.next_token = tok
            return
        self._finish(seq)

    def _finish(self, seq: _Sequence) -> None:
        job = seq.job
        assert job is not None
        seq.job = None
        tail = job.decoder.decode(b"", final=True) if job.decoder is not None else ""
        if tail:
            job.pieces.append(tail)
            if job.on_text is not None:
                try:
                    job.on_text(tail)
                except Exception as e:
                    self._free_sampler(job)
                    job.future.set_exception(e)
                    return
        self._free_sampler(job)
        if job.forget_after:
            self._release(seq)
        self._resolve(job)

    def _resolve(self, job: BatchJob) -> None:
        job.stats.generated_tokens = len(job.tokens)
        job.stats.total_s = time.monotonic() - job.submitted
        job.future.set_result(Generation(text="".join(job.pieces), tokens=job.tokens, stats=job.stats))

    def _fail(self, seq: _Sequence, error: BaseException) -> None:
        job = seq.job
        assert job is not None
        seq.job = None
        self._free_sampler(job)
        if job.forget_after:
            self._release(seq)
        job.future.set_exception(error)

    @staticmethod
    def _free_sampler(job: BatchJob) -> None:
        if job.sampler is not None:
            llama_cpp.llama_sampler_free(job.sampler)
            job.sampler = None
