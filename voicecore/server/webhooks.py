"""Signed webhooks: the outbox delivery worker.

Every event (``call.ended``, ``report.ready``, ``optout.requested``, ``subject.erased``)
is written to the outbox table in the same transaction as the data it announces
(:class:`~voicecore.storage.outbox.Outbox`). :class:`WebhookWorker` (started by ``serve``)
fans each new event out to the tenant's endpoints subscribed to its type, one
*delivery* per endpoint, and sends it:

* ``POST`` of the event as JSON (UTF-8), no redirects followed, 10 s timeout;
* the endpoint's host is resolved again at every connection and every address it
  resolves to must be public (:func:`voicecore.storage.outbox.is_public_address`):
  the connection goes to an address that was checked, so a DNS answer that
  changes after the endpoint was registered cannot point the sender at the
  loopback, a private network or a metadata service (``serve
  --allow-insecure-webhooks`` lifts this for local development);
* a 2xx answer delivers it; anything else (another status, a timeout, a refused
  connection) is retried after an exponential backoff with jitter
  (``base_delay_s * 2**(attempt-1)``, capped at ``max_delay_s``, times a random
  factor in [0.5, 1.5); by default 10 s, 20 s, 40 s, ... up to an hour, about three
  hours in all); after ``max_attempts`` (12) attempts the delivery is ``dead``
  (the dead-letter state: kept with its last error, visible in the API, and
  re-queued by ``POST /v1/webhooks/{id}/deliveries/{delivery_id}/retry``);
* nothing is lost across a restart: a delivery is claimed with a lease (one
  attempt counted, ``next_attempt_at`` moved past the request timeout) before it
  is sent, so when the process dies mid-delivery the next worker, on the same data
  directory, sends it again when the lease ends. Delivery is *at least once*:
  receivers deduplicate by ``event_id`` (also in ``X-Voicecore-Event-Id``).
  Order is not guaranteed either (use ``created_at``). The lease is the request timeout plus
  20 s (30 s); ``VOICECORE_WEBHOOK_LEASE_S`` sets it (the request timeout then is at most
  half of it; a batch waiting on a slow endpoint can still outlast its lease and be sent
  twice) and ``VOICECORE_WEBHOOK_POLL_S``
  sets how often an idle worker looks for due deliveries (1 s): for tests that kill workers.
  Several workers on one database claim different deliveries (row by row, see
  :meth:`~voicecore.storage.outbox.Outbox.claim`). An event goes to the endpoints
  subscribed to its type when the worker first sees it; a deactivated endpoint's
  deliveries wait (within the outbox's 7-day lifetime) until it is active again.

Endpoint URLs must be ``https://`` to a host whose addresses are all public
(:func:`voicecore.storage.outbox.check_webhook_url`, checked when an endpoint is
stored and again, by address, when the sender connects). A failed delivery
records what the tenant can act on — the HTTP status of its endpoint, "no
answer", "connection failed", "address not allowed" — never what else answered.

What a payload carries, decided at sending time from the tenant's current policy:

* ``call.ended``: call metadata (ids, times, duration, end reason, turn count,
  opt-out flag, whether a transcript was stored); the caller's and callee's
  numbers only when the policy stores contacts (``retention.contacts > 0``),
  otherwise ``null``;
* ``report.ready``: the report (:mod:`voicecore.reports`); its ``contact`` only
  when the policy stores contacts, and the caller's words (``need``,
  ``summary``, ``appointment.requested``) only when it stores transcripts
  (``retention.transcripts > 0``): no transcript text when transcripts are not
  stored. The structured fields (purpose, slot, opt-out) always;
* ``optout.requested``: the number that asked not to be called (E.164), always:
  it is what the tenant must act on, and the opt-out list keeps it whatever the
  retention (until the subject is erased);
* ``subject.erased``: the subject's keyed hash and the time, never a number.

Fields left out are named in ``withheld_by_policy``. The body::

    {"event_id": "3f0c...", "type": "report.ready", "tenant": "acme",
     "created_at": "2024-05-15T14:03:07+00:00", "data": {...}}

Signature
---------
Each request carries ``X-Voicecore-Signature: t=<unix seconds>,v1=<hex>`` where
``<hex>`` is HMAC-SHA256 keyed with the endpoint's secret (the whole
``whsec_...`` string, UTF-8) over ``f"{t}.".encode() + body`` (the raw request
body bytes). For a day after a secret is rotated a second ``v1=`` is added,
signed with the previous secret. Verify before parsing, and refuse old
timestamps (replays)::

    import hashlib, hmac, time

    def verify(secret: str, body: bytes, header: str, tolerance_s: int = 300) -> bool:
        fields = [item.split("=", 1) for item in header.split(",") if "=" in item]
        t = next((v for k, v in fields if k == "t"), None)
        if t is None or not t.isdigit() or abs(time.time() - int(t)) > tolerance_s:
            return False
        expected = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
        return any(hmac.compare_digest(expected, v) for k, v in fields if k == "v1")

Other headers: ``X-Voicecore-Event`` (type), ``X-Voicecore-Event-Id``,
``X-Voicecore-Delivery`` (id of this event-to-endpoint delivery) and
``X-Voicecore-Attempt`` (1, 2, ...).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import ipaddress
import json
import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from loguru import logger

from voicecore.policy.models import Policy
from voicecore.storage import Store, WebhookDelivery
from voicecore.storage.outbox import is_public_address

SIGNATURE_HEADER = "X-Voicecore-Signature"
LEASE_ENV = "VOICECORE_WEBHOOK_LEASE_S"
POLL_ENV = "VOICECORE_WEBHOOK_POLL_S"
USER_AGENT = "voicecore-webhooks/0.1"


# --------------------------------------------------------------------------- signing


def encode_body(payload: dict[str, Any]) -> bytes:
    """The request body: compact JSON, keys sorted, UTF-8."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``v1`` signature: hex HMAC-SHA256(secret, f"{timestamp}." + body)."""
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secrets: list[str], body: bytes, timestamp: int) -> str:
    """``t=<timestamp>,v1=<hex>[,v1=<hex>]``: one ``v1`` per secret (current first)."""
    return ",".join([f"t={timestamp}", *(f"v1={sign(s, body, timestamp)}" for s in secrets)])


def verify_signature(secret: str, body: bytes, header: str, *, tolerance_s: int = 300, now: float | None = None) -> bool:
    """The receiver's check (the snippet in the module docstring)."""
    fields = [item.split("=", 1) for item in header.split(",") if "=" in item]
    t = next((v for k, v in fields if k == "t"), None)
    current = time.time() if now is None else now
    if t is None or not t.isdigit() or abs(current - int(t)) > tolerance_s:
        return False
    expected = sign(secret, body, int(t))
    return any(hmac.compare_digest(expected, v) for k, v in fields if k == "v1")


# --------------------------------------------------------------------------- what a payload may carry


def deliverable_payload(payload: dict[str, Any], policy: Policy) -> dict[str, Any]:
    """The event as the tenant's policy lets it leave (see the module docstring)."""
    out = copy.deepcopy(payload)
    data: dict[str, Any] = out.get("data") if isinstance(out.get("data"), dict) else {}  # type: ignore[assignment]
    out["data"] = data
    withheld: list[str] = []
    contacts_kept = policy.retention.contacts > 0
    transcripts_kept = policy.retention.transcripts > 0
    kind = out.get("type")
    if kind == "call.ended" and not contacts_kept:
        for key in ("caller", "callee"):
            if data.get(key) is not None:
                data[key] = None
                withheld.append(key)
    elif kind == "report.ready" and isinstance(data.get("report"), dict):
        report = data["report"]
        contact = report.get("contact")
        if not contacts_kept and isinstance(contact, dict):
            for key in list(contact):
                if contact[key] is not None:
                    contact[key] = None
                    withheld.append(f"report.contact.{key}")
        if not transcripts_kept:
            for key in ("need", "summary"):
                if report.get(key) is not None:
                    report[key] = None
                    withheld.append(f"report.{key}")
            appointment = report.get("appointment")
            if isinstance(appointment, dict) and appointment.get("requested") is not None:
                appointment["requested"] = None
                withheld.append("report.appointment.requested")
    if withheld:
        out["withheld_by_policy"] = withheld
    return out


# --------------------------------------------------------------------------- connecting


class AddressNotAllowed(OSError):
    """The endpoint's host resolved to an address webhooks may not be sent to."""


def public_only_resolver() -> Any:
    """An aiohttp resolver that resolves like the default one and refuses a host with any
    non-public address: aiohttp then connects to exactly the addresses that were checked."""
    from aiohttp.resolver import ThreadedResolver

    class PublicOnlyResolver(ThreadedResolver):
        async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
            hosts = await super().resolve(host, port, family)
            for h in hosts:
                if not is_public_address(ipaddress.ip_address(h["host"])):
                    raise AddressNotAllowed(f"{host} resolves to an address webhooks may not be sent to")
            return hosts

    return PublicOnlyResolver()


# --------------------------------------------------------------------------- the worker


def worker_settings_from_env(environ: Mapping[str, str] | None = None) -> dict[str, float]:
    """:class:`WebhookWorker` settings from ``VOICECORE_WEBHOOK_LEASE_S`` and ``VOICECORE_WEBHOOK_POLL_S``
    (none set: the defaults). A shorter lease brings the request timeout under half of it.
    ``ValueError`` names a value that is not a positive number."""
    env = os.environ if environ is None else environ
    out: dict[str, float] = {}
    for name, key in ((LEASE_ENV, "lease_s"), (POLL_ENV, "poll_interval_s")):
        raw = env.get(name)
        if raw is None or not raw.strip():
            continue
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not value > 0 or value == float("inf"):
            raise ValueError(f"{name} must be a positive number of seconds, got {raw!r}")
        out[key] = value
    if "lease_s" in out:
        out["timeout_s"] = min(10.0, out["lease_s"] / 2)
    return out



class WebhookWorker:
    """Delivers the outbox to the tenants' webhook endpoints until stopped (see the module docstring).

    Run it as a task in ``serve``'s event loop: ``task = asyncio.create_task(WebhookWorker(store).run())``;
    ``worker.stop()`` (or cancelling the task) ends it. Store calls run in worker threads.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_attempts: int = 12,
        base_delay_s: float = 10.0,
        max_delay_s: float = 3600.0,
        timeout_s: float = 10.0,
        lease_s: float | None = None,
        poll_interval_s: float = 1.0,
        batch: int = 20,
        concurrency: int = 4,
        allow_insecure: bool | None = None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ):
        """``allow_insecure`` (default: the store's ``allow_insecure_webhooks``) lets deliveries go to
        loopback and private addresses (local development, tests)."""
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.store = store
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.timeout_s = timeout_s
        self.lease_s = lease_s if lease_s is not None else timeout_s + 20.0
        self.poll_interval_s = poll_interval_s
        self.batch = batch
        self.concurrency = concurrency
        self.allow_insecure = store.outbox.allow_insecure_webhooks if allow_insecure is None else allow_insecure
        self._clock = clock
        self._rng = rng
        self._wake = asyncio.Event()
        self._stopping = False
        self.delivered = 0
        self.failed_attempts = 0
        self.dead = 0

    def backoff(self, attempts: int) -> float:
        """Seconds until the next try after ``attempts`` failed attempts (exponential, jittered)."""
        delay = min(self.max_delay_s, self.base_delay_s * (2 ** max(0, attempts - 1)))
        return delay * (0.5 + self._rng())

    def wake(self) -> None:
        """Look for new events now instead of at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Deliver until :meth:`stop` (or cancellation). A failing cycle is logged and retried."""
        import aiohttp

        logger.info("webhook worker started")
        resolver = None if self.allow_insecure else public_only_resolver()
        connector = aiohttp.TCPConnector(limit=self.concurrency * 2, resolver=resolver)
        async with aiohttp.ClientSession(connector=connector, headers={"User-Agent": USER_AGENT}) as session:
            while not self._stopping:
                try:
                    sent = await self.run_once(session)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # the database may be busy or a tenant gone: try again later
                    logger.error("webhook worker cycle failed: {}", type(e).__name__)
                    logger.debug("webhook worker cycle failed: {!r}", e)
                    sent = 0
                if sent >= self.batch:
                    continue  # more may be due right away
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval_s)
                except TimeoutError:
                    pass
        logger.info("webhook worker stopped")

    async def run_once(self, session: Any) -> int:
        """One cycle: fan out new events, claim due deliveries, send them. Returns how many were sent."""
        await asyncio.to_thread(self.store.outbox.dispatch)
        due = await asyncio.to_thread(self.store.outbox.claim, limit=self.batch, lease_s=self.lease_s)
        if not due:
            return 0
        policies: dict[str, Policy] = {}
        for d in due:
            if d.tenant not in policies:
                policies[d.tenant] = await asyncio.to_thread(self.store.tenants.policy, d.tenant)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(d: WebhookDelivery) -> None:
            async with gate:
                await self._deliver(session, d, policies[d.tenant])

        await asyncio.gather(*(one(d) for d in due))
        return len(due)

    async def _deliver(self, session: Any, d: WebhookDelivery, policy: Policy) -> None:

        body = encode_body(deliverable_payload(d.payload, policy))
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature_header(d.secrets, body, timestamp),
            "X-Voicecore-Event": d.event_type,
            "X-Voicecore-Event-Id": d.event_id,
            "X-Voicecore-Delivery": d.delivery_id,
            "X-Voicecore-Attempt": str(d.attempts),
        }
        status: int | None = None
        error: str | None = None
        if not self.allow_insecure and not _may_connect(d.url):
            error = "address not allowed"
        else:
            status, error = await self._post(session, d.url, body, headers)
        if status is not None and 200 <= status < 300:
            await asyncio.to_thread(self.store.outbox.delivered, d.delivery_id, status_code=status)
            self.delivered += 1
            logger.debug("webhook {} delivered to endpoint {} (HTTP {})", d.event_id[:8], d.endpoint_id, status)
            return
        if error is None:
            error = f"HTTP {status}"
        self.failed_attempts += 1
        if d.attempts >= self.max_attempts:
            await asyncio.to_thread(
                self.store.outbox.failed, d.delivery_id, error, status_code=status, retry_at=None
            )
            self.dead += 1
            logger.warning(
                "webhook {} to endpoint {} is dead after {} attempts: {}", d.event_id[:8], d.endpoint_id, d.attempts, error
            )
            return
        retry_at = self._clock() + self.backoff(d.attempts)
        await asyncio.to_thread(self.store.outbox.failed, d.delivery_id, error, status_code=status, retry_at=retry_at)
        logger.info(
            "webhook {} to endpoint {}: attempt {} failed ({}), retrying in {:.0f} s",
            d.event_id[:8], d.endpoint_id, d.attempts, error, retry_at - self._clock(),
        )  # fmt: skip

    async def _post(self, session: Any, url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
        """POST one delivery: (HTTP status, None) or (None, what went wrong, for the tenant)."""
        import aiohttp

        status: int | None = None
        error: str | None = None
        try:
            async with session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as response:
                status = response.status
        except TimeoutError:
            error = f"no answer within {self.timeout_s:g} s"
        except (aiohttp.ClientError, OSError) as e:
            # Only what the tenant can act on: not which error a host or port answered with.
            cause = e.__cause__ if isinstance(e, aiohttp.ClientConnectorError) else e
            blocked = isinstance(e, AddressNotAllowed) or isinstance(cause, AddressNotAllowed) or (
                isinstance(e, aiohttp.ClientConnectorError) and isinstance(e.os_error, AddressNotAllowed)
            )
            error = "address not allowed" if blocked else "connection failed"
        return status, error


def _may_connect(url: str) -> bool:
    """False for a URL whose host is an IP address that is not public (a resolved name is
    checked by the connector's resolver)."""
    from urllib.parse import urlsplit

    try:
        host = urlsplit(url).hostname or ""
        return is_public_address(ipaddress.ip_address(host))
    except ValueError:
        return True
