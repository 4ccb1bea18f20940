"""The LLM: llama-cpp-python in process, streaming, with the conversation prefix kept in the KV cache.

``LlamaEngine`` loads one GGUF model per process and runs every call's
generations on one inference thread. A conversation's prompt is built as token
lists (ChatML), and the tokens the model generated for an agent reply are kept
as they were, so the next turn's prompt starts with exactly the tokens already
in the KV cache and only the new ones are evaluated. When calls take turns on
the shared model, the KV state of the call that used it last is saved and the
next call's state is restored.

``LlamaLLMProcessor`` is the Pipecat shell: a final ``TranscriptionFrame`` in,
``LLMFullResponseStartFrame``, ``LLMTextFrame``\\ s and ``LLMFullResponseEndFrame``
out, over one call's :class:`~voicecore.services.conversation.Conversation`.
Everything that reaches the model passes through the policy's context builder.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import threading
from collections.abc import Callable

from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voicecore.agent.appointment_changes import (
    TOOL_NAMES,
    ChangeDialogue,
    change_intent,
)
from voicecore.agent.booking import FINISHED, BookingDialogue, wants_booking
from voicecore.agent.call_tools import CallTools, ToolAction, ToolReply
from voicecore.agent.facts import FactBook, FactGuard
from voicecore.agent.tool_records import (
    appointment_change,
    booking_call,
    calendar_unavailable,
    end_call_call,
    message_call,
)
from voicecore.config import LLMParams, Tools
from voicecore.frames import SpeculativeClauseFrame, SpeculativeTranscriptFrame
from voicecore.records import ToolCall, TurnTimeline
from voicecore.services.conversation import Conversation
from voicecore.services.llama_engine import (
    CLAUSE_ENDS,
    IM_END,
    IM_START,
    Generation,
    GenerationStats,
    LlamaEngine,
)
from voicecore.services.speculation import (
    HeldReply,
    SpeculationStats,
    first_clause_done,
)

__all__ = ["CLAUSE_ENDS", "IM_END", "IM_START", "Generation", "GenerationStats", "LlamaEngine", "LlamaLLMProcessor"]


class LlamaLLMProcessor(FrameProcessor):
    """Pipecat processor: final transcripts in, a streamed agent reply out."""

    def __init__(
        self,
        engine: LlamaEngine,
        conversation: Conversation,
        params: LLMParams,
        *,
        fallback_reply: str,
        on_caller_text: Callable[[str, TurnTimeline], bool | None] | None = None,
        on_prompt: Callable[[str], None] | None = None,
        facts: FactBook | None = None,
        booking: Callable[[], BookingDialogue] | None = None,
        tools: CallTools | None = None,
        on_tool_action: Callable[[ToolAction], None] | None = None,
        on_tool_call: Callable[[ToolCall], None] | None = None,
        name: str | None = None,
        changes: Callable[[], ChangeDialogue] | None = None,
        speculate: bool = False,
    ):
        """``on_caller_text`` sees every final caller transcript first; returning ``False``
        means the session handles that turn itself and the model does not answer it.
        ``facts``: questions about them are answered from the data (the model is not asked),
        and a generated clause stating a fact they do not back is not spoken (:class:`FactGuard`).
        ``booking``: makes the call's :class:`BookingDialogue` (the ``book_appointment`` tool);
        once the caller asks to book, the dialogue answers the turns (the model is not asked)
        until the appointment is booked, the caller gives up or the calendar fails.
        ``tools``: the ``take_message``/``transfer``/``end_call`` tools, asked first each turn; an
        action (a message taken, a transfer, a goodbye) goes to ``on_tool_action`` (the session
        speaks a goodbye or an announcement itself and hangs up or hands the call over).
        ``changes``: makes the call's :class:`ChangeDialogue` (``cancel_appointment``/
        ``reschedule_appointment``, with ``booking``): once the caller asks to cancel or move their
        booking, it answers the turns until the booking is cancelled, moved or kept.
        ``on_tool_call``: every tool call made (:meth:`_tool_called`), to be recorded.
        ``speculate``: start the reply at a pause, held back until the turn ends with the same
        words (:mod:`voicecore.services.speculation`)."""
        super().__init__(name=name or "LlamaLLM")
        self._engine = engine
        self._conversation = conversation
        self._params = params
        self._fallback = fallback_reply
        self._on_caller_text = on_caller_text
        self._on_prompt = on_prompt
        self._task: asyncio.Task | None = None
        self._cancel = threading.Event()
        self._reply_ids = itertools.count(1)
        self._caller_speaking = False
        self.last_stats: GenerationStats | None = None
        self.stats: list[GenerationStats] = []
        self.generations_cancelled = 0
        self.backend_failures: list[dict[str, str]] = []  # {"kind", "backend", "error"} per failed turn
        self._facts = facts
        self._unanswered = ""  # the caller's words since the agent last answered (unredacted, not logged)
        self.fact_answers: list[str] = []  # topics answered from the facts, turn by turn
        self.facts_blocked: list[str] = []  # facts the model stated that the facts do not back
        self._new_booking = booking
        self._booking: BookingDialogue | None = None
        self.bookings: list[dict[str, str]] = []  # appointments booked in this call (Appointment.as_dict)
        self.tool_failures: list[dict[str, str]] = []  # {"tool", "error"}: a tool that failed, and why
        self._new_change = changes
        self._change: ChangeDialogue | None = None
        self.cancellations: list[dict[str, str]] = []  # bookings cancelled in this call (Appointment.as_dict)
        self.reschedules: list[dict[str, str]] = []  # bookings moved in this call, at their new time
        self.tools = tools if tools is not None and tools.declared else None
        self._on_tool_action = on_tool_action
        self.messages: list[dict[str, str]] = []  # {"name", "text"}: messages taken (never logged)
        self.tool_calls: list[ToolCall] = []  # every tool call of this call, in order (arguments not redacted)
        self._on_tool_call = on_tool_call
        self._speculate = speculate
        self._held: HeldReply | None = None  # a reply started at a pause, not yet released
        self._pause_id: int | None = None  # the caller's current pause (None: speaking or no turn)
        self.speculation = SpeculationStats()
        self.shortened_replies = 0  # replies given fewer tokens because other calls loaded the model
        # Rejoined turns (the turn detector undid a false end of turn): the utterance's words are
        # in the conversation, and nothing was done on them that cannot be taken back
        self._acted = False  # since the utterance began: a tool action, a dialogue, the session answered
        self._tools_before: CallTools | None = None  # the call tools' state before the utterance was answered
        self._utterance_said = False  # a part of the utterance entered the conversation
        self._rejoining = False  # the caller's current turn continues the last one
        self.rejoined_turns = 0

    @property
    def may_rejoin(self) -> bool:
        """A new caller turn may still continue the last one: nothing was done on the utterance so far
        that cannot be taken back (a reply from the model, the facts or the call tools' questions can
        be; a booking step, a message taken, a transfer, a consent answer cannot)."""
        return not self._acted

    @property
    def conversation(self) -> Conversation:
        return self._conversation

    @property
    def busy(self) -> bool:
        """A reply is being generated."""
        return self._task is not None and not self._task.done()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, SpeculativeTranscriptFrame):
            await self._start_held_reply(frame)
            return  # nothing downstream needs it
        if isinstance(frame, VADUserStoppedSpeakingFrame):
            self._pause_id = frame.metadata.get("pause_id")
        elif isinstance(frame, (VADUserStartedSpeakingFrame, UserStartedSpeakingFrame)):
            self._pause_id = None
            self._drop_held()  # the caller went on: the reply to the pause's words is not wanted
        if isinstance(frame, UserStartedSpeakingFrame):
            self._rejoining = bool(frame.metadata.get("rejoins")) and not self._acted
            if not self._rejoining:  # a new utterance
                self._acted = self._utterance_said = False
                self._tools_before = None
        if isinstance(frame, TranscriptionFrame) and direction == FrameDirection.DOWNSTREAM and not frame.text.strip():
            # A turn with no words (noise, a cough). If an earlier caller message is still
            # unanswered because the caller went on speaking, answer it now.
            msgs = self._conversation.messages
            if msgs and msgs[-1].role == "user" and not self._caller_speaking and self._task is None:
                timeline = frame.metadata.get("timeline") or TurnTimeline()
                self._cancel = threading.Event()
                self._task = self.create_task(self._respond(timeline, self._cancel))
            return
        if isinstance(frame, TranscriptionFrame) and direction == FrameDirection.DOWNSTREAM:
            timeline = frame.metadata.get("timeline") or TurnTimeline()
            # the whole utterance, both parts transcribed as one: it takes the last part's place
            if timeline.rejoined:  # (a late transcript of the part before leaves the flag be)
                timeline.rejoined = self._rejoining and self._utterance_said and not self._acted
                self._rejoining = False
            rejoin = timeline.rejoined
            if self._on_caller_text is not None and self._on_caller_text(frame.text, timeline) is False:
                # The session answered this turn itself (a consent answer, an opt-out): no reply here.
                self._acted = True
                self._drop_held()
                await self._stop_generation()
                return
            if rejoin and self._conversation.rejoin_caller(frame.text):
                self.rejoined_turns += 1
                self._unanswered = frame.text
                if self._tools_before is not None:  # an offer made, a message dialogue's step: taken back
                    self.tools = copy.deepcopy(self._tools_before)
            else:
                self._conversation.add_caller(frame.text)
                # what the caller said as heard (the history holds it redacted): the fact answers read it
                self._unanswered = f"{self._unanswered} {frame.text}".strip()
            self._utterance_said = True
            await self._stop_generation()
            if self._caller_speaking:
                # The caller already went on speaking: answer once their new turn ends
                # (the two parts become one message).
                return
            self._cancel = threading.Event()
            self._task = self.create_task(self._respond(timeline, self._cancel))
            return
        if isinstance(frame, UserStartedSpeakingFrame):
            self._caller_speaking = True
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._caller_speaking = False
        if isinstance(frame, (InterruptionFrame, EndFrame, CancelFrame)):
            self._drop_held()
            await self._stop_generation()
        await self.push_frame(frame, direction)

    # -- speculative replies (voicecore.services.speculation) -----------------------------------

    def _drop_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self.speculation.waste(held)

    def _take_held(self) -> HeldReply | None:
        held, self._held = self._held, None
        return held

    def _dialogue_turn(self, said: str) -> bool:
        """``said`` goes to the booking or appointment dialogue (which reads and writes the calendar)."""
        if (self._booking is not None and self._booking.state not in FINISHED) \
                or (self._change is not None and not self._change.finished):  # fmt: skip
            return True
        if self._new_booking is not None and wants_booking(said):
            return True
        services = self._facts.facts.services if self._facts is not None else []
        return self._new_change is not None and change_intent(said, services, own=False) is not None

    def _reply_from_data(self, said: str) -> str | None:
        """What :meth:`_respond` would answer ``said`` with from the data, without changing anything:
        the text of a facts or call-tools reply, "" when the model would answer, None when the turn
        is not for speculation (a booking or appointment dialogue, which reads and writes the
        calendar; a tool action such as a goodbye or a transfer)."""
        if self._dialogue_turn(said):
            return None
        if self.tools is not None and self.tools.busy:
            return None
        answer = self._facts.answer(said) if self._facts is not None else None
        if self.tools is not None:
            twin = copy.deepcopy(self.tools)  # the tools' state (an offer made) is only read here
            reply = twin.handle(said)
            if reply is not None:
                return reply.text  # None: an action the session carries out
            if answer is not None and answer.topic == "unknown":
                return twin.offer(answer.text)
        return answer.text if answer is not None else ""

    def _model_busy(self) -> bool:
        """Other calls' replies are waiting for or running on the model: no speculation now."""
        return getattr(self._engine, "live_turns", 0) > 0

    async def _start_held_reply(self, frame: SpeculativeTranscriptFrame) -> None:
        """The caller paused: start the reply to what they said so far, held back (not pushed)."""
        if not self._speculate or frame.pause_id != self._pause_id or not self._caller_speaking or self.busy:
            return
        self._drop_held()
        rejoin = self._rejoining and self._utterance_said  # the whole utterance: it replaces the last part
        said = frame.text.strip() if rejoin else f"{self._unanswered} {frame.text}".strip()
        text = self._reply_from_data(said)
        if text is None:
            return
        if text:
            self._held = HeldReply(frame.pause_id, said, text=text)
            self.speculation.started += 1
            await self.push_frame(SpeculativeClauseFrame(text=text))
            return
        if getattr(self._engine, "remote", False):
            return  # a remote model's tokens are not ours to continue from
        if self._model_busy():
            self.speculation.skipped_busy += 1
            return
        twin = self._conversation.with_caller(frame.text, rejoin=rejoin)
        prompt = self._engine.prompt_tokens(twin.prompt_messages(), twin.generated)
        held = HeldReply(frame.pause_id, said, prompt=prompt,
                         max_tokens=min(self._params.max_tokens, HeldReply.max_tokens))  # fmt: skip
        self._held = held
        self.speculation.started += 1
        held.task = self.create_task(self._generate_held(held))

    async def _generate_held(self, held: HeldReply) -> Generation:
        """A held reply's first clause (it stops there, or at its token limit)."""
        pieces: list[str] = []

        def on_text(piece: str) -> None:  # on the engine's thread
            pieces.append(piece)
            if first_clause_done("".join(pieces)):
                held.cancel.set()

        assert held.prompt is not None
        params = self._params.model_copy(update={"max_tokens": held.max_tokens})
        result = await self._engine.generate(self._conversation.key, held.prompt, params, held.cancel, on_text,
                                             yield_after=1)  # fmt: skip
        if held is self._held and result.text.strip():
            await self.push_frame(SpeculativeClauseFrame(text=result.text))  # the TTS prepares its audio
        return result

    async def _stop_generation(self) -> None:
        self._cancel.set()
        task, self._task = self._task, None
        if task is not None and not task.done():
            self.generations_cancelled += 1
            await self.cancel_task(task)

    # A reply yields the model to another call's waiting turn at a clause end once this many
    # tokens are out (its first clause is then in the TTS), and continues after it.
    YIELD_AFTER_TOKENS = 6

    # When at least this many replies (of other calls) are on the model, a reply may use only
    # LOADED_TOKENS_SHARE of max_tokens: shorter replies when the machine is loaded.
    LOADED_LIVE_TURNS = 2
    LOADED_TOKENS_SHARE = 2 / 3

    def _turn_params(self) -> LLMParams:
        """This turn's generation parameters: ``max_tokens`` cut when other calls load the model."""
        if getattr(self._engine, "live_turns", 0) >= self.LOADED_LIVE_TURNS:
            self.shortened_replies += 1
            limit = max(16, int(self._params.max_tokens * self.LOADED_TOKENS_SHARE))
            return self._params.model_copy(update={"max_tokens": min(self._params.max_tokens, limit)})
        return self._params

    async def _generate_reply(
        self, prompt: list[int], cancel: threading.Event, on_text: Callable[[str], None],
        held: HeldReply | None = None, params: LLMParams | None = None,
    ) -> Generation:
        """The whole reply, in one generation or — when other calls' turns are waiting —
        in several, each continuing from the tokens the previous one produced. A ``held`` reply
        (started at the pause, same prompt) gives its first tokens: they go out at once and
        generation continues after them."""
        key = self._conversation.key
        turn = params or self._params
        result = None
        if held is not None and held.task is not None:
            try:
                result = await held.task
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a failed held reply: generate the turn as usual
                logger.debug(f"{self}: the held reply failed ({type(e).__name__}); generating anew")
                result = None
            if result is not None:
                if result.text:
                    on_text(result.text)
                result.stats.yielded = not HeldReply.complete(result, held.max_tokens)  # continue below
        if result is None:
            result = await self._engine.generate(key, prompt, turn, cancel, on_text,
                                                 yield_after=self.YIELD_AFTER_TOKENS)
        tokens, texts, stats = list(result.tokens), [result.text], result.stats
        while result.stats.yielded and not cancel.is_set() and len(tokens) < turn.max_tokens:
            rest = turn.model_copy(update={"max_tokens": turn.max_tokens - len(tokens)})
            result = await self._engine.generate(key, prompt + tokens, rest, cancel, on_text, said=tokens,
                                                 yield_after=self.YIELD_AFTER_TOKENS)
            tokens += result.tokens
            texts.append(result.text)
            stats.yields += 1
            stats.cancelled = result.stats.cancelled
            stats.paused_s += result.stats.paused_s
            stats.total_s += result.stats.total_s
        if tokens:  # (a remote model reports its count in the stats and no token ids)
            stats.generated_tokens = len(tokens)
        return Generation(text="".join(texts), tokens=tokens, stats=stats)

    def _tool_called(self, call: ToolCall) -> None:
        """One tool call, made: kept, and handed to ``on_tool_call`` (the session records it as a turn
        and in the audit log). Every tool path calls this once per call it makes."""
        self.tool_calls.append(call)
        if self._on_tool_call is not None:
            try:
                self._on_tool_call(call)
            except Exception as e:  # recording never costs the caller the reply
                logger.error(f"{self}: tool call {call.tool} not recorded ({type(e).__name__})")

    def _after_tool_failure(self, apology: str) -> str:
        """What the caller hears after a tool failed: ``apology`` and a message offered (a yes next
        turn takes it, even when the pipeline declares no call tools)."""
        if self.tools is None:
            self.tools = CallTools(Tools())
        return self.tools.after_failure(apology)

    async def _booking_turn(self, said: str, answer: object) -> str | None:
        """The booking dialogue's reply to this turn, or None when the turn is not about booking.
        A question the facts answer, asked mid-booking, is answered and the pending question
        asked again. The dialogue reads and writes the calendar: it runs in a thread."""
        change = await self._change_turn(said, answer) if self._new_change is not None else None
        if change is not None:
            return change
        dialogue = self._booking
        if dialogue is None or dialogue.state in FINISHED:
            if not wants_booking(said):
                return None
            assert self._new_booking is not None
            try:
                dialogue = self._booking = await asyncio.to_thread(self._new_booking)
            except Exception as e:  # the calendar cannot even be opened (a missing password, ...)
                self.tool_failures.append({"tool": "book_appointment", "error": f"{type(e).__name__}: {e}"})
                logger.warning(f"{self}: book_appointment unavailable: {type(e).__name__}: {e}")
                self._tool_called(calendar_unavailable(f"{type(e).__name__}: {e}"))
                return self._after_tool_failure("I'm sorry, I can't book appointments right now. I can take a "
                                                "message and we'll call you back to book.")  # fmt: skip
        fact_text = getattr(answer, "text", None)
        if fact_text and getattr(answer, "topic", "") != "unknown" and self._facts is not None \
                and self._facts.is_question(said):  # fmt: skip
            return f"{fact_text} {dialogue.question()}"
        reply = await asyncio.to_thread(dialogue.handle, said)
        if reply.appointment is not None and reply.state == "booked":
            self.bookings.append(reply.appointment.as_dict())
            self._tool_called(booking_call(dialogue, reply))
        if reply.error:
            self.tool_failures.append({"tool": "book_appointment", "error": reply.error})
            self._tool_called(booking_call(dialogue, reply))
            return self._after_tool_failure(reply.text)
        return reply.text

    async def _change_turn(self, said: str, answer: object) -> str | None:
        """The cancel/reschedule dialogue's reply to this turn, or None when the turn is not about
        changing a booking (a booking being taken goes on unless the caller names their own)."""
        dialogue = self._change
        if dialogue is None or dialogue.finished:
            services = self._facts.facts.services if self._facts is not None else []
            booking = self._booking is not None and self._booking.state not in FINISHED
            kind = change_intent(said, services, own=booking)
            if kind is None:
                return None
            assert self._new_change is not None
            try:
                dialogue = self._change = await asyncio.to_thread(self._new_change)
            except Exception as e:  # the calendar cannot even be opened (a missing password, ...)
                self.tool_failures.append({"tool": TOOL_NAMES[kind], "error": f"{type(e).__name__}: {e}"})
                self._tool_called(calendar_unavailable(f"{type(e).__name__}: {e}", TOOL_NAMES[kind]))
                logger.warning(f"{self}: {TOOL_NAMES[kind]} unavailable: {type(e).__name__}")
                if self.tools is None or self.tools.tools.take_message is None:
                    return "I'm sorry, I can't change appointments right now. Please try again later."
                self.tools.offered = "message"
                return ("I'm sorry, I can't change appointments right now. I can take a message and we'll call you "
                        "back. Would you like to leave one?")  # fmt: skip
            self._booking = None  # the booking being taken, if any, is left for this
        elif change_intent(said) is None and getattr(answer, "text", None) and self._facts is not None \
                and getattr(answer, "topic", "") != "unknown" and self._facts.is_question(said):  # fmt: skip
            return f"{answer.text} {dialogue.question()}"  # type: ignore[attr-defined]
        before = dialogue.target  # the booking being changed, where it was
        reply = await asyncio.to_thread(dialogue.handle, said)
        if reply.appointment is not None and reply.state in ("cancelled", "moved"):
            (self.cancellations if reply.state == "cancelled" else self.reschedules).append(reply.appointment.as_dict())
            self._tool_called(appointment_change(reply.tool, reply.appointment,
                                                 previous=before if reply.state == "moved" else None))  # fmt: skip
        if reply.error:
            self.tool_failures.append({"tool": reply.tool, "error": reply.error})
            self._tool_called(appointment_change(reply.tool, None, error=reply.error))
        if reply.offers_message and self.tools is not None and self.tools.tools.take_message is not None:
            self.tools.offered = "message"  # "yes" takes a message
        return reply.text or None  # "" : the turn asks for a new booking instead

    def _tool_turn(self, said: str) -> ToolReply | None:
        """The call tools' reply to this turn (None: not theirs). A reply without text is spoken by
        the session (``on_tool_action``: a goodbye, a transfer announcement)."""
        assert self.tools is not None
        reply = self.tools.handle(said)
        action = reply.action if reply is not None else None
        if action is not None:
            if action.kind == "message":
                self.messages.append({"name": action.name or "", "text": action.text})
                for_whom = self.tools.tools.take_message.for_whom if self.tools.tools.take_message else None
                self._tool_called(message_call(action, for_whom))
            elif action.kind == "end_call":
                self._tool_called(end_call_call(action))
            if self._on_tool_action is not None:
                self._on_tool_action(action)
            elif reply is not None and reply.text is None:
                return ToolReply(action.text)  # nobody to hang up or transfer: just say it
        return reply

    async def _respond(self, timeline: TurnTimeline, cancel: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        def on_text(piece: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, piece)

        self.last_stats = None
        reply_id = f"r{next(self._reply_ids)}"
        start = LLMFullResponseStartFrame()
        start.metadata["timeline"] = timeline
        start.metadata["reply_id"] = reply_id
        said, self._unanswered = self._unanswered, ""
        held = self._take_held()  # a reply started at the pause: released if it answers these words
        if said and self._dialogue_turn(said):
            self._acted = True  # a booking step is not taken back by a rejoin (set before the calendar is read)
        if self.tools is not None and self._tools_before is None:
            self._tools_before = copy.deepcopy(self.tools)  # a rejoin of this utterance restores it
        answer = self._facts.answer(said) if self._facts is not None and said else None
        tool = self._tool_turn(said) if said and self.tools is not None else None
        if tool is not None and tool.action is not None:
            self._acted = True  # a message taken, a transfer, a goodbye
        if tool is not None and tool.text is None:
            if held is not None:
                self.speculation.waste(held)
            return  # the session says the goodbye or the announcement
        booking_reply = tool.text if tool is not None else (
            await self._booking_turn(said, answer) if said and self._new_booking is not None else None)
        if tool is None and booking_reply is not None:
            self._acted = True  # the booking or appointment dialogue moved on
        if booking_reply is None and self.tools is not None and getattr(answer, "topic", None) == "unknown":
            booking_reply = self.tools.offer(answer.text)  # type: ignore[union-attr]  # a message or a person
        if booking_reply is not None or answer is not None:
            # the booking dialogue's turn, or a question about the facts: answered from the data,
            # the model is not asked
            text = booking_reply if booking_reply is not None else answer.text  # type: ignore[union-attr]
            if held is not None:  # the same words: the TTS has its first clause's audio ready
                if held.text == text and held.said == said:
                    self.speculation.used += 1
                    timeline.speculative = True
                else:
                    self.speculation.waste(held)
            await self.push_frame(start)
            timeline.mark("llm_first_token")
            text_frame = LLMTextFrame(text=text)
            text_frame.metadata["timeline"] = timeline
            await self.push_frame(text_frame)
            self._conversation.add_agent(text, reply_id=reply_id)
            if answer is not None:
                self.fact_answers.append(answer.topic)
            end = LLMFullResponseEndFrame()
            end.metadata["timeline"] = timeline
            end.metadata["reply_id"] = reply_id
            end.metadata["truncated"] = False
            await self.push_frame(end)
            return
        messages = self._conversation.prompt_messages()
        if self._on_prompt is not None:
            render = getattr(self._engine, "prompt_text", None)  # the model's own chat format (a remote one: ChatML)
            self._on_prompt(render(messages) if render is not None else LlamaEngine.render(messages))
        prompt = self._engine.prompt_tokens(messages, self._conversation.generated)
        if held is not None:
            if held.prompt == prompt and held.task is not None:
                self.speculation.used += 1
                timeline.speculative = True
            else:
                self.speculation.waste(held)
                held = None
        guard = FactGuard(self._facts) if self._facts is not None else None
        spoken: list[str] = []
        await self.push_frame(start)
        turn_params = self._turn_params()
        job = asyncio.ensure_future(self._generate_reply(prompt, cancel, on_text, held, turn_params))
        job.add_done_callback(lambda _f: loop.call_soon_threadsafe(queue.put_nowait, None))
        try:
            while True:
                piece = await queue.get()
                if piece is None:
                    break
                timeline.mark("llm_first_token")
                if guard is not None:  # whole clauses, checked against the facts
                    piece = guard.feed(piece)
                    if guard.stopped:
                        cancel.set()  # the rest of this reply is not spoken: stop generating it
                    if not piece:
                        continue
                spoken.append(piece)
                text_frame = LLMTextFrame(text=piece)
                text_frame.metadata["timeline"] = timeline
                await self.push_frame(text_frame)
            if guard is not None:
                tail = guard.flush()
                if tail:
                    spoken.append(tail)
                    text_frame = LLMTextFrame(text=tail)
                    text_frame.metadata["timeline"] = timeline
                    await self.push_frame(text_frame)
                if guard.blocked:
                    self.facts_blocked += guard.blocked
                    logger.debug(f"{self}: a clause was not spoken: {'; '.join(guard.blocked)}")
            result = job.result()
            self.last_stats = result.stats
            self.stats.append(result.stats)
            logger.debug(
                f"{self}: {result.stats.generated_tokens} tokens, prompt {result.stats.prompt_tokens} "
                f"(evaluated {result.stats.evaluated_prompt_tokens}), first token "
                f"{(result.stats.first_token_s or 0) * 1000:.0f} ms"
            )
            reply = ("".join(spoken) if guard is not None else result.text).strip()
            if not reply:
                reply = self._fallback
                await self.push_frame(LLMTextFrame(text=reply))
                self._conversation.add_agent(reply, reply_id=reply_id)
            elif guard is not None and guard.blocked:
                self._conversation.add_agent(reply, reply_id=reply_id)  # what was said, not what was generated
            else:
                self._conversation.add_agent(reply, result.tokens or None, reply_id=reply_id)
        except asyncio.CancelledError:
            cancel.set()
            raise
        except Exception as e:
            # which backend failed goes to the call record (never the prompt or the reply)
            failure = {"kind": getattr(e, "kind", "llm"), "backend": getattr(e, "endpoint", "in-process"),
                       "error": getattr(e, "what", type(e).__name__)}  # fmt: skip
            self.backend_failures.append(failure)
            logger.error(f"{self}: generation failed ({failure['backend']}: {failure['error']}); "
                         "speaking the fallback reply")  # fmt: skip
            timeline.mark("llm_first_token")
            await self.push_frame(LLMTextFrame(text=self._fallback))
            self._conversation.add_agent(self._fallback, reply_id=reply_id)
        end = LLMFullResponseEndFrame()
        end.metadata["timeline"] = timeline
        end.metadata["reply_id"] = reply_id
        # Cut at max_tokens: the unfinished last clause is not spoken.
        end.metadata["truncated"] = bool(self.last_stats and self.last_stats.generated_tokens >= turn_params.max_tokens)
        await self.push_frame(end)
