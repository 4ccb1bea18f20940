"""Plivo audio streams (``<Stream bidirectional="true">``).

Inbound (JSON text frames): ``start`` (``sequenceNumber``, ``start.callId``,
``start.streamId``, ``start.accountId``, ``start.tracks``,
``start.mediaFormat`` {encoding, sampleRate}, ``extra_headers``), ``media``
(``streamId``, ``media.payload`` base64, ``media.timestamp`` in Unix ms),
``dtmf`` (``dtmf.digit``), ``playedStream`` (``name`` of a checkpoint we sent;
one support page calls it ``played``, accepted too), ``clearedAudio``.
Plivo reports start/stop to ``statusCallbackUrl``; the socket closing is the
normal end. A ``stop`` event, if one arrives, is still turned into ``CallStop``.

Audio: the Stream ``contentType`` decides it. The default is
``audio/x-l16;rate=8000`` (16-bit PCM, little-endian like every PCM16 here ❓),
the alternatives are l16 at 16 kHz and ``audio/x-mulaw;rate=8000``. Without a
``mediaFormat`` the protocol assumes the default, l16 at 8 kHz.

Outbound: ``{"event":"playAudio","media":{"contentType","sampleRate","payload"}}``
(20 ms per message by default), ``{"event":"checkpoint","streamId","name"}``
(mark, answered by ``playedStream``), ``{"event":"clearAudio","streamId"}``
(answered by ``clearedAudio``). No socket hang-up (REST ``DELETE …/Call/{id}/``).

Auth token, first non-empty of (all present ones must agree, else 1008):
``token`` in ``extra_headers`` (``extraHeaders="token=…"`` on the Stream; a
string of ``k=v`` pairs separated by ``,`` or ``;``, or an object), the
handshake query ``token``, ``Authorization`` (Bearer, or Basic password) or
``x-voicecore-token`` header. Caller/callee come from ``from``/``to`` in
``extra_headers`` or the query, when the application put them there.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import ClassVar, Final
from urllib.parse import urlsplit

from voicecore.audio import codecs as audio
from voicecore.audio.codecs import Encoding
from voicecore.telephony.base import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_UNSUPPORTED_DATA,
    Cleared,
    Event,
    Handler,
    JsonEventProtocol,
    JsonFields,
    Message,
    ProtocolError,
    dumps,
    encode_base64,
)

__all__ = ["PlivoProtocol", "parse_extra_headers", "plivo_stream_xml", "PLIVO_CONTENT_TYPES", "MAX_EXTRA_HEADERS_BYTES"]

#: The Stream ``contentType`` values Plivo documents.
PLIVO_CONTENT_TYPES: Final = ("audio/x-l16;rate=8000", "audio/x-l16;rate=16000", "audio/x-mulaw;rate=8000")


def parse_extra_headers(value: object, path: str) -> dict[str, str]:
    """Plivo ``extra_headers``: ``"k=v,k2=v2"`` (or ``;``-separated), or an object of strings."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return JsonFields({"h": value}).get_str_map("h") if value else {}
    if not isinstance(value, str):
        raise ProtocolError(f"{path} must be a string or an object", CLOSE_INVALID_PAYLOAD)
    out: dict[str, str] = {}
    for n, item in enumerate(value.replace(";", ",").split(",")):
        item = item.strip()
        if not item:
            continue
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            # The item itself is not quoted: it may be a mistyped token=KEY.
            raise ProtocolError(
                f"{path}: item {n + 1} ({len(item)} characters) is not a key=value pair", CLOSE_INVALID_PAYLOAD
            )
        out[key.strip()] = val.strip()
    return out


class PlivoProtocol(JsonEventProtocol):
    """Plivo audio stream protocol. Option: ``message_ms`` (multiple of 20, default 20)."""

    name: ClassVar[str] = "plivo"
    default_sample_rate: ClassVar[int] = 8000
    default_encoding = "pcm16le"
    stream_id_key: ClassVar[str | None] = "streamId"
    sequence_key: ClassVar[str | None] = "sequenceNumber"

    def __init__(self, *, message_ms: int = 20) -> None:
        super().__init__(message_ms=message_ms)

    def _event_handlers(self) -> dict[str, Handler]:
        return {
            "start": self._on_start,
            "media": self._on_media,
            "dtmf": self._on_dtmf,
            "playedStream": self._on_played,
            "played": self._on_played,
            "clearedAudio": self._on_cleared,
            "stop": self._on_stop,
        }

    def _on_start(self, message: JsonFields) -> list[Event]:
        self._sequence.advance(self._sequence_number(message))
        start = message.get_obj("start")
        assert start is not None
        stream_id = start.get_str("streamId", required=False) or message.get_str("streamId")
        encoding: Encoding = "pcm16le"
        rate = 8000
        media_format = start.get_obj("mediaFormat", required=False)
        if media_format is not None:
            name = (media_format.get_str("encoding", required=False) or "audio/x-l16").lower()
            rate = media_format.get_int("sampleRate") or 8000
            if "mulaw" in name or "ulaw" in name:
                encoding, allowed = "mulaw", {8000}
            elif "l16" in name:
                encoding, allowed = "pcm16le", {8000, 16000}
            else:
                raise ProtocolError(
                    f"start.mediaFormat.encoding {name[:40]!r} is not supported (audio/x-l16 or audio/x-mulaw)",
                    CLOSE_UNSUPPORTED_DATA,
                )
            if rate not in allowed:
                raise ProtocolError(
                    f"start.mediaFormat.sampleRate {rate} is not valid for {name}", CLOSE_UNSUPPORTED_DATA
                )
        if "extra_headers" in message.data:
            path, raw_headers = "extra_headers", message.data["extra_headers"]
        elif "extra_headers" in start.data:
            path, raw_headers = "start.extra_headers", start.data["extra_headers"]
        else:
            path, raw_headers = "start.extraHeaders", start.data.get("extraHeaders")
        extra = parse_extra_headers(raw_headers, path)
        params = {k: v for k, v in self._query.items() if k != "token"} | extra
        return [
            self._begin_call(
                stream_id=stream_id,
                call_id=start.get_str("callId", required=False),
                caller=extra.get("from") or self._query.get("from"),
                callee=extra.get("to") or self._query.get("to"),
                custom_parameters=params,
                raw=dict(message.data),
                encoding=encoding,
                sample_rate=rate,
                message_pcm_bytes=audio.pcm16_bytes_for_ms(self._message_ms, rate),
                token_sources=[(f"{path} token", extra.get("token"))],
            )
        ]

    def _on_played(self, message: JsonFields) -> list[Event]:
        self._control(message, "playedStream")
        name = message.get_str("name")
        assert name is not None
        return [self._marks.played(name)]

    def _on_cleared(self, message: JsonFields) -> list[Event]:
        self._control(message, "clearedAudio")
        return [Cleared()]

    def _wrap_media(self, wire: bytes) -> Message:
        content_type = "audio/x-mulaw" if self._out_encoding == "mulaw" else "audio/x-l16"
        return dumps(
            {
                "event": "playAudio",
                "media": {"contentType": content_type, "sampleRate": self._out_rate, "payload": encode_base64(wire)},
            }
        )

    def _mark_messages(self, name: str) -> list[Message]:
        return [dumps({"event": "checkpoint", "streamId": self.stream_id, "name": name})]

    def _clear_messages(self) -> list[Message]:
        return [dumps({"event": "clearAudio", "streamId": self.stream_id})]


#: Plivo's ``extraHeaders`` limit, and its alphabet (letters and digits; ``=`` and ``,`` separate).
MAX_EXTRA_HEADERS_BYTES: Final = 512
_EXTRA_HEADER_PART = re.compile(r"^[A-Za-z0-9]+$")


def plivo_stream_xml(
    ws_url: str, extra_headers: dict[str, str], *, content_type: str = "audio/x-l16;rate=16000"
) -> str:
    """Plivo answer XML that streams the call both ways to ``ws_url``.

    ``extra_headers`` (the one-time call token, …) arrive as ``start.extra_headers``; Plivo
    allows letters and digits only, at most 512 bytes, so a value that breaks that raises
    ``ValueError`` here instead of failing on a live call. ``contentType`` is always written
    (Plivo's pages disagree on its default)."""
    if content_type not in PLIVO_CONTENT_TYPES:
        raise ValueError(f"contentType must be one of {', '.join(PLIVO_CONTENT_TYPES)}, got {content_type!r}")
    parts = urlsplit(ws_url)
    if parts.scheme not in ("wss", "ws") or not parts.netloc:
        raise ValueError(f"stream URL must be wss://host/path, got {ws_url!r}")
    for key, value in extra_headers.items():
        if not _EXTRA_HEADER_PART.match(key) or not _EXTRA_HEADER_PART.match(value):
            raise ValueError(f"extraHeaders {key!r}: Plivo allows letters and digits only in names and values")
    header_text = ",".join(f"{k}={v}" for k, v in extra_headers.items())
    if len(header_text.encode()) > MAX_EXTRA_HEADERS_BYTES:
        raise ValueError(f"extraHeaders must stay within {MAX_EXTRA_HEADERS_BYTES} bytes")
    response = ET.Element("Response")
    attributes = {
        "bidirectional": "true", "keepCallAlive": "true", "audioTrack": "inbound", "contentType": content_type,
    }  # fmt: skip
    if header_text:
        attributes["extraHeaders"] = header_text
    stream = ET.SubElement(response, "Stream", attributes)
    stream.text = ws_url
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(response, encoding="unicode")
