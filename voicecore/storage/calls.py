"""Stored calls: their metadata, turns, recordings and post-call reports.

A call is stored once it ends, as the tenant policy allows
(:meth:`CallRepository.save`): metadata and timelines with ``retention.metadata``,
turn text encrypted (and redacted, per ``transcripts.store_redacted``) with
``retention.transcripts``, a ``call.ended`` outbox event in the same transaction.
Recordings stream encrypted while the call runs (:meth:`CallRepository.open_recording`): to
files with SQLite, to ``recording_chunks`` rows with PostgreSQL (every worker reads them).
Every read of call content (transcript, recording, report) or of numbers (a list of calls) is
audited with the actor its caller names.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from loguru import logger
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from voicecore.policy.context import stored_transcript_text
from voicecore.policy.decisions import expires_at as policy_expires_at
from voicecore.policy.decisions import may_record
from voicecore.policy.models import Policy
from voicecore.policy.phone import subject_key
from voicecore.records import CallRecord
from voicecore.storage.audit import AuditLog
from voicecore.storage.crypto import TenantKeys, field_aad
from voicecore.storage.database import Database, StorageError, epoch
from voicecore.storage.outbox import Outbox
from voicecore.storage.recording import (
    RecordingError,
    RecordingWriter,
    read_recording_file,
    read_recording_rows,
)
from voicecore.storage.recording_spool import ChunkSpool
from voicecore.storage.report_jobs import ReportJob, ReportJobs
from voicecore.storage.tenants import RECORDINGS_DIRNAME, TenantRepository
from voicecore.views import iso

#: Columns of a call row plus whether it has a recording.
CALL_COLUMNS = (
    "c.*, EXISTS (SELECT 1 FROM recordings g WHERE g.tenant_id = c.tenant_id AND g.call_id = c.call_id) "
    "AS has_recording"
)


class RecordingNotAllowed(StorageError):
    """The tenant policy (or a restriction) does not allow recording this call."""


@dataclass
class StoredTurn:
    idx: int
    role: str
    kind: str | None
    started_at: float | None
    interrupted: bool
    text: str | None  # None when not stored, expired, or not requested
    generated_text: str | None
    timeline: dict[str, Any] | None  # relative ms per stage + voice_to_voice_ms


@dataclass
class StoredCall:
    call_id: str
    tenant: str
    pipeline: str
    transport: str
    caller: str | None
    callee: str | None
    provider_ids: dict[str, str]
    started_at: float
    ended_at: float | None
    duration_s: float | None
    end_reason: str | None
    flags: dict[str, Any]
    turn_count: int
    optout: bool
    transcript_redacted: bool
    stored_at: float
    expires_at: float
    has_recording: bool = False
    turns: list[StoredTurn] | None = None  # None: transcript not requested


@dataclass(frozen=True)
class StoredReport:
    report_id: str
    call_id: str
    status: str  # ready | failed
    error: str | None
    body: dict[str, Any] | None
    created_at: float
    expires_at: float


def call_from_row(r: dict[str, Any], tenant: str, keys: TenantKeys) -> StoredCall:
    """A call row (selected with :data:`CALL_COLUMNS`), its numbers decrypted; no turns."""
    tid, cid = r["tenant_id"], r["call_id"]
    return StoredCall(
        call_id=cid,
        tenant=tenant,
        pipeline=r["pipeline"],
        transport=r["transport"],
        caller=keys.decrypt_text(r["caller_enc"], field_aad("calls", tid, cid, "caller")),
        callee=keys.decrypt_text(r["callee_enc"], field_aad("calls", tid, cid, "callee")),
        provider_ids=json.loads(r["provider_ids"]),
        started_at=r["started_at"],
        ended_at=r["ended_at"],
        duration_s=r["duration_s"],
        end_reason=r["end_reason"],
        flags=json.loads(r["flags"]),
        turn_count=r["turn_count"],
        optout=bool(r["optout"]),
        transcript_redacted=bool(r["transcript_redacted"]),
        stored_at=r["stored_at"],
        expires_at=r["expires_at"],
        has_recording=bool(r.get("has_recording")),
    )


def report_from_row(r: dict[str, Any], keys: TenantKeys) -> StoredReport:
    tid = r["tenant_id"]
    body = keys.decrypt_json(r["body_enc"], field_aad("reports", tid, r["id"], "body")) if r["body_enc"] else None
    return StoredReport(r["id"], r["call_id"], r["status"], r["error"], body, r["created_at"], r["expires_at"])


def _ended_event(
    call_id: str, transport: str, pipeline: str, caller: str | None, callee: str | None, started_at: float,
    ended_at: float, end_reason: str | None, turns: int, optout: bool, transcript_stored: bool,
) -> dict[str, Any]:  # fmt: skip
    """The data of a ``call.ended`` event."""
    return {
        "call_id": call_id,
        "transport": transport,
        "pipeline": pipeline,
        "caller": caller,
        "callee": callee,
        "started_at": iso(started_at),
        "ended_at": iso(ended_at),
        "duration_s": round(ended_at - started_at, 3),
        "end_reason": end_reason,
        "turns": turns,
        "optout": optout,
        "transcript_stored": transcript_stored,
    }


class CallRepository:
    """Calls, turns, recordings and reports of every tenant."""

    def __init__(
        self, db: Database, tenants: TenantRepository, outbox: Outbox, audit: AuditLog, data_dir: Path,
        report_jobs: ReportJobs | None = None,
    ):  # fmt: skip
        self._db = db
        self._tenants = tenants
        self._outbox = outbox
        self._audit = audit
        self._data_dir = data_dir
        self._report_jobs = report_jobs or ReportJobs(db, tenants)
        self._spool: ChunkSpool | None = None  # database recordings' chunk writer (PostgreSQL), made on first use
        self._spool_lock = threading.Lock()

    # -- calls and turns -----------------------------------------------------------------

    def save(self, record: CallRecord, policy: Policy | None = None, *, worker_id: str | None = None,
             turns_from: int | None = None) -> bool:  # fmt: skip
        """Store a call as the policy allows: metadata and timelines (``retention.metadata``), turn text
        encrypted and redacted or not (``retention.transcripts``, ``transcripts.store_redacted``).
        Writes a ``call.ended`` outbox event in the same transaction when the call has ended.

        Idempotent per call id (a later save replaces the earlier one): a worker saves an open
        call (``ended_at`` None) with its ``worker_id`` as it goes, so that what was said is kept
        if the worker dies (:meth:`close_lost_in_tx`). ``turns_from``: the turns before this index
        are unchanged since the previous save of this call, so only the later ones are written (a
        call saved after each turn costs one turn per save, not the whole transcript). Returns
        ``False`` when nothing was stored: metadata retention 0, or the caller/callee is restricted.
        """
        with self._db.lock:
            t = self._tenants.row(record.tenant)
            policy = policy or self._tenants.policy_of(t)
            keys = self._tenants.data_keys(t)
            tid = t.id
            now = self._db.clock()
            meta_exp = policy_expires_at(policy, "metadata", now)
            if meta_exp is None:
                logger.debug("call {} not stored: metadata retention is 0", record.call_id)
                return False
            region = policy.phone_region
            subject_hash = self._tenants.subject_hash_of
            caller_hash = subject_hash(keys, record.caller, region) if record.caller else None
            callee_hash = subject_hash(keys, record.callee, region) if record.callee else None
            if self._tenants.is_restricted_hash(tid, caller_hash) or self._tenants.is_restricted_hash(tid, callee_hash):
                logger.info("call {} not stored: the data subject is restricted", record.call_id)
                return False
            text_exp = policy_expires_at(policy, "transcripts", now)
            cid = record.call_id
            previous = self._db.one("SELECT ended_at FROM calls WHERE tenant_id = ? AND call_id = ?", (tid, cid))
            opted_out = bool(record.flags.get("opt_out") or record.flags.get("optout")) or self._db.exists(
                "SELECT 1 AS x FROM opt_outs WHERE tenant_id = ? AND call_id = ?", (tid, cid)
            )
            caller_e164 = subject_key(record.caller, region) if record.caller else None
            callee_e164 = subject_key(record.callee, region) if record.callee else None
            with self._db.tx():
                first = 0 if turns_from is None or previous is None else max(0, min(turns_from, len(record.turns)))
                self._db.execute("DELETE FROM turns WHERE tenant_id = ? AND call_id = ? AND idx >= ?", (tid, cid, first))
                self._db.execute("DELETE FROM calls WHERE tenant_id = ? AND call_id = ?", (tid, cid))
                self._db.insert(
                    "calls",
                    {
                        "tenant_id": tid,
                        "call_id": cid,
                        "pipeline": record.pipeline,
                        "transport": record.transport,
                        "caller_enc": keys.encrypt_text(caller_e164, field_aad("calls", tid, cid, "caller")),
                        "callee_enc": keys.encrypt_text(callee_e164, field_aad("calls", tid, cid, "callee")),
                        "caller_hash": caller_hash,
                        "callee_hash": callee_hash,
                        "provider_ids": json.dumps(record.provider_ids, sort_keys=True),
                        "started_at": record.started_at,
                        "ended_at": record.ended_at,
                        "duration_s": record.duration_s,
                        "end_reason": record.end_reason,
                        "flags": json.dumps(record.flags, sort_keys=True, default=str),
                        "turn_count": len(record.turns),
                        "optout": int(opted_out),
                        "transcript_redacted": int(text_exp is not None and policy.transcripts.store_redacted),
                        "stored_at": now,
                        "expires_at": meta_exp,
                        "worker_id": worker_id,
                    },
                )
                turn_rows: list[dict[str, Any]] = []
                for idx, turn in enumerate(record.turns):
                    if idx < first:
                        continue
                    row_key = f"{cid}/{idx}"
                    text = stored_transcript_text(policy, turn.text)
                    generated = stored_transcript_text(policy, turn.generated_text)
                    timeline = None
                    if turn.timeline is not None:
                        timeline = {**turn.timeline.relative_ms(), "voice_to_voice_ms": turn.timeline.voice_to_voice_ms(),
                                    "turn_end": turn.timeline.turn_end, "speculative": turn.timeline.speculative,
                                    "rejoined": turn.timeline.rejoined}
                    turn_rows.append(
                        {
                            "tenant_id": tid,
                            "call_id": cid,
                            "idx": idx,
                            "role": turn.role,
                            "kind": turn.kind,
                            "started_at": turn.started_at,
                            "interrupted": int(turn.interrupted),
                            "text_enc": keys.encrypt_text(text, field_aad("turns", tid, row_key, "text")),
                            "generated_enc": keys.encrypt_text(generated, field_aad("turns", tid, row_key, "generated")),
                            "timeline": json.dumps(timeline) if timeline is not None else None,
                            "expires_at": meta_exp,
                            "text_expires_at": text_exp if (text is not None or generated is not None) else None,
                        },
                    )
                if turn_rows:
                    self._db.insert_many("turns", turn_rows)
                if record.ended_at is not None and (previous is None or previous["ended_at"] is None):
                    payload = _ended_event(
                        cid, record.transport, record.pipeline, caller_e164, callee_e164, record.started_at,
                        record.ended_at, record.end_reason, len(record.turns), opted_out, text_exp is not None,
                    )  # fmt: skip
                    self._outbox.add_in_tx(
                        t, keys, "call.ended", payload, call_id=cid, subject_hash=caller_hash or callee_hash
                    )
            logger.info("call {} stored for tenant {} ({} turns)", cid, record.tenant, len(record.turns))
            return True

    def close_lost_in_tx(self, worker_id: str, ended_at: float) -> list[tuple[str, str]]:
        """Inside the transaction that declares ``worker_id`` lost: close the calls it still held
        as ``worker_lost`` at ``ended_at`` (its last heartbeat), keeping what was saved of them
        (as their policy allowed when saved), with their ``call.ended`` events. Returns
        ``(tenant name, call id)`` of each call closed."""
        closed: list[tuple[str, str]] = []
        rows = self._db.rows(
            "SELECT c.*, t.name AS tenant_name FROM calls c JOIN tenants t ON t.id = c.tenant_id "
            "WHERE c.worker_id = ? AND c.ended_at IS NULL ORDER BY c.id",
            (worker_id,),
        )
        for r in rows:
            t = self._tenants.row(r["tenant_name"])
            keys = self._tenants.data_keys(t)
            tid, cid = t.id, r["call_id"]
            end = max(float(r["started_at"]), ended_at)
            flags = json.loads(r["flags"] or "{}")
            flags["worker_lost"] = worker_id
            self._db.execute(
                "UPDATE calls SET ended_at = ?, duration_s = ?, end_reason = 'worker_lost', flags = ? "
                "WHERE tenant_id = ? AND call_id = ? AND ended_at IS NULL",
                (end, round(end - float(r["started_at"]), 3), json.dumps(flags, sort_keys=True), tid, cid),
            )
            stored_text = self._db.exists(
                "SELECT 1 AS x FROM turns WHERE tenant_id = ? AND call_id = ? AND text_enc IS NOT NULL", (tid, cid)
            )
            payload = _ended_event(
                cid, r["transport"], r["pipeline"],
                keys.decrypt_text(r["caller_enc"], field_aad("calls", tid, cid, "caller")),
                keys.decrypt_text(r["callee_enc"], field_aad("calls", tid, cid, "callee")),
                float(r["started_at"]), end, "worker_lost", int(r["turn_count"]), bool(r["optout"]), stored_text,
            )  # fmt: skip
            self._outbox.add_in_tx(
                t, keys, "call.ended", payload, call_id=cid, subject_hash=r["caller_hash"] or r["callee_hash"]
            )
            closed.append((t.name, cid))
        return closed

    def stored_turns(self, tenant: str, call_id: str) -> list[StoredTurn]:
        """A call's stored turns with their text (for its report; not audited: nothing leaves)."""
        t = self._tenants.row(tenant)
        return self.turns(t.id, self._tenants.data_keys(t), call_id, with_text=True)

    def find_by_provider_id(self, tenant_id: str, provider_call_id: str, since: float) -> str | None:
        """The call id of the tenant's call (started after ``since``) whose provider ids hold
        ``provider_call_id`` (Twilio's CallSid, Telnyx's call_control_id, ...)."""
        if not provider_call_id:
            return None
        needle = json.dumps(provider_call_id)  # as it sits in the provider_ids JSON, quoted
        for r in self._db.rows("SELECT call_id, provider_ids FROM calls WHERE tenant_id = ? AND started_at >= ? "
                               "ORDER BY started_at DESC", (tenant_id, since - 120)):  # fmt: skip
            if needle in (r["provider_ids"] or ""):
                return str(r["call_id"])
        return None

    def open_calls(self, worker_id: str | None = None) -> list[tuple[str, str, str | None]]:
        """Calls not ended yet, as ``(tenant name, call id, worker id)`` (of one worker, or all)."""
        sql = "SELECT t.name AS tenant, c.call_id, c.worker_id FROM calls c JOIN tenants t ON t.id = c.tenant_id " \
              "WHERE c.ended_at IS NULL"  # fmt: skip
        params: tuple[Any, ...] = ()
        if worker_id is not None:
            sql, params = sql + " AND c.worker_id = ?", (worker_id,)
        return [(r["tenant"], r["call_id"], r["worker_id"]) for r in self._db.rows(sql + " ORDER BY c.id", params)]

    def turns(self, tenant_id: str, keys: TenantKeys, call_id: str, *, with_text: bool) -> list[StoredTurn]:
        """A call's turns in order (text decrypted only ``with_text``; the caller audits the read)."""
        out: list[StoredTurn] = []
        for tr in self._db.rows(
            "SELECT * FROM turns WHERE tenant_id = ? AND call_id = ? ORDER BY idx", (tenant_id, call_id)
        ):
            row_key = f"{call_id}/{tr['idx']}"
            out.append(
                StoredTurn(
                    idx=tr["idx"],
                    role=tr["role"],
                    kind=tr["kind"],
                    started_at=tr["started_at"],
                    interrupted=bool(tr["interrupted"]),
                    text=keys.decrypt_text(tr["text_enc"], field_aad("turns", tenant_id, row_key, "text"))
                    if with_text
                    else None,
                    generated_text=keys.decrypt_text(tr["generated_enc"], field_aad("turns", tenant_id, row_key, "generated"))
                    if with_text
                    else None,
                    timeline=json.loads(tr["timeline"]) if tr["timeline"] else None,
                )
            )
        return out

    def list(
        self,
        tenant: str,
        *,
        actor: str,
        since: datetime | float | None = None,
        until: datetime | float | None = None,
        phone: str | None = None,
        end_reason: str | None = None,
        limit: int = 100,
        offset: int = 0,
        ended: bool | None = None,
    ) -> list[StoredCall]:
        """The tenant's calls, newest first, metadata only (no transcript). The list holds the
        callers' numbers, so it is audited (``calls.listed``). ``ended``: only calls that have
        (``True``) or have not (``False``) ended."""
        with self._db.lock:
            t = self._tenants.row(tenant)
            keys = self._tenants.data_keys(t)
            where = ["c.tenant_id = ?"]
            params: list[Any] = [t.id]
            if since is not None:
                where.append("c.started_at >= ?")
                params.append(epoch(since))
            if until is not None:
                where.append("c.started_at < ?")
                params.append(epoch(until))
            if phone is not None:
                h = self._tenants.subject_hash_of(keys, phone, self._tenants.policy_of(t).phone_region)
                where.append("(c.caller_hash = ? OR c.callee_hash = ?)")
                params += [h, h]
            if end_reason is not None:
                where.append("c.end_reason = ?")
                params.append(end_reason)
            if ended is not None:
                where.append("c.ended_at IS NOT NULL" if ended else "c.ended_at IS NULL")
            params += [max(0, min(int(limit), 10000)), max(0, int(offset))]
            rows = self._db.rows(
                f"SELECT {CALL_COLUMNS} FROM calls c WHERE {' AND '.join(where)} "
                "ORDER BY c.started_at DESC, c.id DESC LIMIT ? OFFSET ?",
                params,
            )
            calls = [call_from_row(r, tenant, keys) for r in rows]
            self._audit.append(actor, tenant, "calls.listed", "calls")
            return calls

    def get(self, tenant: str, call_id: str, *, actor: str, include_transcript: bool = True) -> StoredCall | None:
        """One call of ``tenant`` (``None`` if it does not exist *for this tenant*). With
        ``include_transcript`` the turns' text is decrypted and the read is audited
        (``transcript.read`` by ``actor``); otherwise turns carry timelines only."""
        with self._db.lock:
            t = self._tenants.row(tenant)
            keys = self._tenants.data_keys(t)
            r = self._db.one(
                f"SELECT {CALL_COLUMNS} FROM calls c WHERE c.tenant_id = ? AND c.call_id = ?", (t.id, call_id)
            )
            if r is None:
                return None
            call = call_from_row(r, tenant, keys)
            call.turns = self.turns(t.id, keys, call_id, with_text=include_transcript)
            if include_transcript:
                self._audit.append(actor, tenant, "transcript.read", f"call:{call_id}")
            return call

    # -- recordings ----------------------------------------------------------------------

    def open_recording(
        self,
        tenant: str,
        call_id: str,
        sample_rate: int,
        *,
        channels: int = 1,
        sample_width: int = 2,
        track: str = "mixed",
        caller: str | None = None,
        policy: Policy | None = None,
        consent: bool | None = None,
        chunk_bytes: int | None = None,
    ) -> RecordingWriter:
        """Start an encrypted recording that streams out as audio is written: to a file under the
        data directory (SQLite), or to ``recording_chunks`` rows (PostgreSQL: ``location`` 'database',
        readable by every worker), inserted by the store's :class:`ChunkSpool` thread.

        Refuses (:class:`RecordingNotAllowed`) unless the policy allows it now:
        ``recording.mode`` ``on``, or ``consent`` with ``consent=True``; never with
        ``off`` or a restricted caller. The recording row (with its expiry) is written
        first, so a crash mid-call leaves a file (or rows) the retention sweep still finds.
        """
        if not re.match(r"^[A-Za-z0-9_.-]{1,32}$", track):
            raise StorageError(f"invalid recording track name {track!r}")
        with self._db.lock:
            t = self._tenants.row(tenant)
            policy = policy or self._tenants.policy_of(t)
            if not may_record(policy, consent):
                raise RecordingNotAllowed(
                    f"policy {policy.name!r} does not allow recording now (recording.mode={policy.recording.mode!r}, "
                    f"retention.recordings={policy.retention.recordings}, consent={consent})"
                )
            keys = self._tenants.data_keys(t)
            subject = self._tenants.subject_hash_of(keys, caller, policy.phone_region) if caller else None
            if self._tenants.is_restricted_hash(t.id, subject):
                raise RecordingNotAllowed("the caller has restricted processing of their data")
            now = self._db.clock()
            exp = policy_expires_at(policy, "recordings", now)
            assert exp is not None  # may_record checked retention
            rec_id = secrets.token_hex(16)
            in_db = self._db.is_postgresql
            rel = Path(RECORDINGS_DIRNAME) / t.id / f"{rec_id}.vcrec"
            path = f"database:{rec_id}" if in_db else str(rel)  # not a file: the chunks are rows
            with self._db.tx():
                try:
                    self._db.insert(
                        "recordings",
                        {
                            "id": rec_id,
                            "tenant_id": t.id,
                            "call_id": call_id,
                            "track": track,
                            "subject_hash": subject,
                            "path": path,
                            "location": "database" if in_db else "file",
                            "sample_rate": sample_rate,
                            "channels": channels,
                            "sample_width": sample_width,
                            "bytes": 0,
                            "complete": 0,
                            "created_at": now,
                            "expires_at": exp,
                        },
                    )
                except IntegrityError:
                    raise StorageError(f"call {call_id} already has a {track!r} recording") from None
            if in_db:
                return RecordingWriter(
                    sink=self._chunk_spool(),
                    recording_id=rec_id,
                    keys=keys,
                    sample_rate=sample_rate,
                    channels=channels,
                    sample_width=sample_width,
                    chunk_bytes=chunk_bytes,
                )
            (self._data_dir / RECORDINGS_DIRNAME / t.id).mkdir(parents=True, exist_ok=True, mode=0o700)
            return RecordingWriter(
                path=self._data_dir / rel,
                recording_id=rec_id,
                keys=keys,
                sample_rate=sample_rate,
                channels=channels,
                sample_width=sample_width,
                chunk_bytes=chunk_bytes,
                on_close=self._recording_closed,
            )

    def _chunk_spool(self) -> ChunkSpool:
        with self._spool_lock:
            if self._spool is None:
                self._spool = ChunkSpool(self._db)
            return self._spool

    def flush_recordings(self, timeout: float = 30.0) -> bool:
        """Wait until every database recording chunk queued so far is inserted (``False``: timed out)."""
        with self._spool_lock:
            spool = self._spool
        return spool is None or spool.flush(timeout)

    def close_recordings(self, timeout: float = 30.0) -> None:
        """Insert the database recordings' queued chunks (up to ``timeout``) and stop the spool thread."""
        with self._spool_lock:
            spool, self._spool = self._spool, None
        if spool is not None:
            spool.close(timeout)

    def _recording_closed(self, writer: RecordingWriter) -> None:
        try:
            with self._db.tx():
                self._db.execute(
                    "UPDATE recordings SET bytes = ?, complete = ? WHERE id = ?",
                    (writer.bytes_written, int(writer.complete), writer.recording_id),
                )
        except (SQLAlchemyError, StorageError) as exc:  # the row may have been erased meanwhile
            logger.warning("could not update recording {} after close: {}", writer.recording_id, exc)

    def recording_wav(self, keys: TenantKeys, row: dict[str, Any]) -> bytes | None:
        """A recording row's audio (its file, or its chunk rows) decrypted as WAV bytes (in memory);
        the caller audits the read."""
        if row.get("location") == "database":
            chunks = self._db.fetchall(
                "SELECT idx, data FROM recording_chunks WHERE recording_id = ? ORDER BY idx", (row["id"],)
            )
            got = read_recording_rows(chunks, keys, row["id"], sample_rate=int(row["sample_rate"]),
                                      channels=int(row["channels"]), sample_width=int(row["sample_width"]))  # fmt: skip
            if row["complete"] and not got.complete:  # the row says it was closed: a chunk row was deleted
                raise RecordingError(f"recording {row['id'][:8]}: the final chunk is missing")
            return got.to_wav()
        path = self._data_dir / row["path"]
        if not path.exists():
            logger.warning("recording file of {} is missing", row["id"])
            return None
        return read_recording_file(path, keys, row["id"]).to_wav()

    def read_recording(self, tenant: str, call_id: str, *, actor: str, track: str = "mixed") -> bytes | None:
        """The decrypted recording as WAV bytes (in memory), or ``None``. Audited (``recording.read``)."""
        with self._db.lock:
            t = self._tenants.row(tenant)
            row = self._db.one(
                "SELECT * FROM recordings WHERE tenant_id = ? AND call_id = ? AND track = ?", (t.id, call_id, track)
            )
            if row is None:
                return None
            wav = self.recording_wav(self._tenants.data_keys(t), row)
            self._audit.append(actor, tenant, "recording.read", f"recording:{call_id}/{track}")
            return wav

    # -- reports -------------------------------------------------------------------------

    def save_report(
        self,
        tenant: str,
        call_id: str,
        report: dict[str, Any] | None,
        *,
        status: str = "ready",
        error: str | None = None,
        policy: Policy | None = None,
        job: ReportJob | None = None,
    ) -> str | None:
        """Store a post-call report (encrypted) with ``retention.reports``; ``status`` is ``ready``
        or ``failed`` (then ``error`` says why). Writes ``report.ready`` to the outbox for ready
        reports. Returns the report id, or ``None`` when reports are not stored.

        ``job``: the claimed report job (:mod:`voicecore.storage.report_jobs`) this report finishes,
        deleted in the same transaction; when this worker no longer holds it nothing is stored and
        :class:`~voicecore.storage.report_jobs.ReportJobLost` is raised."""
        if status not in ("ready", "failed"):
            raise StorageError(f"report status must be 'ready' or 'failed', not {status!r}")
        with self._db.lock:
            t = self._tenants.row(tenant)
            policy = policy or self._tenants.policy_of(t)
            now = self._db.clock()
            exp = policy_expires_at(policy, "reports", now)
            if exp is None:
                if job is not None:
                    with self._db.tx():
                        self._report_jobs.finish_in_tx(job)
                return None
            keys = self._tenants.data_keys(t)
            call = self._db.one(
                "SELECT caller_hash, callee_hash FROM calls WHERE tenant_id = ? AND call_id = ?", (t.id, call_id)
            )
            subject = (call["caller_hash"] or call["callee_hash"]) if call else None
            report_id = secrets.token_hex(16)
            with self._db.tx():
                if job is not None:
                    self._report_jobs.finish_in_tx(job)
                self._db.insert(
                    "reports",
                    {
                        "id": report_id,
                        "tenant_id": t.id,
                        "call_id": call_id,
                        "subject_hash": subject,
                        "status": status,
                        "body_enc": keys.encrypt_json(report, field_aad("reports", t.id, report_id, "body"))
                        if report is not None
                        else None,
                        "error": error,
                        "created_at": now,
                        "expires_at": exp,
                    },
                )
                if status == "ready":
                    self._outbox.add_in_tx(
                        t, keys, "report.ready", {"call_id": call_id, "report_id": report_id, "report": report},
                        call_id=call_id, subject_hash=subject,
                    )  # fmt: skip
            return report_id

    def get_report(self, tenant: str, call_id: str, *, actor: str) -> StoredReport | None:
        """The latest report of a call (decrypted), or ``None``. Audited (``report.read``)."""
        with self._db.lock:
            t = self._tenants.row(tenant)
            r = self._db.one(
                "SELECT * FROM reports WHERE tenant_id = ? AND call_id = ? ORDER BY created_at DESC LIMIT 1",
                (t.id, call_id),
            )
            if r is None:
                return None
            report = report_from_row(r, self._tenants.data_keys(t))
            self._audit.append(actor, tenant, "report.read", f"report:{r['id']}")
            return report
