"""Voice activity and end of turn: a speech detector as a Pipecat VAD analyzer, plus smart-turn v3.

``VADTurnProcessor`` sits right after the call's audio input. It turns 16 kHz
caller audio into Pipecat's speaking frames:

- ``VADUserStartedSpeakingFrame`` / ``VADUserStoppedSpeakingFrame`` at every
  start and pause of speech (the STT starts speculative work on a pause);
- ``UserStartedSpeakingFrame`` when a caller turn begins, preceded by an
  ``InterruptionFrame`` broadcast (barge-in when the agent is speaking). While the
  agent speaks, a turn begins on a shorter, stricter onset (``barge_in_ms`` of windows
  Silero is sure of, each over the echo floor: :meth:`TurnDetector.feed`) than when it
  is silent (``speech_start_ms``);
- ``UserStoppedSpeakingFrame`` when the turn ends: smart-turn v3 judged the
  pause to be the end of a thought; or the STT's transcript at the pause
  (``PauseTranscriptFrame``, sent upstream) reads as a finished sentence and
  the silence reached ``semantic_silence_ms``; or the silence reached
  ``end_of_turn_silence_ms``. Its ``metadata["timeline"]`` opens the turn's
  :class:`~voicecore.records.TurnTimeline` with the end of speech.

Which frames hold speech is the detector ``turn_taking.vad`` names (Silero VAD,
webrtcvad, or webrtcvad behind an adaptive noise floor: ``vad_analyzers.py``).
The decisions are made by :class:`TurnDetector`, a pure core (no frames, no
clock) that ``bench endpointing`` drives directly; the processor is its asyncio
shell. All turn-taking arithmetic counts audio samples, not wall-clock time, so
a file streamed faster than real time takes the same decisions as a live call.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum

import numpy as np
from loguru import logger
from pipecat.audio.vad.vad_analyzer import VADState
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    StartFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voicecore.config import TurnTaking
from voicecore.frames import PauseTranscriptFrame, SpeechTrailingFrame
from voicecore.records import TurnTimeline
from voicecore.services.vad_analyzers import (
    MIN_SPEECH_RMS,
    FrameVAD,
    SileroVADEngine,
    WebRTCVADAnalyzer,
    make_analyzer,
)

__all__ = [
    "MIN_SPEECH_RMS", "PIPELINE_SAMPLE_RATE", "SileroVADEngine", "SmartTurnEngine", "TurnDetector", "TurnEvent",
    "TurnState", "VADTurnProcessor", "WebRTCVADAnalyzer", "transcript_looks_complete",
]

PIPELINE_SAMPLE_RATE = 16000
PREROLL_S = 0.5  # audio kept from before a turn's start (smart-turn hears the onset)
# While the agent speaks, a barge-in's frames must be no more than ECHO_MARGIN_DB under the loudest
# agent audio sent in the last ECHO_TAIL_S (its own output lead + the line's round trip): the
# agent's echo comes back at least that much weaker (a network echo canceller gives 36 dB or more,
# a mobile phone's 46), a caller talking over it is 10-30 dB louder than that (bench endpointing).
ECHO_MARGIN_DB = 30.0
ECHO_TAIL_S = 1.0


class SmartTurnEngine:
    """Pipecat's bundled smart-turn v3 ONNX model, loaded once and shared by every call."""

    MODEL_FILE = "smart-turn-v3.2-cpu.onnx"
    MAX_SECONDS = 8

    def __init__(self, model_path: str | None = None, threads: int = 1):
        import onnxruntime as ort
        from pipecat.audio.turn.smart_turn._whisper_features import (
            compute_whisper_log_mel_features,
        )

        from voicecore.config import bundled_resource

        self._features = compute_whisper_log_mel_features
        path = model_path or bundled_resource("pipecat.audio.turn.smart_turn.data", self.MODEL_FILE)
        so = ort.SessionOptions()
        so.inter_op_num_threads = 1
        so.intra_op_num_threads = threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(path, sess_options=so)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smart-turn")
        self.path = path
        self.probability(np.zeros(PIPELINE_SAMPLE_RATE, dtype=np.float32))  # warm up at load

    def probability(self, audio_16k: np.ndarray) -> float:
        """Probability (0..1) that the speech in ``audio_16k`` (float32) is a finished turn."""
        n = self.MAX_SECONDS * PIPELINE_SAMPLE_RATE
        audio = audio_16k[-n:]
        if audio.size < n:
            audio = np.pad(audio, (n - audio.size, 0))
        feats = self._features(audio.astype(np.float32), do_normalize=True)
        out = self._session.run(None, {"input_features": np.expand_dims(feats, 0)})
        return float(np.asarray(out[0]).reshape(-1)[0])

    async def predict(self, audio_16k: np.ndarray) -> float:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.probability, audio_16k)


# A transcript ending in one of these words is mid-thought whatever its punctuation.
CONTINUATION_WORDS = frozenset(
    "and but or so because then if that which who to of for with at on in from by about "
    "the a an my your our their his her its is are was were am be i we you it "
    "um uh er erm hmm like".split()
)


def transcript_looks_complete(text: str) -> bool:
    """The semantic end-of-turn cue: does the transcript at a pause read as finished?

    Whisper punctuates what it hears: a finished sentence ends in ``.``, ``?`` or
    ``!``, a trailing-off one in ``...`` or a comma. A sentence still ends
    mid-thought on a continuation word ("...and."), and a caller reading out a
    number pauses between groups of digits, so text that ends in a digit group
    after other digits is not finished either.
    """
    t = text.strip()
    if not t or t[-1] not in ".?!" or t.endswith("...") or not re.search(r"[\w']", t):
        return False
    return not transcript_looks_unfinished(t)


def transcript_looks_unfinished(text: str) -> bool:
    """The transcript at a pause says the caller is mid-thought: it ends in a comma (or ``...``,
    a dash, ``;``, ``:``), on a continuation word, or in a digit group after other digits. Stricter
    than ``not transcript_looks_complete``: text without end punctuation ("Hello") is not
    unfinished (Whisper often leaves a short answer unpunctuated), so smart-turn still ends it."""
    t = text.strip()
    if not t:
        return False
    if t.endswith(("...", "…", ",", "-", ";", ":")):
        return True
    words = re.findall(r"[\w']+", t.lower())
    if not words:
        return False
    if words[-1] in CONTINUATION_WORDS:
        return True
    return any(c.isdigit() for c in words[-1]) and sum(c.isdigit() for c in t) >= 3


class TurnEvent(Enum):
    SPEECH_STARTED = "speech_started"  # a new caller turn starts
    SPEECH_RESUMED = "speech_resumed"  # speech again after a pause, same turn
    PAUSE = "pause"  # speech paused (pause_ms of silence)
    TRAILING = "trailing"  # early_transcript_ms of silence, not yet a pause: the STT may start
    TRAILING_RESUMED = "trailing_resumed"  # speech again after TRAILING, before a pause
    END_OF_TURN = "end_of_turn"


@dataclass
class TurnState:
    """Pure end-of-turn bookkeeping in audio time (samples at 16 kHz).

    A turn ends in a pause when the silence since the last voiced audio reaches what the pause
    needs (:meth:`_silence_needed`): ``end_of_turn_silence_ms``; ``semantic_silence_ms`` when the
    pause's transcript reads as a finished sentence; none when smart-turn judged the pause
    finished — with ``smart_turn_reads_transcript``, once the pause's transcript is in and does
    not end mid-thought, and ``one_word_silence_ms`` when it is one word. Nothing ends while speech
    may be starting again (the detector is counting onset frames)."""

    params: TurnTaking
    in_turn: bool = False
    speaking: bool = False
    starting: bool = False  # onset frames are being counted: speech may be coming back
    voiced_samples: int = 0  # voiced audio in this turn
    last_voiced_end: int = 0  # sample index where the last voiced frame of the turn ended
    now_sample: int = 0  # the audio heard so far
    pause_id: int = 0  # increases at every pause; a smart-turn answer names its pause
    end_reason: str = ""  # why the last END_OF_TURN came: "silence", "semantic" or "smart-turn"
    trailing_from: int | None = None  # the voiced end at which TRAILING came (None: not trailing)
    # what is known of a pause (each names the pause it holds for; -1: none)
    text_pause: int = -1  # its transcript arrived
    complete_text_pause: int = -1  # ... and reads as a finished sentence
    unfinished_text_pause: int = -1  # ... and ends mid-thought (smart-turn is overruled)
    one_word_pause: int = -1  # ... and is one word (smart-turn needs one_word_silence_ms)
    smart_turn_pause: int = -1  # smart-turn judged it finished

    def _smart_turn_ends(self) -> bool:
        """Smart-turn's verdict on the current pause stands (the transcript, if read, agrees)."""
        p = self.pause_id
        if self.smart_turn_pause != p:
            return False
        if not self.params.smart_turn_reads_transcript:
            return True
        return self.text_pause == p and self.unfinished_text_pause != p

    def _silence_needed(self) -> tuple[float, str]:
        """The silence (ms) that ends the current pause, and the rule that gives it."""
        needed, reason = float(self.params.end_of_turn_silence_ms), "silence"
        if self.complete_text_pause == self.pause_id and self.params.semantic_end_of_turn:
            if self.params.semantic_silence_ms < needed:
                needed, reason = self.params.semantic_silence_ms, "semantic"
        if self._smart_turn_ends():
            one_word = self.params.smart_turn_reads_transcript and self.one_word_pause == self.pause_id
            at_least = self.params.one_word_silence_ms if one_word else 0
            if at_least <= needed:
                needed, reason = at_least, "smart-turn"
        return needed, reason

    def on_vad(self, state: VADState, now_sample: int, voiced_end_sample: int) -> list[TurnEvent]:
        """Feed the analyzer state after the audio up to ``now_sample``."""
        self.now_sample = now_sample
        self.starting = state == VADState.STARTING
        events: list[TurnEvent] = []
        if state == VADState.SPEAKING and not self.speaking:
            self.speaking = True
            self.trailing_from = None
            if not self.in_turn:
                self.in_turn = True
                self.voiced_samples = 0
                events.append(TurnEvent.SPEECH_STARTED)
            else:
                events.append(TurnEvent.SPEECH_RESUMED)
        elif state == VADState.QUIET and self.speaking:
            self.speaking = False
            self.pause_id += 1
            self.trailing_from = None
            events.append(TurnEvent.PAUSE)
        if self.in_turn:
            self.last_voiced_end = max(self.last_voiced_end, voiced_end_sample)
        events.extend(self._check_trailing(now_sample))
        events.extend(self._check_silence())
        return events

    def _check_trailing(self, now_sample: int) -> list[TurnEvent]:
        """Speech trailing off before a pause is declared (``early_transcript_ms``), and speech
        coming back after that."""
        early = self.params.early_transcript_ms
        if early is None or not (self.in_turn and self.speaking):
            return []
        if self.trailing_from is not None:
            if self.last_voiced_end > self.trailing_from:
                self.trailing_from = None
                return [TurnEvent.TRAILING_RESUMED]
            return []
        if (now_sample - self.last_voiced_end) * 1000 / PIPELINE_SAMPLE_RATE >= early:
            self.trailing_from = self.last_voiced_end
            return [TurnEvent.TRAILING]
        return []

    def _check_silence(self) -> list[TurnEvent]:
        if self.in_turn and not self.speaking and not self.starting:
            silence_ms = (self.now_sample - self.last_voiced_end) * 1000 / PIPELINE_SAMPLE_RATE
            needed, reason = self._silence_needed()
            if silence_ms >= needed:
                self.in_turn = False
                self.end_reason = reason
                return [TurnEvent.END_OF_TURN]
        return []

    def _in_pause(self, pause_id: int) -> bool:
        return self.in_turn and not self.speaking and pause_id == self.pause_id

    def transcript_at_pause(self, pause_id: int, text: str, now_sample: int) -> list[TurnEvent]:
        """The STT's transcript of the turn up to pause ``pause_id`` (if still in that pause): a
        finished sentence shortens the silence that ends the turn; a smart-turn verdict that
        waited for it ends the turn now, unless the transcript ends mid-thought or is one word."""
        self.now_sample = max(self.now_sample, now_sample)
        if not self._in_pause(pause_id):
            return []
        self.text_pause = pause_id
        if transcript_looks_unfinished(text):
            self.unfinished_text_pause = pause_id
        elif len(re.findall(r"[\w']+", text)) == 1:
            self.one_word_pause = pause_id
        if transcript_looks_complete(text):
            self.complete_text_pause = pause_id
        return self._check_silence()

    def smart_turn_says_complete(self, pause_id: int) -> bool:
        """Smart-turn judged pause ``pause_id`` finished: True when that ends the turn now (if still
        in that pause). Otherwise the verdict is kept for the pause: the transcript, or enough
        silence after one word, ends the turn later (:meth:`transcript_at_pause`, :meth:`on_vad`)."""
        if not self._in_pause(pause_id):
            return False
        self.smart_turn_pause = pause_id
        return bool(self._check_silence())


class TurnDetector:
    """The pure core of turn taking: a speech detector and :class:`TurnState` over 16 kHz caller audio.

    :meth:`feed` takes audio in any chunking and returns the turn events it brought; the
    current turn's audio (with a short pre-roll) is kept for smart-turn. Smart-turn's answer
    and the transcript cue come back in through :meth:`smart_turn_says_complete` and
    :meth:`transcript_at_pause`; :meth:`end_turn` closes a turn that ended.

    A turn that starts within ``rejoin_within_ms`` of the end of the last turn's speech, while the
    agent has not yet played out an answer to it (and ``may_rejoin`` allows: nothing was done on
    the last turn's words that cannot be taken back), *rejoins* it (:attr:`rejoined`): it is the
    same utterance, cut by a false end of turn. Its audio for smart-turn then starts with the
    last turn's.
    """

    def __init__(self, params: TurnTaking, analyzer: FrameVAD):
        self.params = params
        self.analyzer = analyzer
        self.turn = TurnState(params)
        self.samples = 0  # audio received, in samples at 16 kHz
        #: the agent's audio is playing (the shell says so): only a barge-in onset starts speech
        self.agent_speaking = False
        #: onset frames (in samples) that start speech while the agent speaks: ``barge_in_ms`` with a
        #: detector that tells speech from noise, ``speech_start_ms`` with one that does not (webrtcvad)
        onset_ms = params.barge_in_ms if analyzer.tells_speech_from_noise else params.speech_start_ms
        self.barge_in_samples = analyzer.samples_for(onset_ms)
        self.barged_in = False  # the current (or last) turn was started by a barge-in onset
        self._agent_levels: deque[tuple[int, float]] = deque()  # (caller sample, RMS) of agent frames sent
        self.voiced_moved = False  # the last feed held a frame judged voiced
        self.voiced_ago_s = 0.0
        self._turn_audio: list[np.ndarray] = []
        self._turn_audio_len = 0
        self._preroll: list[np.ndarray] = []
        self._preroll_len = 0
        #: the session may veto a rejoin (something was done on the last turn's words)
        self.may_rejoin: Callable[[], bool] = lambda: True
        self.rejoined = False  # the current (or last) turn continues the one before it
        self.last_end_voiced: int | None = None  # where the last ended turn's speech ended (samples)
        self.agent_done = False  # the agent finished speaking since the last turn ended
        # the last ended turn's audio and what came after it (kept for a rejoin, while one may come)
        self._last_turn: list[np.ndarray] = []
        self._last_turn_len = 0

    def restart(self) -> None:
        """A new stream (Pipecat ``StartFrame``): no turn open, the agent silent."""
        self.turn = TurnState(self.params)
        self.agent_speaking = False
        self._agent_levels.clear()
        self.last_end_voiced, self.rejoined = None, False
        self._last_turn, self._last_turn_len = [], 0

    def agent_stopped(self) -> None:
        """The agent's audio stopped playing (the shell says so)."""
        self.agent_speaking = False
        if not self.turn.in_turn:
            self.agent_done = True

    def _rejoins(self, onset_sample: int) -> bool:
        """Speech starting at ``onset_sample`` continues the last turn (see the class)."""
        within = self.params.rejoin_within_ms
        if within is None or self.last_end_voiced is None or self.agent_done:
            return False
        gap_ms = (onset_sample - self.last_end_voiced) * 1000 / PIPELINE_SAMPLE_RATE
        if gap_ms > within:
            return False
        if not self.may_rejoin():
            logger.debug(f"speech again {gap_ms:.0f} ms after the turn: not a rejoin (its answer did something)")
            return False
        return True

    @property
    def in_turn(self) -> bool:
        return self.turn.in_turn

    @property
    def voiced_end(self) -> int:
        """Where the last voiced frame of the current (or last) turn ends, in samples."""
        return self.turn.last_voiced_end

    def agent_audio(self, samples: np.ndarray) -> None:
        """A frame of the agent's audio as it is sent (int16, any rate): the loudest of the last
        :data:`ECHO_TAIL_S` sets the echo floor a barge-in's frames must reach."""
        level = float(np.sqrt(np.mean(samples.astype(np.float32) ** 2))) if samples.size else 0.0
        self._agent_levels.append((self.samples, level))

    def echo_floor(self) -> float:
        """The RMS (int16 units) a barge-in's frames need now: :data:`ECHO_MARGIN_DB` under the
        loudest agent audio sent in the last :data:`ECHO_TAIL_S` of caller audio (0: none sent)."""
        horizon = self.samples - int(ECHO_TAIL_S * PIPELINE_SAMPLE_RATE)
        while self._agent_levels and self._agent_levels[0][0] < horizon:
            self._agent_levels.popleft()
        if not self._agent_levels:
            return 0.0
        return max(level for _, level in self._agent_levels) * 10 ** (-ECHO_MARGIN_DB / 20)

    def feed(self, audio: bytes) -> list[TurnEvent]:
        """Caller audio (16 kHz int16, any length): the turn events it brings.

        While the agent speaks (and for as long as its echo may still come back:
        :data:`ECHO_TAIL_S` after its last audio was sent), speech starts only on a barge-in
        onset: ``barge_in_samples`` of consecutive onset frames (Silero: sure of speech), each
        over the echo floor; speech the detector hears that is no such onset does not start a
        turn yet (the agent's own echo, a doubtful start)."""
        before = self.analyzer.last_voiced_frame
        floor = self.echo_floor()
        listening = self.params.barge_in and not self.turn.in_turn and (self.agent_speaking or floor > 0)
        self.analyzer.barge_in_floor = floor if listening else None
        state = self.analyzer.analyze(audio)
        barge_in = listening and self.analyzer.onset_samples >= self.barge_in_samples
        if barge_in:
            state = self.analyzer.start_speaking()
        elif listening and state == VADState.SPEAKING:
            state = VADState.QUIET
        self.samples += len(audio) // 2
        self.voiced_moved = self.analyzer.last_voiced_frame != before
        # how long ago (audio received since) the speech of the last voiced frame ended
        self.voiced_ago_s = max(0, self.samples - self.analyzer.voiced_end) / PIPELINE_SAMPLE_RATE
        self._keep_audio(np.frombuffer(audio, dtype=np.int16))
        events = self.turn.on_vad(state, self.samples, self.analyzer.voiced_end)
        if TurnEvent.SPEECH_STARTED in events:
            self.barged_in = barge_in
            onset_ms = self.params.barge_in_ms if barge_in else self.params.speech_start_ms
            self.rejoined = self._rejoins(self.samples - self.analyzer.samples_for(onset_ms))
            if self.rejoined and self._last_turn:  # the last turn's audio, the gap and this onset
                self._turn_audio, self._turn_audio_len = self._last_turn, self._last_turn_len
                self._trim_turn_audio()
            else:
                self._turn_audio, self._turn_audio_len = self._preroll, self._preroll_len
            self._preroll, self._preroll_len = [], 0
            self._last_turn, self._last_turn_len = [], 0
        return events

    def transcript_at_pause(self, pause_id: int, text: str) -> list[TurnEvent]:
        return self.turn.transcript_at_pause(pause_id, text, self.samples)

    def smart_turn_says_complete(self, pause_id: int) -> bool:
        return self.turn.smart_turn_says_complete(pause_id)

    def turn_audio(self) -> np.ndarray:
        """The current turn's audio so far (int16), up to smart-turn's 8 s."""
        return np.concatenate(self._turn_audio) if self._turn_audio else np.zeros(0, np.int16)

    def end_turn(self) -> float:
        """Close the ended turn (its audio is kept while a rejoin may come); returns how long it
        was (ms)."""
        ms = self._turn_audio_len * 1000 / PIPELINE_SAMPLE_RATE
        self.last_end_voiced = self.turn.last_voiced_end
        self.agent_done = False
        if self.params.rejoin_within_ms is not None:
            self._last_turn, self._last_turn_len = self._turn_audio, self._turn_audio_len
        self._turn_audio, self._turn_audio_len = [], 0
        return ms

    def _trim_turn_audio(self) -> None:
        limit = SmartTurnEngine.MAX_SECONDS * PIPELINE_SAMPLE_RATE
        while self._turn_audio and self._turn_audio_len - self._turn_audio[0].size > limit:
            self._turn_audio_len -= self._turn_audio.pop(0).size

    def _keep_audio(self, samples: np.ndarray) -> None:
        """The current turn's audio (for smart-turn), and a short pre-roll before it."""
        if self.turn.in_turn:
            self._turn_audio.append(samples)
            self._turn_audio_len += samples.size
            self._trim_turn_audio()
        else:
            if self._last_turn and self.last_end_voiced is not None:
                gap_ms = (self.samples - self.last_end_voiced) * 1000 / PIPELINE_SAMPLE_RATE
                if gap_ms <= (self.params.rejoin_within_ms or 0) + self.params.speech_start_ms:
                    self._last_turn.append(samples)
                    self._last_turn_len += samples.size
                else:  # no rejoin can come any more
                    self._last_turn, self._last_turn_len = [], 0
            self._preroll.append(samples)
            self._preroll_len += samples.size
            while self._preroll_len - self._preroll[0].size > PREROLL_S * PIPELINE_SAMPLE_RATE:
                self._preroll_len -= self._preroll.pop(0).size


class VADTurnProcessor(FrameProcessor):
    """Speech detector + smart-turn v3 → Pipecat speaking frames, barge-in interruptions.

    ``silero`` is the process's shared Silero engine (``ModelPool.silero_vad()``), needed when
    ``params.vad`` is ``silero``."""

    def __init__(
        self,
        params: TurnTaking,
        *,
        smart_turn: SmartTurnEngine | None = None,
        silero: SileroVADEngine | None = None,
        may_rejoin: Callable[[], bool] | None = None,
        name: str | None = None,
    ):
        """``may_rejoin``: whether a turn may still rejoin the last one (nothing was done on its
        words that cannot be taken back: :attr:`TurnDetector.may_rejoin`)."""
        super().__init__(name=name or "VADTurn")
        self._params = params
        self._analyzer = make_analyzer(params, silero)
        self._detector = TurnDetector(params, self._analyzer)
        if may_rejoin is not None:
            self._detector.may_rejoin = may_rejoin
        self._smart_turn = smart_turn if params.smart_turn else None
        self._voiced_time = 0.0  # monotonic time the speech of the last voiced audio ended
        self._smart_task: asyncio.Task | None = None
        self.barge_ins: list[float] = []  # when caller speech interrupted agent speech (monotonic)
        self.barge_in_samples: list[int] = []  # ... and where, in the caller audio (samples at 16 kHz)
        self.agent_frames = 0  # frames of agent audio the output reported (agent_audio)
        self.rejoins = 0  # turns that continued the one before (a false end of turn undone)

    @property
    def in_turn(self) -> bool:
        """The caller is in a turn (speaking, or in a pause the end of turn has not been decided for)."""
        return self._detector.in_turn

    @property
    def bot_speaking(self) -> bool:
        return self._detector.agent_speaking

    @property
    def audio_samples(self) -> int:
        """Caller audio heard so far (samples at 16 kHz): the clock of :attr:`barge_in_samples`."""
        return self._detector.samples

    def agent_audio(self, frame: bytes) -> None:
        """The output sent a frame of agent audio (its level is the echo floor for a barge-in)."""
        self.agent_frames += 1
        self._detector.agent_audio(np.frombuffer(frame, dtype=np.int16))

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._on_audio(frame)
            await self.push_frame(frame, direction)
            return
        if isinstance(frame, PauseTranscriptFrame):
            for event in self._detector.transcript_at_pause(frame.pause_id, frame.text):
                await self._on_turn_event(event)
            return  # consumed: nothing upstream of the turn detector needs it
        if isinstance(frame, BotStartedSpeakingFrame):
            self._detector.agent_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._detector.agent_stopped()
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._cancel_smart_turn()
        if isinstance(frame, StartFrame):
            self._detector.restart()
        await self.push_frame(frame, direction)

    async def _on_audio(self, frame: InputAudioRawFrame) -> None:
        if frame.sample_rate != PIPELINE_SAMPLE_RATE or frame.num_channels != 1:
            raise ValueError(
                f"VADTurnProcessor expects 16 kHz mono audio, got {frame.sample_rate} Hz × {frame.num_channels}"
            )
        events = self._detector.feed(frame.audio)
        if self._detector.voiced_moved:
            self._voiced_time = time.monotonic() - self._detector.voiced_ago_s
        for event in events:
            await self._on_turn_event(event)

    async def _on_turn_event(self, event: TurnEvent) -> None:
        if event == TurnEvent.SPEECH_STARTED:
            await self._cancel_smart_turn()
            if self._params.barge_in:
                # Whatever the agent was doing for the previous turn (thinking or
                # speaking) stops: the caller has the floor again.
                if self._detector.agent_speaking:
                    self.barge_ins.append(time.monotonic())
                    self.barge_in_samples.append(self._detector.samples)
                    logger.debug(f"{self}: barge-in, interrupting the agent")
                await self.broadcast_interruption()
            start_ms = self._params.barge_in_ms if self._detector.barged_in else self._params.speech_start_ms
            await self.push_frame(VADUserStartedSpeakingFrame(start_secs=start_ms / 1000))
            started = UserStartedSpeakingFrame()
            if self._detector.rejoined:
                # the same utterance as the last turn: the STT transcribes both parts as one and
                # the agent answers them as one message
                started.metadata["rejoins"] = True
                self.rejoins += 1
                logger.debug(f"{self}: speech again {self._params.rejoin_within_ms} ms or less after the turn: "
                             "it continues that turn")  # fmt: skip
            await self.broadcast_frame_instance(started)
        elif event == TurnEvent.SPEECH_RESUMED:
            await self._cancel_smart_turn()
            await self.push_frame(VADUserStartedSpeakingFrame(start_secs=self._params.speech_start_ms / 1000))
        elif event in (TurnEvent.TRAILING, TurnEvent.TRAILING_RESUMED):
            await self.push_frame(SpeechTrailingFrame(resumed=event == TurnEvent.TRAILING_RESUMED))
        elif event == TurnEvent.PAUSE:
            pause_id = self._detector.turn.pause_id
            stopped = VADUserStoppedSpeakingFrame(stop_secs=self._params.pause_ms / 1000)
            stopped.metadata["pause_id"] = pause_id  # the STT names it in PauseTranscriptFrame
            await self.push_frame(stopped)
            if self._smart_turn is not None:
                self._smart_task = self.create_task(self._ask_smart_turn(pause_id, self._detector.turn_audio()))
        elif event == TurnEvent.END_OF_TURN:
            await self._cancel_smart_turn()
            await self._end_turn(self._detector.turn.end_reason or "silence")

    async def _ask_smart_turn(self, pause_id: int, audio: np.ndarray) -> None:
        assert self._smart_turn is not None
        try:
            prob = await self._smart_turn.predict(audio.astype(np.float32) / 32768.0)
        except Exception as e:  # a broken turn model must not end the call: silence still ends turns
            logger.warning(f"{self}: smart-turn failed ({e}); relying on silence")
            return
        logger.debug(f"{self}: smart-turn p(complete)={prob:.2f} for pause {pause_id}")
        if prob > 0.5 and self._detector.smart_turn_says_complete(pause_id):
            await self._end_turn(self._detector.turn.end_reason)

    async def _cancel_smart_turn(self) -> None:
        task, self._smart_task = self._smart_task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            await self.cancel_task(task)

    async def _end_turn(self, reason: str) -> None:
        timeline = TurnTimeline(speech_end=self._voiced_time, turn_end=reason, rejoined=self._detector.rejoined)
        voiced_ms = self._detector.end_turn()
        frame = UserStoppedSpeakingFrame()
        frame.metadata["timeline"] = timeline
        frame.metadata["end_reason"] = reason
        frame.metadata["turn_audio_ms"] = voiced_ms
        logger.debug(f"{self}: end of caller turn ({reason})")
        await self.push_frame(frame)

    async def cleanup(self):
        await super().cleanup()
        await self._analyzer.cleanup()
