"""Speech detectors for turn taking: which frames of 16 kHz caller audio hold speech.

Three, chosen by a pipeline's ``turn_taking.vad``:

- ``silero`` (the default): Silero VAD (the ONNX model Pipecat bundles), one 32 ms
  window (512 samples) at a time. One ONNX session per process serves every call
  (:class:`SileroVADEngine`, from the shared model pool); each call keeps its own
  recurrent state and 64-sample context (:class:`SileroStream`). It runs inline on the
  event loop: inference is 63 µs per window on one core of the 2-core reference machine
  (batching 8 calls' windows would bring it to 32 µs each, less than a hop to a thread
  costs), ~120 µs with the band energies that place the end of speech: 0.4 % of a core
  per call, 8 calls ≈ 3 %. Quiet in street, office and line noise at 5 dB SNR.
- ``webrtc``: Google's webrtcvad (20 ms frames) behind a fixed RMS floor. Microseconds
  per frame, but it hears street and office noise (and any noise for a while after it
  starts) as speech, so a turn's end of speech runs on, 0.3-2 s late or until the noise
  stops.
- ``webrtc+noise-floor``: webrtcvad gated by an adaptive noise floor
  (:class:`NoiseFloor`): a frame is speech only if webrtcvad says so *and* its
  energy in three of five speech bands stands ``noise_floor_margin_db`` over those
  bands' floors, tracked by minimum statistics. Good on steady line hiss; street and
  office noise (swells, bursts, clicks) still gets through.

Each is a Pipecat :class:`VADAnalyzer` (the base class counts ``start_secs`` /
``stop_secs`` of speech and quiet) that runs inline and notes where its last voiced
frame ends (:attr:`FrameVAD.voiced_end`, samples since the stream began): the end of
speech a turn's timeline records.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import webrtcvad
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState

from voicecore.config import TurnTaking

SAMPLE_RATE = 16000
WEBRTC_FRAME_MS = 20
# Voiced frames quieter than this (RMS, int16 units; about -56 dBFS) are taken as
# line noise even when webrtcvad says speech.
MIN_SPEECH_RMS = 50.0


class FrameVAD(VADAnalyzer):
    """A Pipecat VAD analyzer that decides frame by frame, inline, and notes its last voiced frame.

    ``voice_confidence`` answers 1.0 (speech) or 0.0, so the base class's confidence
    threshold is moot; Pipecat's BS.1770 loudness gate (a 400 ms window that lags
    speech onsets) is turned off: each detector has its own level rule.
    """

    #: how long after speech begins the detector's first voiced frame comes (samples); counted in
    #: the speech a start or a barge-in needs
    onset_lag_samples = 0
    #: the detector tells speech from noise (a speech probability), so a barge-in may need less
    #: speech than a turn's start (``barge_in_ms``); webrtcvad hears noise as speech and does not
    tells_speech_from_noise = False

    def __init__(self, *, params: VADParams | None = None):
        #: listening for a barge-in (the agent speaks): the RMS an onset frame needs (the echo
        #: floor, set before each feed); None: not listening, no onset frames counted
        self.barge_in_floor: float | None = None
        self._onset_run = 0  # audio in the current run of onset frames
        super().__init__(sample_rate=SAMPLE_RATE, params=params)
        self.set_sample_rate(SAMPLE_RATE)
        self.frames_seen = 0
        self.last_voiced_frame = -1  # index of the last frame judged voiced

    def samples_for(self, speech_ms: float) -> int:
        """The audio (samples, whole frames, at least one) of consecutive frames that stands for
        ``speech_ms`` of speech, the detector's onset lag counted in."""
        frame = self.num_frames_required()
        needed = speech_ms * SAMPLE_RATE / 1000 - self.onset_lag_samples
        return max(1, round(needed / frame)) * frame

    def set_params(self, params: VADParams):
        super().set_params(params)
        self._vad_start_frames = self.samples_for(params.start_secs * 1000) // self.num_frames_required()
        self._onset_run = 0

    @property
    def onset_samples(self) -> int:
        """Audio (samples) in the current run of consecutive onset frames: frames that count towards
        a barge-in (voiced, sure of speech, over :attr:`barge_in_floor`), while listening for one."""
        return self._onset_run

    def frame_is_onset(self, voiced: bool) -> bool:
        """Does the frame just judged (``voiced``) count towards a barge-in onset (its level aside)?"""
        return voiced

    def start_speaking(self) -> VADState:
        """Speech has started (a barge-in decided it before ``start_secs``): the detector is speaking."""
        self._vad_state = VADState.SPEAKING
        self._vad_starting_count = 0
        return self._vad_state

    @property
    def voiced_end(self) -> int:
        """Where the speech of the last voiced frame ends, in samples since the stream began (0 before any)."""
        if self.last_voiced_frame < 0:
            return 0
        return (self.last_voiced_frame + 1) * self.num_frames_required()

    @abstractmethod
    def frame_is_voiced(self, samples: np.ndarray) -> bool:
        """Does this frame (int16, ``num_frames_required()`` samples) hold speech?"""

    def voice_confidence(self, buffer: bytes) -> float:
        index = self.frames_seen
        self.frames_seen += 1
        samples = np.frombuffer(buffer, dtype=np.int16)
        if samples.size == 0:
            return 0.0
        voiced = self.frame_is_voiced(samples)
        if voiced:
            self.last_voiced_frame = index
        floor = self.barge_in_floor
        onset = floor is not None and self.frame_is_onset(voiced) and (floor <= 0 or _rms(samples) >= floor)
        self._onset_run = self._onset_run + samples.size if onset else 0
        return 1.0 if voiced else 0.0

    @property
    def state(self) -> VADState:
        return self._vad_state

    def analyze(self, buffer: bytes) -> VADState:
        """The speaking state after ``buffer`` (any length of 16 kHz int16 audio), synchronously."""
        return self._run_analyzer(buffer)

    def _get_smoothed_volume(self, audio: bytes) -> float:  # noqa: D401 - Pipecat hook
        return 1.0

    async def analyze_audio(self, buffer: bytes) -> VADState:
        return self._run_analyzer(buffer)


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float32) ** 2)))


class WebRTCVADAnalyzer(FrameVAD):
    """Google's webrtcvad (20 ms frames) behind a fixed RMS floor (``min_speech_rms``)."""

    def __init__(self, *, aggressiveness: int = 2, params: VADParams | None = None,
                 min_speech_rms: float = MIN_SPEECH_RMS):
        if not 0 <= aggressiveness <= 3:
            raise ValueError(f"webrtcvad aggressiveness must be 0..3, got {aggressiveness}")
        self._vad = webrtcvad.Vad(aggressiveness)
        self._min_speech_rms = min_speech_rms
        super().__init__(params=params)

    def num_frames_required(self) -> int:
        return SAMPLE_RATE * WEBRTC_FRAME_MS // 1000

    def frame_is_voiced(self, samples: np.ndarray) -> bool:
        return _rms(samples) >= self._min_speech_rms and self._vad.is_speech(samples.tobytes(), SAMPLE_RATE)


# --------------------------------------------------------------------------- adaptive noise floor


class NoiseFloor:
    """The noise floor of a stream per speech band, tracked by minimum statistics; pure numpy.

    Each frame's energy in :attr:`BANDS` (Hann-windowed FFT) is smoothed over a few
    frames; a band's floor is the minimum of that over the last ``window_s`` seconds. A
    frame stands over the floor when :attr:`MIN_BANDS` of the bands' smoothed energies do
    by the margin (speech fills several bands at once; a click or a rumble one or two).
    Speech leaves gaps between syllables and words, so the minimum stays at the noise
    even while someone talks, and no speech decision feeds back into the floor (a
    floor updated only in "non-speech" locks up when the noise steps up and is then
    taken for speech). The minimum sits a few dB under the noise's mean; the margin
    covers that. Until ``warmup_s`` of audio has been seen no frame stands over the
    floor (a call opens with the agent's greeting; the line's first noise is not a turn).
    """

    BANDS = ((250, 500), (500, 900), (900, 1500), (1500, 2400), (2400, 3600))
    MIN_BANDS = 3  # bands over their floor a speech frame needs (a click or a rumble fills one or two)

    def __init__(self, frame_samples: int = 320, *, margin_db: float = 10.0, window_s: float = 1.5,
                 warmup_s: float = 0.3, smoothing: float = 0.5, sample_rate: int = SAMPLE_RATE):
        self.margin_db = margin_db
        self._window = np.hanning(frame_samples).astype(np.float32)
        freqs = np.fft.rfftfreq(frame_samples, 1 / sample_rate)
        self._bands = [np.nonzero((freqs >= lo) & (freqs < hi))[0] for lo, hi in self.BANDS]
        frame_s = frame_samples / sample_rate
        self._history = np.full((max(1, round(window_s / frame_s)), len(self.BANDS)), np.inf, np.float32)
        self._warmup = max(1, round(warmup_s / frame_s))
        self._alpha = smoothing  # weight of the new frame in the smoothed band energy
        self._smoothed: np.ndarray | None = None
        self.frames = 0

    def band_db(self, samples: np.ndarray) -> np.ndarray:
        spectrum = np.abs(np.fft.rfft(samples.astype(np.float32) * self._window)) ** 2
        return 10 * np.log10(np.array([spectrum[b].mean() for b in self._bands]) + 1.0)

    @property
    def floor_db(self) -> np.ndarray:
        return self._history.min(axis=0)

    def update(self, samples: np.ndarray) -> float:
        """Feed one frame; returns how far (dB) its ``MIN_BANDS``-th loudest band (smoothed) stands
        over that band's floor (the floor as it was before this frame; ``-inf`` while warming up)."""
        db = self.band_db(samples)
        floor = self.floor_db
        self._smoothed = db if self._smoothed is None else self._alpha * db + (1 - self._alpha) * self._smoothed
        self._history[self.frames % self._history.shape[0]] = self._smoothed
        self.frames += 1
        if self.frames <= self._warmup:
            return float("-inf")
        return float(np.sort(self._smoothed - floor)[-self.MIN_BANDS])

    def above(self, samples: np.ndarray) -> bool:
        return self.update(samples) >= self.margin_db


class NoiseFloorVADAnalyzer(WebRTCVADAnalyzer):
    """webrtcvad gated by an adaptive noise floor: speech = webrtcvad says so and the frame stands
    ``margin_db`` over the floor (:class:`NoiseFloor`)."""

    def __init__(self, *, aggressiveness: int = 2, params: VADParams | None = None, margin_db: float = 10.0,
                 min_speech_rms: float = MIN_SPEECH_RMS):
        super().__init__(aggressiveness=aggressiveness, params=params, min_speech_rms=min_speech_rms)
        self.noise_floor = NoiseFloor(self.num_frames_required(), margin_db=margin_db)

    def frame_is_voiced(self, samples: np.ndarray) -> bool:
        above = self.noise_floor.above(samples)  # every frame feeds the floor
        return above and super().frame_is_voiced(samples)


# --------------------------------------------------------------------------- Silero VAD

# The model carries a recurrent state from window to window; long non-speech shifts it
# so that the speech after is under-reported. As Pipecat's SileroVADAnalyzer does, the
# state is reset every RESET_INTERVAL_S of audio, but only in clear non-speech: the
# detector quiet and the last RESET_LOW_WINDOWS windows all under RESET_MAX_PROBABILITY.
RESET_INTERVAL_S = 2.0
RESET_MAX_PROBABILITY = 0.1
RESET_LOW_WINDOWS = 5
# Where speech ended (see SileroVADAnalyzer): the last window scoring SILERO_CONFIDENT,
# unless voiced windows go on more than SILERO_DECAY_WINDOWS after it; moved back by up to
# SILERO_LAG_MS, not before the last SILERO_SUB-sample sub-window SILERO_FLOOR_MARGIN_DB over
# the noise level (the median phone-band level of the last SILERO_NOISE_WINDOWS windows
# scored under RESET_MAX_PROBABILITY).
SILERO_CONFIDENT = 0.85
SILERO_DECAY_WINDOWS = 4
SILERO_LAG_MS = 96
SILERO_LAG_SAMPLES = SAMPLE_RATE * SILERO_LAG_MS // 1000
SILERO_SUB = 128
SILERO_FLOOR_MARGIN_DB = 12.0
SILERO_NOISE_WINDOWS = 8
# Inside speech, windows Silero scores under the keep threshold but whose phone-band level
# stands SILERO_FLOOR_MARGIN_DB over the noise (unvoiced consonants) keep the speech going,
# up to this many in a row (192 ms).
SILERO_BRIDGE_WINDOWS = 6
# Silero's first window over the threshold comes about this long after speech begins: it
# counts towards ``speech_start_ms`` (120 ms → 3 windows), so a turn's start comes as soon as
# with webrtcvad (bench endpointing: onset p50 116 vs 111 ms; 143 ms with 4 windows), and
# towards ``barge_in_ms`` (64 ms → 1 window).
SILERO_ONSET_LAG_MS = 32
# While the agent speaks a barge-in comes after ``barge_in_ms`` of windows Silero scores at least
# this (speech scores 0.9-1.0 from its first voiced window; street, office and line noise, typing
# and clicks stay under it: bench endpointing, "false barge-ins").
BARGE_IN_PROBABILITY = 0.8


class SileroVADEngine:
    """Silero VAD v5 (Pipecat's bundled ONNX file): one session, loaded once per process and shared
    by every call; a call's recurrent state lives in its own :class:`SileroStream`."""

    MODEL_FILE = "silero_vad.onnx"
    WINDOW = 512  # samples at 16 kHz: 32 ms
    CONTEXT = 64  # samples of the previous window the model sees before each window

    def __init__(self, model_path: str | None = None):
        import onnxruntime as ort

        from voicecore.config import bundled_resource

        path = model_path or bundled_resource("pipecat.audio.vad.data", self.MODEL_FILE)
        so = ort.SessionOptions()
        so.inter_op_num_threads = 1
        so.intra_op_num_threads = 1
        self._session = ort.InferenceSession(path, providers=["CPUExecutionProvider"], sess_options=so)
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.path = path
        self.stream().probability(np.zeros(self.WINDOW, np.float32))  # warm up at load

    def stream(self) -> SileroStream:
        """A fresh per-call state on this engine."""
        return SileroStream(self)

    def run(self, windows: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One inference: ``windows`` (batch, CONTEXT + WINDOW) float32 and ``state`` (2, batch, 128)
        → speech probabilities (batch,) and the next state. Safe from several threads."""
        out, new_state = self._session.run(None, {"input": windows, "state": state, "sr": self._sr})
        return np.asarray(out).reshape(-1), new_state


class SileroStream:
    """One call's Silero state: the recurrent state and the context carried between windows."""

    def __init__(self, engine: SileroVADEngine):
        self._engine = engine
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros(SileroVADEngine.CONTEXT, np.float32)

    def probability(self, window: np.ndarray) -> float:
        """Speech probability of the next 512-sample window (float32 in [-1, 1])."""
        x = np.concatenate((self._context, window.astype(np.float32, copy=False)))[None, :]
        prob, self._state = self._engine.run(x, self._state)
        self._context = x[0, -SileroVADEngine.CONTEXT:]
        return float(prob[0])


class SileroVADAnalyzer(FrameVAD):
    """Silero VAD per 32 ms window on a shared :class:`SileroVADEngine`.

    Speaking and quiet (what opens a turn, a pause, a barge-in) follow Silero's own rule:
    speech starts on windows at ``threshold``, goes on while they stay over ``threshold -
    0.15``; the windows needed to start count Silero's onset lag (:data:`SILERO_ONSET_LAG_MS`).
    Where speech *ended* is found more tightly, as Silero answers about 1.0 inside speech
    and then decays over two to four windows (80-120 ms, longer in noise):

    - the end is that of the last *confident* window (:data:`SILERO_CONFIDENT`), unless
      the voiced windows after it go on longer than a decay does (soft speech that never
      scores that high: then the last voiced window);
    - unvoiced consonants (Silero scores "ch", "f", "s" low: "much ‖ for your help" made a
      pause) keep the speech going when they stand over the noise, for up to
      :data:`SILERO_BRIDGE_WINDOWS` windows, without moving its end;
    - the model lags the audio, so the end is moved back up to :data:`SILERO_LAG_MS`, but
      not before the last 8 ms of audio that stands :data:`SILERO_FLOOR_MARGIN_DB` over the
      line's noise level in the phone band (300-3400 Hz; the level is the median over the
      last windows Silero scored as clearly not speech). In quiet the tail of a word stands
      over the floor and nothing is taken off; in noise it sinks into it.

    While the agent speaks a barge-in counts windows Silero scores :data:`BARGE_IN_PROBABILITY`
    or more, on the main grid and on a second one half a window later (:meth:`_offset_grid`).

    The constants were measured with ``bench endpointing`` (benchmarks/README.md). A window
    quieter than ``min_speech_rms`` is never speech.
    """

    onset_lag_samples = SAMPLE_RATE * SILERO_ONSET_LAG_MS // 1000
    tells_speech_from_noise = True

    def __init__(self, engine: SileroVADEngine, *, threshold: float = 0.5, params: VADParams | None = None,
                 min_speech_rms: float = MIN_SPEECH_RMS, onset_threshold: float = BARGE_IN_PROBABILITY):
        self._stream = engine.stream()
        self._threshold = threshold
        self._onset_threshold = max(threshold, onset_threshold)
        self._keep_threshold = max(0.05, threshold - 0.15)
        self._min_speech_rms = min_speech_rms
        self._windows_since_reset = 0
        self._low_windows = 0
        self._noise_db: float | None = None  # phone-band level of the line when clearly not speech
        self._quiet_levels = np.zeros(SILERO_NOISE_WINDOWS, np.float32)  # the last such windows' levels
        self._quiet_count = 0
        self._loud_end = 0  # end of the last sub-window over the noise level + margin
        self._confident_window = -1
        self._confident_end = 0  # end of speech as of the last confident window
        self._voiced_end = 0  # end of speech as of the last voiced window
        self._bridge = False  # this window keeps the speech going without being voiced
        self._bridged = 0  # such windows in a row
        self.last_probability = 0.0
        # Listening for a barge-in: a second state on windows half a window after the main grid's.
        self._offset = engine.stream()
        self._offset_pending: np.ndarray | None = None  # samples of the next offset window (None: idle)
        self._offset_at = 0  # where _offset_pending begins, in samples since the stream began
        self._offset_run = 0  # audio in the current run of offset onset windows
        self._offset_since_reset = 0
        self._offset_low = 0
        self._heard = 0  # samples fed so far
        super().__init__(params=params)
        freqs = np.fft.rfftfreq(SILERO_SUB, 1 / SAMPLE_RATE)
        self._band = (freqs >= 300) & (freqs <= 3400)
        self._hann = np.hanning(SILERO_SUB).astype(np.float32)

    def num_frames_required(self) -> int:
        return SileroVADEngine.WINDOW

    def frame_is_onset(self, voiced: bool) -> bool:
        """A barge-in counts only windows Silero is sure of (:data:`BARGE_IN_PROBABILITY`)."""
        return voiced and self.last_probability >= self._onset_threshold

    @property
    def onset_samples(self) -> int:
        """The longer run of onset windows of the two grids (see :meth:`_offset_grid`)."""
        return max(self._onset_run, self._offset_run)

    def analyze(self, buffer: bytes) -> VADState:
        self._offset_grid(np.frombuffer(buffer, dtype=np.int16))
        return super().analyze(buffer)

    def _offset_grid(self, samples: np.ndarray) -> None:
        """While listening for a barge-in, Silero also hears the windows that start half a window
        after the main grid's, on a state of their own (each state hears whole consecutive windows,
        as the model was trained): an onset window ends every 16 ms instead of every 32, so a
        barge-in comes 8 ms sooner on average and up to 16 ms (more when the main grid's window
        cuts the first syllable badly: bench endpointing). Costs a second inference per window
        while the agent speaks."""
        window = SileroVADEngine.WINDOW
        start, self._heard = self._heard, self._heard + samples.size
        if self.barge_in_floor is None:
            self._offset_pending, self._offset_run = None, 0
            return
        if self._offset_pending is None:  # listening from now on: a fresh state from the next offset window
            self._offset.reset()
            self._offset_since_reset = self._offset_low = 0
            self._offset_at = start + (window // 2 - start) % window
            self._offset_pending = np.zeros(0, np.int16)
        skip = max(0, self._offset_at + self._offset_pending.size - start)
        pending = np.concatenate([self._offset_pending, samples[skip:]])
        whole = pending.size // window * window
        for i in range(0, whole, window):
            self._offset_window(pending[i: i + window])
        self._offset_pending = pending[whole:]
        self._offset_at += whole

    def _offset_window(self, samples: np.ndarray) -> None:
        prob = self._offset.probability(samples.astype(np.float32) / 32768.0)
        self._offset_since_reset += 1
        self._offset_low = self._offset_low + 1 if prob < RESET_MAX_PROBABILITY else 0
        if (self._offset_since_reset * SileroVADEngine.WINDOW >= RESET_INTERVAL_S * SAMPLE_RATE
                and self._offset_low >= RESET_LOW_WINDOWS):
            self._offset.reset()
            self._offset_since_reset = 0
        level = _rms(samples)
        onset = (prob >= self._onset_threshold and level >= self._min_speech_rms
                 and level >= (self.barge_in_floor or 0.0))
        self._offset_run = self._offset_run + samples.size if onset else 0

    @property
    def voiced_end(self) -> int:
        if self.last_voiced_frame < 0:
            return 0
        if self._confident_window >= 0 and self.last_voiced_frame - self._confident_window <= SILERO_DECAY_WINDOWS:
            return self._confident_end
        return self._voiced_end

    def frame_is_voiced(self, samples: np.ndarray) -> bool:
        x = samples.astype(np.float32) / 32768.0
        prob = self._stream.probability(x)
        self.last_probability = prob
        self._maybe_reset(prob)
        index = self.frames_seen - 1  # voice_confidence counted this window already
        start = index * SileroVADEngine.WINDOW
        subs = x.reshape(-1, SILERO_SUB) * self._hann
        level_db = 10 * np.log10((np.abs(np.fft.rfft(subs, axis=1)) ** 2)[:, self._band].sum(axis=1) + 1e-10)
        if prob < RESET_MAX_PROBABILITY:
            self._quiet_levels[self._quiet_count % self._quiet_levels.size] = level_db.mean()
            self._quiet_count += 1
            self._noise_db = float(np.median(self._quiet_levels[: min(self._quiet_count, self._quiet_levels.size)]))
        loud = np.nonzero(level_db >= (self._noise_db if self._noise_db is not None else -np.inf)
                          + SILERO_FLOOR_MARGIN_DB)[0]
        if loud.size:
            self._loud_end = start + (int(loud[-1]) + 1) * SILERO_SUB
        loud_enough = _rms(samples) >= self._min_speech_rms
        speaking = self._vad_state in (VADState.SPEAKING, VADState.STOPPING)
        voiced = loud_enough and prob >= (self._keep_threshold if speaking else self._threshold)
        self._bridge = False
        if voiced:
            end = start + SileroVADEngine.WINDOW
            self._voiced_end = max(end - SILERO_LAG_SAMPLES, min(end, self._loud_end))
            if prob >= SILERO_CONFIDENT:
                self._confident_window, self._confident_end = index, self._voiced_end
            self._bridged = 0
        elif speaking and loud_enough and loud.size >= 2 and self._bridged < SILERO_BRIDGE_WINDOWS:
            self._bridge = True
            self._bridged += 1
        return voiced

    def voice_confidence(self, buffer: bytes) -> float:
        """As :class:`FrameVAD`'s; a window Silero does not hear as speech but that stands over the
        noise inside speech (the "ch f" of "much for": Silero scores unvoiced consonants low) keeps
        the speech going, up to :data:`SILERO_BRIDGE_WINDOWS` in a row, without moving its end."""
        confidence = super().voice_confidence(buffer)
        return 1.0 if self._bridge else confidence

    def _maybe_reset(self, prob: float) -> None:
        self._windows_since_reset += 1
        self._low_windows = self._low_windows + 1 if prob < RESET_MAX_PROBABILITY else 0
        if (self._windows_since_reset * SileroVADEngine.WINDOW >= RESET_INTERVAL_S * SAMPLE_RATE
                and self._vad_state == VADState.QUIET and self._low_windows >= RESET_LOW_WINDOWS):
            self._stream.reset()
            self._windows_since_reset = 0


# --------------------------------------------------------------------------- choice


def vad_params(params: TurnTaking) -> VADParams:
    return VADParams(confidence=0.5, start_secs=params.speech_start_ms / 1000, stop_secs=params.pause_ms / 1000,
                     min_volume=0.0)


def make_analyzer(params: TurnTaking, silero: SileroVADEngine | None = None) -> FrameVAD:
    """The speech detector ``params.vad`` names (Silero needs the process's shared engine)."""
    vp = vad_params(params)
    if params.vad == "silero":
        if silero is None:
            raise ValueError("turn_taking.vad: silero needs the shared Silero engine (ModelPool.silero_vad())")
        return SileroVADAnalyzer(silero, threshold=params.silero_threshold, params=vp)
    if params.vad == "webrtc+noise-floor":
        return NoiseFloorVADAnalyzer(aggressiveness=params.vad_aggressiveness, params=vp,
                                     margin_db=params.noise_floor_margin_db)
    return WebRTCVADAnalyzer(aggressiveness=params.vad_aggressiveness, params=vp)
