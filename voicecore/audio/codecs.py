"""G.711 (μ-law, A-law) and 16-bit PCM helpers for telephony audio.

Everything here works on ``bytes`` and is pure: no state, no I/O. Linear audio
is always *int16 little-endian mono* ("pcm16") unless a name says otherwise.

G.711 is implemented with lookup tables computed once at import from the ITU-T
G.191 reference algorithm (``ulaw_compress``/``ulaw_expand``/``alaw_compress``/
``alaw_expand``), so the result is bit-exact with the ITU reference, including
its one's-complement handling of negative samples.

Note on ``audioop``: CPython's ``audioop`` (removed in 3.13; also the
``audioop-lts`` backport that Pipecat uses) is based on the Sun g711.c code.
Its *decoders* and its *A-law encoder* equal the ITU reference; its *μ-law
encoder* differs for negative samples: it takes the two's-complement magnitude
(``-(x >> 2)``) where ITU takes the one's complement (``~x >> 2``), which moves
every negative input up by one 14-bit step. In numbers:
``audioop.lin2ulaw(x) == ulaw_encode(x - 4)`` for ``-32764 <= x < 0``. Both
decode identically, so interoperation with any G.711 peer is unaffected;
tests/test_audio_codecs.py checks exactly this relation.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

import numpy as np
import numpy.typing as npt

__all__ = [
    "Encoding",
    "ENCODINGS",
    "ulaw_decode",
    "ulaw_encode",
    "alaw_decode",
    "alaw_encode",
    "to_pcm16",
    "from_pcm16",
    "bytes_per_sample",
    "byteswap16",
    "pcm16_le_to_be",
    "pcm16_be_to_le",
    "pcm16_rms",
    "pcm16_peak",
    "pcm16_duration_ms",
    "pcm16_bytes_for_ms",
    "silence_pcm16",
    "ULAW_SILENCE",
    "ALAW_SILENCE",
]

#: Wire encodings the telephony codecs use. ``pcm16le``/``pcm16be`` are 16-bit
#: signed linear PCM in little/big-endian byte order (L16 on RTP is big-endian).
Encoding = Literal["mulaw", "alaw", "pcm16le", "pcm16be"]
ENCODINGS: Final[tuple[str, ...]] = get_args(Encoding)

#: The G.711 code for a zero sample (what a silent line carries).
ULAW_SILENCE: Final = 0xFF
ALAW_SILENCE: Final = 0xD5

_LE_INT16: Final = np.dtype("<i2")
_LE_UINT16: Final = np.dtype("<u2")


# --- G.711 tables (ITU-T G.191 reference algorithm, vectorised) -------------


def _bit_length(values: npt.NDArray[np.int32], max_bits: int) -> npt.NDArray[np.int32]:
    """Number of significant bits of each non-negative value (< 2**max_bits)."""
    out = np.zeros_like(values)
    for k in range(max_bits):
        out += (values >= (1 << k)).astype(np.int32)
    return out


def _build_ulaw_encode_table() -> npt.NDArray[np.uint8]:
    """Code for every int16 value, indexed by the value's uint16 bit pattern."""
    x = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)
    # 14-bit right-justified magnitude; one's complement for negatives; +33 bias.
    absno = np.where(x < 0, (~x) >> 2, x >> 2) + 33
    absno = np.minimum(absno, 0x1FFF)
    segno = 1 + _bit_length(absno >> 6, 7)
    high = 8 - segno
    low = 0xF - ((absno >> segno) & 0xF)
    code = (high << 4) | low
    code = np.where(x >= 0, code | 0x80, code)
    table: npt.NDArray[np.uint8] = code.astype(np.uint8)
    return table


def _build_ulaw_decode_table() -> npt.NDArray[np.int16]:
    code = np.arange(256, dtype=np.int32)
    sign = np.where(code < 0x80, -1, 1)
    mantissa = (~code) & 0xFF
    exponent = (mantissa >> 4) & 0x7
    segment = exponent + 1
    mantissa &= 0xF
    step = 4 << segment
    value = sign * ((0x80 << exponent) + step * mantissa + step // 2 - 4 * 33)
    table: npt.NDArray[np.int16] = value.astype(np.int16)
    return table


def _build_alaw_encode_table() -> npt.NDArray[np.uint8]:
    x = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)
    ix = np.where(x < 0, (~x) >> 4, x >> 4)  # 0 <= ix < 2048, one's complement for negatives
    # exponent = number of right shifts needed to bring ix into 16..31, plus one
    big = ix > 15
    bits = _bit_length(ix, 11)  # ix in 16..2047 has 5..11 bits
    iexp = np.where(big, bits - 4, 0)
    mant = np.where(big, (ix >> np.maximum(iexp - 1, 0)) - 16, ix)
    code = np.where(big, mant + (iexp << 4), ix)
    code = np.where(x >= 0, code | 0x80, code)
    return (code ^ 0x55).astype(np.uint8)


def _build_alaw_decode_table() -> npt.NDArray[np.int16]:
    code = np.arange(256, dtype=np.int32)
    ix = (code ^ 0x55) & 0x7F
    iexp = ix >> 4
    mant = ix & 0xF
    mant = np.where(iexp > 0, mant + 16, mant)
    mant = (mant << 4) + 0x8
    mant = np.where(iexp > 1, mant << np.maximum(iexp - 1, 0), mant)
    value = np.where(code > 127, mant, -mant)
    return value.astype(np.int16)


_ULAW_ENC: Final = _build_ulaw_encode_table()
_ULAW_DEC: Final = _build_ulaw_decode_table()
_ALAW_ENC: Final = _build_alaw_encode_table()
_ALAW_DEC: Final = _build_alaw_decode_table()
for _table in (_ULAW_ENC, _ULAW_DEC, _ALAW_ENC, _ALAW_DEC):
    _table.setflags(write=False)


def _require_even(pcm16: bytes, what: str = "pcm16") -> None:
    if len(pcm16) % 2:
        raise ValueError(f"{what} has {len(pcm16)} bytes, an odd number for 16-bit samples")


def ulaw_encode(pcm16: bytes) -> bytes:
    """int16 LE samples → G.711 μ-law bytes (one byte per sample)."""
    _require_even(pcm16)
    return _ULAW_ENC[np.frombuffer(pcm16, dtype=_LE_UINT16)].tobytes()


def ulaw_decode(data: bytes) -> bytes:
    """G.711 μ-law bytes → int16 LE samples."""
    return _ULAW_DEC[np.frombuffer(data, dtype=np.uint8)].astype(_LE_INT16, copy=False).tobytes()


def alaw_encode(pcm16: bytes) -> bytes:
    """int16 LE samples → G.711 A-law bytes (one byte per sample)."""
    _require_even(pcm16)
    return _ALAW_ENC[np.frombuffer(pcm16, dtype=_LE_UINT16)].tobytes()


def alaw_decode(data: bytes) -> bytes:
    """G.711 A-law bytes → int16 LE samples."""
    return _ALAW_DEC[np.frombuffer(data, dtype=np.uint8)].astype(_LE_INT16, copy=False).tobytes()


# --- 16-bit PCM helpers ------------------------------------------------------


def byteswap16(data: bytes) -> bytes:
    """Swap the two bytes of every 16-bit sample (LE ↔ BE)."""
    _require_even(data, "data")
    return np.frombuffer(data, dtype=np.uint16).byteswap().tobytes()


def pcm16_le_to_be(pcm16: bytes) -> bytes:
    """int16 little-endian → int16 big-endian (network order, RTP L16)."""
    return byteswap16(pcm16)


def pcm16_be_to_le(data: bytes) -> bytes:
    """int16 big-endian (network order, RTP L16) → int16 little-endian."""
    return byteswap16(data)


def bytes_per_sample(encoding: Encoding) -> int:
    """Bytes one mono sample takes on the wire in ``encoding``."""
    if encoding in ("mulaw", "alaw"):
        return 1
    if encoding in ("pcm16le", "pcm16be"):
        return 2
    raise ValueError(f"unknown encoding {encoding!r}; known: {', '.join(ENCODINGS)}")


def to_pcm16(data: bytes, encoding: Encoding) -> bytes:
    """Wire bytes in ``encoding`` → int16 LE. Odd-length 16-bit input raises ValueError."""
    if encoding == "mulaw":
        return ulaw_decode(data)
    if encoding == "alaw":
        return alaw_decode(data)
    if encoding == "pcm16le":
        _require_even(data, "data")
        return bytes(data)
    if encoding == "pcm16be":
        return byteswap16(data)
    raise ValueError(f"unknown encoding {encoding!r}; known: {', '.join(ENCODINGS)}")


def from_pcm16(pcm16: bytes, encoding: Encoding) -> bytes:
    """int16 LE → wire bytes in ``encoding``."""
    if encoding == "mulaw":
        return ulaw_encode(pcm16)
    if encoding == "alaw":
        return alaw_encode(pcm16)
    if encoding == "pcm16le":
        _require_even(pcm16)
        return bytes(pcm16)
    if encoding == "pcm16be":
        return byteswap16(pcm16)
    raise ValueError(f"unknown encoding {encoding!r}; known: {', '.join(ENCODINGS)}")


def pcm16_rms(pcm16: bytes) -> float:
    """Root-mean-square level of int16 LE audio, in sample units (0 for empty input)."""
    _require_even(pcm16)
    if not pcm16:
        return 0.0
    samples = np.frombuffer(pcm16, dtype=_LE_INT16).astype(np.float64)
    return float(np.sqrt(np.mean(samples * samples)))


def pcm16_peak(pcm16: bytes) -> int:
    """Largest absolute sample value of int16 LE audio (0 for empty input)."""
    _require_even(pcm16)
    if not pcm16:
        return 0
    return int(np.max(np.abs(np.frombuffer(pcm16, dtype=_LE_INT16).astype(np.int32))))


def pcm16_duration_ms(num_bytes: int, sample_rate: int) -> float:
    """Duration of ``num_bytes`` of mono int16 audio at ``sample_rate``."""
    return num_bytes / 2 / sample_rate * 1000.0


def pcm16_bytes_for_ms(ms: float, sample_rate: int) -> int:
    """Bytes of mono int16 audio in ``ms`` milliseconds (whole samples, rounded down)."""
    return int(sample_rate * ms / 1000) * 2


def silence_pcm16(num_bytes: int) -> bytes:
    """``num_bytes`` of int16 silence (``num_bytes`` must be even)."""
    if num_bytes < 0 or num_bytes % 2:
        raise ValueError(f"silence length must be a non-negative even number of bytes, got {num_bytes}")
    return bytes(num_bytes)
