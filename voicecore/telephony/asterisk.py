"""Asterisk ``chan_websocket`` (Asterisk 20.16 / 21.11 / 22.6 / 23.0 and later).

Asterisk connects to us (``Dial(WebSocket/<client>/c(ulaw))`` with a
``websocket_client.conf`` entry, or ARI ``externalMedia`` with
``transport=websocket``). BINARY frames carry raw media in the channel format,
no headers; TEXT frames carry case-sensitive control messages, either plain
text (``MEDIA_START connection_id:… channel:… channel_id:… format:ulaw
optimal_frame_size:160 ptime:20``; the default) or JSON
(``{"event":"MEDIA_START", …}``; 20.18/22.8/23.2 and later with ``f(json)``).
The protocol reads both and answers commands in the format Asterisk used for
``MEDIA_START`` (or in ``control_format`` if given).

Events handled: ``MEDIA_START`` → ``CallStart``; ``DTMF_END digit:5`` → ``Dtmf``;
``QUEUE_DRAINED`` / ``MEDIA_MARK_PROCESSED`` → ``MarkPlayed``; ``HANGUP`` →
``CallStop``; ``MEDIA_XOFF`` (logged), ``MEDIA_XON``, ``STATUS``,
``MEDIA_BUFFERING_COMPLETED`` → ``Ignored``. Anything else → ``UnknownEvent`` (ignored).

Formats: ``ulaw``, ``alaw`` (8 kHz) and signed linear ``slin`` (8 kHz),
``slin12`` … ``slin192``. Asterisk's slin is in host byte order, i.e.
little-endian on every platform Asterisk ships on. Other formats (opus, g722,
…) are refused (1003).

Outbound: BINARY frames of ``frames_per_message`` × ``optimal_frame_size``
bytes (default one frame, 20 ms), never over 65500 B (Asterisk hangs up on
larger messages); commands ``FLUSH_MEDIA`` (clear) and ``HANGUP``
(``encode_hangup``).

Marks: by default ``REPORT_QUEUE_DRAINED``, which asks for one ``QUEUE_DRAINED``
the next time Asterisk's queue is empty. It carries no name and one
notification answers every request made before it, so the protocol remembers the
names in order and reports *all* pending marks as played when ``QUEUE_DRAINED``
arrives: an empty queue means everything sent before those requests has
played. After ``FLUSH_MEDIA`` the emptied queue triggers one ``QUEUE_DRAINED``
if a report was pending; that one returns the marks pending at the clear as
``MarkPlayed(cleared=True)`` (``marks_returned_on_clear``). With
``use_mark_media=True`` the protocol sends ``MARK_MEDIA <name>`` instead, which
Asterisk answers with ``MEDIA_MARK_PROCESSED`` carrying the name when that
point of the stream is reached: exact, but only in newer Asterisk releases.

Auth token, first non-empty of (all present ones must agree, else 1008): the
query parameter ``token`` of the URL Asterisk connects to (add it with the
``v(token=…)`` dial option or the client URI), the ``Authorization`` header
(``websocket_client.conf`` username/password → Basic; the password is the
token), the ``x-voicecore-token`` header. Caller/callee come from the query
parameters ``from``/``to`` (add them with ``v(from=${URIENCODE(${CALLERID(num)})},…)``).
``custom_parameters`` holds the other query parameters and, in JSON format,
the ``channel_variables``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Final, Literal

from loguru import logger

from voicecore.audio import codecs as audio
from voicecore.audio.codecs import Encoding
from voicecore.telephony.base import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_UNSUPPORTED_DATA,
    Dtmf,
    Event,
    Ignored,
    JsonFields,
    MediaIn,
    Message,
    ProtocolError,
    ProviderProtocol,
    UnknownEvent,
    dumps,
    parse_dtmf_digit,
    parse_json_object,
    short_repr,
)

__all__ = ["AsteriskProtocol", "ASTERISK_FORMATS", "MAX_OUTBOUND_MESSAGE_BYTES", "websocket_client_conf", "asterisk_dialplan"]

#: chan_websocket format name → (wire encoding, sample rate).
ASTERISK_FORMATS: Final[dict[str, tuple[Encoding, int]]] = {
    "ulaw": ("mulaw", 8000),
    "alaw": ("alaw", 8000),
    "slin": ("pcm16le", 8000),
    "slin12": ("pcm16le", 12000),
    "slin16": ("pcm16le", 16000),
    "slin24": ("pcm16le", 24000),
    "slin32": ("pcm16le", 32000),
    "slin44": ("pcm16le", 44100),
    "slin48": ("pcm16le", 48000),
    "slin96": ("pcm16le", 96000),
    "slin192": ("pcm16le", 192000),
}
#: Asterisk closes the socket and hangs up on a larger message.
MAX_OUTBOUND_MESSAGE_BYTES: Final = 65500

ControlFormat = Literal["plain-text", "json"]
_AsteriskHandler = Callable[[JsonFields, list[str]], list[Event]]


class AsteriskProtocol(ProviderProtocol):
    """Asterisk chan_websocket protocol.

    Options: ``control_format`` ("plain-text"/"json"; None = as MEDIA_START came),
    ``use_mark_media`` (MARK_MEDIA instead of REPORT_QUEUE_DRAINED for marks),
    ``frames_per_message`` (optimal frames per outbound message, default 1).
    """

    name: ClassVar[str] = "asterisk"
    marks_returned_on_clear: ClassVar[bool] = True

    def __init__(
        self,
        *,
        control_format: ControlFormat | None = None,
        use_mark_media: bool = False,
        frames_per_message: int = 1,
    ) -> None:
        if control_format not in (None, "plain-text", "json"):
            raise ValueError(f"control_format must be 'plain-text' or 'json', got {control_format!r}")
        if frames_per_message < 1:
            raise ValueError(f"frames_per_message must be >= 1, got {frames_per_message}")
        super().__init__()
        self._control_format: ControlFormat | None = control_format
        self._use_mark_media = use_mark_media
        self._frames_per_message = frames_per_message
        self._flush_drain_expected = False
        self._handlers: dict[str, _AsteriskHandler] = {
            "MEDIA_START": self._on_media_start,
            "DTMF_END": self._on_dtmf_end,
            "QUEUE_DRAINED": self._on_queue_drained,
            "MEDIA_MARK_PROCESSED": self._on_mark_processed,
            "MEDIA_XOFF": self._on_flow,
            "MEDIA_XON": self._on_flow,
            "STATUS": self._on_ignored,
            "MEDIA_BUFFERING_COMPLETED": self._on_ignored,
            "HANGUP": self._on_hangup,
        }

    @property
    def control_format(self) -> ControlFormat:
        return self._control_format or "plain-text"

    # -- inbound -------------------------------------------------------------------

    def _receive_text(self, text: str) -> list[Event]:
        stripped = text.strip()
        if not stripped:
            raise ProtocolError("empty control message", CLOSE_INVALID_PAYLOAD)
        args: list[str] = []
        if stripped.startswith("{"):
            data = parse_json_object(stripped)
            event = JsonFields(data).get_str("event")
            assert event is not None
            fmt: ControlFormat = "json"
        else:
            words = stripped.split()
            event, fmt, data = words[0], "plain-text", {}
            for word in words[1:]:
                key, sep, value = word.partition(":")
                if sep and key:
                    data[key] = value
                else:
                    args.append(word)
        handler = self._handlers.get(event)
        if handler is None:
            return [UnknownEvent(event[:40])]
        if event not in ("MEDIA_START", "HANGUP"):
            self._require_started(event)
        if event == "MEDIA_START" and self._control_format is None:
            self._control_format = fmt
        return handler(JsonFields(data, event), args)

    def _receive_bytes(self, data: bytes) -> list[Event]:
        if not self.started:
            raise ProtocolError("media before MEDIA_START", CLOSE_PROTOCOL_ERROR)
        return [MediaIn(self._decode_wire(data, "binary frame"))]

    def _on_media_start(self, message: JsonFields, args: list[str]) -> list[Event]:
        fmt = message.get_str("format")
        assert fmt is not None
        if fmt not in ASTERISK_FORMATS:
            raise ProtocolError(
                f"MEDIA_START.format {short_repr(fmt)} is not supported ({', '.join(ASTERISK_FORMATS)})",
                CLOSE_UNSUPPORTED_DATA,
            )
        encoding, rate = ASTERISK_FORMATS[fmt]
        width = audio.bytes_per_sample(encoding)
        frame = message.get_int("optimal_frame_size")
        if frame is None:
            ptime = message.get_int("ptime") or 20
            frame = rate * ptime // 1000 * width
        if frame <= 0 or frame % width or frame > MAX_OUTBOUND_MESSAGE_BYTES:
            raise ProtocolError(
                f"MEDIA_START.optimal_frame_size {frame} is not a usable frame size for {fmt}",
                CLOSE_INVALID_PAYLOAD,
            )
        frames = max(1, min(self._frames_per_message, MAX_OUTBOUND_MESSAGE_BYTES // frame))
        params = {k: v for k, v in self._query.items() if k != "token"}
        params |= message.get_str_map("channel_variables")
        return [
            self._begin_call(
                stream_id=message.get_str("connection_id", required=False),
                call_id=message.get_str("channel_id", required=False) or message.get_str("channel", required=False),
                caller=self._query.get("from") or None,
                callee=self._query.get("to") or None,
                custom_parameters=params,
                raw=dict(message.data),
                encoding=encoding,
                sample_rate=rate,
                message_pcm_bytes=frame * frames * 2 // width,
            )
        ]

    def _on_dtmf_end(self, message: JsonFields, args: list[str]) -> list[Event]:
        digit = message.get_str("digit", required=not args) or args[0]
        return [Dtmf(parse_dtmf_digit(digit, "DTMF_END.digit"))]

    def _on_queue_drained(self, message: JsonFields, args: list[str]) -> list[Event]:
        if self._flush_drain_expected:
            self._flush_drain_expected = False
            events: list[Event] = list(self._marks.take_cleared())
        else:
            events = [*self._marks.take_cleared(), *self._marks.take_pending()]
        return events or [Ignored("QUEUE_DRAINED with no pending mark")]

    def _on_mark_processed(self, message: JsonFields, args: list[str]) -> list[Event]:
        name = message.get_str("correlation_id", required=False) or (args[0] if args else None)
        if name is None:
            return [Ignored("MEDIA_MARK_PROCESSED without a correlation_id")]
        return [self._marks.played(name)]

    def _on_flow(self, message: JsonFields, args: list[str]) -> list[Event]:
        event = message.path
        if event == "MEDIA_XOFF":
            logger.warning("asterisk stream {}: MEDIA_XOFF, Asterisk's media queue is nearly full", self.stream_id)
        return [Ignored(f"{event} flow control")]

    def _on_ignored(self, message: JsonFields, args: list[str]) -> list[Event]:
        return [Ignored(f"{message.path} not used")]

    def _on_hangup(self, message: JsonFields, args: list[str]) -> list[Event]:
        return [self._stop("hangup")]

    # -- outbound ------------------------------------------------------------------

    def _command(self, command: str, argument: str | None = None, key: str = "correlation_id") -> str:
        if self.control_format == "json":
            return dumps({"command": command} | ({key: argument} if argument is not None else {}))
        return command if argument is None else f"{command} {argument}"

    def _wrap_media(self, wire: bytes) -> Message:
        return wire

    def _mark_messages(self, name: str) -> list[Message]:
        if not self._use_mark_media:
            return [self._command("REPORT_QUEUE_DRAINED")]
        if self.control_format == "plain-text" and any(ch.isspace() for ch in name):
            raise ValueError("mark names sent as MARK_MEDIA plain text must not contain whitespace")
        return [self._command("MARK_MEDIA", name)]

    def encode_clear(self) -> list[Message]:
        if not self._use_mark_media and self._marks.pending:
            self._flush_drain_expected = True
        return super().encode_clear()

    def _clear_messages(self) -> list[Message]:
        return [self._command("FLUSH_MEDIA")]

    def encode_hangup(self) -> list[Message]:
        return [self._command("HANGUP")]


def websocket_client_conf(connection: str, ws_url: str, *, username: str, password: str) -> str:
    """A ``websocket_client.conf`` section for chan_websocket to connect to ``ws_url``
    (``per_call_config``: one connection per call, the only type chan_websocket takes). The
    user name and password go out as HTTP Basic auth on the upgrade."""
    if not connection.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"connection name must be letters, digits, '-' or '_', got {connection!r}")
    if not ws_url.startswith(("wss://", "ws://")):
        raise ValueError(f"uri must be wss://host/path, got {ws_url!r}")
    return "\n".join([
        f"[{connection}]",
        "type = websocket_client",
        "connection_type = per_call_config",
        f"uri = {ws_url}",
        f"tls_enabled = {'yes' if ws_url.startswith('wss://') else 'no'}",
        f"username = {username}",
        f"password = {password}",
        "connection_timeout = 500",
        "reconnect_interval = 500",
        "reconnect_attempts = 4",
        "",
    ])  # fmt: skip


def asterisk_dialplan(connection: str, *, context: str = "from-pstn", codec: str = "ulaw") -> str:
    """Dialplan sending every call of ``context`` to voicecore through ``connection``; the caller
    and the dialled extension travel as URI parameters (``v()``, each URI-encoded)."""
    if codec not in ASTERISK_FORMATS:
        raise ValueError(f"codec must be one of {', '.join(ASTERISK_FORMATS)}, got {codec!r}")
    options = f"c({codec})v(from=${{URIENCODE(${{CALLERID(num)}})}},to=${{URIENCODE(${{EXTEN}})}})"
    return "\n".join([
        f"[{context}]",
        f"exten => _X.,1,Dial(WebSocket/{connection}/{options})",
        " same => n,Hangup()",
        "",
    ])  # fmt: skip
