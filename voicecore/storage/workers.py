"""Worker leases: every ``serve`` worker holds a lease it renews with a heartbeat; the calls of
a worker whose lease ran out are closed by another worker as ``worker_lost``.

A worker :meth:`~WorkerRepository.register`\\ s at start, renews its lease every third of
the lease time (:meth:`~WorkerRepository.heartbeat`), says when it drains and when it stops.
Any worker may :meth:`~WorkerRepository.reap`: a worker whose lease has run out is declared
``lost`` by a conditional UPDATE (so exactly one reaper wins), and in the same transaction its
open calls are closed at its last heartbeat, keeping what was saved of them, with their
``call.ended`` events, their post-call report jobs (from the turns kept) and an audit entry;
the report jobs and campaign contacts it had claimed (not dialed yet) go back to the others. Nothing here is home-made coordination: it is rows in
the database every worker already shares, with the database's own locking.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from loguru import logger

from voicecore.storage.audit import AuditLog
from voicecore.storage.calls import CallRepository
from voicecore.storage.database import Database, StorageError
from voicecore.storage.report_jobs import ReportJobs

DEFAULT_LEASE_S = 15.0
WORKER_STATES = ("alive", "draining", "stopped", "lost")
_LIVE = "('alive', 'draining')"


@dataclass(frozen=True)
class WorkerLease:
    id: str
    host: str
    pid: int | None
    started_at: float
    heartbeat_at: float
    lease_expires_at: float
    state: str
    closed_by: str | None
    closed_at: float | None


@dataclass(frozen=True)
class LostWorker:
    """A worker declared lost by :meth:`WorkerRepository.reap`, and the calls closed for it."""

    worker_id: str
    last_heartbeat: float
    calls: tuple[tuple[str, str], ...]  # (tenant, call id)


def _check_lease(lease_s: float) -> None:
    if not lease_s > 0:
        raise StorageError(f"a worker lease must last more than 0 seconds, got {lease_s}")


class WorkerRepository:
    """The ``workers`` table: leases, heartbeats, and closing the calls of lost workers."""

    def __init__(self, db: Database, calls: CallRepository, audit: AuditLog, report_jobs: ReportJobs):
        self._db = db
        self._calls = calls
        self._audit = audit
        self._report_jobs = report_jobs

    def register(self, worker_id: str, *, lease_s: float = DEFAULT_LEASE_S, host: str | None = None,
                 pid: int | None = None) -> None:  # fmt: skip
        """Take a lease for ``worker_id`` (a new worker; registering again renews it as alive)."""
        _check_lease(lease_s)
        now = self._db.clock()
        with self._db.tx():
            if self._db.execute(
                "UPDATE workers SET state = 'alive', heartbeat_at = ?, lease_expires_at = ?, closed_by = NULL, "
                "closed_at = NULL WHERE id = ?",
                (now, now + lease_s, worker_id),
            ):
                return
            self._db.insert(
                "workers",
                {
                    "id": worker_id,
                    "host": host or socket.gethostname(),
                    "pid": os.getpid() if pid is None else pid,
                    "started_at": now,
                    "heartbeat_at": now,
                    "lease_expires_at": now + lease_s,
                    "state": "alive",
                },
            )

    def heartbeat(self, worker_id: str, *, lease_s: float = DEFAULT_LEASE_S) -> bool:
        """Renew the lease. ``False`` when the worker had been declared lost (or never registered):
        its calls were closed by another worker; call :meth:`register` to go on as a live worker."""
        _check_lease(lease_s)
        now = self._db.clock()
        with self._db.tx():
            return bool(
                self._db.execute(
                    f"UPDATE workers SET heartbeat_at = ?, lease_expires_at = ? WHERE id = ? AND state IN {_LIVE}",
                    (now, now + lease_s, worker_id),
                )
            )

    def set_state(self, worker_id: str, state: str) -> None:
        """``draining`` (SIGTERM: finishing its calls, still heartbeating) or ``stopped`` (gone, cleanly)."""
        if state not in ("alive", "draining", "stopped"):
            raise StorageError(f"a worker's state is set to alive, draining or stopped, not {state!r}")
        now = self._db.clock()
        with self._db.tx():
            self._db.execute(
                f"UPDATE workers SET state = ?, closed_at = ? WHERE id = ? AND state IN {_LIVE}",
                (state, now if state == "stopped" else None, worker_id),
            )

    def get(self, worker_id: str) -> WorkerLease | None:
        r = self._db.one("SELECT * FROM workers WHERE id = ?", (worker_id,))
        return WorkerLease(**r) if r else None

    def list(self, *, include_gone: bool = False) -> list[WorkerLease]:
        """Workers holding a lease (``alive``/``draining``; with ``include_gone`` also stopped and lost)."""
        where = "" if include_gone else f" WHERE state IN {_LIVE}"
        return [WorkerLease(**r) for r in self._db.rows(f"SELECT * FROM workers{where} ORDER BY started_at")]

    def reap(self, by: str, *, now: float | None = None) -> list[LostWorker]:
        """Declare every worker whose lease ran out ``lost`` and close its open calls as
        ``worker_lost`` (at its last heartbeat). Safe to run on every worker at once: each lost
        worker is reaped by exactly one of them. Returns the workers this call reaped."""
        now = self._db.clock() if now is None else now
        expired = self._db.rows(
            f"SELECT id, heartbeat_at FROM workers WHERE state IN {_LIVE} AND lease_expires_at < ? AND id <> ?",
            (now, by),
        )
        lost: list[LostWorker] = []
        for w in expired:
            with self._db.tx():
                won = self._db.execute(
                    f"UPDATE workers SET state = 'lost', closed_by = ?, closed_at = ? "
                    f"WHERE id = ? AND state IN {_LIVE} AND lease_expires_at < ?",
                    (by, now, w["id"], now),
                )
                if not won:
                    continue  # another worker reaped it, or it renewed its lease meanwhile
                closed = self._calls.close_lost_in_tx(w["id"], float(w["heartbeat_at"]))
                for tenant, call_id in closed:  # its report, from what was kept of it
                    self._report_jobs.enqueue_in_tx(tenant, call_id, self._calls.stored_turns(tenant, call_id))
                # campaign contacts it had claimed but not dialed yet: due again at once for the others
                self._db.execute(
                    "UPDATE campaign_contacts SET status = 'pending', claimed_by = NULL, claimed_until = NULL "
                    "WHERE claimed_by = ? AND status = 'dialing' AND last_attempt_id IS NULL", (w["id"],))  # fmt: skip
                self._audit.append_in_tx(by, None, "worker.lost", f"worker:{w['id']} calls:{len(closed)}")
            self._report_jobs.release_claims_of(w["id"])
            lost.append(LostWorker(w["id"], float(w["heartbeat_at"]), tuple(closed)))
            logger.warning(
                "worker {} lost its lease (last heartbeat {:.0f} s ago): {} call(s) closed as worker_lost",
                w["id"], now - float(w["heartbeat_at"]), len(closed),
            )  # fmt: skip
        return lost

    def forget_gone(self, *, older_than_s: float = 7 * 86400, now: float | None = None) -> int:
        """Delete the rows of workers stopped or lost more than ``older_than_s`` ago."""
        now = self._db.clock() if now is None else now
        with self._db.tx():
            return self._db.execute(
                "DELETE FROM workers WHERE state IN ('stopped', 'lost') AND closed_at < ?", (now - older_than_s,)
            )
