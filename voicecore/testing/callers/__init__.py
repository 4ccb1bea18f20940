"""Callers that play a telephony provider's side of a media WebSocket, for tests and benchmarks.

One emulator per provider (:class:`TwilioClient`, :class:`TelnyxClient`,
:class:`VonageClient`, :class:`PlivoClient`, :class:`ExotelClient`,
:class:`AsteriskClient`), written from the providers' protocol references, not
from :mod:`voicecore.telephony`: each builds the provider's messages field by
field as the reference shows them and checks what the server sends back against
the provider's rules (the G.711 tables are :mod:`voicecore.audio.codecs`, checked
bit-exact against the ITU reference in the audio tests).

What every client does, like the real provider:

* connects with the provider's auth mechanism and sends its opening messages;
* streams caller audio in real time ("the microphone"): silence between
  utterances, the provider's frame size and pacing, increasing sequence
  numbers / chunk counters / timestamps;
* plays the agent's audio on an emulated line: received audio is queued and
  "plays" at real time; marks / checkpoints / notify / REPORT_QUEUE_DRAINED are
  answered when the audio sent before them has played; a clear drops the queued
  audio (Twilio and Telnyx then return every pending mark at once);
* records every agent media message with its arrival time, decodes it, and
  notes every deviation from the provider's framing rules in ``violations``;
* ends the call the provider's way.

Times are ``time.monotonic()`` seconds. The tests (``tests/test_telephony_*.py``)
and the benchmarks (``benchmarks/latency.py``, ``concurrency.py``, ``overhead.py``)
use these same callers.
"""

from voicecore.testing.callers.line import (
    GAP_MS,
    AgentMedia,
    MarkEcho,
    ProviderClient,
    Utterance,
    b64,
    b64_strict,
    find_stored_call,
    pcm16le_decode,
    pcm16le_encode,
    resample,
    rms,
    ulaw_decode,
    ulaw_encode,
    voiced_bounds,
    wait_stored_call,
    with_query,
)
from voicecore.testing.callers.providers import (
    CLIENTS,
    AsteriskClient,
    ExotelClient,
    PlivoClient,
    TelnyxClient,
    TwilioClient,
    VonageClient,
)

__all__ = [
    "AgentMedia",
    "AsteriskClient",
    "CLIENTS",
    "ExotelClient",
    "GAP_MS",
    "MarkEcho",
    "PlivoClient",
    "ProviderClient",
    "TelnyxClient",
    "TwilioClient",
    "Utterance",
    "VonageClient",
    "b64",
    "b64_strict",
    "find_stored_call",
    "pcm16le_decode",
    "pcm16le_encode",
    "resample",
    "rms",
    "ulaw_decode",
    "ulaw_encode",
    "voiced_bounds",
    "wait_stored_call",
    "with_query",
]
