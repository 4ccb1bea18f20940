"""The asyncio shell that places outbound calls: :class:`ProviderDialer`.

It sends the request :func:`voicecore.telephony.dialing.build_create_call` builds and reads the
answer with :func:`~voicecore.telephony.dialing.parse_create_call`; everything that goes wrong
on the way becomes a :class:`DialResult` (never an exception): a timeout (``"timeout"``), a
refused or unreachable host (``"connection_failed"``, retryable), missing credentials
(``"credentials"``, ``auth_failed``). Nothing it logs carries a credential, the call token or
the numbers dialed.

The provider's API host is the documented one unless ``api_bases`` (or the environment variable
``VOICECORE_<PROVIDER>_API_BASE``) names another, e.g. a fake API in tests.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from types import TracebackType
from typing import Final

import aiohttp
from loguru import logger

from voicecore.telephony.dialing import (
    DialingError,
    DialRequest,
    DialResult,
    build_create_call,
    parse_create_call,
)

__all__ = ["ProviderDialer", "API_BASE_ENV", "DEFAULT_DIAL_TIMEOUT_S"]

#: ``VOICECORE_TWILIO_API_BASE`` etc.: another API host for that provider (tests, regional hosts).
API_BASE_ENV: Final = "VOICECORE_{}_API_BASE"
DEFAULT_DIAL_TIMEOUT_S: Final = 15.0
#: The most of a provider's answer read (an answer to a create-call request is a few hundred bytes).
MAX_ANSWER_BYTES: Final = 256 * 1024
USER_AGENT: Final = "voicecore-dialer"


def _scrub(text: str | None, credentials: Mapping[str, str]) -> str | None:
    """``text`` with any stored credential value in it masked (a provider should not echo one, but)."""
    if text is None:
        return None
    for value in credentials.values():
        if isinstance(value, str) and len(value) >= 6 and value in text:
            text = text.replace(value, "***")
    return text


class ProviderDialer:
    """Places one call per :meth:`dial`; one HTTP session shared by all (open it with ``async with``
    or let the first dial open it; :meth:`close` at the end)."""

    def __init__(self, *, api_bases: Mapping[str, str] | None = None, timeout_s: float = DEFAULT_DIAL_TIMEOUT_S):
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.api_bases = dict(api_bases or {})
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def api_base(self, provider: str) -> str | None:
        """The API host for ``provider``: ``api_bases``, else ``VOICECORE_<PROVIDER>_API_BASE``, else
        None (the provider's documented host; for Asterisk the tenant's ``ari_url``)."""
        return self.api_bases.get(provider) or os.environ.get(API_BASE_ENV.format(provider.upper())) or None

    async def __aenter__(self) -> ProviderDialer:
        self._open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:  # fmt: skip
        await self.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _send(self, method: str, url: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        session = self._open()
        async with session.request(method, url, headers=headers, data=body, allow_redirects=False,
                                   timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as answer:  # fmt: skip
            chunks: list[bytes] = []
            size = 0
            while size < MAX_ANSWER_BYTES and (chunk := await answer.content.readany()):
                chunks.append(chunk)
                size += len(chunk)
            return answer.status, b"".join(chunks)[:MAX_ANSWER_BYTES]

    async def dial(self, req: DialRequest, credentials: Mapping[str, str]) -> DialResult:
        """Ask ``req.provider`` to place the call; the provider's call id, or why not."""
        provider = req.provider
        try:
            request = build_create_call(provider, credentials, req, api_base=self.api_base(provider))
        except DialingError as e:
            logger.warning(f"dial {req.attempt_id} via {provider}: cannot build the request: {e}")
            return DialResult(ok=False, error_code="credentials", error_message=str(e), auth_failed=True,
                              retryable=False)  # fmt: skip
        try:
            status, body = await asyncio.wait_for(self._send(request.method, request.url, request.headers,
                                                             request.body), self.timeout_s)  # fmt: skip
        except (asyncio.TimeoutError, TimeoutError):
            logger.warning(f"dial {req.attempt_id} via {provider}: no answer within {self.timeout_s:g} s")
            return DialResult(ok=False, error_code="timeout", retryable=True,
                              error_message=f"{provider} did not answer within {self.timeout_s:g} s")  # fmt: skip
        except aiohttp.ClientConnectorError as e:
            logger.warning(f"dial {req.attempt_id} via {provider}: cannot connect ({type(e.os_error).__name__})")
            return DialResult(ok=False, error_code="connection_failed", retryable=True,
                              error_message=f"cannot connect to the {provider} API")  # fmt: skip
        except (aiohttp.ClientError, OSError) as e:
            logger.warning(f"dial {req.attempt_id} via {provider}: request failed ({type(e).__name__})")
            return DialResult(ok=False, error_code="network", retryable=True,
                              error_message=f"the request to the {provider} API failed ({type(e).__name__})")  # fmt: skip
        result = parse_create_call(provider, status, body)
        if result.ok:
            logger.debug(f"dial {req.attempt_id} via {provider}: placed ({status})")
            return result
        message = _scrub(result.error_message, credentials)
        logger.warning(f"dial {req.attempt_id} via {provider}: refused ({status}, code {result.error_code}"
                       f"{', credentials refused' if result.auth_failed else ''})")  # fmt: skip
        return DialResult(ok=False, provider_call_id=result.provider_call_id, error_code=result.error_code,
                          error_message=message, auth_failed=result.auth_failed, retryable=result.retryable)  # fmt: skip
