"""The asyncio shell of the ``transfer`` tool: sends the request
:func:`voicecore.telephony.transfer.build_transfer` builds, with :class:`ProviderDialer`'s HTTP
session, API hosts (``VOICECORE_<PROVIDER>_API_BASE`` for a fake in tests) and time limit.

:func:`transfer_call` is what a call session runs: the tenant's stored credentials, the provider's
id of the live call, the request, and the call record's ``flags["transfer"]``. Nothing logged
carries a credential.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
from loguru import logger

from voicecore.records import CallRecord
from voicecore.telephony.dialing import DialingError
from voicecore.telephony.transfer import (
    TRANSFER_PROVIDERS,
    TransferRequest,
    TransferResult,
    build_transfer,
    parse_transfer,
)
from voicecore.transports.dialer import ProviderDialer, _scrub

__all__ = ["ProviderTransfer", "transfer_call", "can_transfer", "TRANSFER_TIMEOUT_S"]

TRANSFER_TIMEOUT_S: Final = 10.0


class ProviderTransfer(ProviderDialer):
    """Hands live calls over: one :meth:`transfer` per request (the dialer's session and hosts)."""

    async def transfer(self, req: TransferRequest, credentials: Mapping[str, str]) -> TransferResult:
        provider = req.provider
        try:
            request = build_transfer(provider, credentials, req, api_base=self.api_base(provider))
        except DialingError as e:
            return TransferResult(ok=False, error_code="credentials", error_message=str(e))
        try:
            status, body = await asyncio.wait_for(self._send(request.method, request.url, request.headers,
                                                             request.body), self.timeout_s)  # fmt: skip
        except (asyncio.TimeoutError, TimeoutError):
            return TransferResult(ok=False, error_code="timeout",
                                  error_message=f"{provider} did not answer within {self.timeout_s:g} s")  # fmt: skip
        except (aiohttp.ClientError, OSError) as e:
            return TransferResult(ok=False, error_code="connection_failed",
                                  error_message=f"the request to the {provider} API failed ({type(e).__name__})")  # fmt: skip
        result = parse_transfer(provider, status, body)
        if result.ok:
            return result
        return TransferResult(ok=False, error_code=result.error_code,
                              error_message=_scrub(result.error_message, credentials))  # fmt: skip


def can_transfer(record: CallRecord) -> bool:
    """The call came through a provider that can hand it over, and its call id is known."""
    return record.transport in TRANSFER_PROVIDERS and bool(record.provider_ids.get("call_id"))


async def transfer_call(store: Any, record: CallRecord, to: str, *, plivo_xml_url: str | None = None,
                        timeout_s: float = TRANSFER_TIMEOUT_S) -> TransferResult:  # fmt: skip
    """Ask the call's provider to hand it to ``to`` with the tenant's stored credentials; the outcome
    goes to ``record.flags["transfer"]`` (the target is the business's own number: kept whole)."""
    provider = record.transport
    result: TransferResult
    if not can_transfer(record) or store is None:
        result = TransferResult(ok=False, error_code="unavailable", error_message="no provider call to transfer")
    else:
        credentials = await asyncio.to_thread(store.providers.secrets, record.tenant, provider)
        if not credentials:
            result = TransferResult(ok=False, error_code="credentials",
                                    error_message=f"no {provider} credentials stored for the tenant")  # fmt: skip
        else:
            req = TransferRequest(provider, record.provider_ids["call_id"], to, plivo_xml_url=plivo_xml_url)
            async with ProviderTransfer(timeout_s=timeout_s) as executor:
                result = await executor.transfer(req, credentials)
    record.flags["transfer"] = {"to": to, "provider": provider, "ok": result.ok,
                                "error": None if result.ok else f"{result.error_code}: {result.error_message}"[:200]}  # fmt: skip
    if result.ok:
        logger.info(f"call {record.call_id[:8]}: handed over through {provider}")
    else:
        logger.warning(f"call {record.call_id[:8]}: transfer through {provider} failed ({result.error_code})")
    return result
