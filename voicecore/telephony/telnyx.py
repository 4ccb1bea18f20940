"""Telnyx media streaming (Call Control ``stream_url`` / TeXML ``<Stream>``), ``rtp`` bidirectional mode.

Inbound (JSON text frames): ``connected``, ``start`` (top-level ``stream_id``;
``start.call_control_id``, ``start.from``, ``start.to``,
``start.custom_parameters``, ``start.media_format`` {encoding PCMU|PCMA|L16,
sample_rate, channels}), ``media`` (base64 codec bytes, no RTP header),
``dtmf`` (``dtmf.digit``), ``mark`` (``mark.name``), ``stop``; ``error`` is
logged and ignored. G722/OPUS/AMR-WB streams are refused (1003).

L16: Telnyx carries L16 as on RTP, which is big-endian by convention (the
reference marks this ❓). The protocol therefore decodes and encodes L16 as
big-endian by default; pass ``l16_byte_order="little"`` if a real stream
proves otherwise.

Out-of-order delivery: Telnyx may deliver media frames out of order. Media
frames go through a reorder buffer keyed by ``media.chunk`` (a media-only
counter, so interleaved dtmf/mark messages leave no gaps) or, without a chunk,
by ``sequence_number``. In-order frames pass straight through; after a gap at
most ``reorder_window`` frames (default 3 = 60 ms) are held before the gap is
given up. Late and duplicate frames are dropped (``Ignored``). ``stop`` and
:meth:`receive_close` release what is held.

Outbound: ``{"event":"media","media":{"payload":…}}`` (no stream id), ``mark``,
``clear`` — in the *bidirectional* codec, which Telnyx configures apart from the
caller's (``stream_bidirectional_codec``: PCMU unless set, whatever the call's codec;
``stream_bidirectional_mode`` must be ``rtp`` or Telnyx drops what we send) and does
not repeat in ``start``. So the protocol answers in PCMU at 8 kHz unless told
otherwise: ``outbound_encoding`` (``"PCMU"``, ``"PCMA"``, ``"L16"``) and, for L16,
``outbound_sample_rate`` must match what the call was set up with (``serve
--telnyx-codec``; :func:`texml_connect_stream` and :func:`call_control_stream_parameters`
write the same into what Telnyx is given). Feed ``encode_media`` at
``output_sample_rate``. ``clear`` returns pending marks (``marks_returned_on_clear``).

Auth token: the ``x-telnyx-streaming-auth-token`` upgrade header (set by
``stream_auth_token``; Telnyx repeats it as ``connected.x-telnyx-streaming-auth-token``),
the query parameter ``token`` or ``start.custom_parameters.token``; all present ones
must agree, else 1008. Hang-up is a REST call (``encode_hangup`` returns []).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import ClassVar, Final, Literal
from urllib.parse import urlsplit

from loguru import logger

from voicecore.audio import codecs as audio
from voicecore.audio.codecs import Encoding
from voicecore.telephony.base import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_UNSUPPORTED_DATA,
    Event,
    Handler,
    Ignored,
    JsonEventProtocol,
    JsonFields,
    MediaIn,
    ProtocolError,
    ReorderBuffer,
    TokenSource,
)

__all__ = ["TelnyxProtocol", "texml_connect_stream", "call_control_stream_parameters", "TELNYX_CODECS"]

TelnyxCodecName = Literal["PCMU", "PCMA", "L16"]
#: ``stream_bidirectional_codec`` values voicecore can send.
TELNYX_CODECS: Final = ("PCMU", "PCMA", "L16")
_L16_RATES: Final = frozenset({8000, 16000, 22050, 24000, 48000})


def _wire_encoding(codec: str, l16: Encoding) -> Encoding | None:
    """Telnyx codec name → wire encoding (None if unsupported)."""
    table: dict[str, Encoding] = {"PCMU": "mulaw", "PCMA": "alaw", "L16": l16}
    return table.get(codec.upper())


class TelnyxProtocol(JsonEventProtocol):
    """Telnyx media streaming protocol.

    Options: ``l16_byte_order`` ("big" default, "little"), ``outbound_encoding``
    (the call's ``stream_bidirectional_codec``, default PCMU) and ``outbound_sample_rate``
    (its ``stream_bidirectional_sampling_rate``, L16 only; default 8000), ``reorder_window``
    (frames held for a gap, default 3), ``message_ms`` (multiple of 20, default 20).
    """

    name: ClassVar[str] = "telnyx"
    marks_returned_on_clear: ClassVar[bool] = True
    stream_id_key: ClassVar[str | None] = "stream_id"
    sequence_key: ClassVar[str | None] = "sequence_number"

    def __init__(
        self,
        *,
        l16_byte_order: Literal["big", "little"] = "big",
        outbound_encoding: TelnyxCodecName = "PCMU",
        outbound_sample_rate: int | None = None,
        reorder_window: int = 3,
        message_ms: int = 20,
    ) -> None:
        if l16_byte_order not in ("big", "little"):
            raise ValueError(f"l16_byte_order must be 'big' or 'little', got {l16_byte_order!r}")
        super().__init__(message_ms=message_ms)
        self._l16: Encoding = "pcm16be" if l16_byte_order == "big" else "pcm16le"
        outbound = _wire_encoding(outbound_encoding, self._l16) if isinstance(outbound_encoding, str) else None
        if outbound is None:
            raise ValueError(f"outbound_encoding must be PCMU, PCMA or L16, got {outbound_encoding!r}")
        self._outbound: Encoding = outbound
        if outbound_sample_rate is not None and (
            outbound_encoding.upper() != "L16" or outbound_sample_rate not in _L16_RATES
        ) and outbound_sample_rate != 8000:
            raise ValueError(
                f"outbound_sample_rate {outbound_sample_rate} is not valid for {outbound_encoding} "
                f"(PCMU/PCMA: 8000; L16: {sorted(_L16_RATES)})"
            )
        self._outbound_rate = outbound_sample_rate or 8000
        self._connected_token: str | None = None
        self._reorder: ReorderBuffer[MediaIn] = ReorderBuffer(reorder_window)

    def _event_handlers(self) -> dict[str, Handler]:
        return super()._event_handlers() | {"error": self._on_error}

    def _handshake_token_sources(self) -> list[TokenSource]:
        return [
            ("x-telnyx-streaming-auth-token header", self._headers.get("x-telnyx-streaming-auth-token")),
            ("query parameter 'token'", self._query.get("token")),
        ]

    def _on_connected(self, message: JsonFields) -> list[Event]:
        nested = message.data.get("connected")
        token = nested.get("x-telnyx-streaming-auth-token") if isinstance(nested, dict) else None
        token = token or message.data.get("x-telnyx-streaming-auth-token")
        if token is not None and not isinstance(token, str):
            raise ProtocolError("connected.x-telnyx-streaming-auth-token must be a string", CLOSE_INVALID_PAYLOAD)
        self._connected_token = token or None
        return super()._on_connected(message)

    def _on_start(self, message: JsonFields) -> list[Event]:
        self._sequence.advance(self._sequence_number(message))
        stream_id = message.get_str("stream_id")
        start = message.get_obj("start")
        assert start is not None
        params = start.get_str_map("custom_parameters")
        media_format = start.get_obj("media_format", required=False)
        encoding: Encoding = "mulaw"
        rate = 8000
        if media_format is not None:
            codec = media_format.get_str("encoding", required=False) or "PCMU"
            found = _wire_encoding(codec, self._l16)
            if found is None:
                raise ProtocolError(
                    f"start.media_format.encoding {codec!r} is not supported (PCMU, PCMA or L16)",
                    CLOSE_UNSUPPORTED_DATA,
                )
            encoding = found
            rate = media_format.get_int("sample_rate") or 8000
            channels = media_format.get_int("channels")
            if channels not in (None, 1):
                raise ProtocolError(
                    f"start.media_format.channels {channels} is not supported (mono only)", CLOSE_UNSUPPORTED_DATA
                )
            allowed = _L16_RATES if codec.upper() == "L16" else {8000}
            if rate not in allowed:
                raise ProtocolError(
                    f"start.media_format.sample_rate {rate} is not valid for {codec}", CLOSE_UNSUPPORTED_DATA
                )
        out_encoding = self._outbound
        out_rate = 8000 if self._outbound in ("mulaw", "alaw") else self._outbound_rate
        return [
            self._begin_call(
                stream_id=stream_id,
                call_id=start.get_str("call_control_id", required=False),
                caller=start.get_str("from", required=False),
                callee=start.get_str("to", required=False),
                custom_parameters=params,
                raw=dict(message.data),
                encoding=encoding,
                sample_rate=rate,
                out_encoding=out_encoding,
                out_sample_rate=out_rate,
                message_pcm_bytes=audio.pcm16_bytes_for_ms(self._message_ms, out_rate),
                token_sources=[
                    ("connected.x-telnyx-streaming-auth-token", self._connected_token),
                    ("start.custom_parameters.token", params.get("token")),
                ],
            )
        ]

    def _deliver_media(self, media: MediaIn, chunk: int | None) -> list[Event]:
        key = chunk if chunk is not None else media.sequence
        if key is None:
            return [media]
        released = self._reorder.push(key, media)
        if released is None:
            logger.warning("telnyx stream {}: dropped late or duplicate media frame {}", self.stream_id, key)
            return [Ignored(f"media frame {key} arrived late or twice; dropped")]
        return list(released)

    def _on_stop(self, message: JsonFields) -> list[Event]:
        return [*self._reorder.drain(), *super()._on_stop(message)]

    def receive_close(self) -> list[Event]:
        return list(self._reorder.drain())

    def _on_error(self, message: JsonFields) -> list[Event]:
        payload = message.data.get("payload")
        code = payload.get("code") if isinstance(payload, dict) else None
        title = payload.get("title") if isinstance(payload, dict) else None
        logger.warning("telnyx stream {} reported an error: code={} title={!r}", self.stream_id, code, title)
        return [Ignored(f"telnyx error event (code {code})")]


def texml_connect_stream(ws_url: str, parameters: Mapping[str, str], *, codec: str = "PCMU") -> str:
    """TeXML (served from the TeXML application's voice URL) that connects the call to a
    bidirectional stream at ``ws_url``: ``bidirectionalMode="rtp"`` (without it Telnyx drops the
    audio we send) and ``bidirectionalCodec`` (``PCMU`` or ``PCMA``; TeXML has no L16).
    ``parameters`` become ``<Parameter>`` children, as in TwiML."""
    if codec not in ("PCMU", "PCMA"):
        raise ValueError(f"TeXML bidirectionalCodec must be PCMU or PCMA, got {codec!r}")
    _check_stream_url(ws_url)
    response = ET.Element("Response")
    connect = ET.SubElement(response, "Connect")
    stream = ET.SubElement(connect, "Stream", {
        "url": ws_url, "track": "inbound_track", "bidirectionalMode": "rtp", "bidirectionalCodec": codec,
    })  # fmt: skip
    for name, value in parameters.items():
        ET.SubElement(stream, "Parameter", {"name": name, "value": value})
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(response, encoding="unicode")


def call_control_stream_parameters(
    ws_url: str, *, codec: str = "PCMU", sample_rate: int = 8000, auth_token: str | None = None
) -> dict[str, object]:
    """The streaming parameters of a Call Control ``dial`` or ``streaming_start`` command
    (``answer`` takes the same minus ``stream_auth_token`` and the sampling rate)."""
    if codec not in ("PCMU", "PCMA", "L16"):
        raise ValueError(f"stream_bidirectional_codec must be PCMU, PCMA or L16, got {codec!r}")
    _check_stream_url(ws_url)
    params: dict[str, object] = {
        "stream_url": ws_url,
        "stream_track": "inbound_track",
        "stream_bidirectional_mode": "rtp",
        "stream_bidirectional_codec": codec,
    }
    if codec == "L16":
        if sample_rate not in _L16_RATES:
            raise ValueError(f"L16 sampling rate must be one of {sorted(_L16_RATES)}, got {sample_rate}")
        params["stream_bidirectional_sampling_rate"] = sample_rate
    if auth_token:
        params["stream_auth_token"] = auth_token
    return params


def _check_stream_url(ws_url: str) -> None:
    parts = urlsplit(ws_url)
    if parts.scheme not in ("wss", "ws") or not parts.netloc:
        raise ValueError(f"stream URL must be wss://host/path, got {ws_url!r}")
