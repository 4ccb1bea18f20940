"""One call's dialogue as the model sees it, and the context builders it goes through.

:class:`Conversation` keeps the call's messages (caller text enters only through
its context builder) and the model's own tokens of the last reply, so the KV
cache keeps serving the prompt prefix. :class:`PolicyContext` is the tenant
policy's context builder behind the :class:`ContextBuilder` seam, the only road
from caller text and tenant data into the prompt.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from voicecore.policy import ContextBuilder as PolicyContextBuilder
from voicecore.policy import Policy


@dataclass
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str
    reply_id: str | None = None  # agent replies: which reply this was (barge-in truncation)


class ContextBuilder(Protocol):
    """The only road from caller text and tenant data into the prompt (policy seam)."""

    def caller_text(self, text: str) -> str:
        """Caller speech as it may enter the model's context (redacted when the policy says so)."""
        ...

    def build(self, system_prompt: str, history: list[ChatMessage]) -> list[ChatMessage]:
        """The messages the model sees: system prompt, allowed contact fields, bounded history."""
        ...


class PolicyContext:
    """The tenant policy's context builder (:class:`voicecore.policy.ContextBuilder`) behind this seam.

    * caller text is redacted once, when it enters the conversation (``caller_text``
      returns a :class:`~voicecore.policy.RedactedText`, which ``build`` does not redact again);
    * ``build`` asks the policy builder for the messages (system prompt plus the
      allow-listed fields of ``contact``, history bounded by ``context.max_history_turns``),
      further bounded by the agent's own ``history_messages``, and turns them back into
      :class:`ChatMessage` with each agent reply's ``reply_id`` (barge-in truncation) and
      its exact text (so the generated tokens still match the KV cache).
    """

    def __init__(
        self, policy: Policy, *, history_messages: int | None = None, contact: Mapping[str, Any] | None = None
    ):
        self.policy = policy
        self.builder = PolicyContextBuilder(policy)
        self.history_messages = history_messages
        self.contact = dict(contact) if contact else None

    def caller_text(self, text: str) -> str:
        return self.builder.redact_caller_text(text)

    @property
    def history_limit(self) -> int:
        limit = self.policy.context.max_history_turns
        return min(limit, self.history_messages) if self.history_messages is not None else limit

    def build(self, system_prompt: str, history: list[ChatMessage]) -> list[ChatMessage]:
        built = self.builder.build(
            system_prompt, [{"role": m.role, "content": m.content} for m in history], contact=self.contact
        )
        system, rest = built[0], built[1:]
        if self.history_messages is not None:
            rest = rest[-self.history_messages :] if self.history_messages > 0 else []
        # The builder keeps the most recent messages in order (a conversation holds only
        # user and assistant messages), so ``rest`` lines up with the tail of ``history``.
        tail = history[len(history) - len(rest) :] if rest else []
        out = [ChatMessage("system", system["content"])]
        for source, message in zip(tail, rest, strict=True):
            if source.role != message["role"]:
                raise RuntimeError("context builder reordered the conversation")
            reply_id = source.reply_id if message["role"] == "assistant" else None
            out.append(ChatMessage(message["role"], message["content"], reply_id))
        return out


class PassThroughContext:
    """A context builder with no policy: caller text as heard, the last ``history_turns`` messages.

    For tests of the model itself; calls use :class:`PolicyContext` (with the
    privacy-first ``DEFAULT_POLICY`` when no tenant policy is given).
    """

    def __init__(self, history_turns: int = 8):
        self.history_turns = history_turns

    def caller_text(self, text: str) -> str:
        return text

    @property
    def history_limit(self) -> int:
        return 2 * self.history_turns

    def build(self, system_prompt: str, history: list[ChatMessage]) -> list[ChatMessage]:
        return [ChatMessage("system", system_prompt), *history[-2 * self.history_turns :]]


_conversation_ids = itertools.count(1)


@dataclass
class Conversation:
    """One call's dialogue as the model sees it. Caller text enters only through ``context``."""

    system_prompt: str
    context: ContextBuilder
    messages: list[ChatMessage] = field(default_factory=list)
    generated: dict[str, list[int]] = field(default_factory=dict)  # assistant text -> model tokens
    key: str = field(default_factory=lambda: f"conv-{next(_conversation_ids)}")
    # What the caller said (unredacted) since the agent last spoke, to redact a message
    # the caller adds to as a whole: a number read out across two turns is one number.
    _pending_caller: str | None = field(default=None, init=False, repr=False)
    _first: int = field(default=0, init=False, repr=False)  # first message still in the model's history

    def add_caller(self, text: str) -> str:
        if self.messages and self.messages[-1].role == "user":
            # The caller spoke again before the agent answered: one message, redacted as a whole.
            if self._pending_caller is not None:
                said: str | None = f"{self._pending_caller} {text}"
                clean = self.context.caller_text(said)
            else:  # the earlier part did not come through here: join to it as it stands
                said = None
                clean = self.context.caller_text(f"{self.messages[-1].content} {text}")
            self.messages[-1] = ChatMessage("user", clean)
        else:
            said = text
            clean = self.context.caller_text(text)
            self.messages.append(ChatMessage("user", clean))
        self._pending_caller = said
        return clean

    def rejoin_caller(self, text: str) -> bool:
        """The caller's last message is ``text`` now: their turn went on after the agent began to
        answer it, and ``text`` is the whole utterance, transcribed again. The agent's replies
        after that message go (the caller spoke over them). False, and nothing changed, when there
        is no caller message to rejoin or fixed text (a notice) was said after it."""
        last = next((i for i in range(len(self.messages) - 1, -1, -1) if self.messages[i].role == "user"), None)
        if last is None or any(m.reply_id is None for m in self.messages[last + 1 :]):
            return False
        for m in self.messages[last + 1 :]:
            self.generated.pop(m.content, None)
        del self.messages[last + 1 :]
        self.messages[last] = ChatMessage("user", self.context.caller_text(text))
        self._pending_caller = text
        self._first = min(self._first, last)
        return True

    def with_caller(self, text: str, *, rejoin: bool = False) -> Conversation:
        """A copy with ``text`` added as the caller's (``rejoin``: as their last message, see
        :meth:`rejoin_caller`), this conversation unchanged: the prompt a speculative reply is
        generated from (the same as this one's after ``add_caller(text)`` or ``rejoin_caller``)."""
        twin = Conversation(self.system_prompt, self.context, list(self.messages), dict(self.generated), self.key)
        twin._pending_caller, twin._first = self._pending_caller, self._first
        if not (rejoin and twin.rejoin_caller(text)):
            twin.add_caller(text)
        return twin

    def add_agent(self, text: str, tokens: list[int] | None = None, reply_id: str | None = None) -> None:
        text = text.strip()
        if not text:
            return
        self._pending_caller = None
        self.messages.append(ChatMessage("assistant", text, reply_id))
        if tokens is not None:
            self.generated = {text: tokens}  # only the latest reply can still be in the cache as generated

    def agent_heard(self, reply_id: str, heard_text: str) -> None:
        """A barge-in cut reply ``reply_id``: the model keeps only what the caller heard."""
        heard_text = heard_text.strip()
        for i in range(len(self.messages) - 1, -1, -1):
            m = self.messages[i]
            if m.role == "assistant" and m.reply_id == reply_id:
                self.generated.pop(m.content, None)
                if heard_text:
                    self.messages[i] = ChatMessage("assistant", heard_text, reply_id)
                else:
                    del self.messages[i]
                    if i < self._first:
                        self._first -= 1
                return
        if heard_text:  # generation was cancelled before it finished: record what was heard
            self._pending_caller = None
            self.messages.append(ChatMessage("assistant", heard_text, reply_id))

    def said_heard(self, text: str, heard_text: str) -> None:
        """A barge-in cut fixed agent text (a greeting) that was added with ``add_agent``:
        keep only what the caller heard. Text that is not in the conversation stays out."""
        words = text.split()
        for i in range(len(self.messages) - 1, -1, -1):
            m = self.messages[i]
            if m.role == "assistant" and m.reply_id is None and m.content.split() == words:
                heard_text = heard_text.strip()
                if heard_text:
                    self.messages[i] = ChatMessage("assistant", heard_text)
                else:
                    del self.messages[i]
                    if i < self._first:
                        self._first -= 1
                self.generated.pop(m.content, None)
                return

    def prompt_messages(self) -> list[ChatMessage]:
        """What the model sees now, through the context builder.

        History is trimmed in steps, not one message per turn: once it outgrows the
        builder's limit, the oldest half goes at once. The prompt's start then stays
        the same for several turns, so the KV cache keeps serving it (dropping one old
        message every turn would change the prefix and re-evaluate the whole history
        each time).
        """
        limit = getattr(self.context, "history_limit", None)
        if limit and len(self.messages) - self._first > limit:
            self._first = len(self.messages) - max(1, limit // 2)
        return self.context.build(self.system_prompt, list(self.messages[self._first :]))
