"""The one stream resampler: int16 mono audio from one rate to another, state kept across chunks.

soxr's streaming resampler (HQ) keeps its filter state between chunks, so audio
cut into 20 ms pieces resamples exactly like the whole signal. The session uses
it for caller audio (any rate → 16 kHz), the TTS for the voice's rate → the
call's output rate, and the recorder to bring both sides to the recording rate.
"""

from __future__ import annotations

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


class RateFollower:
    """A :class:`StreamResampler` to a fixed rate that starts afresh when the input rate changes."""

    def __init__(self, to_rate: int):
        self.to_rate = to_rate
        self._current: StreamResampler | None = None

    def process(self, samples: np.ndarray, from_rate: int) -> np.ndarray:
        if self._current is None or self._current.from_rate != from_rate:
            self._current = StreamResampler(from_rate, self.to_rate)
        return self._current.process(samples)
