"""Speculative replies: the reply to what the caller said up to a pause, started while the turn may
still go on (issue 15).

At a pause the STT's transcript comes in (``SpeculativeTranscriptFrame``) while the turn detector is
still waiting for enough silence (or smart-turn) to end the turn. The LLM processor then starts
the reply to those words as a :class:`HeldReply`: its prompt evaluated and its first clause
generated (or, for a reply from the data — the facts, the call tools — its whole text known), and
the TTS synthesises that first clause ahead (``SpeculativeClauseFrame``). Nothing is pushed
towards the caller: the reply is *held*.

- When the turn ends with the same words (the same prompt, token for token), the held reply is
  *released*: its text goes out at once and generation goes on from its tokens; the first clause's
  audio comes from the TTS's prepared audio.
- When the caller goes on (speech again), or the final transcript differs, it is *dropped*: its
  generation stops at the next token, its text and audio are never pushed, and nothing of it
  enters the conversation. The KV cache keeps the conversation's prefix; the next generation
  re-evaluates from the first token that differs, as for any new turn.

Speculation is skipped when the model is busy with other calls' replies (the CPU is short: a
held reply would delay a caller who is waiting now), for turns that go to the booking and
appointment dialogues (they read and write the calendar), and for tool actions (a goodbye, a
transfer). :class:`SpeculationStats` counts what was started, used and wasted, and the model time
the wasted ones cost; the call record keeps it in ``flags.speculation``.
"""

from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass, field

from voicecore.services.llama_engine import CLAUSE_ENDS, Generation

__all__ = ["HELD_MAX_TOKENS", "HeldReply", "SpeculationStats", "first_clause_done"]

#: A held reply generates at most this many tokens before the turn is confirmed over.
HELD_MAX_TOKENS = 16


def first_clause_done(text: str, max_words: int = 8) -> bool:
    """The held text holds a whole first clause: a clause mark after a word, or ``max_words`` words
    (where the TTS would cut a first clause with no mark in sight)."""
    stripped = text.rstrip()
    if stripped.endswith(CLAUSE_ENDS) and re.search(r"\w", stripped):
        return True
    return len(text.split()) > max_words


@dataclass
class HeldReply:
    """A reply started at pause ``pause_id`` to ``said``, held back until the turn ends.

    A reply from the data has its whole ``text``; a model reply has the ``prompt`` it is
    generated from and its generation ``task`` (the first clause, at most :data:`HELD_MAX_TOKENS`)."""

    pause_id: int
    said: str
    text: str | None = None
    prompt: list[int] | None = None
    task: asyncio.Future[Generation] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    max_tokens: int = HELD_MAX_TOKENS

    @property
    def from_data(self) -> bool:
        return self.text is not None

    @staticmethod
    def complete(result: Generation, max_tokens: int) -> bool:
        """The model ended the reply itself within the held part (nothing more to generate)."""
        s = result.stats
        return not s.cancelled and not s.yielded and s.generated_tokens < max_tokens


@dataclass
class SpeculationStats:
    """One call's speculative replies: started, released (used), dropped (wasted)."""

    started: int = 0
    used: int = 0
    wasted: int = 0
    skipped_busy: int = 0  # not started: other calls' replies were waiting for the model
    wasted_model_s: float = 0.0  # model time spent on replies that were dropped

    def as_flag(self) -> dict[str, float | int]:
        return {"started": self.started, "used": self.used, "wasted": self.wasted,
                "skipped_busy": self.skipped_busy, "wasted_model_ms": round(self.wasted_model_s * 1000, 1)}  # fmt: skip

    def waste(self, held: HeldReply) -> None:
        """``held`` is dropped: stop its generation and count what it cost."""
        held.cancel.set()
        self.wasted += 1
        task = held.task
        if task is None:
            return

        def account(t: asyncio.Future[Generation]) -> None:
            if not t.cancelled() and t.exception() is None:
                stats = t.result().stats  # (less the time it stood aside for urgent work of other calls)
                self.wasted_model_s += max(0.0, stats.total_s - stats.paused_s)

        if task.done():
            account(task)
        else:
            task.add_done_callback(account)
