"""Fake provider REST APIs on 127.0.0.1, for tests and benchmarks of outbound dialing.

Each fake is a real HTTP server (aiohttp, ephemeral port) written from the provider's
documentation, not from :mod:`voicecore.telephony`: it takes create-call requests exactly as the
provider documents them (authentication, form or JSON, field names), answers as the provider does
(status codes, JSON shapes, error codes), then plays the call as the dialled number's
:class:`Scenario` says — signed status callbacks / webhooks to the URL the request named and, when
answered, the provider's media WebSocket to the stream URL (the emulated callers of
:mod:`voicecore.testing.callers`), where a callee speaks an espeak-ng script and waits for the
agent between utterances.

* :class:`FakeTwilioApi` — ``POST /2010-04-01/Accounts/{sid}/Calls.json``;
* :class:`FakeTelnyxApi` — Call Control ``POST /v2/calls``;
* :class:`FakeVonageApi` — Voice API ``POST /v1/calls``.

Every fake keeps ``requests`` (every create-call request, refused ones too) and ``calls``
(:class:`DialRecord`: each call placed, its callbacks, its client and its timings:
``received_at`` → ``stream_started_at`` → ``first_agent_audio_at``, ``dial_to_greeting_s``).
"""

from voicecore.testing.provider_apis.base import (
    OUTCOMES,
    Callback,
    DialRecord,
    FakeProviderApi,
    Reply,
    Request,
    Scenario,
)
from voicecore.testing.provider_apis.telnyx import FakeTelnyxApi
from voicecore.testing.provider_apis.twilio import FakeTwilioApi
from voicecore.testing.provider_apis.vonage import FakeVonageApi

__all__ = [
    "OUTCOMES",
    "Callback",
    "DialRecord",
    "FakeProviderApi",
    "FakeTelnyxApi",
    "FakeTwilioApi",
    "FakeVonageApi",
    "Reply",
    "Request",
    "Scenario",
]
