"""The context builder: the only road from caller text and tenant data into the LLM prompt.

Usage from the LLM processor::

    builder = ContextBuilder(policy)
    # once, when the caller's final transcript arrives:
    said = builder.redact_caller_text(transcript)        # RedactedText (a str)
    history.append(("caller", said))                     # keep the redacted text
    # every turn:
    messages = builder.build(system_prompt, history, contact=contact_row)
    # -> [{"role": "system", "content": ...}, {"role": "user", ...}, {"role": "assistant", ...}, ...]

What :meth:`ContextBuilder.build` guarantees:

* exactly one system message first: the agent's system prompt, followed by the
  allow-listed contact fields (``policy.context.contact_fields``) and nothing
  else from the contact;
* caller text is redacted per ``policy.redaction``; text that already went
  through :meth:`~ContextBuilder.redact_caller_text` (a :class:`RedactedText`)
  is not redacted again, anything else is;
* at most ``policy.context.max_history_turns`` history messages (the most recent);
* history roles: ``caller``/``user`` → ``user``, ``agent``/``assistant`` →
  ``assistant``; ``event`` entries (DTMF, greetings logged as events) are left
  out; any other role is an error.

Stored transcripts are a separate decision: :func:`stored_transcript_text`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from voicecore.policy.models import Policy
from voicecore.policy.redaction import PLACEHOLDERS, redact

Message = dict[str, str]
HistoryEntry = tuple[str, str] | Mapping[str, Any] | Any  # (role, text), {"role", "content"} or a records.Turn

MAX_CONTACT_VALUE_CHARS = 200

_USER_ROLES = frozenset({"caller", "user"})
_ASSISTANT_ROLES = frozenset({"agent", "assistant"})
_SKIPPED_ROLES = frozenset({"event"})


class RedactedText(str):
    """Caller text that has been through the policy's redaction (or that the policy lets through)."""

    __slots__ = ()


def redact_caller_text(policy: Policy, text: str) -> RedactedText:
    """Redact one caller utterance for the LLM context, as the policy says. Call once per utterance."""
    if isinstance(text, RedactedText):
        return text
    if policy.redaction.enabled and policy.redaction.categories:
        return RedactedText(redact(text, policy.redaction.categories, policy.phone_region))
    return RedactedText(text)


def stored_transcript_text(policy: Policy, text: str | None) -> str | None:
    """The transcript text to store for one turn: ``None`` when transcripts are never stored,
    redacted when ``transcripts.store_redacted``, verbatim otherwise. Applies to every role,
    since an agent can repeat what it heard."""
    if text is None or policy.retention.transcripts == 0:
        return None
    if policy.transcripts.store_redacted:
        categories = policy.redaction.categories or ()
        return redact(text, categories, policy.phone_region) if categories else text
    return text


#: Tool arguments that carry what the caller said about themselves; the others (a service, a
#: slot, the business's own transfer target) are the business's data and are kept as they are.
CALLER_ARGUMENTS: frozenset[str] = frozenset({"name", "phone", "email", "caller", "number"})


def redact_tool_arguments(policy: Policy, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """A tool call's arguments as the call record keeps them: the caller's own (:data:`CALLER_ARGUMENTS`)
    redacted with the policy's categories when the policy redacts caller text for the model or in
    stored transcripts (whichever is on); a ``name`` argument becomes ``[name]`` whole under the
    ``name`` category. Pure; the other arguments are returned as given."""
    categories = list(policy.redaction.categories or ())
    redacts = bool(categories) and (policy.redaction.enabled or policy.transcripts.store_redacted)
    out: dict[str, Any] = {}
    for key, value in arguments.items():
        if not redacts or key not in CALLER_ARGUMENTS or value is None:
            out[key] = value
        elif key == "name" and "name" in categories:
            out[key] = PLACEHOLDERS["name"]
        else:
            out[key] = redact(str(value), categories, policy.phone_region)
    return out


def _one_line(value: Any) -> str:
    text = re.sub(r"\s+", " ", str(value)).strip()
    if len(text) > MAX_CONTACT_VALUE_CHARS:
        text = text[: MAX_CONTACT_VALUE_CHARS - 1] + "…"
    return text


@dataclass(frozen=True)
class ContextBuilder:
    """Builds the LLM messages for one call under one tenant policy. Pure: no I/O, no state."""

    policy: Policy

    def redact_caller_text(self, text: str) -> RedactedText:
        return redact_caller_text(self.policy, text)

    def contact_fields(self, contact: Mapping[str, Any] | None) -> dict[str, str]:
        """The allow-listed, non-empty fields of a contact, in the policy's order, as one-line strings."""
        if not contact:
            return {}
        out: dict[str, str] = {}
        for name in self.policy.context.contact_fields:
            value = contact.get(name)
            if value is None or isinstance(value, (dict, list, tuple, set)):
                continue
            text = _one_line(value)
            if text:
                out[name] = text
        return out

    def system_message(self, system_prompt: str, contact: Mapping[str, Any] | None = None) -> Message:
        content = system_prompt.strip()
        fields = self.contact_fields(contact)
        if fields:
            lines = "\n".join(f"- {name}: {value}" for name, value in fields.items())
            content += f"\n\nWhat we know about the caller:\n{lines}"
        return {"role": "system", "content": content}

    def history_messages(self, history: Iterable[HistoryEntry]) -> list[Message]:
        """Map, filter, redact and bound the conversation history."""
        messages: list[Message] = []
        for entry in history:
            role, text = self._unpack(entry)
            if role in _SKIPPED_ROLES or text is None:
                continue
            if role in _USER_ROLES:
                messages.append({"role": "user", "content": str(self.redact_caller_text(text))})
            elif role in _ASSISTANT_ROLES:
                messages.append({"role": "assistant", "content": text})
            else:
                raise ValueError(
                    f"history role {role!r} is not allowed in the model context; use caller/user, agent/assistant "
                    "or event (left out); instructions belong in the system prompt"
                )
        limit = self.policy.context.max_history_turns
        return messages[-limit:]

    def build(
        self,
        system_prompt: str,
        history: Sequence[HistoryEntry],
        contact: Mapping[str, Any] | None = None,
    ) -> list[Message]:
        """The complete message list for one LLM call (see module docstring for the guarantees)."""
        return [self.system_message(system_prompt, contact), *self.history_messages(history)]

    def transcript_for_summary(self, turns: Iterable[HistoryEntry]) -> str:
        """A plain-text transcript ("Caller: ...", "Agent: ...") for report generation, caller text
        redacted per policy, every turn kept (reports see the whole call, not the bounded history)."""
        lines: list[str] = []
        for entry in turns:
            role, text = self._unpack(entry)
            if text is None or role in _SKIPPED_ROLES:
                continue
            if role in _USER_ROLES:
                lines.append(f"Caller: {self.redact_caller_text(text)}")
            elif role in _ASSISTANT_ROLES:
                lines.append(f"Agent: {text}")
            else:
                raise ValueError(f"transcript role {role!r} is not allowed; use caller/user or agent/assistant")
        return "\n".join(lines)

    @staticmethod
    def _unpack(entry: Any) -> tuple[str, str | None]:
        if isinstance(entry, Mapping):
            role = entry.get("role")
            text = entry.get("content", entry.get("text"))
        elif hasattr(entry, "role") and hasattr(entry, "text"):  # voicecore.records.Turn
            role, text = entry.role, entry.text
        else:
            role, text = entry
        if not isinstance(role, str):
            # No repr of the entry: it may hold caller speech.
            raise TypeError(f"history entry without a role ({type(entry).__name__})")
        return role, text
