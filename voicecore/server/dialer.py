"""The campaign dialer of a ``serve`` worker (see :mod:`voicecore.storage.campaigns`).

Every ``poll_s`` it looks at the running campaigns of every tenant and, for each, claims the
contacts due now — no more than the campaign's free places, row by row in the database, so
any number of workers share one campaign without dialing anyone twice. For each contact:

1. the checks before every dial (:func:`voicecore.outbound.checks.dial_decision`): the opt-out
   list and restriction as every worker sees them now, the attempts to the number across the
   tenant's campaigns, the callee's local time in the campaign's window, public holidays. A
   refusal is recorded with its reason (``campaigns status`` shows it) and the contact waits
   for the moment the check would pass, or is done (``refused_by_policy``/``opted_out``);
2. the attempt is written (before the provider is asked: a restart never dials twice), a
   one-time call token minted for the media stream, and the provider's create-call API asked
   (:class:`voicecore.transports.dialer.ProviderDialer`), with the tenant's stored credentials;
3. the provider's signed status callbacks (:mod:`voicecore.server.answers`) come back to
   :meth:`Dialer.on_call_status`: answered, then the outcome, which settles the attempt (retry
   after ``retry_after`` or done). Wrong credentials pause the campaign with the reason, rather
   than burning through the list; other provider errors fail the attempt with the provider's
   code and message and follow the retry rules. Asterisk posts no callbacks: its channel events
   come over the ARI events WebSocket, which :class:`voicecore.transports.ari_events.AriEventRelay`
   keeps open per tenant with a running Asterisk campaign and relays to the same method.

For an outbound call the session's ``caller`` is the person called (the remote party: the data
subject whose opt-out, restriction and contact fields apply) and ``callee`` the business number.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from urllib.parse import quote

from loguru import logger

from voicecore.outbound.checks import dial_decision
from voicecore.server.state import ServerState
from voicecore.storage.campaigns import Campaign, DueContact
from voicecore.telephony.dialing import CallStatusEvent, DialRequest, outcome_of
from voicecore.telephony.snippets import answer_url, media_url
from voicecore.transports.ari_events import AriEventRelay
from voicecore.transports.dialer import ProviderDialer

ATTEMPT_PERIOD_S = 30 * 86400
DEFAULT_STALE_S = 900.0
STALE_ENV = "VOICECORE_DIALER_STALE_S"
ARI_READY_TIMEOUT_S = 5.0  # an Asterisk dial waits this long for the tenant's ARI events socket


class Dialer:
    """One worker's dialer: ``await dialer.run()`` beside the server; ``on_call_status`` takes
    the status callbacks."""

    def __init__(self, state: ServerState, provider_dialer: ProviderDialer | None = None, *, poll_s: float = 1.0,
                 stale_after_s: float | None = None, claim_lease_s: float = 30.0):  # fmt: skip
        self.state = state
        self.provider_dialer = provider_dialer or ProviderDialer()
        self.poll_s = poll_s
        # an attempt with no final status this long is settled as failed (VOICECORE_DIALER_STALE_S for tests)
        self.stale_after_s = stale_after_s or float(os.environ.get(STALE_ENV, DEFAULT_STALE_S))
        self.claim_lease_s = claim_lease_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self.dialed = 0  # attempts this worker sent to a provider
        # Asterisk's call progress (its ARI events WebSocket), one socket per tenant running Asterisk campaigns
        self.ari = AriEventRelay(state.store, self.on_call_status, app=f"voicecore-{state.worker_id}",
                                 api_base=lambda: self.provider_dialer.api_base("asterisk"))  # fmt: skip

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        campaigns = self.state.store.campaigns
        last_stale_check = 0.0
        while True:
            try:
                if not (self.state.draining or self.state.shutting_down):
                    running = await asyncio.to_thread(campaigns.running)
                    await self.ari.sync(running)
                    for c in running:
                        for due in await asyncio.to_thread(campaigns.claim_due, c, self.state.worker_id,
                                                           lease_s=self.claim_lease_s):  # fmt: skip
                            task = asyncio.create_task(self._attempt(due), name=f"dial-{due.contact_id[:8]}")
                            self._tasks.add(task)
                            task.add_done_callback(self._tasks.discard)
                if time.monotonic() - last_stale_check > min(60.0, self.stale_after_s / 2):
                    last_stale_check = time.monotonic()
                    await self._settle_stale()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.error(f"dialer: {type(e).__name__}: {e}")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except (TimeoutError, asyncio.TimeoutError):
                pass

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ari.close()

    # -- one contact ---------------------------------------------------------------------

    def _decide(self, due: DueContact):  # type: ignore[no-untyped-def]
        store = self.state.store
        c = due.campaign
        opted_out, restricted = store.campaigns.dial_facts(due)
        now = store.db.clock()
        times = store.campaigns.attempt_times(c.tenant_id, due.phone_hash, now - ATTEMPT_PERIOD_S)
        return dial_decision(
            due.phone, now=datetime.fromtimestamp(now, UTC), window=c.window,
            default_region=store.campaigns.region_of(c), opted_out=opted_out, restricted=restricted,
            attempts=[datetime.fromtimestamp(t, UTC) for t in times], max_attempts=None,
        )  # fmt: skip

    async def _attempt(self, due: DueContact) -> None:
        store, c = self.state.store, due.campaign
        try:
            decision = await asyncio.to_thread(self._decide, due)
        except Exception as e:
            logger.error(f"dialer: campaign {c.name}: the checks failed ({type(e).__name__}); the contact waits")
            await asyncio.to_thread(store.campaigns.defer, due, until=time.time() + 300, reason="check_failed")
            return
        if not decision.allowed:
            reason = decision.reason or "refused"
            if reason == "opted_out":
                await asyncio.to_thread(store.campaigns.finish_contact, c, due.contact_id, "opted_out", reason=reason)
            else:
                until = decision.retry_at.timestamp() if decision.retry_at is not None else None
                if reason == "concurrency":
                    until = time.time() + self.poll_s
                await asyncio.to_thread(store.campaigns.defer, due, until=until, reason=reason)
            logger.info(f"dialer: campaign {c.name}: a contact not dialed now ({reason})")
            return
        if self.state.public_url is None:
            await asyncio.to_thread(store.campaigns.defer, due, until=time.time() + 60, reason="no_public_url")
            await asyncio.to_thread(store.campaigns.pause_for, c.id, "serve has no --public-url: providers cannot "
                                    "reach the media and status URLs; restart it with one and resume")  # fmt: skip
            return
        credentials = await asyncio.to_thread(store.providers.secrets, c.tenant, c.provider)
        if not credentials:
            await asyncio.to_thread(store.campaigns.defer, due, until=time.time() + 60, reason="no_credentials")
            await asyncio.to_thread(store.campaigns.pause_for, c.id, f"tenant {c.tenant} has no {c.provider} "
                                    f"credentials (voicecore providers set {c.provider} ...); resume after")  # fmt: skip
            return
        if c.provider == "asterisk" and not await self.ari.ready(c.tenant, ARI_READY_TIMEOUT_S):
            logger.warning(f"dialer: campaign {c.name}: dialing before Asterisk's event socket is open")
        attempt_id = await asyncio.to_thread(store.campaigns.begin_attempt, due, self.state.worker_id)
        token = await asyncio.to_thread(self.state.mint_call_token, c.tenant, c.pipeline, provider=c.provider,
                                        caller=due.phone, callee=c.from_number)  # fmt: skip
        req = self.request(c, due, attempt_id, token)
        self.dialed += 1
        result = await self.provider_dialer.dial(req, credentials)
        if result.ok and result.provider_call_id:
            await asyncio.to_thread(store.campaigns.attempt_dialed, attempt_id, result.provider_call_id)
            logger.info(f"dialer: campaign {c.name}: attempt {attempt_id[:10]} dialing ({c.provider})")
            return
        await asyncio.to_thread(store.campaigns.settle_attempt, attempt_id, "failed", error_code=result.error_code,
                                error_message=result.error_message, retry=result.retryable)  # fmt: skip
        logger.warning(f"dialer: campaign {c.name}: {c.provider} refused attempt {attempt_id[:10]}: "
                       f"{result.error_code} {result.error_message or ''}".rstrip())  # fmt: skip
        if result.auth_failed:
            await asyncio.to_thread(store.campaigns.pause_for, c.id, f"{c.provider} refused the credentials "
                                    f"({result.error_code}: {result.error_message}); fix them with `voicecore providers "
                                    "set` and resume the campaign")  # fmt: skip

    def request(self, c: Campaign, due: DueContact, attempt_id: str, token: str) -> DialRequest:
        public = self.state.public_url or ""
        status = f"{public.rstrip('/')}/providers/{c.provider}/{quote(c.tenant, safe='')}/status?attempt={attempt_id}"
        answer = None
        if c.provider == "plivo":  # Plivo fetches its instructions: our answer URL, carrying the token
            answer = f"{answer_url(public, c.provider, c.tenant, c.pipeline)}&attempt={attempt_id}&token={token}"
        return DialRequest(provider=c.provider, to=due.phone, from_=c.from_number,
                           stream_url=media_url(public, c.provider), stream_token=token, status_url=status,
                           attempt_id=attempt_id, machine_detection=True, pipeline=c.pipeline,
                           answer_url=answer)  # fmt: skip

    # -- status callbacks ----------------------------------------------------------------

    async def on_call_status(self, tenant: str, provider: str, event: CallStatusEvent) -> None:
        campaigns = self.state.store.campaigns
        a = None
        if event.attempt_id:
            a = await asyncio.to_thread(campaigns.attempt, event.attempt_id)
        if a is None and event.provider_call_id:
            a = await asyncio.to_thread(campaigns.attempt, provider=provider, provider_call_id=event.provider_call_id)
        if a is None or a["provider"] != provider:
            logger.debug(f"dialer: a {provider} status for no attempt of ours")
            return
        if a["provider_call_id"] is None and event.provider_call_id:  # the callback came before the API answer
            await asyncio.to_thread(campaigns.attempt_dialed, a["id"], event.provider_call_id)
        if event.status == "answered":
            await asyncio.to_thread(campaigns.attempt_answered, a["id"])
        outcome = outcome_of(event)
        if outcome is None:
            return
        if outcome == "machine":
            await self._answering_machine(a, event)
        call_id = await asyncio.to_thread(self.state.store.calls.find_by_provider_id, a["tenant_id"],
                                          event.provider_call_id or a["provider_call_id"] or "", a["created_at"])  # fmt: skip
        state = await asyncio.to_thread(campaigns.settle_attempt, a["id"], outcome, error_code=event.error_code,
                                        call_id=call_id)  # fmt: skip
        logger.info(f"dialer: attempt {a['id'][:10]} ended: {outcome} (contact {state or 'already settled'})")
        self.wake()

    async def _answering_machine(self, attempt: dict, event: CallStatusEvent) -> None:
        """A machine answered a call this worker carries: leave the campaign's voicemail message,
        or hang up (``machine_action``). (A call carried by another worker is left to its end.)"""
        provider_call_id = event.provider_call_id or attempt["provider_call_id"]
        session = next((s for s in list(self.state.calls.values())
                        if provider_call_id and provider_call_id in s.record.provider_ids.values()), None)  # fmt: skip
        c = await asyncio.to_thread(self.state.store.campaigns.by_id, attempt["campaign_id"])
        if session is None or c is None:
            return
        session.record.flags["answered_by"] = "machine"
        if c.machine_action == "voicemail":
            text = await asyncio.to_thread(self.state.store.campaigns.voicemail, c)
            if text:
                task = asyncio.create_task(session.say_and_end(text, "voicemail", kind="voicemail"))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return
        await session.end("machine")

    async def _settle_stale(self) -> None:
        campaigns = self.state.store.campaigns
        for a in await asyncio.to_thread(campaigns.stale_attempts, older_than_s=self.stale_after_s):
            await asyncio.to_thread(campaigns.settle_attempt, a["id"], "failed", error_code="no_status",
                                    error_message="no final status from the provider (a worker stopped mid-dial, "
                                                  "or a status callback was lost)")  # fmt: skip
