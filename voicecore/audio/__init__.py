"""Audio helpers shared by transports and services (pure functions on bytes)."""

from voicecore.audio.codecs import (
    ENCODINGS,
    Encoding,
    alaw_decode,
    alaw_encode,
    from_pcm16,
    pcm16_rms,
    to_pcm16,
    ulaw_decode,
    ulaw_encode,
)

__all__ = [
    "ENCODINGS",
    "Encoding",
    "alaw_decode",
    "alaw_encode",
    "from_pcm16",
    "pcm16_rms",
    "to_pcm16",
    "ulaw_decode",
    "ulaw_encode",
]
