"""Vonage Voice API WebSocket (NCCO ``connect`` to a ``websocket`` endpoint).

Inbound: the first message is text, ``{"event":"websocket:connected",
"content-type":"audio/l16;rate=16000", …}`` (it also carries the NCCO
``headers``; the older guide's example has no ``event`` key, so a first message
with a ``content-type`` and no event counts as the same); then BINARY frames of 16-bit signed little-endian mono PCM,
20 ms each (320 B at 8 kHz, 640 B at 16 kHz, 960 B at 24 kHz). Further text
events: ``websocket:cleared``, ``websocket:notify`` (``payload`` we sent back),
``websocket:dtmf`` (``digit``/``duration`` at the top level, or in a ``dtmf``
object). Audio before ``websocket:connected`` or with an odd byte count is an
error; other frame sizes are accepted.

Outbound: BINARY frames of exactly 20 ms in the same format (the remainder
stays buffered until the next call or ``flush_media``); text commands
``{"action":"clear"}`` and ``{"action":"notify","payload":{"name":…}}`` (mark).
There is no stream id and no socket hang-up (``encode_hangup`` returns []).

Auth token, first non-empty of (all present ones must agree, else 1008):
``token`` at the top level of ``websocket:connected`` (NCCO ``headers`` are
echoed there), ``headers.token`` in that message, the handshake query
``token``, ``Authorization`` (Bearer, or Basic password) or
``x-voicecore-token`` header. The doc marks the exact echo of NCCO headers ◐/❓.

Signed WebSockets: with ``authorization: {"type": "vonage"}`` on the NCCO endpoint,
Vonage sends ``Authorization: Bearer <JWT>`` — *its* token (HS256 with the account's
signature secret), not ours. A Bearer value shaped like a JWT is therefore not an
auth token: it goes to ``CallStart.provider_jwt`` for the shell to check with the
tenant's signature secret. (``{"type": "custom", "value": "Bearer <our token>"}``
sends our own token, which is read as above.)

Caller/callee/call id: ``from``/``to``/``uuid`` (or ``conversation_uuid``),
looked up at the top level of ``websocket:connected``, then in its ``headers``
object, then in the handshake query. ``custom_parameters`` collects the string
values of all three (token removed).

The sample rate comes from the ``content-type``; without one, the constructor's
``sample_rate`` (default 16000) is assumed.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit

from voicecore.audio import codecs as audio
from voicecore.telephony.base import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_UNSUPPORTED_DATA,
    Cleared,
    Connected,
    Dtmf,
    Event,
    Handler,
    JsonEventProtocol,
    JsonFields,
    MediaIn,
    Message,
    ProtocolError,
    TokenSource,
    dumps,
    parse_dtmf_digit,
    parse_json_object,
)
from voicecore.telephony.signatures import looks_like_jwt

__all__ = ["VonageProtocol", "VONAGE_SAMPLE_RATES", "ncco_connect", "MAX_NCCO_HEADER_BYTES"]

VONAGE_SAMPLE_RATES: Final = frozenset({8000, 16000, 24000})
_CONTENT_TYPE_RE: Final = re.compile(r"\s*audio/l16\s*;\s*rate\s*=\s*(\d+)\s*", re.IGNORECASE)
_NOT_PARAMETERS: Final = frozenset({"event", "content-type", "token", "headers"})


class VonageProtocol(JsonEventProtocol):
    """Vonage Voice API WebSocket protocol. Option: ``sample_rate`` used when the
    ``websocket:connected`` message has no content-type (default 16000)."""

    name: ClassVar[str] = "vonage"
    default_sample_rate: ClassVar[int] = 16000
    default_encoding = "pcm16le"

    def __init__(self, *, sample_rate: int = 16000) -> None:
        if sample_rate not in VONAGE_SAMPLE_RATES:
            raise ValueError(f"sample_rate must be one of {sorted(VONAGE_SAMPLE_RATES)}, got {sample_rate}")
        super().__init__()
        self._in_rate = self._out_rate = sample_rate

    def _handshake_token_sources(self) -> list[TokenSource]:
        authorization = self._headers.get("authorization", "")
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and looks_like_jwt(value.strip()):
            self._provider_jwt = value.strip()  # Vonage's signed-WebSocket JWT, not a voicecore token
            headers = {k: v for k, v in self._headers.items() if k != "authorization"}
            saved, self._headers = self._headers, headers
            try:
                return super()._handshake_token_sources()
            finally:
                self._headers = saved
        return super()._handshake_token_sources()

    @property
    def provider_jwt(self) -> str | None:
        """Vonage's JWT from a signed WebSocket's ``Authorization`` header (None without one)."""
        return self._provider_jwt

    def _event_handlers(self) -> dict[str, Handler]:
        return {
            "websocket:connected": self._on_connected_start,
            "websocket:cleared": self._on_cleared,
            "websocket:notify": self._on_notify,
            "websocket:dtmf": self._on_vonage_dtmf,
        }

    def _receive_text(self, text: str) -> list[Event]:
        data = parse_json_object(text)
        if "event" not in data and "content-type" in data and not self.started:
            # The older guide's first message: NCCO headers and the content-type, no event key.
            return self._on_connected_start(JsonFields(data))
        return super()._receive_text(text)

    def _on_connected_start(self, message: JsonFields) -> list[Event]:
        content_type = message.get_str("content-type", required=False)
        rate = self._in_rate
        if content_type is not None:
            match = _CONTENT_TYPE_RE.fullmatch(content_type)
            if match is None:
                raise ProtocolError(
                    f"content-type {content_type[:40]!r} is not audio/l16;rate=N", CLOSE_UNSUPPORTED_DATA
                )
            rate = int(match.group(1))
            if rate not in VONAGE_SAMPLE_RATES:
                raise ProtocolError(
                    f"content-type rate {rate} is not supported ({sorted(VONAGE_SAMPLE_RATES)})",
                    CLOSE_UNSUPPORTED_DATA,
                )
        headers = message.get_obj("headers", required=False)
        header_data: dict[str, Any] = dict(headers.data) if headers is not None else {}
        if "token" in header_data and not isinstance(header_data["token"], str):
            raise ProtocolError("headers.token must be a string", CLOSE_INVALID_PAYLOAD)
        top_token = message.get_str("token", required=False)

        params: dict[str, str] = {}
        for source in (self._query, message.data, header_data):
            for key, value in source.items():
                if key in _NOT_PARAMETERS:
                    continue
                if isinstance(value, str):
                    params[key] = value
                elif isinstance(value, (int, float)) and not isinstance(value, bool):
                    params[key] = str(value)

        def lookup(*keys: str) -> str | None:
            for source in (message.data, header_data, self._query):
                for key in keys:
                    value = source.get(key)
                    if isinstance(value, str) and value:
                        return value
            return None

        start = self._begin_call(
            stream_id=None,
            call_id=lookup("uuid", "conversation_uuid"),
            caller=lookup("from"),
            callee=lookup("to"),
            custom_parameters=params,
            raw=dict(message.data),
            encoding="pcm16le",
            sample_rate=rate,
            message_pcm_bytes=audio.pcm16_bytes_for_ms(20, rate),
            token_sources=[
                ("websocket:connected token", top_token),
                ("websocket:connected headers.token", header_data.get("token")),
            ],
        )
        return [Connected(dict(message.data)), start]

    def _on_cleared(self, message: JsonFields) -> list[Event]:
        self._require_started("websocket:cleared")
        return [Cleared()]

    def _on_notify(self, message: JsonFields) -> list[Event]:
        self._require_started("websocket:notify")
        payload = message.get_obj("payload")
        assert payload is not None
        name = payload.get_str("name")
        assert name is not None
        return [self._marks.played(name)]

    def _on_vonage_dtmf(self, message: JsonFields) -> list[Event]:
        self._require_started("websocket:dtmf")
        source = message.get_obj("dtmf", required=False) or message
        digit = source.get_str("digit")
        assert digit is not None
        return [Dtmf(parse_dtmf_digit(digit, source.field_path("digit")), source.get_int("duration"))]

    def _receive_bytes(self, data: bytes) -> list[Event]:
        if not self.started:
            raise ProtocolError("binary media before websocket:connected", CLOSE_PROTOCOL_ERROR)
        return [MediaIn(self._decode_wire(data, "binary frame"))]

    def _wrap_media(self, wire: bytes) -> Message:
        return wire

    def _mark_messages(self, name: str) -> list[Message]:
        return [dumps({"action": "notify", "payload": {"name": name}})]

    def _clear_messages(self) -> list[Message]:
        return [dumps({"action": "clear"})]


#: Vonage echoes the NCCO ``headers`` in its first message; its guide caps them at 512 bytes.
MAX_NCCO_HEADER_BYTES: Final = 512


def ncco_connect(
    ws_url: str, headers: dict[str, str], *, sample_rate: int = 16000, signed: bool = True
) -> list[dict[str, object]]:
    """The NCCO (answer-URL response) that connects the call to a WebSocket at ``ws_url``.

    ``headers`` come back in the ``websocket:connected`` message (the one-time call token,
    caller and callee); ``signed`` adds ``authorization: {"type": "vonage"}`` so the upgrade
    carries Vonage's JWT, checked with the tenant's signature secret."""
    if sample_rate not in VONAGE_SAMPLE_RATES:
        raise ValueError(f"sample_rate must be one of {sorted(VONAGE_SAMPLE_RATES)}, got {sample_rate}")
    parts = urlsplit(ws_url)
    if parts.scheme not in ("wss", "ws") or not parts.netloc:
        raise ValueError(f"WebSocket URI must be wss://host/path, got {ws_url!r}")
    if len(dumps(headers).encode()) > MAX_NCCO_HEADER_BYTES:
        raise ValueError(f"NCCO websocket headers must stay under {MAX_NCCO_HEADER_BYTES} bytes")
    endpoint: dict[str, object] = {
        "type": "websocket",
        "uri": ws_url,
        "content-type": f"audio/l16;rate={sample_rate}",
        "headers": dict(headers),
    }
    if signed:
        endpoint["authorization"] = {"type": "vonage"}
    return [{"action": "connect", "endpoint": [endpoint]}]
