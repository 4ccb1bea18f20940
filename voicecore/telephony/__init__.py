"""Telephony media-stream protocols, one pure codec per provider.

``create_codec("twilio")`` gives a fresh per-call :class:`ProviderCodec`; the
asyncio WebSocket shell feeds it frames and sends what it returns. The
contract is documented in :mod:`voicecore.telephony.base`; each provider
module's docstring gives its message shapes, framing and auth-token source.
"""

from __future__ import annotations

from typing import Any, Final

from voicecore.telephony.asterisk import AsteriskCodec
from voicecore.telephony.base import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_UNSUPPORTED_DATA,
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
    ProviderCodec,
)
from voicecore.telephony.exotel import ExotelCodec
from voicecore.telephony.plivo import PlivoCodec
from voicecore.telephony.telnyx import TelnyxCodec
from voicecore.telephony.twilio import TwilioCodec, twiml_connect_stream
from voicecore.telephony.vonage import VonageCodec

__all__ = [
    "CODECS",
    "create_codec",
    "ProviderCodec",
    "ProtocolError",
    "MAX_FRAME_BYTES",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_UNSUPPORTED_DATA",
    "CLOSE_INVALID_PAYLOAD",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_MESSAGE_TOO_BIG",
    "Event",
    "Message",
    "Connected",
    "CallStart",
    "MediaIn",
    "Dtmf",
    "MarkPlayed",
    "Cleared",
    "CallStop",
    "Ignored",
    "TwilioCodec",
    "TelnyxCodec",
    "VonageCodec",
    "PlivoCodec",
    "ExotelCodec",
    "AsteriskCodec",
    "twiml_connect_stream",
]

#: Provider name (as in ``/ws/<name>``) → codec class.
CODECS: Final[dict[str, type[ProviderCodec]]] = {
    cls.name: cls for cls in (TwilioCodec, TelnyxCodec, VonageCodec, PlivoCodec, ExotelCodec, AsteriskCodec)
}


def create_codec(name: str, **options: Any) -> ProviderCodec:
    """A new codec for one call; ``options`` go to the provider class's constructor."""
    try:
        cls = CODECS[name]
    except KeyError:
        raise ValueError(f"unknown telephony provider {name!r}; known: {', '.join(CODECS)}") from None
    return cls(**options)
