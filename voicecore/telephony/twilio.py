"""Twilio Media Streams, bidirectional (``<Connect><Stream>``).

Inbound (JSON text frames only; numeric fields arrive as strings):
``connected``, ``start`` (``start.streamSid``, ``start.callSid``,
``start.customParameters``, ``start.mediaFormat`` = audio/x-mulaw 8000 Hz mono),
``media`` (base64 μ-law in ``media.payload``), ``dtmf`` (``dtmf.digit``),
``mark`` (``mark.name``), ``stop``.

Outbound: ``media`` with ``streamSid`` and base64 μ-law (20 ms = 160 B per
message by default), ``mark``, ``clear``. Binary frames are an error on both
sides. ``clear`` makes Twilio return every pending mark
(``marks_returned_on_clear``); those come back as ``MarkPlayed(cleared=True)``.

Auth token: ``start.customParameters.token`` only (a ``<Parameter name="token">``
in the TwiML, see :func:`twiml_connect_stream`). Query strings are not allowed
in the Stream URL, and the ``x-twilio-signature`` header of the upgrade is not
checked here. Caller and callee come from ``customParameters.from``/``to``.

Hang-up: there is no socket message; close the socket (``<Connect>`` ends) or
POST ``Status=completed`` to the Calls REST API. ``encode_hangup`` returns [].
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import ClassVar, Final
from urllib.parse import urlsplit

from voicecore.audio import codecs as audio
from voicecore.telephony.base import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_UNSUPPORTED_DATA,
    Event,
    JsonEventProtocol,
    JsonFields,
    ProtocolError,
    TokenSource,
)

__all__ = ["TwilioProtocol", "twiml_connect_stream", "MAX_PARAMETER_CHARS"]

#: Twilio limit for one <Parameter>: name and value together stay under 500 characters.
MAX_PARAMETER_CHARS: Final = 500


class TwilioProtocol(JsonEventProtocol):
    """Twilio Media Streams protocol. Options: ``message_ms`` (multiple of 20, default 20)."""

    name: ClassVar[str] = "twilio"
    marks_returned_on_clear: ClassVar[bool] = True
    default_sample_rate: ClassVar[int] = 8000
    default_encoding = "mulaw"
    stream_id_key: ClassVar[str | None] = "streamSid"
    outbound_stream_key: ClassVar[str | None] = "streamSid"
    sequence_key: ClassVar[str | None] = "sequenceNumber"

    def __init__(self, *, message_ms: int = 20) -> None:
        super().__init__(message_ms=message_ms)


    def _handshake_token_sources(self) -> list[TokenSource]:
        return []  # Twilio strips/refuses query strings; the token is in customParameters

    def _on_start(self, message: JsonFields) -> list[Event]:
        self._sequence.advance(self._sequence_number(message))
        start = message.get_obj("start")
        assert start is not None
        stream_sid = start.get_str("streamSid", required=False) or message.get_str("streamSid")
        top_sid = message.get_str("streamSid", required=False)
        if top_sid is not None and top_sid != stream_sid:
            raise ProtocolError(
                f"streamSid {top_sid!r} differs from start.streamSid {stream_sid!r}", CLOSE_INVALID_PAYLOAD
            )
        params = start.get_str_map("customParameters")
        media_format = start.get_obj("mediaFormat", required=False)
        if media_format is not None:
            encoding = media_format.get_str("encoding", required=False)
            rate = media_format.get_int("sampleRate")
            channels = media_format.get_int("channels")
            if encoding not in (None, "audio/x-mulaw") or rate not in (None, 8000) or channels not in (None, 1):
                raise ProtocolError(
                    f"start.mediaFormat {encoding}/{rate}/{channels} is not audio/x-mulaw/8000/1",
                    CLOSE_UNSUPPORTED_DATA,
                )
        return [
            self._begin_call(
                stream_id=stream_sid,
                call_id=start.get_str("callSid", required=False),
                caller=params.get("from"),
                callee=params.get("to"),
                custom_parameters=params,
                raw=dict(message.data),
                encoding="mulaw",
                sample_rate=8000,
                message_pcm_bytes=audio.pcm16_bytes_for_ms(self._message_ms, 8000),
                token_sources=[("start.customParameters.token", params.get("token"))],
            )
        ]



def twiml_hangup() -> str:
    """TwiML that ends the call at once (an outbound call the policy refuses)."""
    response = ET.Element("Response")
    ET.SubElement(response, "Hangup")
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(response, encoding="unicode")


def twiml_connect_stream(ws_url: str, parameters: Mapping[str, str]) -> str:
    """TwiML that connects the call to a bidirectional media stream at ``ws_url``.

    ``parameters`` become ``<Parameter name=… value=…/>`` (they arrive as
    ``start.customParameters``). Raises ``ValueError`` for a URL that is not
    ``wss://`` (``ws://`` is accepted for local test clients; Twilio itself
    requires wss), that has a query string or fragment (Twilio error 31922:
    pass values as parameters instead), or for a parameter whose name and value
    together reach 500 characters.
    """
    parts = urlsplit(ws_url)
    if parts.scheme not in ("wss", "ws") or not parts.netloc:
        raise ValueError(f"stream URL must be wss://host/path, got {ws_url!r}")
    if parts.query or "?" in ws_url:
        raise ValueError("stream URL must not have a query string (Twilio error 31922); use parameters")
    if parts.fragment or "#" in ws_url:
        raise ValueError("stream URL must not have a fragment")
    response = ET.Element("Response")
    connect = ET.SubElement(response, "Connect")
    stream = ET.SubElement(connect, "Stream", {"url": ws_url})
    for name, value in parameters.items():
        if not isinstance(name, str) or not name:
            raise ValueError("parameter names must be non-empty strings")
        if not isinstance(value, str):
            raise ValueError(f"parameter {name!r} must have a string value")
        if len(name) + len(value) >= MAX_PARAMETER_CHARS:
            raise ValueError(f"parameter {name!r}: name and value must stay under {MAX_PARAMETER_CHARS} characters")
        ET.SubElement(stream, "Parameter", {"name": name, "value": value})
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(response, encoding="unicode")
