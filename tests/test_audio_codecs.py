"""G.711 and PCM16 helpers: bit-exact against the ITU reference, audioop where present."""

from __future__ import annotations

import importlib
import math
import struct
import warnings

import numpy as np
import pytest

from voicecore.audio import codecs as c

ALL_INT16 = struct.pack("<65536h", *range(-32768, 32768))
ALL_CODES = bytes(range(256))


# Independent scalar transliteration of ITU-T G.191 g711.c (ulaw_compress,
# alaw_compress), written from the reference algorithm, to check the tables.
def itu_ulaw_compress(x: int) -> int:
    absno = ((~x) >> 2) + 33 if x < 0 else (x >> 2) + 33
    absno = min(absno, 0x1FFF)
    i = absno >> 6
    segno = 1
    while i:
        segno += 1
        i >>= 1
    code = ((8 - segno) << 4) | (0xF - ((absno >> segno) & 0xF))
    return code | 0x80 if x >= 0 else code


def itu_alaw_compress(x: int) -> int:
    ix = (~x) >> 4 if x < 0 else x >> 4
    if ix > 15:
        iexp = 1
        while ix > 31:
            ix >>= 1
            iexp += 1
        ix = ix - 16 + (iexp << 4)
    if x >= 0:
        ix |= 0x80
    return ix ^ 0x55


def samples(data: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(data) // 2}h", data))


def _audioop():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return importlib.import_module("audioop")
        except ImportError:
            return None


audioop = _audioop()
needs_audioop = pytest.mark.skipif(audioop is None, reason="audioop is not available (Python 3.13+)")


# --- known values --------------------------------------------------------------


def test_ulaw_decode_known_values():
    assert samples(c.ulaw_decode(bytes([0xFF, 0x7F, 0x80, 0x00, 0xFE, 0xEF]))) == [0, 0, 32124, -32124, 8, 132]


def test_alaw_decode_known_values():
    assert samples(c.alaw_decode(bytes([0xD5, 0x55, 0xAA, 0x2A, 0xD4]))) == [8, -8, 32256, -32256, 24]


@pytest.mark.parametrize(
    ("sample", "ulaw", "alaw"),
    [(0, 0xFF, 0xD5), (-1, 0x7F, 0x55), (32767, 0x80, 0xAA), (-32768, 0x00, 0x2A), (8, 0xFE, 0xD5), (-100, 0x73, 0x53)],
)
def test_encode_known_values(sample: int, ulaw: int, alaw: int):
    pcm = struct.pack("<h", sample)
    assert c.ulaw_encode(pcm) == bytes([ulaw])
    assert c.alaw_encode(pcm) == bytes([alaw])


def test_ulaw_encode_is_bit_exact_with_itu_reference_for_every_sample():
    encoded = c.ulaw_encode(ALL_INT16)
    expected = bytes(itu_ulaw_compress(x) for x in range(-32768, 32768))
    assert encoded == expected


def test_alaw_encode_is_bit_exact_with_itu_reference_for_every_sample():
    encoded = c.alaw_encode(ALL_INT16)
    expected = bytes(itu_alaw_compress(x) for x in range(-32768, 32768))
    assert encoded == expected


# --- round trips -----------------------------------------------------------------


def test_ulaw_code_round_trip():
    decoded = c.ulaw_decode(ALL_CODES)
    re_encoded = c.ulaw_encode(decoded)
    # 0x7F is μ-law "negative zero": it decodes to 0, which encodes as 0xFF.
    assert [i for i in range(256) if re_encoded[i] != i] == [0x7F]
    assert re_encoded[0x7F] == 0xFF


def test_alaw_code_round_trip():
    assert c.alaw_encode(c.alaw_decode(ALL_CODES)) == ALL_CODES


def _sine(freq: float, rate: int, seconds: float, amplitude: float) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype("<i2").tobytes()


@pytest.mark.parametrize(("encode", "decode"), [(c.ulaw_encode, c.ulaw_decode), (c.alaw_encode, c.alaw_decode)])
def test_round_trip_signal_to_noise(encode, decode):
    pcm = _sine(1013, 8000, 0.5, 16000)
    back = decode(encode(pcm))
    assert len(back) == len(pcm)
    x = np.frombuffer(pcm, "<i2").astype(float)
    y = np.frombuffer(back, "<i2").astype(float)
    snr = 10 * math.log10(np.sum(x * x) / np.sum((x - y) ** 2))
    assert 33 < snr < 50  # G.711 gives roughly 38 dB for a loud sine; no codec at all would be inf


def test_decoded_values_are_fixed_points():
    for encode, decode in ((c.ulaw_encode, c.ulaw_decode), (c.alaw_encode, c.alaw_decode)):
        decoded = decode(ALL_CODES)
        assert decode(encode(decoded)) == decoded


# --- audioop comparison (Python 3.11/3.12 only) -------------------------------------


@needs_audioop
def test_decoders_equal_audioop():
    assert c.ulaw_decode(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)
    assert c.alaw_decode(ALL_CODES) == audioop.alaw2lin(ALL_CODES, 2)


@needs_audioop
def test_alaw_encoder_equals_audioop():
    assert c.alaw_encode(ALL_INT16) == audioop.lin2alaw(ALL_INT16, 2)


@needs_audioop
def test_ulaw_encoder_matches_audioop_up_to_its_negative_offset():
    ours = c.ulaw_encode(ALL_INT16)
    theirs = audioop.lin2ulaw(ALL_INT16, 2)
    # Non-negative samples: identical.
    assert ours[32768:] == theirs[32768:]
    # Negative samples: audioop (Sun g711.c) uses -(x >> 2) where ITU uses ~x >> 2,
    # i.e. audioop.lin2ulaw(x) == ITU(x - 4).
    for x in range(-32764, 0):
        assert theirs[x + 32768] == ours[x - 4 + 32768], x
    # ...and the two really differ somewhere (else this test proves nothing).
    assert ours[:32768] != theirs[:32768]


# --- PCM16 helpers ----------------------------------------------------------------


def test_byte_order_helpers():
    le = struct.pack("<3h", 1, -2, 300)
    be = struct.pack(">3h", 1, -2, 300)
    assert c.pcm16_le_to_be(le) == be
    assert c.pcm16_be_to_le(be) == le
    assert c.byteswap16(c.byteswap16(le)) == le


def test_to_and_from_pcm16_dispatch():
    le = struct.pack("<2h", 1000, -1000)
    assert c.from_pcm16(le, "pcm16le") == le
    assert c.from_pcm16(le, "pcm16be") == struct.pack(">2h", 1000, -1000)
    assert c.from_pcm16(le, "mulaw") == c.ulaw_encode(le)
    assert c.from_pcm16(le, "alaw") == c.alaw_encode(le)
    for enc in c.ENCODINGS:
        assert samples(c.to_pcm16(c.from_pcm16(le, enc), enc))[0] in range(960, 1040)
    assert [c.bytes_per_sample(e) for e in ("mulaw", "alaw", "pcm16le", "pcm16be")] == [1, 1, 2, 2]
    with pytest.raises(ValueError, match="unknown encoding"):
        c.to_pcm16(b"", "opus")  # type: ignore[arg-type]


def test_odd_lengths_are_rejected():
    with pytest.raises(ValueError, match="odd"):
        c.ulaw_encode(b"\x00\x00\x00")
    with pytest.raises(ValueError, match="odd"):
        c.to_pcm16(b"\x00", "pcm16le")
    with pytest.raises(ValueError, match="odd"):
        c.pcm16_rms(b"\x00")


def test_rms_and_peak():
    assert c.pcm16_rms(b"") == 0.0
    assert c.pcm16_rms(struct.pack("<4h", 1000, -1000, 1000, -1000)) == pytest.approx(1000.0)
    assert c.pcm16_rms(_sine(440, 16000, 1.0, 10000)) == pytest.approx(10000 / math.sqrt(2), rel=0.01)
    assert c.pcm16_peak(struct.pack("<3h", 5, -32768, 7)) == 32768
    assert c.pcm16_peak(b"") == 0


def test_durations_and_silence():
    assert c.pcm16_duration_ms(320, 8000) == 20.0
    assert c.pcm16_bytes_for_ms(20, 16000) == 640
    assert c.pcm16_bytes_for_ms(100, 8000) == 1600
    assert c.silence_pcm16(4) == b"\x00" * 4
    with pytest.raises(ValueError):
        c.silence_pcm16(3)
    assert c.ulaw_encode(c.silence_pcm16(4)) == bytes([c.ULAW_SILENCE]) * 2
    assert c.alaw_encode(c.silence_pcm16(4)) == bytes([c.ALAW_SILENCE]) * 2
