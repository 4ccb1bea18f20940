"""The call session: one call's transport, pipeline, transcript and policy seams (see :mod:`voicecore.session`)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from loguru import logger
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import (
    EndFrame,
    InputAudioRawFrame,
    InputDTMFFrame,
    TranscriptionFrame,
)
from pipecat.utils.time import time_now_iso8601
from pipecat.workers.runner import WorkerRunner

from voicecore.agent.calendar import CallerOnFile, caller_on_file
from voicecore.agent.call_tools import ToolAction
from voicecore.agent.facts import FactBook
from voicecore.agent.tool_records import transfer_record
from voicecore.audio.resample import RateFollower
from voicecore.config import PipelineConfig
from voicecore.frames import AgentSayFrame
from voicecore.model_pool import ModelPool
from voicecore.pipeline import CallPipeline, build_call_pipeline
from voicecore.policy import (
    DEFAULT_POLICY,
    Policy,
    consent_answer,
    optout_requested,
    recording_decision,
    redact_tool_arguments,
)
from voicecore.records import TOOL_TURN_KIND, CallRecord, ToolCall, Turn, TurnTimeline
from voicecore.services.conversation import ContextBuilder, Conversation, PolicyContext
from voicecore.services.vad import PIPELINE_SAMPLE_RATE
from voicecore.storage.calls import RecordingNotAllowed
from voicecore.storage.recording import RecordingStream
from voicecore.transports.base import CallRefused, CallTransport
from voicecore.transports.file import TextTransport
from voicecore.transports.transfer import can_transfer, transfer_call

if TYPE_CHECKING:
    from voicecore.storage import Store

__all__ = ["CallRefused", "CallSession", "DEFAULT_TENANT", "system_prompt"]

#: The tenant of calls started without one (``run``, ``demo``, ``chat``): the default policy, nothing stored.
DEFAULT_TENANT = "default"
#: Who the audit log names for what a call itself reads or writes (contact fields, an opt-out).
CALL_ACTOR = "system"
#: What a restricted caller hears before the line closes (nothing of the call is processed or kept).
RESTRICTED_NOTICE = "Sorry, we cannot take calls from this number at the moment. Goodbye."
#: The agent's answer to the recording question (policy ``recording.mode: consent``).
CONSENT_GIVEN_REPLY = "Thank you. This call will be recorded."
CONSENT_REFUSED_REPLY = "Understood. This call will not be recorded."
#: The one recording of a call: 2 channels, caller left, agent right (see :class:`RecordingStream`).
RECORDING_TRACK = "mixed"


#: Receives the finished call record (storage decides what of it is kept).
CallEnded = Callable[[CallRecord], Awaitable[Any] | None]


class CallSession:
    """One call: transport in and out, the pipeline between, the record at the end.

    With a ``policy`` the session also carries out the live part of it: recording
    (``on``, or ``consent`` asked with the policy's announcement and answered by a
    spoken yes/no or the consent digit), opt-out requests, and, with a ``store``,
    the encrypted recording and the do-not-call list. Without a ``context_builder``
    the conversation uses the policy's context builder (``DEFAULT_POLICY`` when no
    policy is given: caller text is always redacted before the model sees it).
    """

    def __init__(
        self,
        config: PipelineConfig,
        pool: ModelPool,
        transport: CallTransport,
        *,
        record: CallRecord | None = None,
        context_builder: ContextBuilder | None = None,
        recorder: RecordingStream | None = None,
        realtime: bool = True,
        on_ended: CallEnded | None = None,
        on_prompt: Callable[[str], None] | None = None,
        greet: bool = True,
        policy: Policy | None = None,
        store: Store | None = None,
        listen: bool = True,
        on_changed: Callable[[], None] | None = None,
    ):
        self.config = config
        self.pool = pool
        self.transport = transport
        self.record = record or CallRecord(pipeline=config.name, transport=transport.name)
        self.record.pipeline = self.record.pipeline or config.name
        self.recorder = recorder
        self.realtime = realtime
        self.policy = policy
        self.store = store
        self._on_ended = on_ended
        self._on_changed = on_changed  # the record changed (a turn finished): the open call is saved
        self._on_prompt = on_prompt
        self._greet = greet
        self._listen = listen  # False: caller audio is dropped unheard (restricted callers)
        self.conversation = Conversation(
            system_prompt=system_prompt(config),
            context=context_builder
            or PolicyContext(policy or DEFAULT_POLICY, history_messages=2 * config.llm.history_turns),
        )
        self._recording = recording_decision(policy) if policy is not None else None
        #: The caller's answer to the recording question: None until answered (or not asked).
        self.consent: bool | None = None
        self._consent_pending = False
        # caller audio to the turn detector and the STT: no block buffering (a barge-in waits on it)
        self._resampler = RateFollower(PIPELINE_SAMPLE_RATE, live=True)
        self._agent_turns: dict[str, Turn] = {}
        self._call: CallPipeline | None = None
        self._runner: WorkerRunner | None = None
        self._run_task: asyncio.Task | None = None
        self._prefill_task: asyncio.Task | None = None
        self._jobs: set[asyncio.Task] = set()  # storage work the end of the call waits for
        self._speech: set[asyncio.Task] = set()  # fixed replies in flight; cancelled at the end
        self._said: dict[str, asyncio.Event] = {}  # reply kind -> a reply of that kind finished
        self._started = asyncio.Event()
        self._ended = False
        self._end_lock = asyncio.Lock()
        self.replies_finished = asyncio.Event()
        #: Set once the call has ended and its record was handed off (also when the session
        #: ended the call itself: an opt-out, a restricted caller). Transports hang up on it.
        self.closed = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def call_id(self) -> str:
        return self.record.call_id

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def pipeline(self) -> CallPipeline:
        if self._call is None:
            raise RuntimeError("call not started")
        return self._call

    async def start(self) -> None:
        """Build and start the pipeline (models load here, in a thread, if not loaded yet), then
        greet (or, first, ask for recording consent)."""
        text_only = isinstance(self.transport, TextTransport)
        if text_only:
            await asyncio.to_thread(self.pool.llm, self.config.models.llm)
        else:
            await asyncio.to_thread(self.pool.for_pipeline, self.config)
        self._call = build_call_pipeline(
            self.config,
            self.pool,
            self.transport,
            self.conversation,
            realtime=self.realtime,
            on_caller_text=self._caller_said,
            on_prompt=self._on_prompt,
            on_reply_started=self._reply_started,
            on_reply_finished=self._reply_finished,
            audio_tap=self._agent_audio_tap,
            on_tool_action=self._tool_action,
            caller=await self._calendar_caller(),
            on_tool_call=self._tool_called,
            name=f"call-{self.call_id[:8]}",
        )

        @self._call.worker.event_handler("on_pipeline_started")
        async def _on_started(_worker, _frame):
            self._started.set()

        self._runner = WorkerRunner(handle_sigint=False, handle_sigterm=False, check_dangling_tasks=False)
        await self._runner.add_workers(self._call.worker)
        self._run_task = asyncio.create_task(self._runner.run(), name=f"call-{self.call_id[:8]}")
        await asyncio.wait_for(self._started.wait(), timeout=30)
        logger.info(f"call {self.call_id[:8]} started ({self.record.transport}, pipeline {self.config.name})")
        greet_now = self._greet and bool(self.config.greeting)
        decision = self._recording
        if decision is not None and self._listen and not text_only:
            self.record.flags["recording"] = "off"  # until a recording actually starts
            if decision.start_immediately:
                await self._start_recording(consent=None)
                if decision.announcement:
                    await self.say(decision.announcement, kind="notice", remember=False)
            elif decision.ask_consent and decision.announcement:
                if self.store is None:
                    logger.warning(f"call {self.call_id[:8]}: no store to record into; recording consent not asked")
                else:
                    self._consent_pending = True
                    self.record.flags["recording"] = "asked"
                    await self.say(decision.announcement, kind="notice", remember=False)
                    greet_now = False  # the greeting follows the caller's answer
        if greet_now:
            await self.say(self.config.greeting, kind="greeting", cacheable=True)
        if self._listen:
            self._prefill_task = asyncio.create_task(self._prefill(self.pool.llm(self.config.models.llm)))

    async def _prefill(self, engine) -> None:
        """Put the system prompt (and greeting) in the KV cache before the caller's first turn."""
        try:
            prompt = engine.prompt_tokens(
                self.conversation.prompt_messages(), self.conversation.generated, generation_header=False
            )
            await engine.prefill(self.conversation.key, prompt)
        except Exception as e:  # only a head start: the first turn evaluates the prompt anyway
            logger.debug(f"call {self.call_id[:8]}: prefill skipped ({e!r})")

    async def say(self, text: str, *, kind: str = "say", cacheable: bool = False, remember: bool = True) -> None:
        """Speak fixed text as an agent turn (greeting, notices). With ``remember`` it enters the
        model's history (a greeting does; a recording notice or consent answer does not)."""
        if remember:
            self.conversation.add_agent(text)
        self._said.setdefault(kind, asyncio.Event()).clear()
        await self.pipeline.worker.queue_frame(AgentSayFrame(text=text, kind=kind, cacheable=cacheable))

    async def _said_done(self, kind: str, timeout: float) -> None:
        """Wait until the last ``say`` of ``kind`` has played (or was cut by a barge-in)."""
        try:
            await asyncio.wait_for(self._said.setdefault(kind, asyncio.Event()).wait(), timeout)
        except asyncio.TimeoutError:
            logger.warning(f"call {self.call_id[:8]}: {kind} did not finish playing within {timeout:.0f} s")

    def _job(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Storage work of the call; ``end`` waits for it before the record is handed off."""
        task = asyncio.get_running_loop().create_task(coro)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    def _speak_soon(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Fixed replies (and the hang-up after them); ``end`` cancels what has not played."""
        task = asyncio.get_running_loop().create_task(coro)
        self._speech.add(task)
        task.add_done_callback(self._speech.discard)

    async def say_and_end(self, text: str, reason: str, *, kind: str = "notice", timeout: float = 30.0) -> None:
        """Speak ``text`` (kept out of the model's history), let it play out, then end the call."""
        if not self._ended:
            await self.say(text, kind=kind, remember=False)
            await self._said_done(kind, timeout)
        await self.end(reason)

    async def end(self, reason: str = "hangup") -> CallRecord:
        """End the call (idempotent): stop the pipeline, close the recording and the record, hand it off."""
        async with self._end_lock:
            if self._ended:
                return self.record
            self._ended = True
            try:
                await self._finish(reason)
            finally:
                self.closed.set()
            return self.record

    async def _finish(self, reason: str) -> None:
        me = asyncio.current_task()
        for task in list(self._speech):
            if task is not me:
                task.cancel()
        if self._call is not None and self._run_task is not None:
            try:
                if reason in ("completed",):
                    await self._call.worker.queue_frame(EndFrame(reason=reason))
                    await asyncio.wait_for(asyncio.shield(self._run_task), timeout=40)
                else:
                    await self._call.worker.cancel(reason=reason)
                    await asyncio.wait_for(asyncio.shield(self._run_task), timeout=10)
            except (asyncio.TimeoutError, Exception) as e:  # the record is closed whatever happens
                logger.warning(f"call {self.call_id[:8]}: pipeline did not stop cleanly ({e!r})")
                self._run_task.cancel()
            self.pool.llm(self.config.models.llm).forget(self.conversation.key)
        if self._prefill_task is not None and not self._prefill_task.done():
            self._prefill_task.cancel()
        # Storage work started during the call (opt-out, opening the recording, a transfer and the
        # audit entries it leaves) completes first.
        waited: set[asyncio.Task] = set()
        jobs = [t for t in self._jobs if t is not me]
        while jobs:
            waited.update(jobs)
            done, pending = await asyncio.wait(jobs, timeout=30)
            for task in pending:
                logger.error(f"call {self.call_id[:8]}: storage work did not finish; cancelled")
                task.cancel()
            jobs = [t for t in self._jobs if t is not me and t not in waited]
        # Replies still open were cut by the hang-up: keep what was said.
        for reply_id, turn in list(self._agent_turns.items()):
            turn.interrupted = True
            self._agent_turns.pop(reply_id, None)
        if self.recorder is not None:
            try:
                await self.recorder.close()
            except Exception as e:
                logger.error(f"call {self.call_id[:8]}: recording not closed cleanly ({type(e).__name__})")
        llm = getattr(self._call, "llm", None) if self._call else None
        if llm is not None and getattr(llm, "fact_answers", None):
            self.record.flags["fact_answers"] = list(llm.fact_answers)  # topics answered from the facts
        if llm is not None and getattr(llm, "bookings", None):
            # What was booked, without the caller's name (flags are metadata, kept in clear).
            self.record.flags["appointments"] = [{k: b[k] for k in ("uid", "start", "end", "service") if k in b}
                                                 for b in llm.bookings]  # fmt: skip
        for flag in ("cancellations", "reschedules"):  # bookings cancelled or moved (at the new time), no name
            if llm is not None and getattr(llm, flag, None):
                self.record.flags[flag] = [{k: b[k] for k in ("uid", "start", "end", "service") if k in b}
                                           for b in getattr(llm, flag)]  # fmt: skip
        if llm is not None and getattr(llm, "tool_failures", None):
            self.record.flags["tool_failures"] = [{"tool": f["tool"], "error": f["error"][:200]} for f in llm.tool_failures]
        if llm is not None and getattr(llm, "messages", None):
            self.record.flags["messages"] = len(llm.messages)  # a count: the text is in the turns (encrypted)
        speculation = getattr(llm, "speculation", None) if llm is not None else None
        if speculation is not None and speculation.started:  # replies started at a pause: used, wasted
            tts = getattr(self._call, "tts", None)
            self.record.flags["speculation"] = {**speculation.as_flag(),
                                                "audio_prepared": getattr(tts, "prepared_clauses", 0),
                                                "audio_spoken": getattr(tts, "prepared_spoken", 0)}  # fmt: skip
        if getattr(llm, "rejoined_turns", 0):  # false ends of turn undone: the caller went on at once
            self.record.flags["turns_rejoined"] = llm.rejoined_turns  # type: ignore[union-attr]
        tts_stage = getattr(self._call, "tts", None)
        shortened, short_first = getattr(llm, "shortened_replies", 0), getattr(tts_stage, "short_first_clauses", 0)
        if shortened or short_first:  # what the load made shorter (replies, first clauses)
            self.record.flags["under_load"] = {"shortened_replies": shortened, "short_first_clauses": short_first}
        if llm is not None and getattr(llm, "facts_blocked", None):
            self.record.flags["facts_blocked"] = list(llm.facts_blocked)  # what the model was not let say
        failures = [f for stage in ("stt", "llm", "tts")
                    for f in getattr(getattr(self._call, stage, None), "backend_failures", None) or []]  # fmt: skip
        if failures:
            self.record.flags["backend_failures"] = list(failures)  # which backend failed, turn by turn
        self.record.ended_at = time.time()
        self.record.end_reason = "transferred" if (self.record.flags.get("transfer") or {}).get("ok") else reason
        logger.info(
            f"call {self.call_id[:8]} ended ({reason}) after {self.record.duration_s:.1f} s, "
            f"{sum(1 for t in self.record.turns if t.role == 'caller')} caller turns"
        )
        if self._on_ended is not None:
            result = self._on_ended(self.record)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                await result

    # -- call tools (take_message, end_call, transfer) -------------------------------------------

    async def _calendar_caller(self) -> CallerOnFile | None:
        """Who the calendar tools know the caller as: the reference of their number under the
        tenant's key (``tools.book_appointment.caller_number``; their number itself too where the
        policy keeps contact data). None without a store, a caller id or a calendar."""
        tool = self.config.tools.book_appointment
        if tool is None or tool.caller_number == "none" or self.store is None or not self.record.caller:
            return None
        store, tenant, number = self.store, self.record.tenant, self.record.caller
        policy = self.policy or DEFAULT_POLICY
        keep = tool.caller_number == "number" and policy.retention.contacts > 0
        try:
            keys = await asyncio.to_thread(lambda: store.tenants.data_keys(store.tenants.row(tenant)))
        except Exception as e:  # the call goes on; the caller's booking is then found by name
            logger.warning(f"call {self.call_id[:8]}: no caller reference for the calendar ({type(e).__name__})")
            return None
        return caller_on_file(number, keys.hash_key, region=policy.phone_region, keep_number=keep)

    def _tool_action(self, action: ToolAction) -> None:
        """What a call tool did: a message taken becomes an event turn of kind ``message`` (its text
        encrypted with the transcript); a goodbye is said and the call ends; a transfer is announced
        and the provider hands the call over."""
        if action.kind == "message":
            # who left it, as the policy keeps names (a policy redacting names keeps "[name]")
            name = redact_tool_arguments(self.policy or DEFAULT_POLICY, {"name": action.name})["name"]
            who = f"Message from {name}: " if name else "Message: "
            self.record.turns.append(Turn(role="event", text=who + action.text, kind="message"))
            self._changed()
        elif action.kind == "end_call":
            self._speak_soon(self.say_and_end(action.text, "completed", kind="goodbye"))
        elif action.kind == "transfer" and action.target:
            self._speak_soon(self._transfer(action.text, action.target))

    def _tool_called(self, call: ToolCall) -> None:
        """One tool call: an event turn of kind ``tool`` (:meth:`ToolCall.to_text`, the caller's part of
        its arguments redacted by the tenant policy; stored encrypted with the transcript), its tool
        and outcome in ``flags["tool_calls"]``, and an audit entry ``tool.called`` (tool, outcome and
        the failing part's error type: no call content)."""
        kept = replace(call, arguments=redact_tool_arguments(self.policy or DEFAULT_POLICY, call.arguments))
        self.record.turns.append(Turn(role="event", text=kept.to_text(), kind=TOOL_TURN_KIND))
        self.record.flags.setdefault("tool_calls", []).append({"tool": call.tool, "outcome": call.outcome})
        self._changed()
        logger.info(f"call {self.call_id[:8]}: tool {call.tool} {call.outcome}")
        if self.store is not None:
            self._job(self._audit_tool_call(call))

    async def _audit_tool_call(self, call: ToolCall) -> None:
        assert self.store is not None
        object_id = f"call:{self.call_id} tool:{call.tool} outcome:{call.outcome}"
        kind = (call.error or "").split(":", 1)[0].strip()
        if not call.ok and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,60}", kind):
            object_id += f" error:{kind}"  # an exception type or a provider's error code
        try:
            await asyncio.to_thread(self.store.audit.append, CALL_ACTOR, self.record.tenant, "tool.called", object_id)
        except Exception as e:
            logger.error(f"call {self.call_id[:8]}: tool call not audited ({type(e).__name__})")

    async def _transfer(self, announcement: str, to: str) -> None:
        tools = self.pipeline.llm.tools
        if not can_transfer(self.record) or self.store is None:
            self.record.flags["transfer"] = {"to": to, "provider": None, "ok": False, "error": "unavailable"}
            self._tool_called(transfer_record(to, None, False, "unavailable: no provider call to hand over"))
            await self.say(tools.transfer_failed(unavailable=True) if tools else announcement, kind="notice")
            return
        await self.say(announcement, kind="transfer")
        await self._said_done("transfer", 30)
        self._job(self._hand_over(to))  # the end of the call waits for the provider's answer

    async def _hand_over(self, to: str) -> None:
        tool = self.config.tools.transfer
        result = await transfer_call(self.store, self.record, to, plivo_xml_url=tool.plivo_xml_url if tool else None)
        error = self.record.flags["transfer"]["error"]
        self._tool_called(transfer_record(to, self.record.transport, result.ok, error))
        if result.ok:
            if not self._ended:  # (the provider may already have ended our media stream)
                self._speak_soon(self.end("transferred"))
            return
        llm = self.pipeline.llm
        llm.tool_failures.append({"tool": "transfer", "error": self.record.flags["transfer"]["error"]})
        if llm.tools is not None and not self._ended:
            await self.say(llm.tools.transfer_failed(), kind="notice")

    # -- recording ---------------------------------------------------------------------------

    async def _start_recording(self, consent: bool | None) -> None:
        """Open the encrypted recording (the store checks the policy once more) and start streaming."""
        if self.store is None or self.policy is None or self.recorder is not None:
            return
        rate = self.transport.output_sample_rate
        try:
            writer = await asyncio.to_thread(
                self.store.calls.open_recording,
                self.record.tenant,
                self.call_id,
                rate,
                channels=2,
                track=RECORDING_TRACK,
                caller=self.record.caller,
                policy=self.policy,
                consent=consent,
            )
        except Exception as e:  # RecordingNotAllowed, a restricted caller, storage trouble
            why = f"{type(e).__name__}: {e}" if isinstance(e, RecordingNotAllowed) else type(e).__name__
            logger.warning(f"call {self.call_id[:8]}: recording not started ({why})")
            self.record.flags["recording"] = "failed"
            return
        if self._ended:  # the call ended while the file was being opened: an empty recording
            await asyncio.to_thread(writer.close)
            return
        self.recorder = RecordingStream(writer, rate)
        self.record.flags["recording"] = "consent_given" if consent else "on"
        logger.info(f"call {self.call_id[:8]}: recording started ({rate} Hz, caller left, agent right)")

    def _resolve_consent(self, given: bool, via: str, *, answer_caller: bool = True) -> None:
        self._consent_pending = False
        self.consent = given
        self.record.flags["recording"] = "consent_given" if given else "consent_refused"
        logger.info(f"call {self.call_id[:8]}: recording consent {'given' if given else 'refused'} ({via})")
        if given:
            self._job(self._start_recording(consent=True))
        if not answer_caller:
            return

        async def answer() -> None:
            await self.say(CONSENT_GIVEN_REPLY if given else CONSENT_REFUSED_REPLY, kind="notice", remember=False)
            if self._greet and self.config.greeting:
                await self.say(self.config.greeting, kind="greeting", cacheable=True)

        self._speak_soon(answer())

    # -- input from the transport -------------------------------------------------------

    async def feed_audio(self, pcm16: bytes, sample_rate: int, channels: int = 1) -> None:
        """Caller audio (int16 LE) at any rate; resampled to 16 kHz mono with state kept across chunks."""
        if self._ended or not pcm16 or not self._listen:
            return
        samples = np.frombuffer(pcm16, dtype=np.int16)
        if channels > 1:
            samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
        if self.recorder is not None:
            self.recorder.caller_audio(samples.tobytes(), sample_rate)
        samples = self._resampler.process(samples, sample_rate)
        if samples.size == 0:
            return
        await self.pipeline.worker.queue_frame(
            InputAudioRawFrame(audio=samples.tobytes(), sample_rate=PIPELINE_SAMPLE_RATE, num_channels=1)
        )

    async def send_text(self, text: str) -> None:
        """A caller turn in text (a text call): it enters the conversation as a final transcript."""
        if self._ended or not text.strip() or not self._listen:
            return
        timeline = TurnTimeline()
        timeline.mark("speech_end")
        timeline.mark("stt_final")
        frame = TranscriptionFrame(text=text.strip(), user_id="caller", timestamp=time_now_iso8601())
        frame.metadata["timeline"] = timeline
        await self.pipeline.worker.queue_frame(frame)

    async def dtmf(self, digit: str) -> None:
        """A keypad digit from the caller: logged into the transcript, mapped by the agent definition
        (or, while the recording question is open, the answer to it)."""
        if self._ended or not self._listen:
            return
        self.record.turns.append(Turn(role="event", text=digit, kind="dtmf"))
        if self._consent_pending and self._recording is not None:
            answer = consent_answer(dtmf=digit, consent_dtmf=self._recording.consent_dtmf)
            self._resolve_consent(answer is True, "keypad")
            return
        action = self.config.dtmf.get(digit)
        if action:
            self.record.flags.setdefault("dtmf_actions", []).append(action)
            logger.info(f"call {self.call_id[:8]}: DTMF action {action!r}")
        try:
            entry = KeypadEntry(digit)
        except ValueError:
            return
        await self.pipeline.worker.queue_frame(InputDTMFFrame(button=entry))

    def mark_played(self, name: str) -> None:
        """The transport acknowledged a mark (the audio before it has played)."""
        if self._call is not None:
            self._call.output.mark_played(name)

    # -- transcript --------------------------------------------------------------------------

    def _caller_said(self, text: str, timeline: TurnTimeline) -> bool:
        """Every final caller transcript; ``False`` when the session answers the turn itself.
        A turn that rejoined the last one (``timeline.rejoined``) is the whole utterance: it takes
        the place of the caller turn it continues."""
        turn = Turn(role="caller", text=text, timeline=timeline)
        last = next((i for i in range(len(self.record.turns) - 1, -1, -1)
                     if self.record.turns[i].role == "caller" and self.record.turns[i].kind is None), None)  # fmt: skip
        if timeline.rejoined and last is not None:
            self.record.turns[last] = turn
        else:
            self.record.turns.append(turn)
        self._changed()
        policy = self.policy
        if policy is None:
            return True
        if optout_requested(policy, text):  # a phrase matcher, not the model, decides
            self._opt_out(text, policy)
            return False
        if self._consent_pending:
            answer = consent_answer(text)
            if answer is None:
                # Not an answer to the question: no consent, and the model answers what was said.
                self._resolve_consent(False, "no clear answer", answer_caller=False)
                return True
            self._resolve_consent(answer, "spoken")
            return False
        return True

    def _opt_out(self, text: str, policy: Policy) -> None:
        """The caller asked not to be called again: do-not-call list, flag, confirmation, hang up."""
        self.record.flags["opt_out"] = True
        logger.info(f"call {self.call_id[:8]}: the caller asked not to be called again")
        if self._consent_pending:
            self._resolve_consent(False, "opt-out", answer_caller=False)
        self.conversation.add_caller(text)
        if self.store is not None and self.record.caller:
            self._job(self._store_optout())
        else:
            logger.warning(
                f"call {self.call_id[:8]}: opt-out not put on a list "
                f"({'no store' if self.store is None else 'no caller number'})"
            )
        self._speak_soon(self.say_and_end(policy.optout.confirmation, "optout", kind="optout"))

    async def _store_optout(self) -> None:
        assert self.store is not None and self.record.caller is not None
        try:
            await asyncio.to_thread(
                self.store.subjects.add_optout, self.record.tenant, self.record.caller, source="call",
                call_id=self.call_id, actor=CALL_ACTOR,
            )  # fmt: skip
        except Exception as e:
            logger.error(f"call {self.call_id[:8]}: opt-out could not be stored ({type(e).__name__})")

    def _reply_started(self, reply_id: str, kind: str, timeline: TurnTimeline | None) -> None:
        turn = Turn(role="agent", text="", timeline=timeline, kind=kind)
        self._agent_turns[reply_id] = turn
        self.record.turns.append(turn)
        self.replies_finished.clear()

    def _reply_finished(self, reply_id: str, kind: str, generated: str, heard: str, interrupted: bool) -> None:
        turn = self._agent_turns.pop(reply_id, None)
        if turn is None:
            return
        turn.text = heard
        turn.generated_text = generated
        turn.interrupted = interrupted
        if interrupted:
            if kind == "reply":
                self.conversation.agent_heard(reply_id, heard)
            else:  # fixed text: the greeting keeps what was heard, notices stay out of the history
                self.conversation.said_heard(generated, heard)
            logger.debug(f"call {self.call_id[:8]}: reply {reply_id} cut by barge-in")
        done = self._said.get(kind)
        if done is not None:
            done.set()
        if not self._agent_turns:
            self.replies_finished.set()
        self._changed()

    def _changed(self) -> None:
        if self._on_changed is not None and not self._ended:
            self._on_changed()

    def _agent_audio_tap(self, pcm16: bytes) -> None:
        if self.recorder is not None:
            self.recorder.agent_audio(pcm16, self.transport.output_sample_rate)

    # -- state -------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """The agent is transcribing, thinking or speaking for some turn."""
        if self._call is None:
            return False
        return bool(
            self._call.busy
            or self._agent_turns
            or self._jobs  # a caller turn's storage work (opening the recording, an opt-out)
            or self._speech  # fixed replies the session is about to speak
        )

    @property
    def caller_in_turn(self) -> bool:
        """The caller is in the middle of a turn (speaking, or pausing within it)."""
        return self._call is not None and self._call.vad is not None and self._call.vad.in_turn

    async def wait_until_idle(self, timeout: float = 60.0, settle: float = 0.3) -> bool:
        """Wait until no turn is in progress anywhere in the pipeline (for scripted callers)."""
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            if self.busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= settle:
                return True
            await asyncio.sleep(0.02)
        return False


# -- starting a call under a tenant policy ------------------------------------------------------


def system_prompt(config: PipelineConfig) -> str:
    """The pipeline's system prompt, with its facts in plain sentences after it."""
    if config.facts is None:
        return config.system_prompt
    facts = FactBook(config.facts).prompt_text()
    return f"{config.system_prompt}\n{facts}" if facts else config.system_prompt
