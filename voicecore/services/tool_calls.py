"""Tool calls in a streamed reply, and what the tool choice asks of the model (pure, no model).

The model writes a call as Qwen2.5 (Hermes) models do::

    <tool_call>
    {"name": "get_opening_hours", "arguments": {"day": "saturday"}}
    </tool_call>

:class:`ToolCallParser` splits the stream into the text to speak and the calls: a tag cut across
two chunks is held back until it is known, nothing from the first ``<tool_call>`` on is spoken,
and a call whose JSON does not parse is dropped with a warning. :func:`tool_plan` reads the
context's ``tool_choice``; :func:`call_schema` is the JSON schema a forced call must follow
(the service turns it into a llama.cpp grammar).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from loguru import logger

from voicecore.services.chat_format import TOOL_CALL_CLOSE, TOOL_CALL_OPEN


@dataclass
class ParsedToolCall:
    name: str
    arguments: dict[str, Any]


def _held_back(buffer: str, tag: str) -> int:
    """How many characters at the end of ``buffer`` may be the start of ``tag``."""
    for n in range(min(len(tag) - 1, len(buffer)), 0, -1):
        if tag.startswith(buffer[-n:]):
            return n
    return 0


@dataclass
class ToolCallParser:
    """Feed it the reply piece by piece; it returns what may be spoken and collects the calls."""

    calls: list[ParsedToolCall] = field(default_factory=list)
    invalid: int = 0  # calls dropped because their JSON did not parse
    _buffer: str = ""
    _in_call: bool = False
    _seen_call: bool = False

    @property
    def seen_call(self) -> bool:
        """A ``<tool_call>`` has started: the rest of the reply is not spoken."""
        return self._seen_call

    def feed(self, piece: str) -> str:
        self._buffer += piece
        spoken: list[str] = []
        while True:
            if self._in_call:
                end = self._buffer.find(TOOL_CALL_CLOSE)
                if end < 0:
                    break
                self._finish_call(self._buffer[:end])
                self._buffer = self._buffer[end + len(TOOL_CALL_CLOSE):]
                self._in_call = False
                continue
            start = self._buffer.find(TOOL_CALL_OPEN)
            if start >= 0:
                if not self._seen_call:
                    spoken.append(self._buffer[:start])
                self._buffer = self._buffer[start + len(TOOL_CALL_OPEN):]
                self._in_call = self._seen_call = True
                continue
            keep = _held_back(self._buffer, TOOL_CALL_OPEN)
            ready, self._buffer = self._buffer[: len(self._buffer) - keep], self._buffer[len(self._buffer) - keep:]
            if not self._seen_call:  # text after a call is not spoken (the call's result answers)
                spoken.append(ready)
            break
        return "".join(spoken)

    def finish(self) -> str:
        """The end of the reply: the text held back, or the last call when its closing tag never
        came (the model stopped right after the JSON, as a grammar makes it)."""
        rest, self._buffer = self._buffer, ""
        if self._in_call:
            self._in_call = False
            self._finish_call(rest)
            return ""
        return "" if self._seen_call else rest

    def _finish_call(self, body: str) -> None:
        call = parse_call(body)
        if call is None:
            self.invalid += 1
            # (the body may hold what the caller said: DEBUG only)
            logger.warning(f"LLM: a tool call was not understood ({len(body.strip())} characters of invalid JSON); "
                           "it is not run")  # fmt: skip
            logger.debug(f"LLM: the tool call not understood: {body.strip()!r}")
        else:
            self.calls.append(call)


def parse_call(body: str) -> ParsedToolCall | None:
    """``{"name": …, "arguments": {…}}`` (Llama 3's ``"parameters"`` is read too; arguments given as
    a JSON string are decoded), or None."""
    try:
        obj = json.loads(body.strip())
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"].strip():
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return None
    return ParsedToolCall(obj["name"].strip(), arguments)


# -- the tool choice -------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolPlan:
    """What this generation may do with tools: ``none`` (calls are not run), ``auto`` (the model
    decides), ``forced`` (the reply is a call of one of ``names``, by grammar)."""

    mode: Literal["none", "auto", "forced"]
    names: tuple[str, ...] = ()


def tool_names(tools: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(t["function"]["name"]) for t in tools if t.get("type") == "function" and t.get("function")]


def tool_plan(
    tools: Sequence[Mapping[str, Any]], tool_choice: Any, messages: Sequence[Mapping[str, Any]], *, max_rounds: int
) -> ToolPlan:
    """The plan for the next generation over ``messages``.

    ``tool_choice`` as OpenAI has it: ``"none"``, ``"auto"`` (also when not given), ``"required"``,
    or ``{"type": "function", "function": {"name": …}}``. A forced choice applies to the answer
    to a user's message; the answer that follows the tools' results is free (``auto``), or the
    model would call the tool again and again. After ``max_rounds`` rounds of calls since the
    user's last message, calls are no longer run."""
    names = tool_names(tools)
    if not names or tool_choice == "none":
        return ToolPlan("none")
    rounds = 0
    last_role = None
    for m in reversed(messages):
        role = m.get("role")
        if last_role is None and role not in ("system", "developer"):
            last_role = role
        if role == "user":
            break
        if role == "assistant" and m.get("tool_calls"):
            rounds += 1
    if rounds >= max_rounds:
        return ToolPlan("none")
    forced: tuple[str, ...] = ()
    if tool_choice == "required":
        forced = tuple(names)
    elif isinstance(tool_choice, Mapping):
        name = (tool_choice.get("function") or {}).get("name")
        if name in names:
            forced = (name,)
        else:
            logger.warning(f"LLM: tool_choice names {name!r}, which is not among the tools; the model chooses")
    if forced and last_role == "user":
        return ToolPlan("forced", forced)
    return ToolPlan("auto", tuple(names))


def call_schema(tools: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """The JSON schema of a call of one of ``names``: ``{"name": <const>, "arguments": <its parameters>}``."""
    options = []
    for t in tools:
        fn = t.get("function") or {}
        if t.get("type") != "function" or fn.get("name") not in names:
            continue
        params = dict(fn.get("parameters") or {"type": "object", "properties": {}})
        params.setdefault("type", "object")
        params.setdefault("properties", {})
        params.setdefault("additionalProperties", False)
        options.append({
            "type": "object",
            "properties": {"name": {"const": fn["name"]}, "arguments": params},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })
    if not options:
        raise ValueError("no tool to call")
    return options[0] if len(options) == 1 else {"anyOf": options}
