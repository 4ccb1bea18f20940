"""Voice activity and end of turn: webrtcvad as a Pipecat VAD analyzer, plus smart-turn v3.

``VADTurnProcessor`` sits right after the call's audio input. It turns 16 kHz
caller audio into Pipecat's speaking frames:

- ``VADUserStartedSpeakingFrame`` / ``VADUserStoppedSpeakingFrame`` at every
  start and pause of speech (the STT starts speculative work on a pause);
- ``UserStartedSpeakingFrame`` when a caller turn begins, preceded by an
  ``InterruptionFrame`` broadcast when the agent is speaking (barge-in);
- ``UserStoppedSpeakingFrame`` when the turn ends: smart-turn v3 judged the
  pause to be the end of a thought; or the STT's transcript at the pause
  (``PauseTranscriptFrame``, sent upstream) reads as a finished sentence and
  the silence reached ``semantic_silence_ms``; or the silence reached
  ``end_of_turn_silence_ms``. Its ``metadata["timeline"]`` opens the turn's
  :class:`~voicecore.records.TurnTimeline` with the end of speech.

All turn-taking arithmetic counts audio samples, not wall-clock time, so a file
streamed faster than real time takes the same decisions as a live call.
"""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum

import numpy as np
import webrtcvad
from loguru import logger
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState
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
from voicecore.frames import PauseTranscriptFrame
from voicecore.records import TurnTimeline

PIPELINE_SAMPLE_RATE = 16000
FRAME_MS = 20
# Voiced frames quieter than this (RMS, int16 units; about -56 dBFS) are taken as
# line noise even when webrtcvad says speech.
MIN_SPEECH_RMS = 50.0


class WebRTCVADAnalyzer(VADAnalyzer):
    """A Pipecat VAD analyzer over Google's webrtcvad (20 ms frames, 8/16/32/48 kHz).

    webrtcvad answers in microseconds, so analysis runs inline instead of on the
    analyzer's thread, and Pipecat's BS.1770 loudness gate (a 400 ms window that
    lags speech onsets) is replaced by a per-frame RMS floor.
    """

    def __init__(
        self,
        *,
        aggressiveness: int = 2,
        sample_rate: int | None = None,
        params: VADParams | None = None,
        min_speech_rms: float = MIN_SPEECH_RMS,
    ):
        super().__init__(sample_rate=sample_rate, params=params)
        if not 0 <= aggressiveness <= 3:
            raise ValueError(f"webrtcvad aggressiveness must be 0..3, got {aggressiveness}")
        self._vad = webrtcvad.Vad(aggressiveness)
        self._min_speech_rms = min_speech_rms
        self.frames_seen = 0
        self.last_voiced_frame = -1  # index of the last 20 ms frame judged voiced

    def num_frames_required(self) -> int:
        return int(self.sample_rate * FRAME_MS / 1000)

    def voice_confidence(self, buffer: bytes) -> float:
        index = self.frames_seen
        self.frames_seen += 1
        samples = np.frombuffer(buffer, dtype=np.int16)
        if samples.size == 0:
            return 0.0
        rms = float(np.sqrt(np.mean(samples.astype(np.float32) ** 2)))
        voiced = rms >= self._min_speech_rms and self._vad.is_speech(buffer, self.sample_rate)
        if voiced:
            self.last_voiced_frame = index
        return 1.0 if voiced else 0.0

    def _get_smoothed_volume(self, audio: bytes) -> float:  # noqa: D401 - Pipecat hook
        return 1.0

    async def analyze_audio(self, buffer: bytes) -> VADState:
        return self._run_analyzer(buffer)

    async def cleanup(self):
        await super().cleanup()


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
    if not t or t.endswith(("...", "…", ",", "-", ";", ":")) or t[-1] not in ".?!":
        return False
    words = re.findall(r"[\w']+", t.lower())
    if not words:
        return False
    if words[-1] in CONTINUATION_WORDS:
        return False
    if any(c.isdigit() for c in words[-1]) and sum(c.isdigit() for c in t) >= 3:
        return False
    return True


class TurnEvent(Enum):
    SPEECH_STARTED = "speech_started"  # a new caller turn starts
    SPEECH_RESUMED = "speech_resumed"  # speech again after a pause, same turn
    PAUSE = "pause"  # speech paused (pause_ms of silence)
    END_OF_TURN = "end_of_turn"


@dataclass
class TurnState:
    """Pure end-of-turn bookkeeping in audio time (samples at 16 kHz)."""

    params: TurnTaking
    in_turn: bool = False
    speaking: bool = False
    voiced_samples: int = 0  # voiced audio in this turn
    last_voiced_end: int = 0  # sample index where the last voiced frame of the turn ended
    pause_id: int = 0  # increases at every pause; a smart-turn answer names its pause
    complete_text_pause: int = -1  # the pause whose transcript reads as a finished sentence
    end_reason: str = ""  # why the last END_OF_TURN came: "silence" or "semantic"

    def _silence_needed_ms(self) -> int:
        if self.complete_text_pause == self.pause_id and self.params.semantic_end_of_turn:
            return min(self.params.semantic_silence_ms, self.params.end_of_turn_silence_ms)
        return self.params.end_of_turn_silence_ms

    def on_vad(self, state: VADState, now_sample: int, voiced_end_sample: int) -> list[TurnEvent]:
        """Feed the analyzer state after the audio up to ``now_sample``."""
        events: list[TurnEvent] = []
        if state == VADState.SPEAKING and not self.speaking:
            self.speaking = True
            if not self.in_turn:
                self.in_turn = True
                self.voiced_samples = 0
                events.append(TurnEvent.SPEECH_STARTED)
            else:
                events.append(TurnEvent.SPEECH_RESUMED)
        elif state == VADState.QUIET and self.speaking:
            self.speaking = False
            self.pause_id += 1
            events.append(TurnEvent.PAUSE)
        if self.in_turn:
            self.last_voiced_end = max(self.last_voiced_end, voiced_end_sample)
        events.extend(self._check_silence(now_sample))
        return events

    def _check_silence(self, now_sample: int) -> list[TurnEvent]:
        if self.in_turn and not self.speaking:
            silence_ms = (now_sample - self.last_voiced_end) * 1000 / PIPELINE_SAMPLE_RATE
            if silence_ms >= self._silence_needed_ms():
                self.in_turn = False
                self.end_reason = "semantic" if self.complete_text_pause == self.pause_id else "silence"
                return [TurnEvent.END_OF_TURN]
        return []

    def transcript_at_pause(self, pause_id: int, text: str, now_sample: int) -> list[TurnEvent]:
        """The STT's transcript of the turn up to pause ``pause_id``: a finished sentence
        shortens the silence that ends the turn (if still in that pause)."""
        if (self.params.semantic_end_of_turn and self.in_turn and not self.speaking
                and pause_id == self.pause_id and transcript_looks_complete(text)):
            self.complete_text_pause = pause_id
            return self._check_silence(now_sample)
        return []

    def smart_turn_says_complete(self, pause_id: int) -> bool:
        """Smart-turn judged pause ``pause_id`` complete: end the turn if still in that pause."""
        if self.in_turn and not self.speaking and pause_id == self.pause_id:
            self.in_turn = False
            return True
        return False


class VADTurnProcessor(FrameProcessor):
    """webrtcvad + smart-turn v3 → Pipecat speaking frames, barge-in interruptions."""

    def __init__(
        self,
        params: TurnTaking,
        *,
        smart_turn: SmartTurnEngine | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name or "VADTurn")
        self._params = params
        self._analyzer = WebRTCVADAnalyzer(
            aggressiveness=params.vad_aggressiveness,
            sample_rate=PIPELINE_SAMPLE_RATE,
            params=VADParams(
                confidence=0.5,
                start_secs=params.speech_start_ms / 1000,
                stop_secs=params.pause_ms / 1000,
                min_volume=0.0,
            ),
        )
        self._analyzer.set_sample_rate(PIPELINE_SAMPLE_RATE)
        self._smart_turn = smart_turn if params.smart_turn else None
        self._turn = TurnState(params)
        self._samples = 0  # audio received, in samples at 16 kHz
        self._frame_samples = PIPELINE_SAMPLE_RATE * FRAME_MS // 1000
        self._voiced_time = 0.0  # monotonic time the last voiced audio arrived
        self._turn_audio: list[np.ndarray] = []
        self._turn_audio_len = 0
        self._preroll: list[np.ndarray] = []
        self._bot_speaking = False
        self._smart_task: asyncio.Task | None = None
        self.barge_ins: list[float] = []  # when caller speech interrupted agent speech (monotonic)

    @property
    def in_turn(self) -> bool:
        """The caller is in a turn (speaking, or in a pause the end of turn has not been decided for)."""
        return self._turn.in_turn

    @property
    def bot_speaking(self) -> bool:
        return self._bot_speaking

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._on_audio(frame)
            await self.push_frame(frame, direction)
            return
        if isinstance(frame, PauseTranscriptFrame):
            for event in self._turn.transcript_at_pause(frame.pause_id, frame.text, self._samples):
                await self._on_turn_event(event)
            return  # consumed: nothing upstream of the turn detector needs it
        if isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._cancel_smart_turn()
        if isinstance(frame, StartFrame):
            self._turn = TurnState(self._params)
        await self.push_frame(frame, direction)

    async def _on_audio(self, frame: InputAudioRawFrame) -> None:
        if frame.sample_rate != PIPELINE_SAMPLE_RATE or frame.num_channels != 1:
            raise ValueError(
                f"VADTurnProcessor expects 16 kHz mono audio, got {frame.sample_rate} Hz × {frame.num_channels}"
            )
        before_voiced = self._analyzer.last_voiced_frame
        state = await self._analyzer.analyze_audio(frame.audio)
        self._samples += len(frame.audio) // 2
        if self._analyzer.last_voiced_frame != before_voiced:
            self._voiced_time = time.monotonic()
        voiced_end = (self._analyzer.last_voiced_frame + 1) * self._frame_samples
        samples = np.frombuffer(frame.audio, dtype=np.int16)
        self._keep_audio(samples)
        for event in self._turn.on_vad(state, self._samples, voiced_end):
            await self._on_turn_event(event)

    def _keep_audio(self, samples: np.ndarray) -> None:
        """The current turn's audio (for smart-turn), and a short pre-roll before it."""
        if self._turn.in_turn:
            self._turn_audio.append(samples)
            self._turn_audio_len += samples.size
            limit = SmartTurnEngine.MAX_SECONDS * PIPELINE_SAMPLE_RATE
            while self._turn_audio_len - self._turn_audio[0].size > limit:
                self._turn_audio_len -= self._turn_audio.pop(0).size
        else:
            self._preroll.append(samples)
            while len(self._preroll) * self._frame_samples > 0.5 * PIPELINE_SAMPLE_RATE:
                self._preroll.pop(0)

    async def _on_turn_event(self, event: TurnEvent) -> None:
        if event == TurnEvent.SPEECH_STARTED:
            await self._cancel_smart_turn()
            self._turn_audio = list(self._preroll)
            self._turn_audio_len = sum(a.size for a in self._turn_audio)
            self._preroll = []
            if self._params.barge_in:
                # Whatever the agent was doing for the previous turn (thinking or
                # speaking) stops: the caller has the floor again.
                if self._bot_speaking:
                    self.barge_ins.append(time.monotonic())
                    logger.debug(f"{self}: barge-in, interrupting the agent")
                await self.broadcast_interruption()
            await self.push_frame(VADUserStartedSpeakingFrame(start_secs=self._params.speech_start_ms / 1000))
            await self.broadcast_frame(UserStartedSpeakingFrame)
        elif event == TurnEvent.SPEECH_RESUMED:
            await self._cancel_smart_turn()
            await self.push_frame(VADUserStartedSpeakingFrame(start_secs=self._params.speech_start_ms / 1000))
        elif event == TurnEvent.PAUSE:
            stopped = VADUserStoppedSpeakingFrame(stop_secs=self._params.pause_ms / 1000)
            stopped.metadata["pause_id"] = self._turn.pause_id  # the STT names it in PauseTranscriptFrame
            await self.push_frame(stopped)
            if self._smart_turn is not None:
                pause_id = self._turn.pause_id
                audio = np.concatenate(self._turn_audio) if self._turn_audio else np.zeros(0, np.int16)
                self._smart_task = self.create_task(self._ask_smart_turn(pause_id, audio))
        elif event == TurnEvent.END_OF_TURN:
            await self._cancel_smart_turn()
            await self._end_turn(self._turn.end_reason or "silence")

    async def _ask_smart_turn(self, pause_id: int, audio: np.ndarray) -> None:
        assert self._smart_turn is not None
        try:
            prob = await self._smart_turn.predict(audio.astype(np.float32) / 32768.0)
        except Exception as e:  # a broken turn model must not end the call: silence still ends turns
            logger.warning(f"{self}: smart-turn failed ({e}); relying on silence")
            return
        logger.debug(f"{self}: smart-turn p(complete)={prob:.2f} for pause {pause_id}")
        if prob > 0.5 and self._turn.smart_turn_says_complete(pause_id):
            await self._end_turn("smart-turn")

    async def _cancel_smart_turn(self) -> None:
        task, self._smart_task = self._smart_task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            await self.cancel_task(task)

    async def _end_turn(self, reason: str) -> None:
        voiced_ms = self._turn_audio_len * 1000 / PIPELINE_SAMPLE_RATE
        timeline = TurnTimeline(speech_end=self._voiced_time)
        self._turn_audio = []
        self._turn_audio_len = 0
        frame = UserStoppedSpeakingFrame()
        frame.metadata["timeline"] = timeline
        frame.metadata["end_reason"] = reason
        frame.metadata["turn_audio_ms"] = voiced_ms
        logger.debug(f"{self}: end of caller turn ({reason})")
        await self.push_frame(frame)

    async def cleanup(self):
        await super().cleanup()
        await self._analyzer.cleanup()
