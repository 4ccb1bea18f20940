"""Telephony media-stream protocols, one pure protocol state machine per provider.

``create_protocol("twilio")`` gives a fresh per-call :class:`ProviderProtocol`; the
asyncio WebSocket shell feeds it frames and sends what it returns. The
contract is documented in :mod:`voicecore.telephony.base`; each provider
module's docstring gives its message shapes, framing and auth-token source.
"""

from __future__ import annotations

from typing import Any, Final

from voicecore.telephony.asterisk import AsteriskProtocol
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
    ProviderProtocol,
    UnknownEvent,
)
from voicecore.telephony.exotel import ExotelProtocol
from voicecore.telephony.plivo import PlivoProtocol
from voicecore.telephony.telnyx import TelnyxProtocol
from voicecore.telephony.twilio import TwilioProtocol, twiml_connect_stream
from voicecore.telephony.vonage import VonageProtocol

__all__ = [
    "PROTOCOLS",
    "create_protocol",
    "ProviderProtocol",
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
    "UnknownEvent",
    "TwilioProtocol",
    "TelnyxProtocol",
    "VonageProtocol",
    "PlivoProtocol",
    "ExotelProtocol",
    "AsteriskProtocol",
    "twiml_connect_stream",
]

#: Provider name (as in ``/ws/<name>``) → protocol class.
PROTOCOLS: Final[dict[str, type[ProviderProtocol]]] = {
    cls.name: cls for cls in (TwilioProtocol, TelnyxProtocol, VonageProtocol, PlivoProtocol, ExotelProtocol, AsteriskProtocol)
}


def create_protocol(name: str, **options: Any) -> ProviderProtocol:
    """A new protocol for one call; ``options`` go to the provider class's constructor."""
    try:
        cls = PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown telephony provider {name!r}; known: {', '.join(PROTOCOLS)}") from None
    return cls(**options)
