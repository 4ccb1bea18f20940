"""Shared types and machinery of the telephony provider protocols.

A provider protocol is a pure state machine for one call's media WebSocket: it
turns the provider's messages into :data:`Event` objects and our intentions
(play this audio, tell me when it has played, stop playing, hang up) into
ready-to-send WebSocket messages. It never touches a socket, a clock or the
event loop; the asyncio shell that owns the socket
(:mod:`voicecore.transports.telephony`) drives it like this::

    protocol = create_protocol("twilio")
    protocol.handshake(headers, query)            # upgrade request (may raise ProtocolError)
    for each frame received:
        try:
            events = protocol.receive_text(text)   # or protocol.receive_bytes(data)
        except ProtocolError as exc:
            log(exc.reason); close the socket with exc.close_code; end the call
        for event in events: ...                   # CallStart → authenticate, MediaIn → pipeline, ...
    on socket close: events = protocol.receive_close()  # frames still held for reordering

    send(protocol.encode_media(frame))             # whole frames of int16 LE mono at output_sample_rate
    send(protocol.encode_mark("clause-3"))         # → later MarkPlayed("clause-3")
    send(protocol.encode_clear())                  # barge-in

Every ``encode_*`` method returns a list of messages: ``str`` goes out as a
TEXT frame, ``bytes`` as a BINARY frame. Agent audio is cut into frames once,
by the sender (the paced output of :mod:`voicecore.transports.base`):
``encode_media`` takes whole frames of :attr:`ProviderProtocol.frame_bytes` bytes
(:attr:`ProviderProtocol.frame_duration_ms` of audio) and wraps each in one
media message, so the sender paces by sending one message per frame.

Rules shared by all providers:

* Frames over :data:`MAX_FRAME_BYTES` raise ``ProtocolError`` (1009).
* Media, DTMF and marks before the call has started raise ``ProtocolError`` (1002).
* A stream id that does not match the one from the start message raises (1008):
  a frame for another stream on this socket is treated as a policy violation.
* A well-formed message with an unknown event returns ``[UnknownEvent(name)]``:
  providers add events over time, and a new one must not end calls (the shell
  logs it at DEBUG and counts it). Documented events we do not need return
  ``[Ignored(...)]``; anything received after the stop is ignored.
* Sequence numbers: Telnyx may deliver media out of order, so its protocol holds a
  small reorder buffer (see telnyx.py). For the other providers a media message
  whose sequence number is not greater than the highest seen is *dropped* with
  a warning and ``[Ignored(...)]`` is returned (not fatal: one lost 20 ms frame
  is better than a dropped call). Control messages (dtmf, mark, stop) are never
  dropped for their sequence number.
* After a ``ProtocolError`` the protocol's state is unspecified: close the call.

Marks: the protocol remembers the names it encoded. When a mark comes back after
the shell sent a clear, the event is ``MarkPlayed(name, cleared=True)``: its
audio was (probably) *not* heard. ``marks_returned_on_clear`` says whether the
provider is known to return pending marks when it clears (Twilio, Telnyx,
Asterisk) — either way the ``cleared`` flag is the thing to act on.

Secrets: ``CallStart.auth_token``, ``custom_parameters`` and ``raw`` may hold the
tenant's API key, and ``caller``/``callee`` are personal data. They are left
out of the dataclass ``repr`` so an accidental log line does not leak them.
Reasons in ``ProtocolError`` never contain token values.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeAlias

from loguru import logger

from voicecore.audio import codecs as audio
from voicecore.audio.codecs import Encoding
from voicecore.telephony.events import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_UNSUPPORTED_DATA,
    DTMF_DIGITS,
    MAX_FRAME_BYTES,
    CallStart,
    CallStop,
    Cleared,
    Connected,
    Dtmf,
    Event,
    Ignored,
    MarkPlayed,
    MediaIn,
    Message,
    ProtocolError,
    UnknownEvent,
)
from voicecore.telephony.parsing import (
    JsonFields,
    MarkTracker,
    ReorderBuffer,
    SequenceGuard,
    _json_type,
    _text_size,
    check_frame_size,
    decode_base64,
    dumps,
    encode_base64,
    parse_dtmf_digit,
    parse_json_object,
    short_repr,
    token_from_authorization,
)

__all__ = [
    "MAX_FRAME_BYTES",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_UNSUPPORTED_DATA",
    "CLOSE_INVALID_PAYLOAD",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_MESSAGE_TOO_BIG",
    "ProtocolError",
    "Connected",
    "CallStart",
    "MediaIn",
    "Dtmf",
    "MarkPlayed",
    "Cleared",
    "CallStop",
    "Ignored",
    "UnknownEvent",
    "Event",
    "Message",
    "ProviderProtocol",
    "JsonEventProtocol",
    "JsonFields",
    "SequenceGuard",
    "ReorderBuffer",
    "MarkTracker",
    "DTMF_DIGITS",
    "parse_json_object",
    "decode_base64",
    "encode_base64",
    "dumps",
    "token_from_authorization",
    "check_frame_size",
    "short_repr",
    "parse_dtmf_digit",
]

# --- the protocol base classes ----------------------------------------------------

TokenSource: TypeAlias = tuple[str, object]


class ProviderProtocol(ABC):
    """One call's protocol state for one provider. See the module docstring for the contract.

    Subclasses set ``name``, implement ``_receive_text``/``_receive_bytes`` (call
    :meth:`_begin_call` when the stream starts) and the ``_wrap_media``,
    ``_mark_messages``, ``_clear_messages`` encoders.
    """

    #: Provider name as used in ``/ws/<name>`` and :data:`voicecore.telephony.PROTOCOLS`.
    name: ClassVar[str]
    #: True when the provider answers a clear by returning every pending mark.
    marks_returned_on_clear: ClassVar[bool] = False
    #: Inbound format assumed until the start message says otherwise.
    default_sample_rate: ClassVar[int] = 8000
    default_encoding: ClassVar[Encoding] = "mulaw"
    #: Outbound message duration unless a constructor option or the start says otherwise.
    default_message_ms: ClassVar[int] = 20

    def __init__(self) -> None:
        self._headers: dict[str, str] = {}
        self._query: dict[str, str] = {}
        self._handshake_tokens: list[TokenSource] = []
        self._auth_token: str | None = None
        self._auth_source: str | None = None
        self._provider_jwt: str | None = None
        self._call: CallStart | None = None
        self._stopped = False
        self._in_encoding: Encoding = self.default_encoding
        self._in_rate: int = self.default_sample_rate
        self._out_encoding: Encoding = self.default_encoding
        self._out_rate: int = self.default_sample_rate
        self._message_ms: float = float(self.default_message_ms)
        self._frame_bytes: int | None = None
        self._marks = MarkTracker()

    # -- public state ----------------------------------------------------------

    @property
    def started(self) -> bool:
        """True once ``CallStart`` has been produced."""
        return self._call is not None

    @property
    def stopped(self) -> bool:
        """True once ``CallStop`` has been produced."""
        return self._stopped

    @property
    def call_start(self) -> CallStart | None:
        return self._call

    @property
    def stream_id(self) -> str | None:
        return self._call.stream_id if self._call else None

    @property
    def call_id(self) -> str | None:
        return self._call.call_id if self._call else None

    @property
    def sample_rate(self) -> int:
        """Inbound (provider → us) sample rate; authoritative once started."""
        return self._in_rate

    @property
    def encoding(self) -> Encoding:
        """Inbound wire encoding; authoritative once started."""
        return self._in_encoding

    @property
    def output_sample_rate(self) -> int:
        """Rate ``encode_media`` expects; equals ``sample_rate`` except for a Telnyx
        protocol configured with a different bidirectional codec/rate."""
        return self._out_rate

    @property
    def output_encoding(self) -> Encoding:
        return self._out_encoding

    @property
    def frame_duration_ms(self) -> float:
        """Audio duration of every media message ``encode_media`` returns (pacing unit)."""
        return self._message_ms

    @property
    def frame_bytes(self) -> int:
        """int16 input bytes that make one outbound media message."""
        if self._frame_bytes is not None:
            return self._frame_bytes
        return audio.pcm16_bytes_for_ms(self._message_ms, self._out_rate)

    @property
    def auth_token(self) -> str | None:
        """Tenant API key as delivered by the provider (see each module's docstring)."""
        return self._auth_token

    @property
    def auth_source(self) -> str | None:
        """Where ``auth_token`` came from, e.g. ``"start.customParameters.token"`` (for logs)."""
        return self._auth_source

    @property
    def pending_marks(self) -> tuple[str, ...]:
        return tuple(self._marks.pending)

    # -- inbound -------------------------------------------------------------------

    def handshake(self, headers: Mapping[str, str], query: Mapping[str, str]) -> None:
        """Record the upgrade request's headers and query (auth material, formats).

        Call once, before any message. May raise ``ProtocolError`` (e.g. 1008 for a
        malformed ``Authorization`` header, 1007 for a bad format parameter).
        """
        self._headers = {key.lower(): value for key, value in headers.items()}
        self._query = dict(query)
        self._handshake_tokens = self._handshake_token_sources()
        self._resolve_token(())
        self._on_handshake()

    def receive_text(self, text: str) -> list[Event]:
        """Events for one TEXT frame; raises ``ProtocolError`` on bad input."""
        check_frame_size(_text_size(text))
        if self._stopped:
            return [Ignored("text frame after the stream stopped")]
        return self._receive_text(text)

    def receive_bytes(self, data: bytes) -> list[Event]:
        """Events for one BINARY frame; raises ``ProtocolError`` on bad input."""
        check_frame_size(len(data))
        if self._stopped:
            return [Ignored("binary frame after the stream stopped")]
        return self._receive_bytes(data)

    def receive_close(self) -> list[Event]:
        """The socket closed: events still held by the protocol (Telnyx reorder buffer)."""
        return []

    # -- outbound ------------------------------------------------------------------

    def encode_media(self, frames: bytes) -> list[Message]:
        """One media message per frame of int16 LE mono audio at ``output_sample_rate``;
        ``frames`` must be whole frames (a multiple of :attr:`frame_bytes`)."""
        size = self._require_output("encode_media")
        if len(frames) % size:
            raise ValueError(f"{self.name}: {len(frames)} bytes of audio are not whole {size}-byte frames")
        return [
            self._wrap_media(audio.from_pcm16(frames[i : i + size], self._out_encoding))
            for i in range(0, len(frames), size)
        ]

    def encode_mark(self, name: str) -> list[Message]:
        """Ask the provider to report when the audio sent so far has played (→ ``MarkPlayed``)."""
        self._require_output("encode_mark")
        if not isinstance(name, str) or not name:
            raise ValueError("mark name must be a non-empty string")
        messages = self._mark_messages(name)
        self._marks.sent(name)
        return messages

    def encode_clear(self) -> list[Message]:
        """Barge-in: stop what the provider is playing."""
        self._require_output("encode_clear")
        self._marks.on_clear()
        return self._clear_messages()

    def encode_hangup(self) -> list[Message]:
        """Hang up over the socket where the protocol can ([] otherwise: close the socket
        or use the provider's REST API)."""
        return []

    # -- for subclasses ----------------------------------------------------------------

    @abstractmethod
    def _receive_text(self, text: str) -> list[Event]: ...

    @abstractmethod
    def _receive_bytes(self, data: bytes) -> list[Event]: ...

    @abstractmethod
    def _wrap_media(self, wire: bytes) -> Message:
        """One media message around ``wire`` (audio already in ``output_encoding``)."""

    @abstractmethod
    def _mark_messages(self, name: str) -> list[Message]: ...

    @abstractmethod
    def _clear_messages(self) -> list[Message]: ...

    def _on_handshake(self) -> None:
        """Hook: read provider-specific handshake parameters."""
        return None

    def _handshake_token_sources(self) -> list[TokenSource]:
        """Default for Vonage/Plivo/Exotel/Asterisk: query ``token``, ``Authorization``
        (Bearer, or Basic → password), ``x-voicecore-token`` header."""
        sources: list[TokenSource] = [("query parameter 'token'", self._query.get("token"))]
        authorization = self._headers.get("authorization")
        if authorization:
            sources.append(("authorization header", token_from_authorization(authorization)))
        sources.append(("x-voicecore-token header", self._headers.get("x-voicecore-token")))
        return sources

    def _resolve_token(self, message_sources: Iterable[TokenSource]) -> None:
        """Pick the auth token among handshake and message sources; two different
        tokens are a policy violation (1008)."""
        found: list[tuple[str, str]] = []
        for source, value in [*self._handshake_tokens, *message_sources]:
            if value is None or value == "":
                continue
            if not isinstance(value, str):
                raise ProtocolError(f"{source} must be a string, got {_json_type(value)}", CLOSE_INVALID_PAYLOAD)
            found.append((source, value))
        if not found:
            self._auth_token = self._auth_source = None
            return
        for source, value in found[1:]:
            if value != found[0][1]:
                raise ProtocolError(f"conflicting auth tokens in {found[0][0]} and {source}", CLOSE_POLICY_VIOLATION)
        self._auth_source, self._auth_token = found[0]

    def _begin_call(
        self,
        *,
        stream_id: str | None,
        call_id: str | None,
        caller: str | None,
        callee: str | None,
        custom_parameters: dict[str, str],
        raw: dict[str, Any],
        encoding: Encoding,
        sample_rate: int,
        message_pcm_bytes: int,
        out_encoding: Encoding | None = None,
        out_sample_rate: int | None = None,
        token_sources: Sequence[TokenSource] = (),
    ) -> CallStart:
        """Fix the audio format, resolve the token and produce ``CallStart``."""
        if self._call is not None:
            raise ProtocolError("duplicate start: the stream has already started", CLOSE_PROTOCOL_ERROR)
        self._resolve_token(token_sources)
        self._in_encoding, self._in_rate = encoding, sample_rate
        self._out_encoding = out_encoding or encoding
        self._out_rate = out_sample_rate or sample_rate
        if message_pcm_bytes <= 0 or message_pcm_bytes % 2:
            raise ValueError(f"message size must be a positive even number of bytes, got {message_pcm_bytes}")
        self._frame_bytes = message_pcm_bytes
        self._message_ms = audio.pcm16_duration_ms(message_pcm_bytes, self._out_rate)
        self._call = CallStart(
            provider=self.name,
            stream_id=stream_id,
            call_id=call_id,
            caller=caller,
            callee=callee,
            auth_token=self._auth_token,
            sample_rate=sample_rate,
            encoding=encoding,
            custom_parameters=custom_parameters,
            raw=raw,
            provider_jwt=self._provider_jwt,
        )
        logger.debug(
            "{} stream {} started: in {} {} Hz, out {} {} Hz, {} ms messages, token from {}",
            self.name,
            stream_id,
            encoding,
            sample_rate,
            self._out_encoding,
            self._out_rate,
            self._message_ms,
            self._auth_source or "nowhere",
        )
        return self._call

    def _stop(self, reason: str) -> CallStop:
        self._stopped = True
        logger.debug("{} stream {} stopped: {}", self.name, self.stream_id, reason)
        return CallStop(reason)

    def _require_started(self, what: str) -> CallStart:
        if self._call is None:
            raise ProtocolError(f"{what} before start", CLOSE_PROTOCOL_ERROR)
        return self._call

    def _require_output(self, method: str) -> int:
        """The frame size, once the start message fixed the format."""
        if self._frame_bytes is None:
            raise RuntimeError(f"{self.name}: {method}() called before CallStart")
        return self._frame_bytes

    def _decode_wire(self, wire: bytes, path: str) -> bytes:
        """Inbound wire bytes → int16 LE; odd-length 16-bit audio is a 1007 error."""
        if audio.bytes_per_sample(self._in_encoding) == 2 and len(wire) % 2:
            raise ProtocolError(f"{path} has {len(wire)} bytes, an odd number for 16-bit PCM", CLOSE_INVALID_PAYLOAD)
        return audio.to_pcm16(wire, self._in_encoding)


Handler: TypeAlias = Callable[[JsonFields], list[Event]]


class JsonEventProtocol(ProviderProtocol):
    """Base for providers that speak JSON text frames with an ``event`` key.

    Subclasses list their events in :meth:`_event_handlers` and set
    ``stream_id_key``/``sequence_key`` (top-level keys); the common ``media``,
    ``dtmf``, ``mark``, ``stop`` and ``connected`` handlers live here.
    """

    #: Top-level key holding the stream id on every message (None: no stream id).
    stream_id_key: ClassVar[str | None] = None
    #: Top-level key holding the message sequence number (None: none).
    sequence_key: ClassVar[str | None] = None
    #: ``media.track`` values that carry the caller's audio (others are ignored).
    inbound_tracks: ClassVar[frozenset[str]] = frozenset({"inbound", "inbound_track"})
    #: Documented events we accept and ignore.
    ignored_events: ClassVar[frozenset[str]] = frozenset()
    #: Top-level key carrying the stream id on outbound ``media``/``mark``/``clear`` (None: not sent).
    outbound_stream_key: ClassVar[str | None] = None

    def __init__(self, *, message_ms: int | None = None) -> None:
        """``message_ms``: outbound message duration, a positive multiple of 20 (None: the default)."""
        super().__init__()
        if message_ms is not None:
            if message_ms <= 0 or message_ms % 20:
                raise ValueError(f"message_ms must be a positive multiple of 20, got {message_ms}")
            self._message_ms = float(message_ms)
        self._sequence = SequenceGuard()
        self._handlers: dict[str, Handler] = self._event_handlers()

    def _event_handlers(self) -> dict[str, Handler]:
        """Event name → handler; the events Twilio, Telnyx and Exotel share (others override)."""
        return {
            "connected": self._on_connected,
            "start": self._on_start,  # type: ignore[attr-defined]  # each provider's own
            "media": self._on_media,
            "dtmf": self._on_dtmf,
            "mark": self._on_mark,
            "stop": self._on_stop,
        }

    def _receive_text(self, text: str) -> list[Event]:
        message = JsonFields(parse_json_object(text))
        event = message.get_str("event")
        assert event is not None
        handler = self._handlers.get(event)
        if handler is not None:
            return handler(message)
        if event in self.ignored_events:
            return [Ignored(f"{event} event not used")]
        return [UnknownEvent(event[:40])]

    def _receive_bytes(self, data: bytes) -> list[Event]:
        raise ProtocolError("binary frame where JSON text was expected", CLOSE_UNSUPPORTED_DATA)

    # -- outbound: ``{"event": ..., <stream key>: ..., ...}`` (Twilio, Telnyx, Exotel) --------

    def _event_message(self, event: str, **body: Any) -> str:
        message: dict[str, Any] = {"event": event}
        if self.outbound_stream_key is not None and self.stream_id is not None:
            message[self.outbound_stream_key] = self.stream_id
        return dumps(message | body)

    def _wrap_media(self, wire: bytes) -> Message:
        return self._event_message("media", media={"payload": encode_base64(wire)})

    def _mark_messages(self, name: str) -> list[Message]:
        return [self._event_message("mark", mark={"name": name})]

    def _clear_messages(self) -> list[Message]:
        return [self._event_message("clear")]

    # -- shared pieces -------------------------------------------------------------

    def _check_stream_id(self, message: JsonFields) -> None:
        if self.stream_id_key is None:
            return
        value = message.get_str(self.stream_id_key, required=False)
        expected = self._call.stream_id if self._call else None
        if value is not None and expected is not None and value != expected:
            raise ProtocolError(
                f"{self.stream_id_key} {short_repr(value)} does not match {short_repr(expected)}",
                CLOSE_POLICY_VIOLATION,
            )

    def _sequence_number(self, message: JsonFields) -> int | None:
        return message.get_int(self.sequence_key) if self.sequence_key else None

    def _control(self, message: JsonFields, what: str) -> None:
        """Checks common to dtmf/mark/...: started, same stream; notes the sequence number."""
        self._require_started(what)
        self._check_stream_id(message)
        seq = self._sequence_number(message)
        if not self._sequence.advance(seq):
            logger.debug("{} {} with out-of-order sequence number {} (processed)", self.name, what, seq)

    def _on_connected(self, message: JsonFields) -> list[Event]:
        return [Connected(dict(message.data))]

    def _on_media(self, message: JsonFields) -> list[Event]:
        self._require_started("media")
        self._check_stream_id(message)
        seq = self._sequence_number(message)
        media = message.get_obj("media")
        assert media is not None
        payload = media.get_str("payload", allow_empty=True)
        assert payload is not None
        timestamp = media.get_int("timestamp")
        chunk = media.get_int("chunk")
        track = media.get_str("track", required=False)
        if track is not None and track not in self.inbound_tracks:
            return [Ignored(f"media.track {short_repr(track)} is not the caller's audio")]
        if not payload:
            return [Ignored("empty media.payload")]
        pcm16 = self._decode_wire(decode_base64(payload, "media.payload"), "media.payload")
        return self._deliver_media(MediaIn(pcm16, seq, timestamp), chunk)

    def _deliver_media(self, media: MediaIn, chunk: int | None) -> list[Event]:
        """Drop media whose sequence number goes backwards (see module docstring)."""
        last = self._sequence.last
        if not self._sequence.advance(media.sequence):
            logger.warning(
                "{} stream {}: dropped media with sequence number {} (already at {})",
                self.name,
                self.stream_id,
                media.sequence,
                last,
            )
            return [Ignored(f"media {self.sequence_key} {media.sequence} is not after {last}; dropped")]
        return [media]

    def _on_dtmf(self, message: JsonFields) -> list[Event]:
        self._control(message, "dtmf")
        dtmf = message.get_obj("dtmf")
        assert dtmf is not None
        digit = dtmf.get_str("digit")
        assert digit is not None
        return [Dtmf(parse_dtmf_digit(digit, dtmf.field_path("digit")), dtmf.get_int("duration"))]

    def _on_mark(self, message: JsonFields) -> list[Event]:
        self._control(message, "mark")
        mark = message.get_obj("mark")
        assert mark is not None
        name = mark.get_str("name")
        assert name is not None
        return [self._marks.played(name)]

    def _on_stop(self, message: JsonFields) -> list[Event]:
        self._check_stream_id(message)
        self._sequence_number(message)  # type check only
        stop = message.get_obj("stop", required=False)
        reason = stop.get_str("reason", required=False) if stop is not None else None
        return [self._stop(reason or "stop")]
