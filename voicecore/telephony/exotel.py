"""Exotel Voicebot applet stream.

Inbound (JSON text frames): ``connected``, ``start`` (top-level ``stream_sid``;
``start.stream_sid``, ``start.call_sid``, ``start.account_sid``, ``start.from``,
``start.to``, ``start.custom_parameters``, ``start.media_format``
{encoding "audio/x-raw", sample_rate "8000", bit_rate "16"}), ``media``
(``media.payload`` base64, about every 100 ms), ``dtmf`` (``dtmf.digit``,
``dtmf.duration``), ``mark`` (``mark.name``), ``stop`` (optional ``stop.reason``).

Audio: ``audio/x-raw`` (also written ``linear16``, ``audio/L16;rate=N``) is 16-bit
little-endian PCM; newer Exotel docs give μ-law as the default of the newer
"extension" streams, so ``media_format`` is read: ``mulaw``/``audio/x-mulaw``
selects μ-law at 8 kHz (◐). The rate comes
from ``media_format.sample_rate``, else the ``sample-rate`` query parameter of
the stream URL (8000, 16000 or 24000), else 8000.

``stream_sid`` is optional on every message (Exotel's own examples leave it out);
when the start carried none, outbound messages carry none either.

Outbound: ``{"event":"media","stream_sid","media":{"payload"}}``, ``mark`` and
``{"event":"clear","stream_sid"}``. A message is 200–400 ms at 8 kHz, so the
sender must keep at least one whole message of lead (the paced output does:
its lead is one message plus ``lead_ms``). Exotel wants each media chunk ≥ 3.2 KB,
≤ 100 KB and a multiple of 320 B. Its docs call 3.2 KB "100 ms", which holds
at 16 kHz only: at 8 kHz PCM16 3200 B is 200 ms. The protocol keeps the byte rule
(it is what Exotel can check) and picks the shortest message of at least
``message_ms`` (default 100) in 20 ms steps whose wire size obeys it: 200 ms /
3200 B at 8 kHz, 100 ms / 3200 B at 16 kHz, 100 ms / 4800 B at 24 kHz (and
400 ms / 3200 B for a μ-law stream ❓). Whether ``clear`` returns pending marks
is not documented; ``MarkPlayed.cleared`` covers both cases. No socket hang-up.

Auth token, first non-empty of (all present ones must agree, else 1008): the
Basic ``Authorization`` password (credentials in the stream URL are sent as
Basic auth; a Bearer token is accepted too), the query parameter ``token``, the
``x-voicecore-token`` header, ``start.custom_parameters.token``. Exotel passes
custom parameters as URL query (at most 3, ≤ 256 chars); they are merged into
``custom_parameters`` under those of ``start``.
"""

from __future__ import annotations

from typing import ClassVar, Final
from urllib.parse import urlencode

from voicecore.audio import codecs as audio
from voicecore.audio.codecs import Encoding
from voicecore.telephony.base import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_UNSUPPORTED_DATA,
    Event,
    JsonEventProtocol,
    JsonFields,
    ProtocolError,
)

__all__ = [
    "ExotelProtocol",
    "exotel_message_pcm_bytes",
    "EXOTEL_SAMPLE_RATES",
    "EXOTEL_MIN_CHUNK_BYTES",
    "EXOTEL_MAX_CHUNK_BYTES",
    "exotel_stream_url",
    "exotel_bootstrap",
]

EXOTEL_SAMPLE_RATES: Final = frozenset({8000, 16000, 24000})
EXOTEL_MIN_CHUNK_BYTES: Final = 3200
EXOTEL_MAX_CHUNK_BYTES: Final = 100_000
EXOTEL_CHUNK_MULTIPLE: Final = 320


def exotel_message_pcm_bytes(min_ms: int, sample_rate: int, encoding: Encoding) -> int:
    """int16 bytes of the shortest message ≥ ``min_ms`` (20 ms steps) whose wire size
    is ≥ 3200 B and a multiple of 320 B."""
    width = audio.bytes_per_sample(encoding)
    ms = min_ms
    while True:
        pcm_bytes = audio.pcm16_bytes_for_ms(ms, sample_rate)
        wire = pcm_bytes // 2 * width
        if wire >= EXOTEL_MIN_CHUNK_BYTES and wire % EXOTEL_CHUNK_MULTIPLE == 0:
            return pcm_bytes
        ms += 20


#: ``media_format.encoding`` names of 16-bit little-endian PCM (the base docs say ``audio/x-raw``,
#: Exotel's examples ``linear16``, the extension docs ``audio/L16;rate=N``).
_PCM16_NAMES: Final = frozenset(
    {"audio/x-raw", "raw", "pcm", "pcm16", "slin", "l16", "linear16", "audio/l16", "audio/x-l16", "audio/linear16"}
)
_MULAW_NAMES: Final = frozenset({"mulaw", "ulaw", "audio/x-mulaw", "audio/mulaw", "audio/x-ulaw", "pcmu"})


def _rate_parameter(parameters: str) -> int | None:
    """``rate=16000`` from the parameters of ``audio/L16;rate=16000`` (None if absent or not a number)."""
    for item in parameters.split(";"):
        key, _, value = item.partition("=")
        if key.strip() == "rate" and value.strip().isdigit():
            return int(value.strip())
    return None


class ExotelProtocol(JsonEventProtocol):
    """Exotel voicebot protocol. Option: ``message_ms``, the shortest message wanted
    (multiple of 20, ≥ 100, default 100; raised as needed to reach 3200 B)."""

    name: ClassVar[str] = "exotel"
    default_sample_rate: ClassVar[int] = 8000
    default_encoding = "pcm16le"
    default_message_ms: ClassVar[int] = 100
    stream_id_key: ClassVar[str | None] = "stream_sid"
    outbound_stream_key: ClassVar[str | None] = "stream_sid"
    sequence_key: ClassVar[str | None] = "sequence_number"

    def __init__(self, *, message_ms: int = 100) -> None:
        if message_ms < 100 or message_ms % 20:
            raise ValueError(f"message_ms must be a multiple of 20 and at least 100, got {message_ms}")
        if audio.pcm16_bytes_for_ms(message_ms, max(EXOTEL_SAMPLE_RATES)) > EXOTEL_MAX_CHUNK_BYTES:
            raise ValueError(f"message_ms {message_ms} would exceed Exotel's {EXOTEL_MAX_CHUNK_BYTES} B chunk limit")
        super().__init__()
        self._message_ms = float(message_ms)
        self._query_rate: int | None = None


    def _on_handshake(self) -> None:
        value = self._query.get("sample-rate")
        if value is None:
            return
        if not value.isdigit() or int(value) not in EXOTEL_SAMPLE_RATES:
            raise ProtocolError(
                f"query parameter sample-rate {value[:16]!r} is not one of {sorted(EXOTEL_SAMPLE_RATES)}",
                CLOSE_INVALID_PAYLOAD,
            )
        self._query_rate = self._in_rate = self._out_rate = int(value)

    def _on_start(self, message: JsonFields) -> list[Event]:
        self._sequence.advance(self._sequence_number(message))
        start = message.get_obj("start")
        assert start is not None
        # Exotel's own examples leave stream_sid out of some messages: it is optional everywhere.
        stream_sid = start.get_str("stream_sid", required=False) or message.get_str("stream_sid", required=False)
        encoding: Encoding = "pcm16le"
        rate = self._query_rate or 8000
        media_format = start.get_obj("media_format", required=False)
        if media_format is not None:
            raw_name = media_format.get_str("encoding", required=False) or "audio/x-raw"
            name, _, parameters = raw_name.strip().lower().partition(";")
            given_rate = media_format.get_int("sample_rate") or _rate_parameter(parameters)
            bits = media_format.get_int("bit_rate")
            if name.strip() in _MULAW_NAMES:
                encoding = "mulaw"
            elif name.strip() not in _PCM16_NAMES:
                raise ProtocolError(
                    f"start.media_format.encoding {raw_name[:40]!r} is not supported "
                    "(audio/x-raw, linear16, audio/L16 or mulaw)",
                    CLOSE_UNSUPPORTED_DATA,
                )
            elif bits not in (None, 16):
                raise ProtocolError(
                    f"start.media_format.bit_rate {bits} is not supported (16-bit PCM only)", CLOSE_UNSUPPORTED_DATA
                )
            if given_rate is not None:
                rate = given_rate
        allowed = {8000} if encoding == "mulaw" else EXOTEL_SAMPLE_RATES
        if rate not in allowed:
            raise ProtocolError(
                f"start.media_format.sample_rate {rate} is not one of {sorted(allowed)}", CLOSE_UNSUPPORTED_DATA
            )
        params = {k: v for k, v in self._query.items() if k not in ("token", "sample-rate")}
        start_params = start.get_str_map("custom_parameters")
        params |= start_params
        return [
            self._begin_call(
                stream_id=stream_sid,
                call_id=start.get_str("call_sid", required=False),
                caller=start.get_str("from", required=False),
                callee=start.get_str("to", required=False),
                custom_parameters=params,
                raw=dict(message.data),
                encoding=encoding,
                sample_rate=rate,
                message_pcm_bytes=exotel_message_pcm_bytes(int(self._message_ms), rate, encoding),
                token_sources=[("start.custom_parameters.token", start_params.get("token"))],
            )
        ]


def exotel_stream_url(ws_url: str, *, sample_rate: int = 8000, parameters: dict[str, str] | None = None) -> str:
    """The Voicebot applet's stream URL: ``sample-rate`` and up to 3 custom parameters (Exotel's
    limit, 256 characters in all) in the query."""
    if sample_rate not in EXOTEL_SAMPLE_RATES:
        raise ValueError(f"sample_rate must be one of {sorted(EXOTEL_SAMPLE_RATES)}, got {sample_rate}")
    params = dict(parameters or {})
    if len(params) > 3:
        raise ValueError("Exotel passes at most 3 custom parameters")
    custom = urlencode(params)
    if len(custom) > 256:
        raise ValueError("Exotel custom parameters must stay within 256 characters")
    query = urlencode({"sample-rate": str(sample_rate)}) + (f"&{custom}" if custom else "")
    return f"{ws_url}?{query}"


def exotel_bootstrap(stream_url: str) -> dict[str, str]:
    """What the applet's https URL answers: the stream URL for this call (Exotel's dynamic form)."""
    return {"url": stream_url}
