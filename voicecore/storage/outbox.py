"""The outbox: events for the tenants' webhooks, the webhook endpoints, and each delivery.

Every event (:data:`EVENT_TYPES`) is written in the same transaction as the data
it announces (:meth:`Outbox.add_in_tx`), payload encrypted, kept
:data:`OUTBOX_TTL_DAYS` days. :meth:`Outbox.dispatch` fans a new event out to the
endpoints subscribed to its type (one *delivery* per endpoint);
:meth:`Outbox.claim` leases due deliveries to the sender
(:mod:`voicecore.server.webhooks`), which reports back with :meth:`Outbox.delivered`
or :meth:`Outbox.failed`. The URL rules for endpoints live here too
(:func:`check_webhook_url`), so an endpoint can never be stored that the sender
would refuse.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from voicecore.storage.audit import AuditLog
from voicecore.storage.crypto import CryptoError, TenantKeys, field_aad
from voicecore.storage.database import Database, StorageError
from voicecore.storage.tenants import Tenant, TenantRepository
from voicecore.views import iso

OUTBOX_TTL_DAYS = 7
MAX_WEBHOOK_ENDPOINTS = 20  # per tenant
WEBHOOK_SECRET_OVERLAP_S = 24 * 3600  # a rotated-out secret still signs deliveries this long
EVENT_TYPES: tuple[str, ...] = (
    "call.ended", "report.ready", "optout.requested", "subject.erased", "campaign.contact_done",
)
MAX_URL_LENGTH = 2048


class InvalidWebhookUrl(StorageError):
    """A webhook URL breaks the rules (HTTPS, or HTTP to the loopback only); the message says which."""


@dataclass
class OutboxEvent:
    id: int
    event_id: str
    tenant: str
    type: str
    payload: dict[str, Any]
    status: str  # pending | delivered | dead
    attempts: int
    next_attempt_at: float
    created_at: float
    last_error: str | None = None


@dataclass(frozen=True)
class WebhookEndpoint:
    """A tenant's webhook receiver (its signing secret is shown only when created or rotated)."""

    id: str
    tenant: str
    url: str
    events: tuple[str, ...]
    description: str | None
    active: bool
    created_at: float
    updated_at: float
    secret_rotated_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["events"] = list(self.events)
        return d


@dataclass
class WebhookDelivery:
    """One claimed delivery attempt of an outbox event to one endpoint (for the webhook worker)."""

    delivery_id: str
    event_id: str
    event_type: str
    tenant: str
    endpoint_id: str
    url: str
    secrets: list[str]  # the current secret first, then one rotated out less than a day ago
    payload: dict[str, Any]
    attempts: int  # including this one
    created_at: float


@dataclass(frozen=True)
class DeliveryInfo:
    """The state of one event's delivery to one endpoint (no payload)."""

    id: str
    event_id: str
    event_type: str
    endpoint_id: str
    status: str  # pending | delivered | dead
    attempts: int
    next_attempt_at: float
    last_status: int | None
    last_error: str | None
    created_at: float
    delivered_at: float | None


# --------------------------------------------------------------------------- URLs

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``addr`` is a public unicast address: not loopback, private (RFC 1918), link-local
    (metadata services: 169.254.169.254), CGNAT (100.64/10), unique-local (fc00::/7, e.g. fd00:ec2::254),
    reserved, documentation, unspecified or multicast; an IPv4 address inside an IPv6 one
    (mapped, NAT64, 6to4, Teredo) must be public too."""
    if isinstance(addr, ipaddress.IPv6Address):
        embedded: list[ipaddress.IPv4Address | None] = [addr.ipv4_mapped, addr.sixtofour]
        if addr.teredo is not None:
            embedded.append(addr.teredo[1])
        if addr in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
        if any(e is not None and not is_public_address(e) for e in embedded):
            return False
    return addr.is_global and not addr.is_multicast


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (blocking: a DNS lookup). ``OSError`` when it does not resolve."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]).split("%", 1)[0] for info in infos})


def check_public_host(host: str, port: int) -> list[str]:
    """The addresses of ``host``, all of them public, or :class:`InvalidWebhookUrl` saying why."""
    try:
        addresses = [host] if _ip_literal(host) else resolve_host(host, port)
    except (OSError, UnicodeError):
        raise InvalidWebhookUrl(f"the webhook host {host!r} does not resolve") from None
    for a in addresses:
        if not is_public_address(ipaddress.ip_address(a)):
            raise InvalidWebhookUrl(
                "the webhook URL points at a loopback, private, link-local or otherwise non-public address"
            )
    return addresses


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def check_webhook_url(url: str, *, allow_insecure: bool = False) -> str:
    """``url`` if it may receive webhooks, else :class:`InvalidWebhookUrl` saying why.

    ``https://`` to a host whose every address is public (resolved now; the sender checks
    again when it connects). ``allow_insecure`` (``serve --allow-insecure-webhooks``, for
    local development and tests) also accepts ``http://`` and any address."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidWebhookUrl("the webhook URL is empty")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise InvalidWebhookUrl(f"the webhook URL is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise InvalidWebhookUrl("the webhook URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError as e:
        raise InvalidWebhookUrl(f"the webhook URL is not valid: {e}") from None
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if allow_insecure else ("https",)
    if scheme not in allowed:
        raise InvalidWebhookUrl(
            "the webhook URL must use https:// (http:// only with serve --allow-insecure-webhooks)"
        )
    if not host:
        raise InvalidWebhookUrl("the webhook URL has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidWebhookUrl("the webhook URL must not carry credentials; the signature authenticates requests")
    if parts.fragment:
        raise InvalidWebhookUrl("the webhook URL must not have a #fragment")
    if not allow_insecure:
        check_public_host(host, port or 443)
    return parts._replace(scheme=scheme).geturl()


def _check_endpoint(
    url: str | None, events: list[str] | tuple[str, ...] | None, description: str | None, *, allow_insecure: bool
) -> tuple[str | None, list[str] | None]:
    checked_url = check_webhook_url(url, allow_insecure=allow_insecure) if url is not None else None
    checked_events: list[str] | None = None
    if events is not None:
        unknown = [e for e in events if e not in EVENT_TYPES]
        if unknown:
            raise StorageError(f"unknown event type {unknown[0]!r}; known: {', '.join(EVENT_TYPES)}")
        checked_events = [e for e in EVENT_TYPES if e in events]
        if not checked_events:
            raise StorageError("subscribe the endpoint to at least one event type")
    if description is not None and len(description) > 200:
        raise StorageError("description is longer than 200 characters")
    return checked_url, checked_events


def _endpoint(r: dict[str, Any], tenant: str) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=r["id"],
        tenant=tenant,
        url=r["url"],
        events=tuple(json.loads(r["events"])),
        description=r["description"],
        active=bool(r["active"]),
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        secret_rotated_at=r["secret_rotated_at"],
    )


class Outbox:
    """Outbox events, webhook endpoints and their deliveries."""

    def __init__(self, db: Database, tenants: TenantRepository, audit: AuditLog, *, allow_insecure_webhooks: bool = False):
        self._db = db
        self._tenants = tenants
        self._audit = audit
        self.allow_insecure_webhooks = allow_insecure_webhooks

    # -- events ------------------------------------------------------------------------

    def add_in_tx(
        self,
        tenant: Tenant,
        keys: TenantKeys,
        event_type: str,
        data: dict[str, Any],
        *,
        call_id: str | None = None,
        subject_hash: str | None = None,
    ) -> str:
        """Inside the transaction that writes what the event announces: queue it (payload encrypted)."""
        if event_type not in EVENT_TYPES:
            raise StorageError(f"unknown event type {event_type!r}")
        now = self._db.clock()
        event_id = secrets.token_hex(16)
        payload = {"event_id": event_id, "type": event_type, "tenant": tenant.name, "created_at": iso(now), "data": data}
        self._db.insert(
            "outbox",
            {
                "event_id": event_id,
                "tenant_id": tenant.id,
                "type": event_type,
                "call_id": call_id,
                "subject_hash": subject_hash,
                "payload_enc": keys.encrypt_json(payload, field_aad("outbox", tenant.id, event_id, "payload")),
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "delivered_at": None,
                "last_error": None,
                "expires_at": now + OUTBOX_TTL_DAYS * 86400,
            },
        )
        return event_id

    def events(self, tenant: str, *, actor: str, status: str | None = None) -> list[OutboxEvent]:
        """The tenant's events with their payloads decrypted, oldest first. Audited (``outbox.read``)."""
        with self._db.lock:
            t = self._tenants.row(tenant)
            where, params = "o.tenant_id = ?", [t.id]
            if status is not None:
                where, params = where + " AND o.status = ?", [*params, status]
            events: list[OutboxEvent] = []
            for r in self._db.rows(f"SELECT o.* FROM outbox o WHERE {where} ORDER BY o.id", params):
                keys = self._tenants.data_keys(r["tenant_id"])
                payload = keys.decrypt_json(r["payload_enc"], field_aad("outbox", r["tenant_id"], r["event_id"], "payload"))
                events.append(
                    OutboxEvent(r["id"], r["event_id"], tenant, r["type"], payload, r["status"], r["attempts"],
                                r["next_attempt_at"], r["created_at"], r["last_error"])  # fmt: skip
                )
            self._audit.append(actor, tenant, "outbox.read", "outbox")
            return events

    # -- endpoints ---------------------------------------------------------------------

    def create_webhook(
        self,
        tenant: str,
        url: str,
        events: list[str] | tuple[str, ...] = EVENT_TYPES,
        *,
        description: str | None = None,
        actor: str,
    ) -> tuple[WebhookEndpoint, str]:
        """Add a webhook endpoint (``https://`` to a public address, see :func:`check_webhook_url`)
        subscribed to ``events``.
        Returns the endpoint and its signing secret, which is shown this once (stored encrypted)."""
        checked_url, checked_events = _check_endpoint(url, events, description, allow_insecure=self.allow_insecure_webhooks)
        secret = "whsec_" + secrets.token_urlsafe(32)
        endpoint_id = "wh_" + secrets.token_hex(8)
        with self._db.lock:
            t = self._tenants.row(tenant)
            count = self._db.one("SELECT COUNT(*) AS n FROM webhook_endpoints WHERE tenant_id = ?", (t.id,))
            if count and count["n"] >= MAX_WEBHOOK_ENDPOINTS:
                raise StorageError(f"a tenant may have at most {MAX_WEBHOOK_ENDPOINTS} webhook endpoints")
            now = self._db.clock()
            keys = self._tenants.data_keys(t)
            with self._db.tx():
                self._db.insert(
                    "webhook_endpoints",
                    {
                        "id": endpoint_id,
                        "tenant_id": t.id,
                        "url": checked_url,
                        "events": json.dumps(checked_events),
                        "secret_enc": keys.encrypt_text(secret, field_aad("webhook_endpoints", t.id, endpoint_id, "secret")),
                        "previous_secret_enc": None,
                        "previous_secret_until": None,
                        "secret_rotated_at": None,
                        "description": description,
                        "active": 1,
                        "created_at": now,
                        "updated_at": now,
                    },
                )
                self._audit.append_in_tx(actor, tenant, "webhook.created", f"webhook:{endpoint_id}")
            row = self._db.one("SELECT * FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
            assert row is not None
            return _endpoint(row, tenant), secret

    def webhooks(self, tenant: str) -> list[WebhookEndpoint]:
        with self._db.lock:
            t = self._tenants.row(tenant)
            return [
                _endpoint(r, tenant)
                for r in self._db.rows("SELECT * FROM webhook_endpoints WHERE tenant_id = ? ORDER BY created_at", (t.id,))
            ]

    def webhook(self, tenant: str, endpoint_id: str) -> WebhookEndpoint | None:
        """The endpoint, or ``None`` if it does not exist *for this tenant*."""
        with self._db.lock:
            t = self._tenants.row(tenant)
            r = self._db.one("SELECT * FROM webhook_endpoints WHERE tenant_id = ? AND id = ?", (t.id, endpoint_id))
            return None if r is None else _endpoint(r, tenant)

    def update_webhook(
        self,
        tenant: str,
        endpoint_id: str,
        *,
        url: str | None = None,
        events: list[str] | tuple[str, ...] | None = None,
        description: str | None = None,
        active: bool | None = None,
        rotate_secret: bool = False,
        actor: str,
    ) -> tuple[WebhookEndpoint, str | None] | None:
        """Change an endpoint; ``None`` if it does not exist for this tenant. With ``rotate_secret``
        a new secret is returned (shown once); the old one keeps signing for a day beside it."""
        checked_url, checked_events = _check_endpoint(url, events, description, allow_insecure=self.allow_insecure_webhooks)
        with self._db.lock:
            t = self._tenants.row(tenant)
            r = self._db.one("SELECT * FROM webhook_endpoints WHERE tenant_id = ? AND id = ?", (t.id, endpoint_id))
            if r is None:
                return None
            now = self._db.clock()
            changes: dict[str, Any] = {"updated_at": now}
            if checked_url is not None:
                changes["url"] = checked_url
            if checked_events is not None:
                changes["events"] = json.dumps(checked_events)
            if description is not None:
                changes["description"] = description
            if active is not None:
                changes["active"] = int(active)
            new_secret: str | None = None
            if rotate_secret:
                keys = self._tenants.data_keys(t)
                aad = field_aad("webhook_endpoints", t.id, endpoint_id, "secret")
                new_secret = "whsec_" + secrets.token_urlsafe(32)
                changes["previous_secret_enc"] = keys.encrypt_text(keys.decrypt_text(r["secret_enc"], aad), aad + "|previous")
                changes["previous_secret_until"] = now + WEBHOOK_SECRET_OVERLAP_S
                changes["secret_enc"] = keys.encrypt_text(new_secret, aad)
                changes["secret_rotated_at"] = now
            assignments = ", ".join(f"{k} = ?" for k in changes)
            with self._db.tx():
                self._db.execute(
                    f"UPDATE webhook_endpoints SET {assignments} WHERE id = ?", (*changes.values(), endpoint_id)
                )
                action = "webhook.secret_rotated" if rotate_secret else "webhook.updated"
                self._audit.append_in_tx(actor, tenant, action, f"webhook:{endpoint_id}")
            row = self._db.one("SELECT * FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
            assert row is not None
            return _endpoint(row, tenant), new_secret

    def delete_webhook(self, tenant: str, endpoint_id: str, *, actor: str) -> bool:
        """Remove an endpoint and its undelivered deliveries; events it alone was waiting on are settled."""
        with self._db.lock:
            t = self._tenants.row(tenant)
            with self._db.tx():
                n = self._db.execute("DELETE FROM webhook_endpoints WHERE tenant_id = ? AND id = ?", (t.id, endpoint_id))
                if not n:
                    return False
                events = [
                    r["event_id"]
                    for r in self._db.rows(
                        "SELECT DISTINCT event_id FROM webhook_deliveries WHERE tenant_id = ? AND endpoint_id = ?",
                        (t.id, endpoint_id),
                    )
                ]
                self._db.execute(
                    "DELETE FROM webhook_deliveries WHERE tenant_id = ? AND endpoint_id = ?", (t.id, endpoint_id)
                )
                for event_id in events:
                    self._settle_event(event_id)
                self._audit.append_in_tx(actor, tenant, "webhook.deleted", f"webhook:{endpoint_id}")
            return True

    # -- deliveries --------------------------------------------------------------------

    def dispatch(self, *, limit: int = 500) -> int:
        """Fan new outbox events out to the endpoints subscribed to them right now (one pending
        delivery per endpoint). An event no active endpoint wants is settled as delivered (to
        nobody). Returns the number of deliveries created."""
        pending = "SELECT 1 AS x FROM outbox WHERE dispatched = 0 AND status = 'pending' LIMIT 1"
        with self._db.lock:
            if not self._db.exists(pending):  # the common case, without taking the write lock
                return 0
            now = self._db.clock()
            created = 0
            with self._db.tx():
                # Claimed row by row: a worker fanning out skips the events another one holds.
                rows = self._db.rows(
                    self._db.for_update(
                        "SELECT event_id, tenant_id, type, expires_at FROM outbox "
                        "WHERE dispatched = 0 AND status = 'pending' ORDER BY id LIMIT ?"
                    ),
                    (int(limit),),
                )
                if not rows:
                    return 0
                endpoints: dict[str, list[tuple[str, list[str]]]] = {}
                for e in self._db.rows(
                    "SELECT id, tenant_id, events FROM webhook_endpoints WHERE active = 1 ORDER BY created_at"
                ):
                    endpoints.setdefault(e["tenant_id"], []).append((e["id"], json.loads(e["events"])))
                for r in rows:
                    targets = [eid for eid, types in endpoints.get(r["tenant_id"], []) if r["type"] in types]
                    for eid in targets:
                        created += self._db.insert_ignore("webhook_deliveries", {
                            "id": "dl_" + secrets.token_hex(10), "tenant_id": r["tenant_id"], "event_id": r["event_id"],
                            "endpoint_id": eid, "status": "pending", "attempts": 0, "next_attempt_at": now,
                            "created_at": now, "expires_at": r["expires_at"],
                        })  # fmt: skip
                    if targets:
                        self._db.execute("UPDATE outbox SET dispatched = 1 WHERE event_id = ?", (r["event_id"],))
                    else:
                        self._db.execute(
                            "UPDATE outbox SET dispatched = 1, status = 'delivered', delivered_at = ?, "
                            "last_error = 'no endpoint subscribed' WHERE event_id = ?",
                            (now, r["event_id"]),
                        )
            return created

    def claim(self, *, limit: int = 20, lease_s: float = 30.0, now: float | None = None) -> list[WebhookDelivery]:
        """Claim due deliveries for sending (all tenants), oldest first: each counts one attempt and is
        leased for ``lease_s`` seconds, so a worker that dies mid-delivery leaves it to be retried
        when the lease ends (by the next worker, after a restart)."""
        ts = self._db.clock() if now is None else now
        out: list[WebhookDelivery] = []
        due = "SELECT 1 AS x FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ? LIMIT 1"
        with self._db.lock:
            if not self._db.exists(due, (ts,)):  # the common case, without taking the write lock
                return out
            with self._db.tx():
                # Claimed row by row: FOR UPDATE OF d SKIP LOCKED on PostgreSQL (workers claiming at
                # the same moment take different deliveries), BEGIN IMMEDIATE on SQLite.
                rows = self._db.rows(
                    self._db.for_update(
                        "SELECT d.id, d.event_id, d.endpoint_id, d.attempts, d.created_at, d.tenant_id, o.type, "
                        "o.payload_enc, t.name AS tenant, e.url, e.secret_enc, e.previous_secret_enc, "
                        "e.previous_secret_until "
                        "FROM webhook_deliveries d JOIN outbox o ON o.event_id = d.event_id "
                        "JOIN webhook_endpoints e ON e.id = d.endpoint_id JOIN tenants t ON t.id = d.tenant_id "
                        "WHERE d.status = 'pending' AND d.next_attempt_at <= ? AND e.active = 1 "
                        "ORDER BY d.next_attempt_at, d.created_at LIMIT ?",
                        of="d",
                    ),
                    (ts, int(limit)),
                )
                for r in rows:
                    claimed = self._db.execute(
                        "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = ? "
                        "WHERE id = ? AND status = 'pending' AND next_attempt_at <= ?",
                        (ts + lease_s, r["id"], ts),
                    )
                    if not claimed:
                        continue
                    tid = r["tenant_id"]
                    aad = field_aad("webhook_endpoints", tid, r["endpoint_id"], "secret")
                    try:
                        keys = self._tenants.data_keys(tid)
                        secrets_ = [keys.decrypt_text(r["secret_enc"], aad)]
                        if r["previous_secret_enc"] is not None and (r["previous_secret_until"] or 0) > ts:
                            secrets_.append(keys.decrypt_text(r["previous_secret_enc"], aad + "|previous"))
                        payload = keys.decrypt_json(r["payload_enc"], field_aad("outbox", tid, r["event_id"], "payload"))
                    except CryptoError:
                        self._db.execute(
                            "UPDATE webhook_deliveries SET status = 'dead', last_error = ? WHERE id = ?",
                            ("the event or the endpoint secret cannot be decrypted", r["id"]),
                        )
                        self._settle_event(r["event_id"])
                        continue
                    out.append(
                        WebhookDelivery(
                            delivery_id=r["id"],
                            event_id=r["event_id"],
                            event_type=r["type"],
                            tenant=r["tenant"],
                            endpoint_id=r["endpoint_id"],
                            url=r["url"],
                            secrets=[x for x in secrets_ if x],
                            payload=payload,
                            attempts=r["attempts"] + 1,
                            created_at=r["created_at"],
                        )
                    )
        return out

    def _settle_event(self, event_id: str) -> None:
        """Inside a transaction: once no delivery of the event is pending, mark the outbox event
        delivered (every endpoint took it) or dead (some endpoint never did)."""
        r = self._db.one(
            "SELECT SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END) AS pending, "
            "SUM(CASE WHEN status = 'dead' THEN 1 ELSE 0 END) AS dead, COUNT(*) AS n "
            "FROM webhook_deliveries WHERE event_id = ?",
            (event_id,),
        )
        if r is None or (r["pending"] or 0) > 0:
            return
        if (r["dead"] or 0) > 0:
            self._db.execute(
                "UPDATE outbox SET status = 'dead', last_error = 'not delivered to every endpoint' WHERE event_id = ?",
                (event_id,),
            )
        else:
            self._db.execute(
                "UPDATE outbox SET status = 'delivered', delivered_at = ? WHERE event_id = ? AND status = 'pending'",
                (self._db.clock(), event_id),
            )

    def delivered(self, delivery_id: str, *, status_code: int | None = None) -> None:
        with self._db.tx():
            r = self._db.one("SELECT event_id FROM webhook_deliveries WHERE id = ?", (delivery_id,))
            if r is None:  # erased or expired meanwhile
                return
            self._db.execute(
                "UPDATE webhook_deliveries SET status = 'delivered', delivered_at = ?, last_status = ?, last_error = NULL "
                "WHERE id = ?",
                (self._db.clock(), status_code, delivery_id),
            )
            self._settle_event(r["event_id"])

    def failed(self, delivery_id: str, error: str, *, status_code: int | None = None, retry_at: float | None) -> None:
        """Record a failed attempt: retry at ``retry_at``, or (``None``) move the delivery to ``dead``.
        ``error`` says what went wrong (no response body, no call content)."""
        with self._db.tx():
            r = self._db.one("SELECT event_id FROM webhook_deliveries WHERE id = ?", (delivery_id,))
            if r is None:
                return
            if retry_at is None:
                self._db.execute(
                    "UPDATE webhook_deliveries SET status = 'dead', last_status = ?, last_error = ? WHERE id = ?",
                    (status_code, error[:300], delivery_id),
                )
                self._settle_event(r["event_id"])
            else:
                self._db.execute(
                    "UPDATE webhook_deliveries SET next_attempt_at = ?, last_status = ?, last_error = ? WHERE id = ?",
                    (retry_at, status_code, error[:300], delivery_id),
                )

    def deliveries(
        self, tenant: str, endpoint_id: str, *, status: str | None = None, limit: int = 100
    ) -> list[DeliveryInfo] | None:
        """An endpoint's deliveries, newest first (``None`` if the endpoint is not this tenant's)."""
        with self._db.lock:
            t = self._tenants.row(tenant)
            if not self._db.exists(
                "SELECT 1 AS x FROM webhook_endpoints WHERE tenant_id = ? AND id = ?", (t.id, endpoint_id)
            ):
                return None
            sql = (
                "SELECT d.*, o.type AS event_type FROM webhook_deliveries d JOIN outbox o ON o.event_id = d.event_id "
                "WHERE d.tenant_id = ? AND d.endpoint_id = ?"
            )
            params: list[Any] = [t.id, endpoint_id]
            if status is not None:
                sql += " AND d.status = ?"
                params.append(status)
            sql += " ORDER BY d.created_at DESC, d.id LIMIT ?"
            params.append(max(1, min(int(limit), 1000)))
            return [
                DeliveryInfo(
                    r["id"], r["event_id"], r["event_type"], r["endpoint_id"], r["status"], r["attempts"],
                    r["next_attempt_at"], r["last_status"], r["last_error"], r["created_at"], r["delivered_at"],
                )  # fmt: skip
                for r in self._db.rows(sql, params)
            ]

    def redeliver(self, tenant: str, endpoint_id: str, delivery_id: str, *, actor: str) -> bool:
        """Queue a delivery again now (a dead one gets a fresh set of attempts). ``False`` if there is
        no such delivery for this tenant and endpoint (or its event expired)."""
        with self._db.lock:
            t = self._tenants.row(tenant)
            r = self._db.one(
                "SELECT d.event_id FROM webhook_deliveries d JOIN outbox o ON o.event_id = d.event_id "
                "WHERE d.tenant_id = ? AND d.endpoint_id = ? AND d.id = ?",
                (t.id, endpoint_id, delivery_id),
            )
            if r is None:
                return False
            with self._db.tx():
                self._db.execute(
                    "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?, "
                    "delivered_at = NULL WHERE id = ?",
                    (self._db.clock(), delivery_id),
                )
                self._db.execute("UPDATE outbox SET status = 'pending' WHERE event_id = ?", (r["event_id"],))
                self._audit.append_in_tx(actor, tenant, "webhook.redelivered", f"delivery:{delivery_id}")
            return True
