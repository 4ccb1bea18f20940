"""What a provider's media stream says, as events: the vocabulary every provider protocol shares.

:class:`ProtocolError` (with the WebSocket close code to end the call with) and the
events a protocol turns provider messages into. ``CallStart.auth_token``,
``custom_parameters`` and ``raw`` may hold the tenant's API key, and
``caller``/``callee`` are personal data: they are left out of the dataclass
``repr`` so an accidental log line does not leak them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from voicecore.audio.codecs import Encoding

#: Largest WebSocket frame (text: UTF-8 bytes) a protocol accepts from a provider.
MAX_FRAME_BYTES: Final = 65536

# WebSocket close codes (RFC 6455 §7.4.1) the shell should close with.
CLOSE_PROTOCOL_ERROR: Final = 1002  # order/protocol violation: media before start, duplicate start
CLOSE_UNSUPPORTED_DATA: Final = 1003  # binary vs text, unsupported audio format
CLOSE_INVALID_PAYLOAD: Final = 1007  # bad JSON, bad base64, wrong field types, missing fields
CLOSE_POLICY_VIOLATION: Final = 1008  # auth problems, frames for another stream
CLOSE_MESSAGE_TOO_BIG: Final = 1009  # frame over MAX_FRAME_BYTES

#: Valid DTMF digits (upper case).
DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")


class ProtocolError(Exception):
    """A provider message that breaks the protocol; close this call with ``close_code``.

    ``reason`` is specific and human-readable and names the offending field; it
    never contains token values or audio.
    """

    def __init__(self, reason: str, close_code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.close_code = close_code

    def __repr__(self) -> str:
        return f"ProtocolError({self.reason!r}, close_code={self.close_code})"


# --- events ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """The provider opened the stream (Twilio/Telnyx/Exotel ``connected``, Vonage ``websocket:connected``)."""

    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class CallStart:
    """The stream started; the protocol now knows the audio format and the auth token.

    ``sample_rate``/``encoding`` describe the provider's *inbound* audio on the
    wire (``MediaIn.pcm16`` is already decoded to int16 LE at ``sample_rate``).
    ``auth_token`` is the voicecore credential as the provider delivered it — a one-time
    call token, a provider stream secret or an API key (None if it delivered none); the
    shell must check it before starting a pipeline.
    """

    provider: str
    stream_id: str | None
    call_id: str | None
    caller: str | None = field(repr=False)
    callee: str | None = field(repr=False)
    auth_token: str | None = field(repr=False)
    sample_rate: int
    encoding: Encoding
    custom_parameters: dict[str, str] = field(repr=False)
    raw: dict[str, Any] = field(repr=False)
    #: A credential the provider itself issued for this stream (Vonage's signed JWT from
    #: ``authorization: {"type": "vonage"}``): checked with the tenant's provider secret, never
    #: taken for a voicecore key.
    provider_jwt: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class MediaIn:
    """Caller audio: int16 little-endian mono at the protocol's ``sample_rate``."""

    pcm16: bytes = field(repr=False)
    sequence: int | None = None
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A key press: one of ``0-9 * # A-D``."""

    digit: str
    duration_ms: int | None = None


@dataclass(frozen=True, slots=True)
class MarkPlayed:
    """A mark we sent came back: the audio sent before it has played.

    ``cleared`` is True when we sent a clear while this mark was pending: the
    provider returned it because of the clear, so its audio was not (all) heard.
    """

    name: str
    cleared: bool = False


@dataclass(frozen=True, slots=True)
class Cleared:
    """The provider confirmed a clear (Vonage ``websocket:cleared``, Plivo ``clearedAudio``)."""


@dataclass(frozen=True, slots=True)
class CallStop:
    """The provider ended the stream (``stop``, Asterisk ``HANGUP``)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """A valid message that needs no action (or a dropped out-of-order frame)."""

    reason: str


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """A well-formed message whose event this protocol does not know. Providers add events
    over time, so it is not an error: the shell logs it at DEBUG, counts it and carries on.
    ``name`` is the event name cut to 40 characters (it comes from the far end)."""

    name: str


Event: TypeAlias = Connected | CallStart | MediaIn | Dtmf | MarkPlayed | Cleared | CallStop | Ignored | UnknownEvent
#: A WebSocket message to send: ``str`` → TEXT frame, ``bytes`` → BINARY frame.
Message: TypeAlias = str | bytes
