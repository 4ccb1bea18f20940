"""Text-to-speech: Piper, spoken clause by clause as the LLM's tokens arrive.

``ClauseSplitter`` decides where speech can start (pure, no audio):
a clause is ready at a clause mark (``, ; : . ! ?`` followed by a space) once it
has enough words — few for the first clause of a reply, so the caller hears
the agent early — or at ``clause_max_words`` on a word boundary.

``PiperEngine`` loads one Piper voice per process and synthesises on one
thread; ``PiperTTSProcessor`` is the Pipecat shell: ``LLMTextFrame``\\ s (or an
``AgentSayFrame``) in, ``AgentClauseFrame`` + ``TTSAudioRawFrame``\\ s out,
resampled with soxr to the call's output rate.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    StartFrame,
    TTSAudioRawFrame,
    VADUserStartedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voicecore.audio.resample import StreamResampler
from voicecore.config import Voice
from voicecore.frames import (
    AgentClauseFrame,
    AgentReplyDoneFrame,
    AgentReplyStartFrame,
    AgentSayFrame,
    SpeculativeClauseFrame,
)
from voicecore.records import TurnTimeline
from voicecore.services.cpu import CpuPriority

_CLAUSE_MARK = re.compile(r"[,;:.!?](?=\s)|[.!?]['\")\]]?(?=\s)")
_SYMBOLS = re.compile(r"[*_#`~|<>\[\]{}\\^]+")
_EMOJI = re.compile("[\U0001f300-\U0001faff\U00002600-\U000027bf]+")
_SPACES = re.compile(r"\s+")


def speakable(text: str) -> str:
    """Text as it should be spoken: no markdown symbols or emoji, single spaces."""
    text = _EMOJI.sub(" ", text)
    text = _SYMBOLS.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


@dataclass
class ClauseSplitter:
    """Cuts a stream of LLM text into clauses that can be spoken as they complete."""

    first_min_words: int = 2
    min_words: int = 4
    max_words: int = 18
    first_max_words: int = 8  # the first clause is cut on a word boundary past this, marks or not

    def __post_init__(self) -> None:
        self._buffer = ""
        self._emitted = 0

    def reset(self) -> None:
        self._buffer = ""
        self._emitted = 0

    @property
    def pending(self) -> str:
        return self._buffer

    def _min(self) -> int:
        return self.first_min_words if self._emitted == 0 else self.min_words

    def feed(self, text: str) -> list[str]:
        """Add streamed text; return the clauses now ready to speak."""
        self._buffer += text
        out: list[str] = []
        while True:
            clause = self._take_clause()
            if clause is None:
                break
            out.append(clause)
        return out

    def _take_clause(self) -> str | None:
        buf = self._buffer
        for m in _CLAUSE_MARK.finditer(buf):
            candidate = buf[: m.end()]
            if len(candidate.split()) >= self._min():
                return self._emit(m.end())
        limit = self.first_max_words if self._emitted == 0 else self.max_words
        words = list(re.finditer(r"\S+(?=\s)", buf))
        if len(words) >= limit:
            return self._emit(words[limit - 1].end())
        return None

    def _emit(self, end: int) -> str | None:
        clause = speakable(self._buffer[:end])
        self._buffer = self._buffer[end:].lstrip()
        if not clause or not re.search(r"\w", clause):
            return None
        self._emitted += 1
        return clause

    def flush(self) -> list[str]:
        """The end of the reply: whatever is left is the last clause."""
        clause = speakable(self._buffer)
        self._buffer = ""
        if clause and re.search(r"\w", clause):
            self._emitted += 1
            return [clause]
        return []


class PiperEngine:
    """One Piper voice per process, synthesising on one thread; cached fixed phrases (greetings)."""

    CACHE_SIZE = 64

    def __init__(self, model_path: str, config_path: str, threads: int = 2, cpu: CpuPriority | None = None):
        import json
        from pathlib import Path

        import onnxruntime as ort
        from piper import PiperVoice
        from piper.config import PiperConfig
        from piper.voice import ESPEAK_DATA_DIR

        self.model_path = model_path
        self.cpu = cpu or CpuPriority()
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self._voice = PiperVoice(
            config=PiperConfig.from_dict(json.loads(Path(config_path).read_text(encoding="utf-8"))),
            session=ort.InferenceSession(model_path, sess_options=so, providers=["CPUExecutionProvider"]),
            espeak_data_dir=Path(ESPEAK_DATA_DIR),
            download_dir=Path(model_path).parent,
        )
        # espeak-ng (Piper's phonemizer) keeps global state: one phonemization at a time. The
        # ONNX run itself may go on in two threads at once (onnxruntime sessions are thread-safe).
        phonemize, lock = self._voice.phonemize, threading.Lock()

        def phonemize_one_at_a_time(text: str):
            with lock:
                return phonemize(text)

        self._voice.phonemize = phonemize_one_at_a_time  # type: ignore[method-assign]
        self.synthesize_sync("Hello there.")  # the first inference is slow: pay it at load
        self.sample_rate: int = int(self._voice.config.sample_rate)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts")
        # A reply's first clause (a caller is waiting) never queues behind other calls' later clauses.
        self._urgent_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts-first")
        self._cache: OrderedDict[tuple[str, float, int | None], bytes] = OrderedDict()
        # Clauses synthesised ahead for held (speculative) replies, by text: used if the reply is released.
        self._prepared: OrderedDict[tuple[str, float, int | None], Future[bytes]] = OrderedDict()
        self.prepared_used = 0
        self.in_flight = 0  # syntheses running or queued (other calls' clauses): the voice's load

    def synthesize_sync(
        self, text: str, length_scale: float = 1.0, speaker_id: int | None = None, urgent: bool = False
    ) -> bytes:
        from piper import SynthesisConfig

        cfg = SynthesisConfig(length_scale=length_scale, speaker_id=speaker_id)
        with self.cpu.urgent() if urgent else self.cpu.running():
            return b"".join(chunk.audio_int16_bytes for chunk in self._voice.synthesize(text, syn_config=cfg))

    PREPARED_SIZE = 16

    def prepare(self, text: str, length_scale: float = 1.0, speaker_id: int | None = None) -> bool:
        """Start synthesising ``text`` ahead (a held reply's first clause), behind urgent work;
        :meth:`synthesize` of the same text then takes it. Returns False when it is already there."""
        key = (text, length_scale, speaker_id)
        if key in self._cache or key in self._prepared:
            return False
        self._prepared[key] = self._executor.submit(self.synthesize_sync, text, length_scale, speaker_id)
        while len(self._prepared) > self.PREPARED_SIZE:
            self._prepared.popitem(last=False)[1].cancel()
        return True

    def discard(self, text: str, length_scale: float = 1.0, speaker_id: int | None = None) -> None:
        """A prepared clause that will not be spoken: not synthesised if it has not started."""
        future = self._prepared.pop((text, length_scale, speaker_id), None)
        if future is not None:
            future.cancel()

    def cached(self, text: str, length_scale: float = 1.0, speaker_id: int | None = None) -> bool:
        """This phrase's audio is in the cache (a greeting synthesised at start)."""
        return (text, length_scale, speaker_id) in self._cache

    async def synthesize(
        self,
        text: str,
        length_scale: float = 1.0,
        speaker_id: int | None = None,
        *,
        cache: bool = False,
        urgent: bool = False,
    ) -> bytes:
        """int16 mono audio at ``sample_rate``; ``cache`` keeps it for the next call (greetings);
        ``urgent`` (a reply's first clause: the caller is waiting) pauses LLM generation meanwhile."""
        key = (text, length_scale, speaker_id)
        if cache and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        prepared = self._prepared.pop(key, None)
        # prepared ahead: take it if it is running or done (still queued: cancelled, synthesised now)
        if prepared is not None and not prepared.cancel():
            self.prepared_used += 1
            return await asyncio.wrap_future(prepared)
        loop = asyncio.get_running_loop()
        executor = self._urgent_executor if urgent else self._executor
        self.in_flight += 1
        try:
            audio = await loop.run_in_executor(executor, self.synthesize_sync, text, length_scale, speaker_id, urgent)
        finally:
            self.in_flight -= 1
        if cache:
            self._cache[key] = audio
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return audio


class PiperTTSProcessor(FrameProcessor):
    """Pipecat processor: streamed LLM text (or fixed text) in, clause audio out."""

    def __init__(self, engine: PiperEngine, voice: Voice, *, name: str | None = None):
        super().__init__(name=name or "PiperTTS")
        self._engine = engine
        self._voice = voice
        self._splitter = self._new_splitter()
        self._out_rate = 16000
        self._resampler = StreamResampler(engine.sample_rate, self._out_rate)
        self._reply_id: str | None = None
        self._timeline: TurnTimeline | None = None
        self._clause_index = 0
        self._spoken: list[str] = []
        self._say_ids = itertools.count(1)
        self.backend_failures: list[dict[str, str]] = []  # {"kind", "backend", "error"} per lost clause
        # How much unplayed agent audio the output holds (seconds; the pipeline wires it to the
        # output): later clauses are synthesised only when it runs below LEAD_S, so a reply cut by a
        # barge-in never had its tail synthesised, and calls' first clauses do not queue behind it.
        self.unplayed_s: Callable[[], float] | None = None
        self.waited_s = 0.0  # time later clauses waited for playback to catch up
        self._prepared: set[str] = set()  # first clauses of held replies, synthesised ahead
        self.prepared_clauses = 0  # clauses synthesised ahead for held replies
        self.prepared_spoken = 0  # ... and then spoken
        self.short_first_clauses = 0  # replies whose first clause was cut short (the voice was busy)

    @property
    def sample_rate(self) -> int:
        return self._out_rate

    def _new_resampler(self) -> None:
        self._resampler = StreamResampler(self._engine.sample_rate, self._out_rate)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._out_rate = self.processor_setup.audio_out_sample_rate
            self._new_resampler()
            await self.push_frame(frame, direction)
        elif isinstance(frame, LLMFullResponseStartFrame):
            await self._begin_reply(frame.metadata.get("reply_id") or "r?", frame.metadata.get("timeline"))
        elif isinstance(frame, LLMTextFrame):
            if self._reply_id is None:
                await self._begin_reply(frame.metadata.get("reply_id") or "r?", frame.metadata.get("timeline"))
            for clause in self._splitter.feed(frame.text):
                await self._speak(clause)
        elif isinstance(frame, LLMFullResponseEndFrame):
            if frame.metadata.get("truncated") and self._clause_index > 0:
                self._splitter.reset()  # the reply was cut at max_tokens: drop the half clause
            for clause in self._splitter.flush():
                await self._speak(clause)
            await self._end_reply("reply")
        elif isinstance(frame, AgentSayFrame):
            await self._begin_reply(f"s{next(self._say_ids)}", None, kind=frame.kind)
            await self._speak(speakable(frame.text), cache=frame.cacheable)
            await self._end_reply(frame.kind)
        elif isinstance(frame, SpeculativeClauseFrame):
            self._prepare(frame.text)
        elif isinstance(frame, InterruptionFrame):
            self._discard_prepared()
            self._splitter.reset()
            self._reply_id = None
            self._new_resampler()
            await self.push_frame(frame, direction)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            self._discard_prepared()
            await self.push_frame(frame, direction)
        else:
            if isinstance(frame, VADUserStartedSpeakingFrame):
                self._discard_prepared()  # the caller went on: the held reply is dropped
            await self.push_frame(frame, direction)

    def _new_splitter(self) -> ClauseSplitter:
        v = self._voice
        return ClauseSplitter(v.first_clause_min_words, v.clause_min_words, v.clause_max_words, v.first_clause_max_words)

    def _prepare(self, text: str) -> None:
        """A held reply starts with ``text``: synthesise its first clause ahead, as the reply's
        stream will cut it."""
        prepare = getattr(self._engine, "prepare", None)
        if prepare is None:  # a remote voice: nothing ahead
            return
        v = self._voice
        splitter = self._new_splitter()
        clauses = splitter.feed(text.rstrip() + " ") or splitter.flush()
        if clauses and clauses[0] not in self._prepared:
            self._discard_prepared()
            if prepare(clauses[0], v.length_scale, v.speaker_id):
                self._prepared.add(clauses[0])
                self.prepared_clauses += 1

    def _discard_prepared(self) -> None:
        discard = getattr(self._engine, "discard", None)
        for clause in self._prepared:
            if discard is not None:
                discard(clause, self._voice.length_scale, self._voice.speaker_id)
        self._prepared = set()

    # With other syntheses on the voice (a loaded machine), a reply's first clause is cut after at
    # most this many words: a shorter first clause is heard sooner.
    LOADED_FIRST_CLAUSE_WORDS = 4

    async def _begin_reply(self, reply_id: str, timeline: TurnTimeline | None, kind: str = "reply") -> None:
        self._splitter.reset()
        self._splitter.first_max_words = self._voice.first_clause_max_words
        if getattr(self._engine, "in_flight", 0) > 0:
            self._splitter.first_max_words = min(self._voice.first_clause_max_words, self.LOADED_FIRST_CLAUSE_WORDS)
            self.short_first_clauses += 1
        self._reply_id = reply_id
        self._timeline = timeline
        self._clause_index = 0
        self._spoken = []
        await self.push_frame(AgentReplyStartFrame(reply_id=reply_id, kind=kind, timeline=timeline))

    async def _end_reply(self, kind: str) -> None:
        if self._reply_id is None:
            return
        tail = self._resampler.process(np.zeros(0, dtype=np.int16), last=True)
        if tail.size:
            await self._push_audio(tail.tobytes())
        self._new_resampler()
        await self.push_frame(
            AgentReplyDoneFrame(
                reply_id=self._reply_id, generated_text=" ".join(self._spoken), kind=kind, timeline=self._timeline
            )
        )
        self._reply_id = None
        self._timeline = None

    async def _speak(self, clause: str, *, cache: bool = False) -> None:
        if not clause:
            return
        if self._timeline is not None:
            self._timeline.mark("first_clause")
        assert self._reply_id is not None
        await self.push_frame(
            AgentClauseFrame(reply_id=self._reply_id, index=self._clause_index, text=clause, timeline=self._timeline)
        )
        first = self._clause_index == 0
        if not first and self.unplayed_s is not None:
            await self._wait_for_playback()
        if first and clause in self._prepared:
            self._prepared.discard(clause)  # synthesize() takes the prepared audio
            self.prepared_spoken += 1
        self._clause_index += 1
        self._spoken.append(clause)
        audio = None
        error: Exception | None = None
        for attempt in (1, 2):  # a failed synthesis is tried once more: the caller must not hear a gap
            try:
                audio = await self._engine.synthesize(
                    clause, self._voice.length_scale, self._voice.speaker_id, cache=cache, urgent=first
                )
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:
                error = e
                logger.error(f"{self}: synthesis failed (attempt {attempt}): "
                             f"{getattr(e, 'endpoint', 'in-process')}: {getattr(e, 'what', type(e).__name__)}")  # fmt: skip
        if audio is None:
            self.backend_failures.append({"kind": getattr(error, "kind", "tts"),
                                          "backend": getattr(error, "endpoint", "in-process"),
                                          "error": getattr(error, "what", type(error).__name__)})  # fmt: skip
            return
        pcm = self._resampler.process(np.frombuffer(audio, dtype=np.int16))
        await self._push_audio(pcm.tobytes())

    LEAD_S = 2.0  # later clauses are synthesised once less than this is left to play
    LEAD_POLL_S = 0.05

    async def _wait_for_playback(self) -> None:
        """Synthesise only as far ahead of playback as needed (a barge-in cancels the wait)."""
        assert self.unplayed_s is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        while (left := self.unplayed_s()) > self.LEAD_S:
            await asyncio.sleep(min(left - self.LEAD_S, 0.5) + self.LEAD_POLL_S)
        self.waited_s += loop.time() - started

    async def _push_audio(self, audio: bytes) -> None:
        """A clause's audio as one frame: the output slices it into the transport's frames."""
        if audio:
            await self.push_frame(TTSAudioRawFrame(audio=audio, sample_rate=self._out_rate, num_channels=1))
