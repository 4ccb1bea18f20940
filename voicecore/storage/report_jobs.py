"""Post-call report jobs, claimed row by row by whichever worker has a model free.

A call that ends with caller speech, under a policy that keeps reports, leaves a job
(:meth:`ReportJobs.enqueue`, or :meth:`ReportJobs.enqueue_in_tx` inside the transaction that
closes the call): what the report is made from (the caller's and agent's words, the tool calls and
messages taken, the call's date) encrypted with the tenant keys, so the report can be made even when the policy keeps no
transcript. A worker takes one job at a time (:meth:`ReportJobs.claim`: ``FOR UPDATE SKIP LOCKED``
on PostgreSQL, the write transaction on SQLite) and holds it for a lease it renews
(:meth:`ReportJobs.extend`) while the model works; the job is deleted in the same transaction as
its report is stored (:meth:`voicecore.storage.calls.CallRepository.save_report` with ``job=``),
so a job is done at least once and its report stored once. A worker that dies leaves its job to
be claimed again when the lease ends (or at once, :meth:`ReportJobs.release_claims_of`); a job
claimed :data:`REPORT_MAX_ATTEMPTS` times without finishing is stored as a ``failed`` report.
The subject's erasure deletes its jobs, the retention sweep the expired ones.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from loguru import logger

from voicecore.policy.decisions import expires_at as policy_expires_at
from voicecore.policy.models import Policy
from voicecore.storage.crypto import CryptoError, field_aad
from voicecore.storage.database import Database, StorageError
from voicecore.storage.tenants import Tenant, TenantRepository

#: How long a claimed job is held before another worker may take it (the runner renews it).
REPORT_LEASE_S = 120.0
#: A job claimed this many times without being finished is stored as a failed report.
REPORT_MAX_ATTEMPTS = 3
#: A job not done within this long is deleted by the retention sweep (its words with it).
REPORT_JOB_TTL_S = 24 * 3600.0


class ReportJobLost(StorageError):
    """The worker no longer holds the job (its lease ran out and another worker took it, or the
    job was erased): its report is not stored."""


#: Event turns a report is made from besides the words: the tool calls and the messages taken.
REPORT_EVENT_KINDS = ("tool", "message")


@dataclass(frozen=True)
class JobTurn:
    """One line of what a report is made from."""

    role: str  # caller | agent | event
    text: str
    kind: str | None = None  # event turns: tool | message


@dataclass
class ReportJob:
    """A claimed job: what the report is made from, decrypted."""

    id: str
    tenant: str
    tenant_id: str
    call_id: str
    pipeline: str | None  # the call's pipeline (None when the call row is gone)
    turns: list[JobTurn] = field(default_factory=list)
    call_date: date | None = None
    attempts: int = 0  # claims so far, this one included
    claimed_by: str = ""
    claimed_until: float = 0.0
    created_at: float = 0.0


def job_input(turns: Iterable[Any], call_date: date | None) -> dict[str, Any]:
    """What a job keeps of a call's turns: the caller's and agent's words and the tool calls and
    messages taken (:data:`REPORT_EVENT_KINDS`), in order."""
    lines: list[dict[str, Any]] = []
    for t in turns:
        role, text = getattr(t, "role", None), getattr(t, "text", None)
        if not isinstance(text, str) or not text.strip():
            continue
        if role in ("caller", "agent"):
            lines.append({"role": role, "text": text})
        elif role == "event" and getattr(t, "kind", None) in REPORT_EVENT_KINDS:
            lines.append({"role": role, "text": text, "kind": t.kind})
    return {"turns": lines, "call_date": call_date.isoformat() if call_date else None}


class ReportJobs:
    """The report jobs of every tenant."""

    def __init__(self, db: Database, tenants: TenantRepository):
        self._db = db
        self._tenants = tenants

    # -- enqueueing --------------------------------------------------------------------

    def enqueue(
        self, tenant: str, call_id: str, turns: Iterable[Any], *, policy: Policy | None = None, call_date: date | None = None
    ) -> str | None:
        """Leave the job of a just-stored call (see :meth:`enqueue_in_tx`), in its own transaction."""
        with self._db.lock, self._db.tx():
            return self.enqueue_in_tx(tenant, call_id, turns, policy=policy, call_date=call_date)

    def enqueue_in_tx(
        self,
        tenant: str | Tenant,
        call_id: str,
        turns: Iterable[Any],
        *,
        policy: Policy | None = None,
        call_date: date | None = None,
    ) -> str | None:
        """Inside a write transaction, after the call row is written: leave the job that makes the
        call's report from ``turns`` (objects with ``role`` and ``text``: the session's turns, or stored
        ones). Returns the job id, or ``None`` when there is nothing to do: the policy keeps no reports
        (``retention.reports`` 0), the caller said nothing, the call is not stored, or the call has a
        job already."""
        t = tenant if isinstance(tenant, Tenant) else self._tenants.row(tenant)
        policy = policy or self._tenants.policy_of(t)
        if policy.retention.reports == 0:
            return None
        data = job_input(turns, call_date)
        if not any(line["role"] == "caller" for line in data["turns"]):
            return None
        call = self._db.one(
            "SELECT caller_hash, callee_hash, expires_at FROM calls WHERE tenant_id = ? AND call_id = ?", (t.id, call_id)
        )
        if call is None:
            return None
        now = self._db.clock()
        expiry = min(now + REPORT_JOB_TTL_S, call["expires_at"])
        report_expiry = policy_expires_at(policy, "reports", now)
        if report_expiry is not None:
            expiry = min(expiry, report_expiry)
        job_id = secrets.token_hex(16)
        keys = self._tenants.data_keys(t)
        inserted = self._db.insert_ignore(
            "report_jobs",
            {
                "id": job_id,
                "tenant_id": t.id,
                "call_id": call_id,
                "subject_hash": call["caller_hash"] or call["callee_hash"],
                "input_enc": keys.encrypt_json(data, field_aad("report_jobs", t.id, job_id, "input")),
                "status": "pending",
                "attempts": 0,
                "claimed_by": None,
                "claimed_until": None,
                "created_at": now,
                "expires_at": expiry,
            },
        )
        return job_id if inserted else None

    # -- claiming ----------------------------------------------------------------------

    def due(self, now: float | None = None) -> bool:
        """Whether some job may be claimed now (a read; no write lock taken)."""
        ts = self._db.clock() if now is None else now
        return self._db.exists(
            "SELECT 1 AS x FROM report_jobs WHERE (claimed_until IS NULL OR claimed_until <= ?) AND expires_at > ? LIMIT 1",
            (ts, ts),
        )

    def claim(
        self,
        worker_id: str,
        *,
        lease_s: float = REPORT_LEASE_S,
        now: float | None = None,
        call: tuple[str, str] | None = None,
    ) -> ReportJob | None:
        """Claim the oldest job that is pending, or running under a lease that has run out (its
        worker died), for ``lease_s`` seconds; ``None`` when there is none. ``call`` (tenant,
        call id): only that call's job (the worker that ended the call starts its report at once).
        Each claim counts one attempt. Row by row: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (workers
        claiming at the same moment take different jobs), ``BEGIN IMMEDIATE`` on SQLite."""
        ts = self._db.clock() if now is None else now
        where = "(j.claimed_until IS NULL OR j.claimed_until <= ?) AND j.expires_at > ?"
        params: list[Any] = [ts, ts]
        if call is not None:
            where += " AND t.name = ? AND j.call_id = ?"
            params += list(call)
        with self._db.lock:
            if call is None and not self.due(ts):  # the common case, without taking the write lock
                return None
            with self._db.tx():
                rows = self._db.rows(
                    self._db.for_update(
                        "SELECT j.id, j.tenant_id, j.call_id, j.input_enc, j.attempts, j.created_at, t.name AS tenant, "
                        "c.pipeline FROM report_jobs j JOIN tenants t ON t.id = j.tenant_id "
                        "LEFT JOIN calls c ON c.tenant_id = j.tenant_id AND c.call_id = j.call_id "
                        f"WHERE {where} ORDER BY j.created_at, j.id LIMIT 1",
                        of="j",
                    ),
                    params,
                )
                for r in rows:
                    claimed = self._db.execute(
                        "UPDATE report_jobs SET status = 'running', attempts = attempts + 1, claimed_by = ?, "
                        "claimed_until = ? WHERE id = ? AND (claimed_until IS NULL OR claimed_until <= ?)",
                        (worker_id, ts + lease_s, r["id"], ts),
                    )
                    if not claimed:
                        continue
                    tid = r["tenant_id"]
                    try:
                        data = self._tenants.data_keys(tid).decrypt_json(
                            r["input_enc"], field_aad("report_jobs", tid, r["id"], "input")
                        )
                    except CryptoError:
                        logger.warning("report job of call {} cannot be decrypted; dropped", r["call_id"][:8])
                        self._db.execute("DELETE FROM report_jobs WHERE id = ?", (r["id"],))
                        continue
                    data = data or {}
                    return ReportJob(
                        id=r["id"],
                        tenant=r["tenant"],
                        tenant_id=tid,
                        call_id=r["call_id"],
                        pipeline=r["pipeline"],
                        turns=[JobTurn(str(d["role"]), str(d["text"]), d.get("kind")) for d in data.get("turns", [])],
                        call_date=date.fromisoformat(data["call_date"]) if data.get("call_date") else None,
                        attempts=r["attempts"] + 1,
                        claimed_by=worker_id,
                        claimed_until=ts + lease_s,
                        created_at=r["created_at"],
                    )
        return None

    def extend(self, job: ReportJob, lease_s: float = REPORT_LEASE_S, now: float | None = None) -> bool:
        """Renew the lease of a job this worker holds; ``False`` when it no longer holds it."""
        ts = self._db.clock() if now is None else now
        with self._db.lock, self._db.tx():
            n = self._db.execute(
                "UPDATE report_jobs SET claimed_until = ? WHERE id = ? AND claimed_by = ? AND status = 'running'",
                (ts + lease_s, job.id, job.claimed_by),
            )
        if n:
            job.claimed_until = ts + lease_s
        return bool(n)

    def release(self, job: ReportJob, *, retry_after_s: float = 0.0, now: float | None = None) -> bool:
        """Give a job this worker holds back (pending again, claimable after ``retry_after_s``)."""
        ts = self._db.clock() if now is None else now
        with self._db.lock, self._db.tx():
            return bool(
                self._db.execute(
                    "UPDATE report_jobs SET status = 'pending', claimed_by = NULL, claimed_until = ? "
                    "WHERE id = ? AND claimed_by = ? AND status = 'running'",
                    (ts + retry_after_s if retry_after_s > 0 else None, job.id, job.claimed_by),
                )
            )

    def release_claims_of(self, worker_id: str) -> int:
        """Every job ``worker_id`` holds goes back to pending at once (a worker known dead)."""
        with self._db.lock, self._db.tx():
            return self._db.execute(
                "UPDATE report_jobs SET status = 'pending', claimed_by = NULL, claimed_until = NULL "
                "WHERE claimed_by = ? AND status = 'running'",
                (worker_id,),
            )

    # -- finishing ---------------------------------------------------------------------

    def finish_in_tx(self, job: ReportJob) -> None:
        """Inside the transaction that stores the job's report: delete the job, or
        :class:`ReportJobLost` (rolling the transaction back) when this worker no longer holds it."""
        if not self._db.execute(
            "DELETE FROM report_jobs WHERE id = ? AND claimed_by = ?", (job.id, job.claimed_by)
        ):
            raise ReportJobLost(f"the report job of call {job.call_id[:8]} is no longer held by this worker")

    def drop(self, job: ReportJob) -> bool:
        """Delete a job this worker holds with no report stored (the policy keeps no reports now,
        the call is gone)."""
        with self._db.lock, self._db.tx():
            return bool(self._db.execute("DELETE FROM report_jobs WHERE id = ? AND claimed_by = ?", (job.id, job.claimed_by)))

    # -- inspection --------------------------------------------------------------------

    def count(self, tenant: str | None = None) -> int:
        """How many jobs there are (of ``tenant``, or all)."""
        if tenant is None:
            r = self._db.one("SELECT COUNT(*) AS n FROM report_jobs")
        else:
            r = self._db.one(
                "SELECT COUNT(*) AS n FROM report_jobs j JOIN tenants t ON t.id = j.tenant_id WHERE t.name = ?", (tenant,)
            )
        return int(r["n"]) if r else 0

    def pending_for(self, tenant: str, call_id: str) -> bool:
        """Whether the call's job is still there (not yet finished by any worker)."""
        return self._db.exists(
            "SELECT 1 AS x FROM report_jobs j JOIN tenants t ON t.id = j.tenant_id WHERE t.name = ? AND j.call_id = ?",
            (tenant, call_id),
        )
