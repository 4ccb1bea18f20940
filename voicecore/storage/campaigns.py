"""Outbound campaigns: a tenant's segment called from its number, through a provider, in a window.

A campaign (``campaigns``) is created as a ``draft``; ``start`` puts every contact of its
segment on the campaign (``campaign_contacts``, status ``pending``, due at once or at the
campaign's start time) and sets it ``running``; ``pause``/``resume`` stop and restart the
dialing; a campaign whose every contact is ``done`` is ``done``.

The dialers (one per ``serve`` worker, :mod:`voicecore.server.dialer`) take due contacts row by
row (:meth:`CampaignRepository.claim_due`: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the write
lock on SQLite), never more than ``max_concurrent`` calls of a campaign at once. Before the
provider is asked, :meth:`~CampaignRepository.begin_attempt` writes the attempt
(``call_attempts``, status ``dialing``) in the same transaction that counts it: a worker killed
after that never has the attempt repeated (it is settled as ``failed``/``unknown`` and the contact
waits ``retry_after`` like any failed attempt), so nobody is dialed twice and nobody is skipped.

Outcomes: ``completed``, ``no_answer``, ``busy``, ``failed``, ``machine``, ``refused_by_policy``,
``opted_out``. A contact is ``done`` after a completed call, a machine, an opt-out, a refusal
that will never clear, or ``max_attempts`` attempts; each done contact writes a
``campaign.contact_done`` outbox event (signed webhook) in the same transaction.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from voicecore.outbound.windows import CallingWindowError, parse_window
from voicecore.policy.decisions import expires_at as policy_expires_at
from voicecore.policy.phone import InvalidPhoneNumber, normalize_phone
from voicecore.storage.audit import AuditLog
from voicecore.storage.calls import report_from_row
from voicecore.storage.contacts import check_segment
from voicecore.storage.crypto import field_aad
from voicecore.storage.database import Database, StorageError
from voicecore.storage.outbox import Outbox
from voicecore.storage.tenants import Tenant, TenantRepository

DIAL_PROVIDERS: tuple[str, ...] = ("twilio", "telnyx", "vonage", "plivo", "asterisk")
OUTCOMES: tuple[str, ...] = ("completed", "no_answer", "busy", "failed", "machine", "refused_by_policy", "opted_out")
RETRIED_OUTCOMES = ("no_answer", "busy", "failed")  # tried again after retry_after, up to max_attempts
MACHINE_ACTIONS = ("hangup", "voicemail")
CAMPAIGN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
OPEN_ATTEMPT = "('dialing', 'ringing', 'answered')"
ATTEMPT_TTL_S = 400 * 86400  # attempts are kept a little over a year when the policy keeps metadata longer


class CampaignError(StorageError):
    """A campaign request that cannot be done as asked (the message names what is wrong)."""


class UnknownCampaign(CampaignError):
    def __init__(self, tenant: str, name: str):
        super().__init__(f"tenant {tenant!r} has no campaign {name!r}")


@dataclass(frozen=True)
class Campaign:
    id: str
    tenant: str
    name: str
    pipeline: str
    segment: str
    from_number: str
    provider: str
    window: str
    max_concurrent: int
    max_attempts: int
    retry_after_s: float
    start_at: float | None
    machine_action: str
    status: str
    paused_reason: str | None
    created_at: float
    updated_at: float
    tenant_id: str = field(default="", repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("tenant_id")
        return d


@dataclass(frozen=True)
class DueContact:
    """A contact claimed for its next attempt (phone decrypted, for the dialer only)."""

    campaign: Campaign
    contact_id: str
    phone: str
    phone_hash: str
    fields: dict[str, Any]
    attempts: int


@dataclass
class CampaignStatus:
    campaign: Campaign
    contacts: int = 0
    by_status: dict[str, int] = field(default_factory=dict)  # pending | dialing | done
    by_outcome: dict[str, int] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)  # pending contacts by the reason they wait (refusals)
    in_flight: int = 0
    attempts: int = 0
    next_due_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"campaign": self.campaign.to_dict(), "contacts": self.contacts, "by_status": self.by_status,
                "by_outcome": self.by_outcome, "waiting": self.waiting, "in_flight": self.in_flight,
                "attempts": self.attempts, "next_due_at": self.next_due_at}  # fmt: skip


def _campaign(r: dict[str, Any], tenant: str) -> Campaign:
    return Campaign(
        id=r["id"], tenant=tenant, name=r["name"], pipeline=r["pipeline"], segment=r["segment"],
        from_number=r["from_number"], provider=r["provider"], window=r["window"],
        max_concurrent=int(r["max_concurrent"]), max_attempts=int(r["max_attempts"]),
        retry_after_s=float(r["retry_after_s"]), start_at=r["start_at"], machine_action=r["machine_action"],
        status=r["status"], paused_reason=r["paused_reason"], created_at=r["created_at"], updated_at=r["updated_at"],
        tenant_id=r["tenant_id"],
    )  # fmt: skip


class CampaignRepository:
    """Campaigns, their contacts' progress and every dial attempt (see the module)."""

    def __init__(self, db: Database, tenants: TenantRepository, outbox: Outbox, audit: AuditLog):
        self._db = db
        self._tenants = tenants
        self._outbox = outbox
        self._audit = audit

    # -- managing ------------------------------------------------------------------------

    def create(self, tenant: str, name: str, *, pipeline: str, segment: str, from_number: str, provider: str,
               window: str = "us-tcpa", max_concurrent: int = 1, max_attempts: int = 3, retry_after_s: float = 7200.0,
               start_at: float | None = None, machine_action: str = "hangup", voicemail: str | None = None,
               actor: str) -> Campaign:  # fmt: skip
        """A new ``draft`` campaign. Every setting is checked here, naming the one that is wrong."""
        if not CAMPAIGN_NAME.match(name or ""):
            raise CampaignError(f"campaign name {name!r}: letters, digits, '.', '_' and '-', at most 64")
        if provider not in DIAL_PROVIDERS:
            raise CampaignError(f"provider {provider!r}: one of {', '.join(DIAL_PROVIDERS)}")
        try:
            parse_window(window)
        except CallingWindowError as e:
            raise CampaignError(f"window: {e}") from None
        if not 1 <= max_concurrent <= 1000:
            raise CampaignError(f"max_concurrent must be between 1 and 1000, got {max_concurrent}")
        if not 1 <= max_attempts <= 50:
            raise CampaignError(f"max_attempts must be between 1 and 50, got {max_attempts}")
        if not 60 <= retry_after_s <= 90 * 86400:
            raise CampaignError(f"retry_after must be between 1 minute and 90 days, got {retry_after_s:g} s")
        if machine_action not in MACHINE_ACTIONS:
            raise CampaignError(f"machine_action {machine_action!r}: one of {', '.join(MACHINE_ACTIONS)}")
        if machine_action == "voicemail" and not (voicemail or "").strip():
            raise CampaignError("machine_action voicemail needs the voicemail message (--voicemail TEXT)")
        check_segment(segment)
        with self._db.lock:
            t = self._tenants.row(tenant)
            region = self._tenants.policy_of(t).phone_region
            try:
                number = normalize_phone(from_number, region)
            except InvalidPhoneNumber as e:
                raise CampaignError(f"from number {from_number!r}: {e}") from None
            if not self._db.exists("SELECT 1 AS x FROM contact_segments WHERE tenant_id = ? AND segment = ?",
                                   (t.id, segment)):  # fmt: skip
                raise CampaignError(f"segment {segment!r} of tenant {tenant!r} holds no contact "
                                    "(voicecore contacts import FILE --segment NAME)")  # fmt: skip
            if self._db.exists("SELECT 1 AS x FROM campaigns WHERE tenant_id = ? AND name = ?", (t.id, name)):
                raise CampaignError(f"tenant {tenant!r} already has a campaign {name!r}")
            now = self._db.clock()
            cid = secrets.token_hex(12)
            keys = self._tenants.data_keys(t)
            with self._db.tx():
                self._db.insert("campaigns", {
                    "id": cid, "tenant_id": t.id, "name": name, "pipeline": pipeline, "segment": segment,
                    "from_number": number, "provider": provider, "window": window, "max_concurrent": max_concurrent,
                    "max_attempts": max_attempts, "retry_after_s": retry_after_s, "start_at": start_at,
                    "machine_action": machine_action,
                    "voicemail_enc": keys.encrypt_text(voicemail, field_aad("campaigns", t.id, cid, "voicemail"))
                    if voicemail else None,
                    "status": "draft", "paused_reason": None, "created_at": now, "updated_at": now,
                })  # fmt: skip
                self._audit.append_in_tx(actor, tenant, "campaign.created", f"campaign:{name}")
            return self.get(tenant, name)

    def get(self, tenant: str, name: str) -> Campaign:
        t = self._tenants.row(tenant)
        r = self._db.one("SELECT * FROM campaigns WHERE tenant_id = ? AND name = ?", (t.id, name))
        if r is None:
            raise UnknownCampaign(tenant, name)
        return _campaign(r, tenant)

    def by_id(self, campaign_id: str) -> Campaign | None:
        r = self._db.one("SELECT c.*, t.name AS tenant_name FROM campaigns c JOIN tenants t ON t.id = c.tenant_id "
                         "WHERE c.id = ?", (campaign_id,))  # fmt: skip
        return _campaign(r, r["tenant_name"]) if r else None

    def list(self, tenant: str) -> list[Campaign]:
        t = self._tenants.row(tenant)
        return [_campaign(r, tenant) for r in self._db.rows(
            "SELECT * FROM campaigns WHERE tenant_id = ? ORDER BY created_at", (t.id,))]  # fmt: skip

    def voicemail(self, campaign: Campaign) -> str | None:
        r = self._db.one("SELECT voicemail_enc FROM campaigns WHERE id = ?", (campaign.id,))
        if r is None or r["voicemail_enc"] is None:
            return None
        return self._tenants.data_keys(campaign.tenant_id).decrypt_text(
            r["voicemail_enc"], field_aad("campaigns", campaign.tenant_id, campaign.id, "voicemail"))

    def start(self, tenant: str, name: str, *, actor: str) -> int:
        """Run the campaign (a draft, or paused): its segment's contacts not on it yet join it, due at
        once (or at its start time). Returns how many joined."""
        with self._db.lock:
            c = self.get(tenant, name)
            if c.status == "done":
                raise CampaignError(f"campaign {name!r} is done; create a new one to call again")
            now = self._db.clock()
            due = max(now, c.start_at or now)
            with self._db.tx():
                rows = self._db.rows(
                    "SELECT k.id, k.phone_hash FROM contacts k JOIN contact_segments s ON s.contact_id = k.id "
                    "WHERE s.tenant_id = ? AND s.segment = ? AND NOT EXISTS (SELECT 1 FROM campaign_contacts cc "
                    "WHERE cc.campaign_id = ? AND cc.contact_id = k.id)", (c.tenant_id, c.segment, c.id))  # fmt: skip
                self._db.insert_many("campaign_contacts", [{
                    "campaign_id": c.id, "contact_id": r["id"], "tenant_id": c.tenant_id, "phone_hash": r["phone_hash"],
                    "status": "pending", "attempts": 0, "next_attempt_at": due, "updated_at": now,
                } for r in rows])  # fmt: skip
                self._db.execute("UPDATE campaigns SET status = 'running', paused_reason = NULL, updated_at = ? "
                                 "WHERE id = ?", (now, c.id))  # fmt: skip
                self._audit.append_in_tx(actor, tenant, "campaign.started", f"campaign:{name} joined:{len(rows)}")
            return len(rows)

    resume = start

    def pause(self, tenant: str, name: str, *, reason: str | None = None, actor: str) -> None:
        """Stop dialing (calls in progress go on); ``resume`` starts again."""
        with self._db.lock:
            c = self.get(tenant, name)
            if c.status not in ("running", "draft"):
                raise CampaignError(f"campaign {name!r} is {c.status}, not running")
            self._set_paused(c.id, reason or f"paused by {actor}")
            self._audit.append(actor, tenant, "campaign.paused", f"campaign:{name}")

    def _set_paused(self, campaign_id: str, reason: str) -> None:
        with self._db.tx():
            self._db.execute("UPDATE campaigns SET status = 'paused', paused_reason = ?, updated_at = ? "
                             "WHERE id = ? AND status IN ('running', 'draft')",
                             (reason[:500], self._db.clock(), campaign_id))  # fmt: skip

    def pause_for(self, campaign_id: str, reason: str) -> None:
        """The dialer stops a campaign that cannot go on (wrong provider credentials, ...): ``reason`` says why."""
        with self._db.lock:
            self._set_paused(campaign_id, reason)
            c = self.by_id(campaign_id)
            if c is not None:
                self._audit.append("dialer", c.tenant, "campaign.paused", f"campaign:{c.name}")

    def status(self, tenant: str, name: str) -> CampaignStatus:
        with self._db.lock:
            c = self.get(tenant, name)
            st = CampaignStatus(c)
            for r in self._db.rows("SELECT status, outcome, last_reason, COUNT(*) AS n, MIN(next_attempt_at) AS due "
                                   "FROM campaign_contacts WHERE campaign_id = ? GROUP BY status, outcome, last_reason",
                                   (c.id,)):  # fmt: skip
                n = int(r["n"])
                st.contacts += n
                st.by_status[r["status"]] = st.by_status.get(r["status"], 0) + n
                if r["status"] == "done" and r["outcome"]:
                    st.by_outcome[r["outcome"]] = st.by_outcome.get(r["outcome"], 0) + n
                if r["status"] == "pending":
                    if r["last_reason"]:
                        st.waiting[r["last_reason"]] = st.waiting.get(r["last_reason"], 0) + n
                    st.next_due_at = min(filter(None, (st.next_due_at, r["due"])), default=None)
            st.in_flight = self._in_flight(c.id)
            one = self._db.one("SELECT COUNT(*) AS n FROM call_attempts WHERE campaign_id = ?", (c.id,))
            st.attempts = int(one["n"]) if one else 0
            return st

    def export_csv(self, tenant: str, name: str, *, actor: str) -> str:
        """One line per contact: phone, name, status, attempts, outcome, why it waits or was refused,
        the last call id, and that call's report: the caller's need and the appointment slot."""

        with self._db.lock:
            c = self.get(tenant, name)
            keys = self._tenants.data_keys(c.tenant_id)
            rows = self._db.rows(
                "SELECT cc.*, k.fields_enc FROM campaign_contacts cc JOIN contacts k ON k.id = cc.contact_id "
                "WHERE cc.campaign_id = ? ORDER BY k.created_at, k.id", (c.id,))  # fmt: skip
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["phone", "name", "status", "attempts", "outcome", "reason", "call_id", "need", "appointment"])
            for r in rows:
                fields = dict(keys.decrypt_json(r["fields_enc"], field_aad("contacts", c.tenant_id, r["contact_id"],
                                                                           "fields")))  # fmt: skip
                need = appointment = ""
                if r["last_call_id"]:
                    rep = self._db.one("SELECT * FROM reports WHERE tenant_id = ? AND call_id = ? AND status = 'ready' "
                                       "ORDER BY created_at DESC LIMIT 1", (c.tenant_id, r["last_call_id"]))  # fmt: skip
                    if rep is not None:
                        body = report_from_row(rep, keys).body or {}
                        need = str(body.get("need") or body.get("summary") or "")
                        slot = body.get("appointment") or {}
                        appointment = " ".join(str(v) for v in slot.values() if v) if isinstance(slot, dict) else str(slot)
                name_ = fields.get("name") or " ".join(filter(None, (fields.get("first_name"), fields.get("last_name"))))
                w.writerow([fields.get("phone", ""), name_, r["status"], r["attempts"], r["outcome"] or "",
                            r["last_reason"] or "", r["last_call_id"] or "", need, appointment])  # fmt: skip
            self._audit.append(actor, tenant, "campaign.exported", f"campaign:{name} contacts:{len(rows)}")
            return buf.getvalue()

    # -- the dialer ----------------------------------------------------------------------

    def running(self) -> list[Campaign]:
        """Every running campaign of every tenant."""
        return [_campaign(r, r["tenant_name"]) for r in self._db.rows(
            "SELECT c.*, t.name AS tenant_name FROM campaigns c JOIN tenants t ON t.id = c.tenant_id "
            "WHERE c.status = 'running' ORDER BY c.created_at")]  # fmt: skip

    def _in_flight(self, campaign_id: str) -> int:
        r = self._db.one(f"SELECT COUNT(*) AS n FROM call_attempts WHERE campaign_id = ? AND status IN {OPEN_ATTEMPT}",
                         (campaign_id,))  # fmt: skip
        return int(r["n"]) if r else 0

    def claim_due(self, campaign: Campaign, worker_id: str, *, lease_s: float = 120.0,
                  now: float | None = None) -> list[DueContact]:  # fmt: skip
        """Take the campaign's due contacts for this worker, no more than its free places
        (``max_concurrent`` minus the attempts in flight). Claimed rows are ``dialing`` until
        :meth:`begin_attempt`, :meth:`defer` or :meth:`finish_contact` settles them, or the claim
        runs out (``lease_s``: a worker that died before dialing leaves them to the next claim)."""
        with self._db.lock:
            now = self._db.clock() if now is None else now
            keys = self._tenants.data_keys(campaign.tenant_id)
            with self._db.tx():
                c = self._db.one(self._db.lock_row("SELECT status FROM campaigns WHERE id = ?"), (campaign.id,))
                if c is None or c["status"] != "running":
                    return []
                free = campaign.max_concurrent - self._in_flight(campaign.id)
                # claims of contacts not yet dialed count too
                held = self._db.one("SELECT COUNT(*) AS n FROM campaign_contacts WHERE campaign_id = ? AND "
                                    "status = 'dialing' AND last_attempt_id IS NULL AND claimed_until >= ?",
                                    (campaign.id, now))  # fmt: skip
                free -= int(held["n"]) if held else 0
                if free <= 0:
                    return []
                rows = self._db.rows(self._db.for_update(
                    "SELECT cc.contact_id, cc.phone_hash, cc.attempts, k.fields_enc FROM campaign_contacts cc "
                    "JOIN contacts k ON k.id = cc.contact_id WHERE cc.campaign_id = ? AND ((cc.status = 'pending' AND "
                    "cc.next_attempt_at <= ?) OR (cc.status = 'dialing' AND cc.last_attempt_id IS NULL AND "
                    "cc.claimed_until < ?)) ORDER BY cc.next_attempt_at, cc.contact_id LIMIT " + str(int(free)),
                    of="cc"), (campaign.id, now, now))  # fmt: skip
                out: list[DueContact] = []
                for r in rows:
                    self._db.execute(
                        "UPDATE campaign_contacts SET status = 'dialing', last_attempt_id = NULL, claimed_by = ?, "
                        "claimed_until = ?, updated_at = ? WHERE campaign_id = ? AND contact_id = ?",
                        (worker_id, now + lease_s, now, campaign.id, r["contact_id"]))  # fmt: skip
                    fields = dict(keys.decrypt_json(r["fields_enc"], field_aad("contacts", campaign.tenant_id,
                                                                               r["contact_id"], "fields")))  # fmt: skip
                    out.append(DueContact(campaign, r["contact_id"], str(fields.get("phone", "")), r["phone_hash"],
                                          fields, int(r["attempts"])))  # fmt: skip
                return out

    def attempt_times(self, tenant_id: str, phone_hash: str, since: float) -> list[float]:
        """When this number was dialed since ``since``, across every campaign of the tenant."""
        return [float(r["created_at"]) for r in self._db.rows(
            "SELECT created_at FROM call_attempts WHERE tenant_id = ? AND phone_hash = ? AND created_at >= ? "
            "ORDER BY created_at", (tenant_id, phone_hash, since))]  # fmt: skip

    def defer(self, due: DueContact, *, until: float | None, reason: str) -> None:
        """A check refused the dial for now (window, holiday, attempt cap): back to ``pending``,
        due again at ``until``; ``campaigns status`` shows ``reason``. ``until`` None: never again
        (the contact is done, ``refused_by_policy``)."""
        if until is None:
            self.finish_contact(due.campaign, due.contact_id, "refused_by_policy", reason=reason)
            return
        with self._db.lock, self._db.tx():
            self._db.execute(
                "UPDATE campaign_contacts SET status = 'pending', next_attempt_at = ?, last_reason = ?, "
                "claimed_by = NULL, claimed_until = NULL, updated_at = ? WHERE campaign_id = ? AND contact_id = ?",
                (until, reason, self._db.clock(), due.campaign.id, due.contact_id))  # fmt: skip

    def begin_attempt(self, due: DueContact, worker_id: str) -> str:
        """Write the attempt before the provider is asked (see the module); returns its id."""
        with self._db.lock:
            now = self._db.clock()
            attempt_id = "at" + secrets.token_hex(12)
            policy = self._tenants.policy_of(self._tenant_row(due.campaign.tenant_id))
            exp = policy_expires_at(policy, "metadata", now) or now + 86400
            with self._db.tx():
                n = due.attempts + 1
                self._db.insert("call_attempts", {
                    "id": attempt_id, "tenant_id": due.campaign.tenant_id, "campaign_id": due.campaign.id,
                    "contact_id": due.contact_id, "phone_hash": due.phone_hash, "attempt_no": n,
                    "provider": due.campaign.provider, "status": "dialing", "worker_id": worker_id, "created_at": now,
                    "expires_at": min(exp, now + ATTEMPT_TTL_S),
                })  # fmt: skip
                self._db.execute(
                    "UPDATE campaign_contacts SET attempts = ?, last_attempt_id = ?, last_reason = NULL, updated_at = ? "
                    "WHERE campaign_id = ? AND contact_id = ?", (n, attempt_id, now, due.campaign.id, due.contact_id))  # fmt: skip
            return attempt_id

    def attempt_dialed(self, attempt_id: str, provider_call_id: str) -> None:
        """The provider took the call request: its id for the call."""
        with self._db.lock, self._db.tx():
            self._db.execute("UPDATE call_attempts SET provider_call_id = ?, status = 'ringing' "
                             "WHERE id = ? AND status = 'dialing'", (provider_call_id, attempt_id))  # fmt: skip

    def attempt(self, attempt_id: str | None = None, *, provider: str | None = None,
                provider_call_id: str | None = None) -> dict[str, Any] | None:  # fmt: skip
        if attempt_id:
            return self._db.one("SELECT * FROM call_attempts WHERE id = ?", (attempt_id,))
        return self._db.one("SELECT * FROM call_attempts WHERE provider = ? AND provider_call_id = ?",
                            (provider, provider_call_id))  # fmt: skip

    def attempt_answered(self, attempt_id: str, *, call_id: str | None = None) -> None:
        with self._db.lock, self._db.tx():
            self._db.execute("UPDATE call_attempts SET status = 'answered', answered_at = COALESCE(answered_at, ?), "
                             "call_id = COALESCE(?, call_id) WHERE id = ? AND status IN ('dialing', 'ringing', "
                             "'answered')", (self._db.clock(), call_id, attempt_id))  # fmt: skip

    def settle_attempt(self, attempt_id: str, outcome: str, *, error_code: str | None = None,
                       error_message: str | None = None, call_id: str | None = None,
                       retry: bool = True) -> str | None:  # fmt: skip
        """The attempt ended with ``outcome``: the contact is tried again after ``retry_after``
        (a retried outcome, attempts left, ``retry``) or is done. Idempotent: a second report of
        the same attempt changes nothing. Returns the contact's status now, or None when the
        attempt was settled already."""
        if outcome not in OUTCOMES:
            raise CampaignError(f"unknown outcome {outcome!r}")
        with self._db.lock:
            now = self._db.clock()
            a = self._db.one("SELECT * FROM call_attempts WHERE id = ?", (attempt_id,))
            if a is None or a["status"] == "done":
                return None
            c = self.by_id(a["campaign_id"])
            assert c is not None
            if outcome == "completed" and self._opted_out(c.tenant_id, a["phone_hash"]):
                outcome = "opted_out"  # said during the call: no further attempt from any campaign
            with self._db.tx():
                changed = self._db.execute(
                    "UPDATE call_attempts SET status = 'done', outcome = ?, error_code = ?, error_message = ?, "
                    "call_id = COALESCE(?, call_id), ended_at = ? WHERE id = ? AND status <> 'done'",
                    (outcome, error_code, (error_message or "")[:500] or None, call_id, now, attempt_id))  # fmt: skip
                if not changed:
                    return None
                cc = self._db.one("SELECT * FROM campaign_contacts WHERE campaign_id = ? AND contact_id = ?",
                                  (c.id, a["contact_id"]))  # fmt: skip
                if cc is None:  # erased meanwhile
                    return None
                if retry and outcome in RETRIED_OUTCOMES and int(cc["attempts"]) < c.max_attempts:
                    self._db.execute(
                        "UPDATE campaign_contacts SET status = 'pending', next_attempt_at = ?, outcome = ?, "
                        "last_reason = NULL, last_call_id = COALESCE(?, last_call_id), claimed_by = NULL, "
                        "claimed_until = NULL, updated_at = ? WHERE campaign_id = ? AND contact_id = ?",
                        (now + c.retry_after_s, outcome, call_id, now, c.id, a["contact_id"]))  # fmt: skip
                    return "pending"
                self._finish_in_tx(c, a["contact_id"], outcome, call_id=call_id or a["call_id"], now=now)
                return "done"

    def finish_contact(self, campaign: Campaign, contact_id: str, outcome: str, *, reason: str | None = None,
                       call_id: str | None = None) -> None:  # fmt: skip
        """The contact is done with ``outcome`` (no attempt: refused by a check that never clears)."""
        with self._db.lock, self._db.tx():
            self._finish_in_tx(campaign, contact_id, outcome, reason=reason, call_id=call_id, now=self._db.clock())

    def _finish_in_tx(self, c: Campaign, contact_id: str, outcome: str, *, reason: str | None = None,
                      call_id: str | None = None, now: float) -> None:  # fmt: skip
        self._db.execute(
            "UPDATE campaign_contacts SET status = 'done', outcome = ?, last_reason = ?, "
            "last_call_id = COALESCE(?, last_call_id), claimed_by = NULL, claimed_until = NULL, updated_at = ? "
            "WHERE campaign_id = ? AND contact_id = ?", (outcome, reason, call_id, now, c.id, contact_id))  # fmt: skip
        cc = self._db.one("SELECT cc.attempts, cc.phone_hash, cc.last_call_id, k.fields_enc FROM campaign_contacts cc "
                          "JOIN contacts k ON k.id = cc.contact_id WHERE cc.campaign_id = ? AND cc.contact_id = ?",
                          (c.id, contact_id))  # fmt: skip
        if cc is not None:
            t = self._tenant_row(c.tenant_id)
            keys = self._tenants.data_keys(t)
            fields = dict(keys.decrypt_json(cc["fields_enc"], field_aad("contacts", c.tenant_id, contact_id, "fields")))
            self._outbox.add_in_tx(t, keys, "campaign.contact_done", {
                "campaign": c.name, "phone": fields.get("phone"), "attempts": int(cc["attempts"]), "outcome": outcome,
                "reason": reason, "call_id": cc["last_call_id"],
            }, call_id=cc["last_call_id"], subject_hash=cc["phone_hash"])  # fmt: skip
        left = self._db.one("SELECT COUNT(*) AS n FROM campaign_contacts WHERE campaign_id = ? AND status <> 'done'",
                            (c.id,))  # fmt: skip
        if left is not None and int(left["n"]) == 0:
            self._db.execute("UPDATE campaigns SET status = 'done', updated_at = ? WHERE id = ? AND status = 'running'",
                             (now, c.id))  # fmt: skip

    def stale_attempts(self, *, older_than_s: float, answered_older_than_s: float = 6 * 3600,
                       now: float | None = None) -> list[dict[str, Any]]:  # fmt: skip
        """Attempts still open long after they began (a lost status callback, a worker that died
        mid-dial; an answered one after ``answered_older_than_s``): the dialer settles them as
        failed, so the contact is retried later, never dialed twice at once."""
        now = self._db.clock() if now is None else now
        return self._db.rows(
            "SELECT * FROM call_attempts WHERE (status IN ('dialing', 'ringing') AND created_at < ?) OR "
            "(status = 'answered' AND created_at < ?)", (now - older_than_s, now - answered_older_than_s))  # fmt: skip

    # -- helpers -------------------------------------------------------------------------

    def _tenant_row(self, tenant_id: str) -> Tenant:
        r = self._db.one("SELECT name FROM tenants WHERE id = ?", (tenant_id,))
        if r is None:
            raise StorageError("the campaign's tenant is gone")
        return self._tenants.row(r["name"])

    def _opted_out(self, tenant_id: str, phone_hash: str) -> bool:
        return self._db.exists("SELECT 1 AS x FROM opt_outs WHERE tenant_id = ? AND phone_hash = ?",
                               (tenant_id, phone_hash))  # fmt: skip

    def dial_facts(self, due: DueContact) -> tuple[bool, bool]:
        """(opted out, restricted) for the contact's number, now (every worker sees the same list)."""
        return (self._opted_out(due.campaign.tenant_id, due.phone_hash),
                self._db.exists("SELECT 1 AS x FROM restrictions WHERE tenant_id = ? AND phone_hash = ?",
                                (due.campaign.tenant_id, due.phone_hash)))  # fmt: skip

    def region_of(self, campaign: Campaign) -> str:
        return self._tenants.policy_of(self._tenant_row(campaign.tenant_id)).phone_region
