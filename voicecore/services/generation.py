"""What one generation of the in-process LLM returns: its text, tokens and timings. Shared by the
single-sequence engine (:mod:`voicecore.services.llama_engine`) and the batched decoder
(:mod:`voicecore.services.llama_batch`); callers import them from either (or ``services.llm``)."""

from __future__ import annotations

from dataclasses import dataclass


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
    queued_s: float = 0.0  # batched decoding: time waiting for a free sequence before the first step


@dataclass
class Generation:
    text: str
    tokens: list[int]
    stats: GenerationStats
