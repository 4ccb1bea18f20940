"""A false end of turn undone (issue 15): caller speech that starts again soon after the turn ended,
before the agent's answer was heard out, continues that turn. Both parts are transcribed as one
utterance, answered as one message, and kept as one caller turn in the call record.

The unit tests drive the turn detector's rule on synthetic audio; the call tests play spoken audio
through the real models, with the turn made to end inside the utterance's pause (smart-turn and
the transcript cue off, 300 ms of silence ends a turn; the pause is 250 ms and espeak-ng's own
silence at the end and the start of its audio, about 400 ms in all: about 650 ms of silence)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pipecat.audio.vad.vad_analyzer import VADState
from pipecat.frames.frames import (
    LLMTextFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.tests.utils import SleepFrame, run_test

from voicecore.agent.call_tools import CallTools
from voicecore.agent.facts import FactBook
from voicecore.config import LLMParams, TurnTaking, load_pipeline
from voicecore.records import TurnTimeline
from voicecore.services.conversation import (
    ChatMessage,
    Conversation,
    PassThroughContext,
)
from voicecore.services.llm import LlamaLLMProcessor
from voicecore.services.vad import TurnDetector, TurnEvent
from voicecore.session import CallSession
from voicecore.transports.file import (
    Audio,
    FileTransport,
    stream_audio,
    stream_silence_until_idle,
)

RATE = 16000
FRAME = RATE * 20 // 1000


class ScriptedVAD:
    """A speech detector that hears speech in any frame louder than zero (the rule under test is
    the turn detector's, not the detector's)."""

    tells_speech_from_noise = True

    def __init__(self) -> None:
        self.barge_in_floor: float | None = None
        self.onset_samples = 0
        self.last_voiced_frame = 0
        self.voiced_end = 0
        self._samples = 0
        self._run = 0  # consecutive voiced (positive) or quiet (negative) frames
        self._speaking = False

    def samples_for(self, ms: float) -> int:
        return int(ms * RATE / 1000)

    def start_speaking(self) -> VADState:
        self._speaking = True
        return VADState.SPEAKING

    def analyze(self, audio: bytes) -> VADState:
        pcm = np.frombuffer(audio, dtype=np.int16)
        self._samples += pcm.size
        voiced = bool(np.abs(pcm).max(initial=0) > 0)
        if voiced:
            self.last_voiced_frame += 1
            self.voiced_end = self._samples
            self._run = max(1, self._run + 1)
        else:
            self._run = min(-1, self._run - 1)
        self.onset_samples = self._run * pcm.size if self._run > 0 else 0
        if not self._speaking and self._run * 20 >= 120:
            self._speaking = True
        elif self._speaking and -self._run * 20 >= 140:
            self._speaking = False
        if self._speaking:
            return VADState.SPEAKING
        return VADState.STARTING if self._run > 0 else VADState.QUIET


def params(**kw) -> TurnTaking:  # noqa: ANN003
    base = {"smart_turn": False, "semantic_end_of_turn": False, "end_of_turn_silence_ms": 300}
    return TurnTaking(**{**base, **kw})


def play(det: TurnDetector, *parts: tuple[str, int]) -> list[TurnEvent]:
    """Feed ("speech" | "silence", ms) parts in 20 ms frames; the events they brought, in order."""
    events: list[TurnEvent] = []
    for kind, ms in parts:
        frame = (np.full(FRAME, 1000 if kind == "speech" else 0, dtype=np.int16)).tobytes()
        for _ in range(ms // 20):
            for event in det.feed(frame):
                events.append(event)
                if event == TurnEvent.END_OF_TURN:
                    det.end_turn()
    return events


def test_speech_again_within_the_window_rejoins_the_turn_and_keeps_its_audio() -> None:
    det = TurnDetector(params(rejoin_within_ms=900), ScriptedVAD())
    events = play(det, ("speech", 600), ("silence", 600))
    assert events.count(TurnEvent.END_OF_TURN) == 1
    assert not det.rejoined
    play(det, ("speech", 400))
    assert det.rejoined
    # smart-turn's audio starts with the first part: 600 ms of it, the 600 ms gap and the onset
    assert det.turn_audio().size >= RATE * 1.6


def test_speech_after_the_window_is_a_new_turn() -> None:
    det = TurnDetector(params(rejoin_within_ms=500), ScriptedVAD())
    play(det, ("speech", 600), ("silence", 900), ("speech", 400))
    assert not det.rejoined
    assert det.turn_audio().size <= RATE * 0.8  # the new turn's audio and its pre-roll (500 ms, the onset in it) only


def test_no_rejoin_once_the_agent_finished_speaking_or_when_the_session_says_no() -> None:
    det = TurnDetector(params(rejoin_within_ms=900), ScriptedVAD())
    play(det, ("speech", 600), ("silence", 400))
    det.agent_stopped()  # the agent's answer played out
    play(det, ("silence", 200), ("speech", 400))
    assert not det.rejoined

    det = TurnDetector(params(rejoin_within_ms=900), ScriptedVAD())
    det.may_rejoin = lambda: False  # something was done on the first part's words
    play(det, ("speech", 600), ("silence", 600), ("speech", 400))
    assert not det.rejoined

    det = TurnDetector(params(rejoin_within_ms=None), ScriptedVAD())
    play(det, ("speech", 600), ("silence", 600), ("speech", 400))
    assert not det.rejoined


def test_a_rejoined_message_replaces_the_last_caller_message_and_drops_the_replies_after_it() -> None:
    conv = Conversation("sys", PassThroughContext())
    conv.add_caller("Hello.")
    conv.add_agent("Hi, how can I help?", [1, 2, 3], reply_id="r1")
    conv.add_caller("Yeah.")
    conv.add_agent("Great, let me", [4, 5], reply_id="r2")  # the answer the caller spoke over
    assert conv.rejoin_caller("Yes, please.")
    assert [(m.role, m.content) for m in conv.messages] == [
        ("user", "Hello."), ("assistant", "Hi, how can I help?"), ("user", "Yes, please.")]
    assert "Great, let me" not in conv.generated
    # the copy a held reply is generated from says the same
    conv.add_agent("Sure", reply_id="r3")
    twin = conv.with_caller("Yes, please, on Friday.", rejoin=True)
    assert twin.messages[-1] == ChatMessage("user", "Yes, please, on Friday.")
    assert conv.messages[-1].content == "Sure"  # unchanged


def test_no_rejoin_over_fixed_text_or_without_a_caller_message() -> None:
    conv = Conversation("sys", PassThroughContext())
    assert not conv.rejoin_caller("Hello.")
    conv.add_caller("Yeah.")
    conv.add_agent("This call may be recorded.")  # a notice (no reply id) was said after it
    assert not conv.rejoin_caller("Yes, please.")
    assert [m.content for m in conv.messages] == ["Yeah.", "This call may be recorded."]


# --------------------------------------------------------------------------- the whole call


def with_pause(first: Audio, second: Audio, pause_ms: int) -> Audio:
    assert first.sample_rate == second.sample_rate
    gap = np.zeros(first.sample_rate * pause_ms // 1000, dtype=np.int16)
    return Audio(np.concatenate([first.samples, gap, second.samples]), first.sample_rate)


async def call_with_a_false_end(pool, receptionist, say, rejoin_within_ms):  # noqa: ANN001, ANN201
    taking = receptionist.turn_taking.model_copy(update={
        "smart_turn": False, "semantic_end_of_turn": False, "end_of_turn_silence_ms": 300,
        "rejoin_within_ms": rejoin_within_ms})  # fmt: skip
    config = receptionist.model_copy(update={"turn_taking": taking, "greeting": ""})
    transport = FileTransport(16000, realtime=True)
    session = CallSession(config, pool, transport, realtime=True)
    await session.start()
    utterance = with_pause(say("I would like to know"), say("your opening hours on Saturday."), 250)
    try:
        await stream_audio(session, utterance)
        await stream_silence_until_idle(session, timeout=90)
        record = await session.end("hangup")
    finally:
        if not session.ended:
            await session.end("hangup")
    return session, record


@pytest.mark.models
async def test_an_utterance_cut_by_a_false_end_of_turn_is_one_turn_answered_once(pool, receptionist, say):
    session, record = await call_with_a_false_end(pool, receptionist, say, 900)
    pipeline = session.pipeline
    assert pipeline.vad.rejoins == 1, "the second part did not rejoin the first"
    callers = [t for t in record.turns if t.role == "caller"]
    assert len(callers) == 1, [t.text for t in callers]
    heard = callers[0].text.lower()
    assert "like" in heard and ("saturday" in heard or "hours" in heard), heard  # both parts, one transcript
    assert callers[0].timeline is not None and callers[0].timeline.rejoined
    users = [m for m in pipeline.llm.conversation.messages if m.role == "user"]
    assert len(users) == 1 and "like" in users[0].content.lower()
    assert pipeline.llm.rejoined_turns == 1 and record.flags["turns_rejoined"] == 1
    answers = [t for t in record.turns if t.role == "agent" and t.kind == "reply" and not t.interrupted]
    assert len(answers) == 1 and answers[0].text.strip()
    assert record.turns.index(answers[0]) > record.turns.index(callers[0])


@pytest.mark.models
async def test_without_rejoining_the_same_utterance_is_two_turns(pool, receptionist, say):
    """The counterpart: the pause does end the turn (the test above tests the rejoin, not audio
    that never ended a turn)."""
    session, record = await call_with_a_false_end(pool, receptionist, say, None)
    callers = [t for t in record.turns if t.role == "caller"]
    assert session.pipeline.vad.rejoins == 0
    assert len(callers) == 2, [t.text for t in callers]


# --------------------------------------------------------------------------- the LLM processor


def spoke(text: str, *, rejoins: bool = False) -> list:
    """One caller turn's frames as the turn detector and the STT send them (``rejoins``: it continues
    the last turn)."""
    started = UserStartedSpeakingFrame()
    if rejoins:
        started.metadata["rejoins"] = True
    final = TranscriptionFrame(text=text, user_id="caller", timestamp="now", finalized=True)
    final.metadata["timeline"] = TurnTimeline(rejoined=rejoins)
    return [started, UserStoppedSpeakingFrame(), final]


def replied(proc: LlamaLLMProcessor, timeout_s: float = 60.0):  # noqa: ANN201
    """Short sleeps until the last message is an agent reply and no reply is being made."""
    deadline = time.monotonic() + timeout_s
    yield SleepFrame(0.1)
    while time.monotonic() < deadline and (proc.busy or proc.conversation.messages[-1].role != "assistant"):
        yield SleepFrame(0.05)


def receptionist_processor(pool, **kw) -> LlamaLLMProcessor:  # noqa: ANN001, ANN003
    config = load_pipeline("pipelines/receptionist.yaml")
    assert config.facts is not None
    conversation = Conversation(system_prompt="You are a receptionist.", context=PassThroughContext())
    return LlamaLLMProcessor(pool.llm("default"), conversation, LLMParams(max_tokens=24, temperature=0.0),
                             fallback_reply="Sorry?", facts=FactBook(config.facts), tools=CallTools(config.tools),
                             **kw)  # fmt: skip


@pytest.mark.models
async def test_a_rejoin_takes_back_the_call_tools_step_and_answers_the_whole_utterance(pool) -> None:
    proc = receptionist_processor(pool)
    declined = "Alright. Is there anything else I can help with?"

    def frames():  # noqa: ANN202
        yield from spoke("Do you sell toothbrushes?")  # not in the facts: the tools offer a message or a person
        yield from replied(proc)
        yield from spoke("No,")  # declines the offer: the tools' state moves on (no offer open)
        yield from replied(proc)
        assert proc.may_rejoin  # only the tools' state changed, and it can be restored
        yield from spoke("No, thank you.", rejoins=True)
        yield from replied(proc)

    down, _ = await run_test(proc, frames_to_send=frames(), expected_down_frames=None)
    messages = [(m.role, m.content) for m in proc.conversation.messages]
    assert proc.rejoined_turns == 1
    # one message for the whole utterance; the reply to its first part was taken out
    assert [r for r, _ in messages] == ["user", "assistant", "user", "assistant"], messages
    assert messages[2][1] == "No, thank you."
    # the whole utterance was answered from the tools' state before its first part (the offer still
    # open), as the first part was; with the offer gone it is not the tools' turn at all
    first_part, whole = [f.text for f in down if isinstance(f, LLMTextFrame)][-2:]
    assert first_part == whole == declined, (first_part, whole)


@pytest.mark.models
async def test_after_a_booking_step_a_new_turn_does_not_rejoin(pool) -> None:
    def no_calendar():  # noqa: ANN202
        raise RuntimeError("no calendar in this test")

    proc = receptionist_processor(pool, booking=no_calendar)

    def frames():  # noqa: ANN202
        yield from spoke("I'd like to book a cleaning next Tuesday.")
        yield from replied(proc)

    await run_test(proc, frames_to_send=frames(), expected_down_frames=None)
    assert not proc.may_rejoin
