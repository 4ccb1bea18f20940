"""The stream resamplers: int16 mono audio from one rate to another, state kept across chunks.

Both keep their filter state between chunks, so audio cut into 20 ms pieces resamples
exactly like the whole signal:

- :class:`StreamResampler`, soxr's streaming resampler (HQ): the TTS (the voice's rate →
  the call's output rate) and the recorder (both sides to the recording rate). soxr
  filters in blocks and hands its output back in bursts: a stream of 20 ms chunks comes
  out 6-39 ms late from 22.05 or 48 kHz and 12-115 ms late (64 ms on average) from a
  phone line's 8 kHz, which a whole clause of TTS audio or a recording never notices;
- :class:`LiveResampler`, a windowed-sinc polyphase filter in numpy: the caller's audio
  (any rate → 16 kHz) on its way to the turn detector and the STT, where every
  millisecond held back delays a barge-in and the end of a turn. Each chunk's output
  comes out with it, 2-4 ms late (the filter's own delay).
"""

from __future__ import annotations

from math import ceil, gcd

import numpy as np
import soxr


class StreamResampler:
    """Resamples a stream of int16 mono chunks from ``from_rate`` to ``to_rate`` (a no-op when equal)."""

    def __init__(self, from_rate: int, to_rate: int):
        if from_rate <= 0 or to_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {from_rate} and {to_rate}")
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._stream = (
            None if from_rate == to_rate else soxr.ResampleStream(from_rate, to_rate, 1, dtype="int16", quality="HQ")
        )

    def process(self, samples: np.ndarray, *, last: bool = False) -> np.ndarray:
        """The next chunk at ``to_rate`` (may be shorter or empty while the filter fills);
        ``last`` flushes what the filter holds."""
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples.astype(np.int16, copy=False), last=last)


class LiveResampler:
    """Resamples a live stream of int16 mono chunks with no more delay than its filter's (2-4 ms).

    A Kaiser-windowed sinc low-pass (:data:`STOPBAND_DB` down from the lower rate's Nyquist
    frequency on, :data:`TAPS` taps per output sample at the lower rate), run as a polyphase
    filter: ``to_rate/from_rate`` reduced to ``up/down``, output sample ``m`` is the filter's
    phase ``m*down mod up`` over the input up to sample ``m*down // up``. Output sample ``n``
    stands for the same instant as input time ``n / to_rate`` (the filter's delay is taken
    off the start), so a stream comes out as long as :class:`StreamResampler` makes it.
    """

    TAPS = 64  # per output sample, at the lower of the two rates: a 0.16 x (lower rate / 2) transition band
    STOPBAND_DB = 80.0

    def __init__(self, from_rate: int, to_rate: int):
        if from_rate <= 0 or to_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {from_rate} and {to_rate}")
        self.from_rate = from_rate
        self.to_rate = to_rate
        g = gcd(from_rate, to_rate)
        self._up, self._down = to_rate // g, from_rate // g
        self._taps = ceil(self.TAPS * max(1.0, from_rate / to_rate))  # input samples per output sample
        # The filter is centred on a whole output sample: it lags exactly _delay output samples.
        self._delay = (self._taps * self._up - 1) // (2 * self._down)
        self._phases = self._design()
        self._history = np.zeros(self._taps - 1, np.float64)  # input before the next output's span
        self._history_start = -(self._taps - 1)  # absolute index of _history[0] (zeros before the stream)
        self._received = 0  # input samples so far
        self._next = 0  # next output sample to compute (before the delay is taken off)
        self._emitted = 0

    def _design(self) -> np.ndarray:
        """The filter's ``up`` phases, each ``taps`` coefficients (newest input first)."""
        up = self._up
        centre = self._delay * self._down  # in samples at the common (upsampled) rate
        n = 2 * centre + 1  # odd, symmetric about the centre; zero-padded to taps * up
        rate = self.from_rate * up
        beta = 0.1102 * (self.STOPBAND_DB - 8.7)
        transition = (self.STOPBAND_DB - 7.95) / 14.36 * rate / n  # Kaiser's estimate, Hz
        lower = min(self.from_rate, self.to_rate)
        cutoff = max(0.25 * lower, 0.5 * lower - transition / 2)
        t = np.arange(n) - centre
        h = np.zeros(self._taps * up)
        h[:n] = up * 2 * cutoff / rate * np.sinc(2 * cutoff / rate * t) * np.kaiser(n, beta)
        return h.reshape(self._taps, up).T.copy()  # phases[p][k] = h[p + k*up]

    def _filter(self, buf: np.ndarray, newest: np.ndarray, phase: np.ndarray) -> np.ndarray:
        """Output samples, each its ``phase``'s taps over ``buf`` up to index ``newest``."""
        if self._up > 8:  # many phases (22.05 -> 16 kHz: 320): one dot product per output
            span = newest[:, None] - np.arange(self._taps)[None, :]
            return np.einsum("nk,nk->n", buf[span], self._phases[phase])
        # Few phases (8 -> 16 kHz, 48 -> 16 kHz): every up-th output has the same phase, and
        # their newest inputs are `down` apart: one convolution per phase.
        out = np.empty(newest.size, np.float64)
        for j in range(min(self._up, newest.size)):
            idx = newest[j :: self._up]
            segment = buf[idx[0] - self._taps + 1 : idx[-1] + 1]
            out[j :: self._up] = np.convolve(segment, self._phases[phase[j]], "valid")[:: self._down]
        return out

    def process(self, samples: np.ndarray, *, last: bool = False) -> np.ndarray:
        """The next chunk at ``to_rate``: every output sample the input so far determines;
        ``last`` pads the filter's delay with silence and ends the stream."""
        if self.from_rate == self.to_rate:
            return samples
        x = samples.astype(np.float64)
        if last:
            x = np.concatenate([x, np.zeros(self._taps, np.float64)])
        buf = np.concatenate([self._history, x])
        received = self._received + x.size
        end = (received * self._up - 1) // self._down + 1 if received else 0  # outputs the input determines
        out = np.zeros(0, np.float64)
        if end > self._next:
            t = np.arange(self._next, end, dtype=np.int64) * self._down
            newest = t // self._up - self._history_start  # index in buf of each output's newest input
            out = self._filter(buf, newest, t % self._up)
            self._next = end
        keep_from = (self._next * self._down) // self._up - (self._taps - 1)  # the next output's oldest input
        self._history = buf[keep_from - self._history_start:]
        self._history_start = keep_from
        if last:
            received -= self._taps  # the padding was no input
        self._received = received
        skip = max(0, self._delay - (self._next - out.size))  # the start of the stream, before the delay
        out = out[skip:]
        if last:
            out = out[: max(0, round(received * self._up / self._down) - self._emitted)]
        self._emitted += out.size
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


class RateFollower:
    """A resampler to a fixed rate that starts afresh when the input rate changes: a
    :class:`StreamResampler`, or with ``live`` a :class:`LiveResampler`."""

    def __init__(self, to_rate: int, *, live: bool = False):
        self.to_rate = to_rate
        self._live = live
        self._current: StreamResampler | LiveResampler | None = None

    def process(self, samples: np.ndarray, from_rate: int) -> np.ndarray:
        if self._current is None or self._current.from_rate != from_rate:
            kind = LiveResampler if self._live else StreamResampler
            self._current = kind(from_rate, self.to_rate)
        return self._current.process(samples)
