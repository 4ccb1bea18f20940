"""Streaming speech-to-text: faster-whisper, starting work before the turn ends.

Whisper's encoder always works on a 30 s window, so a transcription costs about
the same whatever the utterance length (~0.4 s for tiny.en on 2 threads). The
only way to have the final text soon after the end of speech is to start
transcribing at the first pause, while the end-of-turn decision is still being
made, and to throw that work away if the caller goes on speaking.

``SpeculativeTranscriber`` holds that logic with no Pipecat in it;
``WhisperSTTProcessor`` is the Pipecat shell around it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.time import time_now_iso8601

from voicecore.config import STTPreset
from voicecore.frames import (
    AgentSayFrame,
    PauseTranscriptFrame,
    SpeculativeTranscriptFrame,
    SpeechTrailingFrame,
)
from voicecore.records import TurnTimeline
from voicecore.services.batching import BatchQueue
from voicecore.services.cpu import CpuPriority

SAMPLE_RATE = 16000
PREROLL_SECONDS = 0.3  # audio kept from before the VAD confirmed speech (its first syllable)


@dataclass(eq=False)
class _Piece:
    """One encoder window of a request: its audio (at most ``LONGEST_PIECE_S``) as a mel spectrogram."""

    request: int  # index of the request in its batch
    frames: int  # mel frames of audio (100 a second), before the window's padding
    features: np.ndarray  # [n_mels, window frames]
    tokens: list[int]  # the decoder prompt: the hint (if any) and the start of transcript
    max_length: int  # CTranslate2's max_length for this piece alone

    @property
    def decode_limit(self) -> int:
        """How many tokens CTranslate2 generates at most for this piece alone (whisper.cc bounds a
        decode by ``min(max_length / 2, max_length - (prompt length - 1))``)."""
        return min(self.max_length // 2, self.max_length - (len(self.tokens) - 1))

    @property
    def batch_key(self) -> tuple[int, int]:
        """Pieces decode together when their encoder outputs have one length and their prompts put
        the start-of-transcript token at one position (CTranslate2 requires both)."""
        return self.features.shape[-1], len(self.tokens)


def decode_groups(pieces: Sequence[_Piece]) -> list[list[_Piece]]:
    """``pieces`` split into the batches one ``generate`` call can take (first come, first listed)."""
    groups: dict[tuple[int, int], list[_Piece]] = {}
    for piece in pieces:
        groups.setdefault(piece.batch_key, []).append(piece)
    return list(groups.values())


class WhisperEngine:
    """One faster-whisper model per process, shared by every call through one inference queue.

    Whisper is trained on 30 s windows and faster-whisper always encodes one,
    which costs ~0.25 s of tiny.en's ~0.35 s per utterance. CTranslate2 accepts a
    shorter window, and with a few seconds of silence after the speech the
    model still ends its transcript properly: ``encoder_window_s=None`` (the
    default) encodes the utterance plus 5 s, at least 10 s — ~0.12 s per
    utterance on 2 threads. On the benchmark corpus over μ-law its word error
    rate was no worse than the 30 s window's (30.5 % vs 46.9 %; 25 % vs 22.5 % on
    the demo lines: within the noise of espeak voices). ``encoder_window_s=30``
    is the standard behaviour.

    Batches: requests of different calls that wait while the model is busy are taken
    together (at most the preset's ``max_batch``, see ``voicecore.services.batching``).
    Each one is encoded alone, with its own window (batching the encoder gained nothing
    on 2 cores, and 8 at once were slower than one by one); the decoder then runs once
    for all the requests whose encoder outputs and prompts have one length (CTranslate2
    needs both) — usually all of them: turns under ~5 s, one pipeline's hint — each with
    its own prompt, no-speech probability and average log-probability, so a transcript
    is the one the request would have had alone.
    """

    PAD_S = 5.0
    MIN_WINDOW_S = 10.0
    # Higher than Whisper's 0.6: the VAD already gated the turn on voiced audio, and dropping a
    # caller's words (a noisy "Are you closed on Sunday?" scored 0.63 / -1.15) is worse than
    # passing low-confidence text to the LLM.
    NO_SPEECH_THRESHOLD = 0.8
    LOGPROB_THRESHOLD = -1.0
    LONGEST_PIECE_S = 28.0  # audio longer than this is transcribed in pieces
    MAX_HINT_TOKENS = 111  # Whisper keeps at most half of its 224-token context for the prompt

    def __init__(self, model_dir: str, preset: STTPreset, cpu: CpuPriority | None = None):
        from faster_whisper import WhisperModel

        self.model_dir = model_dir
        self.preset = preset
        self._model = WhisperModel(
            model_dir, device="cpu", compute_type=preset.compute_type, cpu_threads=preset.cpu_threads
        )
        tok = self._model.hf_tokenizer
        self._prompt = [tok.token_to_id("<|startoftranscript|>")]
        if self._model.model.is_multilingual:
            self._prompt += [tok.token_to_id(f"<|{preset.language}|>"), tok.token_to_id("<|transcribe|>")]
        self._prompt.append(tok.token_to_id("<|notimestamps|>"))
        self._hint_cache: dict[str, list[int]] = {}
        self.cpu = cpu or CpuPriority()
        # A lambda, so that a test replacing transcribe_batch_sync on the instance is heard.
        self._queue: BatchQueue[tuple[np.ndarray, str | None], str] = BatchQueue(
            lambda requests: self.transcribe_batch_sync(requests), max_batch=preset.max_batch, name="stt"
        )
        self.jobs_run = 0  # requests transcribed
        self.decodes_run = 0  # generate calls (a batch of requests may need more than one)
        self.transcribe_sync(np.zeros(SAMPLE_RATE // 2, dtype=np.float32))  # warm up at load

    @property
    def batches_run(self) -> int:
        """Batches the inference queue ran (a lone request is a batch of one)."""
        return self._queue.batches_run

    @property
    def batch_sizes(self) -> Counter[int]:
        """Batch size -> how many batches of that size the inference queue ran."""
        return self._queue.batch_sizes

    @property
    def waiting(self) -> int:
        """Requests waiting for the model (not counting the batch it is running)."""
        return self._queue.waiting

    @property
    def busy(self) -> bool:
        """The model is transcribing, or requests wait for it."""
        return self._queue.busy

    def _window_frames(self, n_frames: int) -> int:
        if self.preset.encoder_window_s is not None:
            return int(self.preset.encoder_window_s * 100)
        seconds = max(self.MIN_WINDOW_S, math.ceil(n_frames / 100 + self.PAD_S))
        return int(min(30.0, seconds) * 100)

    def transcribe_sync(self, audio: np.ndarray, prompt: str | None = None) -> str:
        """Transcribe 16 kHz float32 mono audio; blocking (run it in the engine's thread).

        One greedy (or beam) decode at temperature 0: no temperature fallback, whose
        re-decodes of noisy audio cost seconds, and a no-speech check instead of
        faster-whisper's segment loop. ``prompt`` (the pipeline's ``stt_hint``)
        goes in as Whisper's previous-text prompt.
        """
        return self.transcribe_batch_sync([(audio, prompt)])[0]

    def transcribe_batch_sync(self, requests: Sequence[tuple[np.ndarray, str | None]]) -> list[str]:
        """``transcribe_sync`` of several (audio, prompt) requests at once; blocking. Each gets the
        transcript it would have had alone."""
        pieces = [piece for i, (audio, prompt) in enumerate(requests) for piece in self._pieces(i, audio, prompt)]
        groups = decode_groups(pieces)
        heard: dict[int, str] = {}  # id(piece) -> its text
        with self.cpu.urgent():  # a caller is waiting for this transcript
            for group in groups:
                for piece, text in zip(group, self._decode(group), strict=True):
                    heard[id(piece)] = text
        self.jobs_run += len(requests)
        if len(requests) > 1:
            logger.debug(f"STT batch: {len(requests)} requests, {len(pieces)} windows, {len(groups)} decodes")
        texts: list[list[str]] = [[] for _ in requests]
        for piece in pieces:
            if heard[id(piece)]:
                texts[piece.request].append(heard[id(piece)])
        return [" ".join(t) for t in texts]

    def _pieces(self, request: int, audio: np.ndarray, prompt: str | None) -> list[_Piece]:
        """A request's encoder windows: one, or pieces of ``LONGEST_PIECE_S`` for a monologue longer
        than Whisper's window."""
        longest = int(self.LONGEST_PIECE_S * SAMPLE_RATE)
        tokens = self._prompt_tokens(prompt)
        out = []
        for start in range(0, audio.size, longest) if audio.size > longest else [0]:
            features = self._model.feature_extractor(audio[start : start + longest], padding=0)
            n = features.shape[-1]
            frames = max(n, self._window_frames(n)) if n <= 3000 else 3000
            features = np.pad(features[:, :frames], ((0, 0), (0, frames - min(n, frames))))
            # ~3 tokens per second of speech is typical; the bound stops a hallucination loop
            max_length = min(448, len(tokens) + 16 + int(10 * n / 100))
            out.append(_Piece(request, n, features.astype(np.float32), tokens, max_length))
        return out

    def _decode(self, group: list[_Piece]) -> list[str]:
        """One ``generate`` call for pieces of one ``batch_key``: their texts, in order."""
        import ctranslate2

        model = self._model.model
        encoded = []
        for piece in group:  # one by one: a batched encoder was no faster on 2 cores
            x = ctranslate2.StorageView.from_array(np.ascontiguousarray(piece.features[None]))
            encoded.append(np.array(model.encode(x))[0])
        memory = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack(encoded)))
        results = model.generate(
            memory,
            [piece.tokens for piece in group],
            beam_size=self.preset.beam_size,
            max_length=max(piece.max_length for piece in group),
            return_no_speech_prob=True,
            return_scores=True,
            suppress_blank=True,
            repetition_penalty=self.preset.repetition_penalty,
        )
        self.decodes_run += 1
        return [self._text(piece, result) for piece, result in zip(group, results, strict=True)]

    def _text(self, piece: _Piece, result) -> str:
        """A piece's transcript from its decode, or "" when Whisper heard no speech."""
        # The batch's max_length is its longest piece's: a piece stops where it would have alone.
        ids = result.sequences_ids[0][: piece.decode_limit]
        # Whisper's rule (as in faster-whisper): silence only when the no-speech token is
        # likely *and* the decoded text is improbable; words heard through noise stay.
        avg_logprob = result.scores[0] if result.scores else 0.0
        logger.debug(f"STT: {piece.frames / 100:.2f} s, window {piece.features.shape[-1] / 100:.0f} s, "
                     f"p(no speech)={result.no_speech_prob:.2f}, avg logprob {avg_logprob:.2f}")
        if result.no_speech_prob > self.NO_SPEECH_THRESHOLD and avg_logprob < self.LOGPROB_THRESHOLD:
            return ""
        text = self._model.hf_tokenizer.decode(ids).strip()
        return text if any(c.isalnum() for c in text) else ""  # ". . ." is Whisper hearing noise

    def _prompt_tokens(self, prompt: str | None) -> list[int]:
        if not prompt:
            return self._prompt
        cached = self._hint_cache.get(prompt)
        if cached is None:
            tok = self._model.hf_tokenizer
            words = tok.encode(" " + prompt.strip(), add_special_tokens=False).ids[-(self.MAX_HINT_TOKENS):]
            cached = [tok.token_to_id("<|startofprev|>"), *words, *self._prompt]
            self._hint_cache[prompt] = cached
        return cached

    async def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> str:
        """The transcript of ``audio``, made in the engine's thread, batched with the requests of
        other calls that wait at the same time."""
        return await self._queue.submit((audio, prompt))


@dataclass
class _Job:
    samples: int  # how much of the utterance the job covers
    task: asyncio.Future[str]


def _seen(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: whoever awaits the job still gets it


class SpeculativeTranscriber:
    """Transcription of one caller turn that starts at pauses and is reused when the turn ends.

    - ``append`` adds audio; ``pause()`` starts a transcription of everything so far
      (unless one already covers it); ``resume()`` — speech again — makes that job
      stale: it is cancelled if still queued and its result is never used;
    - ``final()`` returns the text of the whole turn, reusing the pause job when no
      speech came after it, and only otherwise transcribing again.
    """

    def __init__(self, transcribe: Callable[[np.ndarray], Awaitable[str]]):
        self._transcribe = transcribe
        self._chunks: list[np.ndarray] = []
        self._samples = 0
        self._voiced_until = 0  # samples up to the last pause (speech after it invalidates jobs)
        self._job: _Job | None = None
        self.jobs_started = 0
        self.jobs_discarded = 0

    @property
    def samples(self) -> int:
        return self._samples

    @property
    def chunks(self) -> list[np.ndarray]:
        """The turn's audio so far (int16 pieces)."""
        return list(self._chunks)

    def reset(self) -> None:
        self._discard_job()
        self._chunks = []
        self._samples = 0
        self._voiced_until = 0

    def append(self, pcm16: np.ndarray) -> None:
        self._chunks.append(pcm16)
        self._samples += pcm16.size

    def _audio(self) -> np.ndarray:
        if not self._chunks:
            return np.zeros(0, dtype=np.float32)
        audio = np.concatenate(self._chunks)
        self._chunks = [audio]
        return audio.astype(np.float32) / 32768.0

    def _start_job(self) -> _Job:
        audio = self._audio()
        self.jobs_started += 1
        job = _Job(samples=self._samples, task=asyncio.ensure_future(self._transcribe(audio)))
        job.task.add_done_callback(_seen)  # a stale job's failure is not the turn's (its final retries)
        self._job = job
        return job

    def _discard_job(self) -> None:
        if self._job is not None:
            if not self._job.task.done():
                self._job.task.cancel()
            self.jobs_discarded += 1
            self._job = None

    def pause(self) -> asyncio.Future[str]:
        """Speech paused (or trailed off): transcribe what we have now, unless the current job
        already covers it — a job not dropped by :meth:`resume` holds all the speech so far (only
        silence came after it). Returns the job's future (the transcript up to this pause)."""
        if self._job is None:
            self._voiced_until = self._samples
            self._start_job()
        assert self._job is not None
        return self._job.task

    def resume(self) -> None:
        """Speech resumed after a pause: the pause's job no longer covers the turn."""
        self._discard_job()

    async def final(self) -> str:
        """The transcript of the whole turn."""
        job = self._job
        if job is None or job.samples < self._voiced_until:
            self._discard_job()
            job = self._start_job()
        try:
            return await job.task
        finally:
            self._job = None


class WhisperSTTProcessor(FrameProcessor):
    """Pipecat processor: caller audio + speaking frames in, ``TranscriptionFrame`` out.

    The final transcript carries the turn's timeline (``metadata["timeline"]``)
    with ``stt_final`` set. Empty transcripts (noise, a cough) end nothing. A turn that rejoins
    the last one (``UserStartedSpeakingFrame.metadata["rejoins"]``: the turn detector undid a false
    end of turn) is transcribed from the last turn's audio, the gap and its own: one transcript of
    the whole utterance. ``rejoin_within_ms`` (the turn detector's): how long after a turn its
    audio is kept for that.
    """

    def __init__(
        self,
        engine: WhisperEngine,
        *,
        prompt: str | None = None,
        user_id: str = "caller",
        min_utterance_ms: int = 200,
        fallback_reply: str | None = None,
        rejoin_within_ms: int | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name or "WhisperSTT")
        self._engine = engine
        self._prompt = prompt
        self._user_id = user_id
        self._min_samples = int(min_utterance_ms * SAMPLE_RATE / 1000)
        self._fallback = fallback_reply
        self._speculator = SpeculativeTranscriber(self._transcribe)
        self._preroll: list[np.ndarray] = []
        # the last turn's audio and everything after it, while a turn may still rejoin it (the
        # onset a turn detector waits for, and a pre-roll, on top of rejoin_within_ms)
        self._keep_after_turn = 0 if rejoin_within_ms is None else int((rejoin_within_ms + 1000) * SAMPLE_RATE / 1000)
        self._last_turn: list[np.ndarray] = []
        self._after_turn: list[np.ndarray] = []
        self._after_turn_len = 0
        self._in_turn = False
        self.rejoins = 0  # turns transcribed together with the one before
        self._final_tasks: set[asyncio.Task] = set()
        self.backend_failures: list[dict[str, str]] = []  # {"kind", "backend", "error"} per failed turn

    @property
    def busy(self) -> bool:
        """A turn's final transcript (or a pause's transcript) is still being made."""
        return bool(self._final_tasks)

    @property
    def speculator(self) -> SpeculativeTranscriber:
        return self._speculator

    async def _transcribe(self, audio: np.ndarray) -> str:
        return await self._engine.transcribe(audio, self._prompt)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            samples = np.frombuffer(frame.audio, dtype=np.int16)
            if self._in_turn:
                self._speculator.append(samples)
            else:
                self._preroll.append(samples)
                keep = int(PREROLL_SECONDS * SAMPLE_RATE)
                while sum(a.size for a in self._preroll) - self._preroll[0].size >= keep:
                    self._preroll.pop(0)
                if self._last_turn:
                    self._after_turn.append(samples)
                    self._after_turn_len += samples.size
                    if self._after_turn_len > self._keep_after_turn:  # no turn can rejoin it now
                        self._last_turn, self._after_turn, self._after_turn_len = [], [], 0
            return  # audio stops here: nothing downstream needs it
        if isinstance(frame, UserStartedSpeakingFrame) and direction == FrameDirection.DOWNSTREAM:
            # A transcriber per turn: the previous turn may still be finishing its transcript.
            self._in_turn = True
            self._speculator = SpeculativeTranscriber(self._transcribe)
            if frame.metadata.get("rejoins") and self._last_turn:
                # the same utterance as the last turn: transcribe both parts as one
                self.rejoins += 1
                seed = self._last_turn + self._after_turn
            else:
                seed = self._preroll
            for chunk in seed:
                self._speculator.append(chunk)
            self._preroll = []
            self._last_turn, self._after_turn, self._after_turn_len = [], [], 0
        elif isinstance(frame, VADUserStartedSpeakingFrame) and self._in_turn:
            self._speculator.resume()
        elif isinstance(frame, SpeechTrailingFrame):
            if self._in_turn and frame.resumed:
                self._speculator.resume()
            elif self._in_turn and not getattr(self._engine, "busy", True):
                # speech trailed off: transcribe now (the pause reuses it), unless the model is
                # busy with other turns (the CPU is short: the pause will ask)
                self._speculator.pause()
            return  # nothing downstream needs it
        elif isinstance(frame, VADUserStoppedSpeakingFrame) and self._in_turn:
            job = self._speculator.pause()
            pause_id = frame.metadata.get("pause_id")
            if pause_id is not None:
                self._report_pause(job, pause_id)
        elif isinstance(frame, UserStoppedSpeakingFrame) and self._in_turn:
            self._in_turn = False
            if self._keep_after_turn:
                self._last_turn = self._speculator.chunks
            timeline = frame.metadata.get("timeline") or TurnTimeline(speech_end=time.monotonic())
            task = self.create_task(self._finish_turn(self._speculator, timeline))
            self._final_tasks.add(task)
            task.add_done_callback(self._final_tasks.discard)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            self._speculator.reset()
        await self.push_frame(frame, direction)

    def _report_pause(self, job: asyncio.Future[str], pause_id: int) -> None:
        """Send the transcript up to a pause back to the turn detector (the semantic cue)."""

        async def report() -> None:
            try:
                text = await asyncio.shield(job)
            except asyncio.CancelledError:
                return  # speech resumed (the job was dropped) or the call ended
            except Exception:
                return  # the turn's final transcription reports failures
            await self.push_frame(PauseTranscriptFrame(pause_id=pause_id, text=text), FrameDirection.UPSTREAM)
            if text.strip():  # the LLM may start the reply now, held back until the turn ends
                await self.push_frame(SpeculativeTranscriptFrame(pause_id=pause_id, text=text))

        task = self.create_task(report())
        self._final_tasks.add(task)
        task.add_done_callback(self._final_tasks.discard)

    async def _push_no_speech(self, timeline: TurnTimeline) -> None:
        """A turn that held no words: an empty final transcript, so a reply that waited for it goes on."""
        frame = TranscriptionFrame(text="", user_id=self._user_id, timestamp=time_now_iso8601(), finalized=True)
        frame.metadata["timeline"] = timeline
        frame.metadata["no_speech"] = True
        await self.push_frame(frame)

    async def _finish_turn(self, speculator: SpeculativeTranscriber, timeline: TurnTimeline) -> None:
        if speculator.samples < self._min_samples:
            speculator.reset()
            await self._push_no_speech(timeline)
            return
        try:
            text = await speculator.final()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # The caller must not be left with a silent line: say so and let them repeat.
            failure = {"kind": getattr(e, "kind", "stt"), "backend": getattr(e, "endpoint", "in-process"),
                       "error": getattr(e, "what", type(e).__name__)}  # fmt: skip
            self.backend_failures.append(failure)
            logger.error(f"{self}: transcription failed ({failure['backend']}: {failure['error']})")
            speculator.reset()
            if self._fallback:
                await self.push_frame(AgentSayFrame(text=self._fallback, kind="fallback"))
            return
        timeline.mark("stt_final")
        speculator.reset()
        if not text:
            logger.debug(f"{self}: empty transcript, no caller turn")
            await self._push_no_speech(timeline)
            return
        frame = TranscriptionFrame(text=text, user_id=self._user_id, timestamp=time_now_iso8601(), finalized=True)
        frame.metadata["timeline"] = timeline
        await self.push_frame(frame)
