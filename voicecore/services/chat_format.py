"""Chat templates: how a conversation becomes the prompt a model was trained on (pure, no model).

A prompt is a list of :class:`Piece`\\ s: chat markup (tokenized with the model's special tokens),
message text (tokenized as plain text, so a caller saying "<|im_end|>" cannot close a turn), and
the exact tokens the model generated for an earlier reply (so the prompt matches the KV cache token
for token). :class:`~voicecore.services.llama_engine.LlamaEngine` turns the pieces into tokens.

Two templates: ChatML (SmolLM2, Qwen2.5, ...) and Llama 3.x (``<|start_header_id|>…<|eot_id|>``).
Messages in OpenAI's format (Pipecat's ``LLMContext``) render as Qwen2.5's template does: tools
listed in the system message between ``<tools></tools>``, an assistant tool call as
``<tool_call>{"name": …, "arguments": …}</tool_call>``, tool results as ``<tool_response>``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from voicecore.services.conversation import ChatMessage

ChatFormat = Literal["chatml", "llama3"]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


@dataclass(frozen=True)
class Piece:
    """A part of a prompt: ``markup`` (special tokens parsed), ``text`` (plain text) or ``tokens``
    (ids the model generated; ``text`` is what they spell, for logs and tests)."""

    text: str
    kind: Literal["markup", "text", "tokens"] = "text"
    tokens: tuple[int, ...] = ()


def markup(text: str) -> Piece:
    return Piece(text, "markup")


@dataclass(frozen=True)
class ChatTemplate:
    name: ChatFormat
    begin: str  # before the first message (Llama 3's BOS)
    head_format: str  # a message's header, with {role}
    end: str  # a message's end
    stops: tuple[str, ...]  # markers that end the model's turn (single special tokens in its vocabulary)
    tool_role: str | None  # the role of a tool result message; None: grouped in a user message (Qwen2.5)

    def head(self, role: str) -> str:
        return self.head_format.format(role=role)

    def render(self, messages: Sequence[ChatMessage], *, generation_header: bool = True) -> str:
        """The prompt as text, for logs and tests."""
        return render_text(self.pieces(messages, generation_header=generation_header))

    def pieces(
        self,
        messages: Sequence[ChatMessage],
        generated: Mapping[str, Sequence[int]] | None = None,
        *,
        generation_header: bool = True,
    ) -> list[Piece]:
        """voicecore's own conversation (:class:`ChatMessage`); ``generated`` maps an agent reply's
        text to the tokens the model produced for it."""
        out: list[Piece] = [markup(self.begin)] if self.begin else []
        for m in messages:
            out.append(markup(self.head(m.role)))
            toks = generated.get(m.content) if generated and m.role == "assistant" else None
            out.append(Piece(m.content, "tokens", tuple(toks)) if toks is not None else Piece(m.content))
            out.append(markup(self.end))
        if generation_header:
            out.append(markup(self.head("assistant")))
        return out


CHATML = ChatTemplate(
    name="chatml",
    begin="",
    head_format="<|im_start|>{role}\n",
    end="<|im_end|>\n",
    stops=("<|im_end|>", "<|im_start|>"),
    tool_role=None,
)
LLAMA3 = ChatTemplate(
    name="llama3",
    begin="<|begin_of_text|>",
    head_format="<|start_header_id|>{role}<|end_header_id|>\n\n",
    end="<|eot_id|>",
    stops=("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|start_header_id|>"),
    tool_role="ipython",
)
TEMPLATES: dict[str, ChatTemplate] = {t.name: t for t in (CHATML, LLAMA3)}


def template_for(chat_format: str) -> ChatTemplate:
    try:
        return TEMPLATES[chat_format]
    except KeyError:
        raise ValueError(f"unknown chat format {chat_format!r} (known: {', '.join(TEMPLATES)})") from None


def render_text(pieces: Iterable[Piece]) -> str:
    return "".join(p.text for p in pieces)


# -- OpenAI-format messages (Pipecat's LLMContext) --------------------------------------------


def tools_system_text(tools: Sequence[Mapping[str, Any]]) -> str:
    """The tools part of the system message, as Qwen2.5 (Hermes) models were trained on it.
    ``tools`` in OpenAI's format: ``{"type": "function", "function": {name, description, parameters}}``."""
    listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{listed}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n"
        f'{TOOL_CALL_OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n{TOOL_CALL_CLOSE}'
    )


def tool_call_text(name: str, arguments: Any) -> str:
    """One tool call as the model writes it."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            pass  # shown as the string it is
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a message whose content is a string or a list of parts (images and files are
    not shown to a text-only model)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    if content is None:
        return ""
    return json.dumps(content, ensure_ascii=False)


class GeneratedTurns:
    """The exact tokens the model produced for recent replies, found again by the reply's text
    (a spoken reply, as the assistant aggregator writes it to the context) or by its tool call ids."""

    def __init__(self, limit: int = 64):
        self._limit = limit
        self._by_text: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._by_calls: OrderedDict[tuple[str, ...], tuple[int, ...]] = OrderedDict()

    def _put(self, table: OrderedDict, key: Any, tokens: Sequence[int]) -> None:
        table[key] = tuple(tokens)
        table.move_to_end(key)
        while len(table) > self._limit:
            table.popitem(last=False)

    @staticmethod
    def _key(text: str) -> str:
        # the aggregator may join the reply's pieces with other spaces (a TTS's words)
        return " ".join(text.split())

    def add_text(self, text: str, tokens: Sequence[int]) -> None:
        if text.strip() and tokens:
            self._put(self._by_text, self._key(text), tokens)

    def add_calls(self, tool_call_ids: Sequence[str], tokens: Sequence[int]) -> None:
        if tool_call_ids and tokens:
            self._put(self._by_calls, tuple(tool_call_ids), tokens)

    def find(self, message: Mapping[str, Any]) -> tuple[int, ...] | None:
        calls = message.get("tool_calls")
        if calls:
            return self._by_calls.get(tuple(str(c.get("id", "")) for c in calls))
        return self._by_text.get(self._key(message_text(message)))

    def clear(self) -> None:
        self._by_text.clear()
        self._by_calls.clear()


def context_pieces(
    template: ChatTemplate,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] = (),
    generated: GeneratedTurns | None = None,
    *,
    generation_header: bool = True,
) -> list[Piece]:
    """OpenAI-format ``messages`` (system/user/assistant/tool, assistant ``tool_calls``) as prompt pieces.

    With ``tools``, their list goes at the end of the first system message (one is made when the
    context has none), so the prompt's prefix stays the same turn after turn."""
    out: list[Piece] = [markup(template.begin)] if template.begin else []
    msgs = list(messages)
    if tools:
        block = tools_system_text(tools)
        if msgs and msgs[0].get("role") == "system":
            msgs[0] = {"role": "system", "content": f"{message_text(msgs[0])}\n\n{block}"}
        else:
            msgs.insert(0, {"role": "system", "content": block})
    i = 0
    while i < len(msgs):
        m = msgs[i]
        role = str(m.get("role", "user"))
        if role == "tool":
            # a run of tool results: one user message with a <tool_response> each (Qwen2.5), or
            # one message each in the template's tool role (Llama 3's ipython)
            run = [m]
            while i + 1 < len(msgs) and msgs[i + 1].get("role") == "tool":
                i += 1
                run.append(msgs[i])
            if template.tool_role is not None:
                for t in run:
                    out += [markup(template.head(template.tool_role)), Piece(message_text(t)), markup(template.end)]
            else:
                out.append(markup(template.head("user")))
                for n, t in enumerate(run):
                    out += [markup(("\n" if n else "") + "<tool_response>\n"), Piece(message_text(t)),
                            markup("\n</tool_response>")]  # fmt: skip
                out.append(markup(template.end))
            i += 1
            continue
        out.append(markup(template.head(role)))
        toks = generated.find(m) if generated is not None and role == "assistant" else None
        if toks is not None:
            out.append(Piece(_assistant_text(m), "tokens", toks))
        elif role == "assistant" and m.get("tool_calls"):
            text = message_text(m)
            if text:
                out.append(Piece(text + "\n"))
            calls = [tool_call_text(str(c.get("function", {}).get("name", "")), c.get("function", {}).get("arguments"))
                     for c in m["tool_calls"]]  # fmt: skip
            out.append(Piece("\n".join(calls)))
        else:
            out.append(Piece(message_text(m)))
        out.append(markup(template.end))
        i += 1
    if generation_header:
        out.append(markup(template.head("assistant")))
    return out


def _assistant_text(message: Mapping[str, Any]) -> str:
    text = message_text(message)
    calls = message.get("tool_calls") or []
    shown = [tool_call_text(str(c.get("function", {}).get("name", "")), c.get("function", {}).get("arguments"))
             for c in calls]  # fmt: skip
    return "\n".join([text] * bool(text) + shown)
