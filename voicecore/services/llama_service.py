"""The in-process llama.cpp model as a Pipecat ``LLMService`` over Pipecat's ``LLMContext``.

Drop :class:`LlamaLLMService` into any Pipecat pipeline between the two halves of an
``LLMContextAggregatorPair``: it answers each ``LLMContextFrame`` with ``LLMFullResponseStartFrame``,
streamed ``LLMTextFrame``\\ s and ``LLMFullResponseEndFrame``, like Pipecat's hosted-model services.

* The model is a shared :class:`~voicecore.services.llama_engine.LlamaEngine` (one GGUF per
  process, one inference thread); nothing blocks the event loop. Each service instance is one
  conversation in the engine's KV cache, so a turn evaluates only the tokens not already there
  (``last_stats.evaluated_prompt_tokens``): the replies the model generated are put back in the
  prompt as the very tokens it produced.
* Tools: the context's ``ToolsSchema`` goes into the system message (Qwen2.5/Hermes style); a
  ``<tool_call>{…}</tool_call>`` in the reply is not spoken but run through Pipecat's
  ``run_function_calls`` (handlers from ``register_function`` or the schemas), and the result
  comes back through the assistant aggregator, which asks for the answer that uses it.
  ``tool_choice`` ``"required"`` or a named function makes the answer to the user's message a call,
  constrained by a llama.cpp grammar, so even a 135M model writes a valid one.
* An interruption stops the generation on the inference thread within a token.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    FunctionCallFromLLM,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings
from pipecat.utils.types import is_given

from voicecore.config import LLMParams
from voicecore.services.chat_format import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    GeneratedTurns,
    Piece,
    context_pieces,
    markup,
    render_text,
)
from voicecore.services.llama_engine import GenerationStats, LlamaEngine
from voicecore.services.tool_calls import (
    ToolCallParser,
    ToolPlan,
    call_schema,
    tool_plan,
)


class LlamaLLMService(LLMService):
    """A Pipecat LLM service on the in-process llama.cpp model."""

    Settings = LLMSettings
    supports_response_schema = True

    def __init__(
        self,
        engine: LlamaEngine,
        *,
        params: LLMParams | None = None,
        settings: LLMSettings | None = None,
        conversation_key: str | None = None,
        max_tool_rounds: int = 3,
        tool_call_max_tokens: int = 256,
        **kwargs: Any,
    ):
        """``params``: sampling defaults. ``settings``: Pipecat's settings over them
        (``LlamaLLMService.Settings(system_instruction=..., temperature=...)``; an
        ``LLMUpdateSettingsFrame`` changes them later; temperature, top_p, max_tokens, seed and the
        system instruction are used). ``conversation_key``: this conversation's name in the engine's KV
        cache (one per service instance by default). ``max_tool_rounds``: rounds of tool calls after
        a user's message before calls are no longer run. ``tool_call_max_tokens``: the token budget
        of a forced call (its arguments can be longer than a spoken reply)."""
        self._params = params or LLMParams()
        store = LLMSettings(
            model=os.path.basename(engine.path),
            system_instruction=None,
            temperature=self._params.temperature,
            max_tokens=self._params.max_tokens,
            top_p=self._params.top_p,
            top_k=None,
            frequency_penalty=None,
            presence_penalty=None,
            seed=self._params.seed,
            filter_incomplete_user_turns=False,
            user_turn_completion_config=None,
            use_provider_thinking_default=False,
        )
        if settings is not None:
            store.apply_update(settings)
        super().__init__(settings=store, **kwargs)
        self._engine = engine
        self.conversation_key = conversation_key or f"pipecat-{uuid.uuid4().hex[:12]}"
        self._max_tool_rounds = max_tool_rounds
        self._tool_call_max_tokens = tool_call_max_tokens
        self._generated = GeneratedTurns()
        self._grammars: dict[str, object] = {}
        self.last_stats: GenerationStats | None = None
        self.stats: list[GenerationStats] = []
        self.generations_cancelled = 0
        self.last_plan: ToolPlan | None = None
        self._left_out = 0  # the oldest messages of the context left out of the prompt (context window)
        self._left_out_mark = ""

    @property
    def engine(self) -> LlamaEngine:
        return self._engine

    def can_generate_metrics(self) -> bool:
        return True

    async def stop(self, frame: EndFrame):
        await super().stop(frame)
        self._forget()

    async def cancel(self, frame: CancelFrame):
        await super().cancel(frame)
        self._forget()

    def _forget(self) -> None:
        self._engine.forget(self.conversation_key)
        self._generated.clear()
        self._left_out, self._left_out_mark = 0, ""

    # -- frames ----------------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            await self.push_frame(LLMFullResponseStartFrame())
            await self.start_processing_metrics()
            try:
                await self._process_context(frame.context)
            except Exception as e:
                logger.error(f"{self}: generation failed: {type(e).__name__}")
                await self.push_error(error_msg=f"Error during completion: {type(e).__name__}: {e}", exception=e)
            finally:
                await self.stop_processing_metrics()
                await self.push_frame(LLMFullResponseEndFrame())
        else:
            await self.push_frame(frame, direction)

    # -- one generation --------------------------------------------------------------------

    def _current_params(self) -> LLMParams:
        update: dict[str, Any] = {}
        for name in ("temperature", "top_p", "max_tokens", "seed"):
            value = getattr(self._settings, name, None)
            if is_given(value) and value is not None:
                update[name] = value
        return self._params.model_copy(update=update)

    async def _openai_messages(
        self, context: LLMContext, system_instruction: str | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The context's messages and tools in OpenAI's format (Pipecat's own adapter: the system
        instruction, built-in tools and file parts are handled as for its other services)."""
        params = await self.get_llm_adapter().get_llm_invocation_params(
            context, system_instruction=system_instruction, convert_developer_to_user=True
        )
        tools = params["tools"] if isinstance(params["tools"], list) else []
        return [dict(m) for m in params["messages"]], [dict(t) for t in tools]

    def _grammar(self, schema: Mapping[str, Any]) -> object:
        from llama_cpp import LlamaGrammar

        key = json.dumps(schema, sort_keys=True)
        grammar = self._grammars.get(key)
        if grammar is None:
            grammar = self._grammars[key] = LlamaGrammar.from_json_schema(key, verbose=False)
        return grammar

    async def _process_context(self, context: LLMContext) -> None:
        self._log_llm_response(context)
        system = self._settings.system_instruction
        messages, tools = await self._openai_messages(context, system if isinstance(system, str) else None)
        choice = context.tool_choice if is_given(context.tool_choice) else "auto"
        plan = self.last_plan = tool_plan(tools, choice, messages, max_rounds=self._max_tool_rounds)
        params = self._current_params()
        pieces = self._fit(messages, tools, params.max_tokens)
        grammar = None
        parser = ToolCallParser()
        call_head: list[int] = []
        if plan.mode == "forced":
            # the answer is a call: its opening tag is in the prompt, its JSON follows the grammar
            opening = markup(f"{TOOL_CALL_OPEN}\n")
            pieces.append(opening)
            call_head = self._engine.piece_tokens(opening)
            parser.feed(opening.text)
            grammar = self._grammar(call_schema(tools, plan.names))
            params = params.model_copy(update={"max_tokens": max(params.max_tokens, self._tool_call_max_tokens)})
        logger.opt(lazy=True).trace("{}", lambda: f"{self}: prompt {render_text(pieces)!r}")
        prompt = self._engine.tokens_for(pieces)

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        cancel = threading.Event()
        await self.start_ttfb_metrics()
        job = asyncio.ensure_future(self._engine.generate(
            self.conversation_key, prompt, params, cancel,
            lambda piece: loop.call_soon_threadsafe(queue.put_nowait, piece), grammar=grammar,
        ))  # fmt: skip
        job.add_done_callback(lambda f: (queue.put_nowait(None), f.cancelled() or f.exception()))
        spoken: list[str] = []
        first = True
        try:
            while (piece := await queue.get()) is not None:
                if first:
                    first = False
                    await self.stop_ttfb_metrics()
                text = parser.feed(piece)
                if text:
                    spoken.append(text)
                    await self._push_llm_text(text)
                if parser.seen_call and plan.mode == "none" and not cancel.is_set():
                    logger.debug(f"{self}: the model began a tool call where none may run; it is not spoken")
                    cancel.set()  # the rest of it is not needed
            tail = "" if cancel.is_set() else parser.finish()
            if tail:
                spoken.append(tail)
                await self._push_llm_text(tail)
        except asyncio.CancelledError:
            cancel.set()  # an interruption: the inference thread stops at the next token
            self.generations_cancelled += 1
            job.add_done_callback(self._record_stopped)
            raise
        result = await job
        self._record(result.stats)
        logger.debug(
            f"{self}: {result.stats.generated_tokens} tokens, prompt {result.stats.prompt_tokens} "
            f"(evaluated {result.stats.evaluated_prompt_tokens}), first token "
            f"{(result.stats.first_token_s or 0) * 1000:.0f} ms, tool plan {plan.mode}"
        )
        said = "".join(spoken)
        if not parser.seen_call:
            if not result.stats.cancelled:
                self._generated.add_text(said, result.tokens)
            return
        if plan.mode == "none" or not parser.calls:
            if parser.calls:
                logger.warning(f"{self}: the model called a tool where no call may run now; the call is dropped")
            return
        await self._run_calls(context, parser.calls, said, call_head + result.tokens, plan)

    def _fit(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], max_tokens: int) -> list[Piece]:
        """The prompt, with room left in the model's context window for the reply. A conversation that
        outgrows the window loses its oldest messages from the prompt (never the system message; a
        quarter of them at a time, cut before a user message), and they stay out, so the prompt's
        prefix, and with it the KV cache, changes only now and then. The context is not changed."""
        template, head = self._engine.template, int(bool(messages) and messages[0].get("role") == "system")
        budget = self._engine.n_ctx - min(max_tokens, self._engine.n_ctx // 2) - 1

        def mark(message: Mapping[str, Any]) -> str:
            return json.dumps(message, sort_keys=True, default=str)

        start = self._left_out
        if start and (head + start >= len(messages) or mark(messages[head + start]) != self._left_out_mark):
            start = 0  # the context was replaced (a summary, an update): start over
        pieces = context_pieces(template, messages[:head] + messages[head + start:], tools, self._generated)
        while len(self._engine.tokens_for(pieces)) > budget:
            rest = messages[head + start:]
            n = max(1, len(rest) // 4)
            while n < len(rest) and rest[n].get("role") != "user":
                n += 1
            if n >= len(rest):
                break  # the last turn alone is too long: the engine refuses it
            start += n
            pieces = context_pieces(template, messages[:head] + messages[head + start:], tools, self._generated)
        if start != self._left_out:
            logger.debug(f"{self}: the {start} oldest messages are left out of the prompt (context window)")
        self._left_out, self._left_out_mark = start, (mark(messages[head + start]) if start else "")
        return pieces

    def _record(self, stats: GenerationStats) -> None:
        self.last_stats = stats
        self.stats.append(stats)

    def _record_stopped(self, job: asyncio.Future) -> None:
        """The stats of a generation an interruption stopped, once its thread has let go of the model."""
        if not job.cancelled() and job.exception() is None:
            self._record(job.result().stats)

    async def _run_calls(self, context: LLMContext, calls: Sequence[Any], said: str, tokens: list[int],
                         plan: ToolPlan) -> None:  # fmt: skip
        ids = [f"call_{uuid.uuid4().hex[:24]}" for _ in calls]
        if not said.strip():
            # The assistant aggregator writes this turn as a message with these tool calls only: the
            # next prompt shows it as the tokens the model produced, closed as the template closes a
            # call when the model stopped right after the JSON (a forced call). Not when text followed.
            generated = self._engine.detokenize(tokens).strip()
            if generated.endswith(TOOL_CALL_CLOSE):
                self._generated.add_calls(ids, tokens)
            elif TOOL_CALL_CLOSE not in generated:
                self._generated.add_calls(ids, tokens + self._engine.piece_tokens(markup(f"\n{TOOL_CALL_CLOSE}")))
        unknown = [c.name for c in calls if c.name not in plan.names]
        if unknown:
            logger.warning(f"{self}: the model called {', '.join(unknown)}, not among the tools")
        await self.run_function_calls([
            FunctionCallFromLLM(function_name=c.name, tool_call_id=i, arguments=c.arguments, context=context)
            for c, i in zip(calls, ids)
        ])  # fmt: skip

    # -- out of band -----------------------------------------------------------------------

    async def run_inference(
        self,
        context: LLMContext,
        max_tokens: int | None = None,
        system_instruction: str | None = None,
        response_schema: dict[str, Any] | None = None,
    ) -> str | None:
        """A one-shot answer outside the pipeline (Pipecat's context summaries, ...), in a KV cache
        slot of its own; ``response_schema`` is enforced by a llama.cpp grammar."""
        system = system_instruction or self._settings.system_instruction
        messages, _tools = await self._openai_messages(context, system if isinstance(system, str) else None)
        prompt = self._engine.tokens_for(context_pieces(self._engine.template, messages))
        params = self._current_params()
        if max_tokens is not None:
            params = params.model_copy(update={"max_tokens": max_tokens})
        schema = self._check_response_schema(response_schema)
        grammar = self._grammar(schema) if schema is not None else None
        key = f"{self.conversation_key}:inference"
        try:
            result = await self._engine.generate(key, prompt, params, threading.Event(), grammar=grammar)
        finally:
            self._engine.forget(key)
        return result.text.strip() or None
