"""LlamaLLMService: the in-process llama.cpp model as a Pipecat LLMService, in a pipeline built
from Pipecat's own context aggregators (real SmolLM2 model: those tests are marked ``models``;
the tool-call parser and the tool choice need no model)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from loguru import logger
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
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
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.turns.user_turn_strategies import ExternalUserTurnStrategies
from pipecat.workers.runner import WorkerRunner

from voicecore.config import LLMParams
from voicecore.services.chat_format import render_text
from voicecore.services.llama_service import LlamaLLMService
from voicecore.services.tool_calls import (
    ToolCallParser,
    call_schema,
    parse_call,
    tool_plan,
)

models = pytest.mark.models

DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
HOURS = FunctionSchema(
    name="get_opening_hours", description="The opening hours of the dental office on a day of the week",
    properties={"day": {"type": "string", "enum": DAYS}}, required=["day"],
)  # fmt: skip
BOOK = FunctionSchema(
    name="book_appointment", description="Book an appointment",
    properties={"name": {"type": "string"}, "day": {"type": "string", "enum": DAYS}}, required=["name", "day"],
)  # fmt: skip
OPENAI_TOOLS = [{"type": "function", "function": t.to_default_dict()} for t in (HOURS, BOOK)]


# -- the tool-call parser (pure) ------------------------------------------------------------


def feed_all(parser: ToolCallParser, pieces: list[str]) -> str:
    return "".join(parser.feed(p) for p in pieces) + parser.finish()


def test_a_call_cut_across_chunks_is_found_and_not_spoken():
    parser = ToolCallParser()
    spoken = feed_all(parser, ["Let me check. <to", "ol_c", 'all>\n{"name": "get_opening_hours", "argu',
                               'ments": {"day": "mon', 'day"}}\n</tool', "_call>"])  # fmt: skip
    assert spoken == "Let me check. "
    assert [(c.name, c.arguments) for c in parser.calls] == [("get_opening_hours", {"day": "monday"})]


def test_text_is_held_back_only_while_it_may_be_a_tag():
    parser = ToolCallParser()
    assert parser.feed("We open at 9 <") == "We open at 9 "
    assert parser.feed("b") == "<b"  # not a tool call after all
    assert parser.feed(" and close at 5.") == " and close at 5."
    assert parser.finish() == "" and not parser.calls and not parser.seen_call


def test_text_after_a_call_is_not_spoken_and_several_calls_are_read():
    parser = ToolCallParser()
    spoken = feed_all(parser, ['<tool_call>{"name": "a", "arguments": {}}</tool_call>\n',
                               '<tool_call>{"name": "b", "arguments": "{\\"x\\": 1}"}</tool_call> The office is open.'])
    assert spoken == ""
    assert [(c.name, c.arguments) for c in parser.calls] == [("a", {}), ("b", {"x": 1})]


def test_invalid_json_makes_no_call_and_logs_a_warning():
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        parser = ToolCallParser()
        spoken = feed_all(parser, ["Sure. ", '<tool_call>{"name": "get_opening_hours", "arguments": {day: monday}',
                                   "</tool_call>"])  # fmt: skip
    finally:
        logger.remove(sink)
    assert spoken == "Sure. "
    assert parser.calls == [] and parser.invalid == 1
    assert any("tool call was not understood" in w for w in warnings)
    assert not any("monday" in w for w in warnings)  # what the call said stays out of the warning


def test_a_call_without_its_closing_tag_is_read_at_the_end():
    """A grammar stops the model right after the JSON of a forced call."""
    parser = ToolCallParser()
    parser.feed("<tool_call>\n")
    assert feed_all(parser, ['{"name": "get_opening_hours", "arguments": {"day": "friday"}}']) == ""
    assert [(c.name, c.arguments) for c in parser.calls] == [("get_opening_hours", {"day": "friday"})]


def test_parse_call_reads_llama3_parameters_and_refuses_what_is_not_a_call():
    assert parse_call('{"name": "x", "parameters": {"a": 1}}').arguments == {"a": 1}  # type: ignore[union-attr]
    for body in ('"just text"', '{"arguments": {}}', '{"name": "x", "arguments": [1]}', "{"):
        assert parse_call(body) is None, body


def test_tool_choice_forces_the_answer_to_a_user_message_only():
    user = [{"role": "user", "content": "Open on Monday?"}]
    after_call = user + [{"role": "assistant", "tool_calls": [{"id": "c1"}]}, {"role": "tool", "content": "9-5"}]
    named = {"type": "function", "function": {"name": "book_appointment"}}
    assert tool_plan(OPENAI_TOOLS, "required", user, max_rounds=3).mode == "forced"
    assert tool_plan(OPENAI_TOOLS, "required", user, max_rounds=3).names == ("get_opening_hours", "book_appointment")
    assert tool_plan(OPENAI_TOOLS, named, user, max_rounds=3).names == ("book_appointment",)
    assert tool_plan(OPENAI_TOOLS, "required", after_call, max_rounds=3).mode == "auto"  # or it calls forever
    assert tool_plan(OPENAI_TOOLS, "auto", after_call, max_rounds=1).mode == "none"  # rounds used up
    assert tool_plan(OPENAI_TOOLS, "none", user, max_rounds=3).mode == "none"
    assert tool_plan([], "required", user, max_rounds=3).mode == "none"


def test_a_forced_call_schema_becomes_a_llama_grammar():
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    schema = call_schema(OPENAI_TOOLS, ["get_opening_hours", "book_appointment"])
    gbnf = json_schema_to_gbnf(json.dumps(schema))
    assert '"\\"get_opening_hours\\""' in gbnf and '"\\"book_appointment\\""' in gbnf
    assert '"\\"saturday\\""' in gbnf  # the enum of days constrains the argument


# -- in a Pipecat pipeline (real model) -----------------------------------------------------


class Collector(FrameProcessor):
    """What the LLM service sends downstream, between it and the assistant aggregator."""

    def __init__(self) -> None:
        super().__init__(name="collector")
        self.frames: list[Frame] = []
        self.first_text = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.frames.append(frame)
            if isinstance(frame, LLMTextFrame):
                self.first_text.set()
        await self.push_frame(frame, direction)

    def replies(self) -> list[str]:
        """The text of each response (Start … End)."""
        out: list[str] = []
        for f in self.frames:
            if isinstance(f, LLMFullResponseStartFrame):
                out.append("")
            elif isinstance(f, LLMTextFrame):
                out[-1] += f.text
        return out


@dataclass
class Call:
    context: LLMContext
    llm: LlamaLLMService
    collector: Collector
    worker: PipelineWorker
    turns: asyncio.Queue = field(default_factory=asyncio.Queue)

    async def say(self, text: str) -> None:
        """The caller's turn as a speech-to-text service and a VAD report it."""
        await self.worker.queue_frames([UserStartedSpeakingFrame(), TranscriptionFrame(text, "caller", "now"),
                                        UserStoppedSpeakingFrame()])  # fmt: skip

    async def assistant_turn(self, timeout: float = 60.0) -> str:
        """The next assistant turn the assistant aggregator wrote to the context."""
        return await asyncio.wait_for(self.turns.get(), timeout)


@asynccontextmanager
async def pipecat_call(engine, context: LLMContext, llm: LlamaLLMService) -> AsyncIterator[Call]:
    user, assistant = LLMContextAggregatorPair(
        context, user_params=LLMUserAggregatorParams(user_turn_strategies=ExternalUserTurnStrategies()))
    collector = Collector()
    worker = PipelineWorker(
        Pipeline([user, llm, collector, assistant]), params=PipelineParams(),
        enable_rtvi=False, idle_timeout_secs=None, cancel_on_idle_timeout=False, check_dangling_tasks=False,
    )  # fmt: skip
    call = Call(context, llm, collector, worker)

    @assistant.event_handler("on_assistant_turn_stopped")
    async def _turn_stopped(_aggregator, message):
        await call.turns.put(message.content)

    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False, check_dangling_tasks=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        yield call
    finally:
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(running, 30)


@pytest.fixture(scope="module")
def engine(pool):
    return pool.llm("default")


def service(engine, max_tokens: int = 24, **kwargs: Any) -> LlamaLLMService:
    return LlamaLLMService(
        engine, params=LLMParams(max_tokens=max_tokens, temperature=0.0),
        settings=LlamaLLMService.Settings(
            system_instruction="You are a friendly receptionist at a dental office. Answer in one short sentence."),
        **kwargs,
    )  # fmt: skip


def assistant_messages(context: LLMContext) -> list[dict[str, Any]]:
    return [m for m in context.messages if isinstance(m, dict) and m.get("role") == "assistant"]


@models
async def test_a_reply_streams_between_start_and_end_and_lands_in_the_context(engine):
    context = LLMContext()
    async with pipecat_call(engine, context, service(engine)) as call:
        await call.say("Hello, what are your opening hours?")
        written = await call.assistant_turn()
    kinds = [type(f) for f in call.collector.frames if isinstance(f, (LLMFullResponseStartFrame, LLMTextFrame,
                                                                       LLMFullResponseEndFrame))]  # fmt: skip
    assert kinds[0] is LLMFullResponseStartFrame and kinds[-1] is LLMFullResponseEndFrame
    assert kinds.count(LLMTextFrame) >= 2  # streamed, not one block
    reply = call.collector.replies()[0]
    assert reply.strip() and written == reply.strip()
    assert context.messages[-2] == {"role": "user", "content": "Hello, what are your opening hours?"}
    assert context.messages[-1] == {"role": "assistant", "content": reply.strip()}
    assert call.llm.last_stats is not None and not call.llm.last_stats.cancelled


@models
async def test_the_second_turn_evaluates_only_its_new_tokens(engine):
    context = LLMContext()
    llm = service(engine)
    async with pipecat_call(engine, context, llm) as call:
        # (a question no other test asks: the KV cache may still hold another conversation's prompt)
        await call.say("Good morning, which treatments do you offer for children?")
        await call.assistant_turn()
        first = llm.last_stats
        await call.say("And on Saturday?")
        await call.assistant_turn()
        second = llm.last_stats
    assert first is not None and second is not None and second is not first
    new = second.prompt_tokens - first.prompt_tokens - first.generated_tokens  # the reply's end, the new message
    assert new > 0
    # the reply went back into the prompt as the model's own tokens: only what follows it is evaluated
    # (+1: a reply cut at max_tokens leaves its last token sampled but not yet evaluated)
    assert second.evaluated_prompt_tokens <= new + 1, second
    assert second.evaluated_prompt_tokens < 30 and second.evaluated_prompt_tokens < second.prompt_tokens / 3


@models
async def test_a_forced_tool_call_runs_the_registered_function_and_the_model_answers_with_its_result(engine):
    # (a named function: the pure tests cover "required", a choice among the tools)
    context = LLMContext(tools=ToolsSchema(standard_tools=[HOURS, BOOK]),
                         tool_choice={"type": "function", "function": {"name": "get_opening_hours"}})
    llm = service(engine)
    calls: list[tuple[str, dict[str, Any]]] = []

    async def get_opening_hours(params):
        calls.append((params.function_name, dict(params.arguments)))
        await params.result_callback({"day": params.arguments.get("day"), "hours": "9 am to 1 pm"})

    async def book_appointment(params):
        calls.append((params.function_name, dict(params.arguments)))
        await params.result_callback({"booked": True})

    llm.register_function("get_opening_hours", get_opening_hours)
    llm.register_function("book_appointment", book_appointment)
    async with pipecat_call(engine, context, llm) as call:
        await call.say("Are you open on Saturday?")
        assert await call.assistant_turn() == ""  # the call: nothing spoken
        forced = llm.last_stats
        answer = await call.assistant_turn()  # the answer once the result is in the context
        follow_up = llm.last_stats
    assert len(calls) == 1
    name, arguments = calls[0]
    assert name == "get_opening_hours" and set(arguments) == {"day"} and arguments["day"] in DAYS
    call_msg = next(m for m in context.messages if m.get("tool_calls"))
    assert json.loads(call_msg["tool_calls"][0]["function"]["arguments"]) == arguments
    tool_msg = next(m for m in context.messages if m.get("role") == "tool")
    assert tool_msg["tool_call_id"] == call_msg["tool_calls"][0]["id"]
    assert json.loads(tool_msg["content"]) == {"day": arguments["day"], "hours": "9 am to 1 pm"}
    replies = call.collector.replies()
    assert len(replies) == 2 and replies[0] == "" and replies[1].strip()
    assert answer == replies[1].strip() and context.messages[-1] == {"role": "assistant", "content": answer}
    assert llm.last_plan is not None and llm.last_plan.mode == "auto"  # the answer is not forced again
    # the call went back into the prompt as the model's tokens: the answer evaluates the result, not the call
    assert forced is not None and follow_up is not None
    assert follow_up.evaluated_prompt_tokens < follow_up.prompt_tokens - forced.prompt_tokens


@models
async def test_an_interruption_stops_the_generation(engine):
    context = LLMContext()
    llm = service(engine, max_tokens=400)
    async with pipecat_call(engine, context, llm) as call:
        await call.say("Tell me a very long story about teeth, with many details.")
        await asyncio.wait_for(call.collector.first_text.wait(), 60)
        await call.worker.queue_frame(InterruptionFrame())
        stopped = await call.assistant_turn()  # what was said before the interruption
        deadline = asyncio.get_running_loop().time() + 30
        while llm.last_stats is None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)  # the inference thread lets go of the model
        interrupted = llm.last_stats
        await call.say("Thanks. Are you open today?")  # the conversation goes on
        after = await call.assistant_turn()
    assert llm.generations_cancelled == 1
    assert interrupted is not None and interrupted.cancelled
    assert interrupted.generated_tokens < 400
    assert stopped and context.messages[1] == {"role": "assistant", "content": stopped}
    assert after.strip() and llm.last_stats is not interrupted and not llm.last_stats.cancelled


@models
def test_a_conversation_longer_than_the_window_leaves_its_oldest_turns_out_in_steps(engine):
    llm = service(engine)
    system = {"role": "system", "content": "You are a receptionist."}
    history: list[dict[str, Any]] = []
    for i in range(40):
        history += [{"role": "user", "content": f"Question {i}: " + "what about the opening hours " * 6},
                    {"role": "assistant", "content": f"Answer {i}: " + "we open at nine every weekday " * 6}]
    starts = []
    for turn in range(6):
        messages = [system] + history + [{"role": "user", "content": f"And now {turn}?"}]
        text = render_text(llm._fit(messages, [], 24))
        assert len(engine.tokens_for(llm._fit(messages, [], 24))) <= engine.n_ctx - 24
        assert text.startswith("<|im_start|>system\nYou are a receptionist.<|im_end|>\n<|im_start|>user\nQuestion ")
        assert text.endswith(f"And now {turn}?<|im_end|>\n<|im_start|>assistant\n")
        starts.append(text.split("Question ", 1)[1].split(":", 1)[0])
        history += [{"role": "user", "content": f"And now {turn}?"}, {"role": "assistant", "content": "Fine."}]
    assert starts[0] != "0"  # the oldest turns are out
    assert len(set(starts)) <= 2  # and the prompt's start moves now and then, not at every turn
