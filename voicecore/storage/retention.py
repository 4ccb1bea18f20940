"""Retention: every row, recording file and recording chunk row is deleted once its expiry (set at write time from the
tenant policy) has passed, and the database is compacted so no deleted byte remains.

``voicecore retention sweep`` runs :meth:`Retention.sweep`; ``serve`` runs it now and then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from loguru import logger

from voicecore.storage.audit import AuditLog
from voicecore.storage.database import Database, epoch, shred
from voicecore.storage.tenants import EXPORTS_DIRNAME, RECORDINGS_DIRNAME


@dataclass
class SweepResult:
    at: float
    deleted: dict[str, int] = field(default_factory=dict)
    transcripts_cleared: int = 0
    files_removed: int = 0
    wal_truncated: bool = False
    skipped: bool = False  # another worker was sweeping at that moment (PostgreSQL)

    @property
    def total(self) -> int:
        return sum(self.deleted.values()) + self.transcripts_cleared + self.files_removed


class Retention:
    """The retention sweep over every tenant's data."""

    def __init__(self, db: Database, audit: AuditLog, data_dir: Path):
        self._db = db
        self._audit = audit
        self._data_dir = data_dir

    def sweep(self, now: datetime | float | None = None, *, actor: str) -> SweepResult:
        """Delete every expired row and recording file (and orphaned recording files), clear expired
        transcript text, then checkpoint the WAL (TRUNCATE) and VACUUM so no deleted byte remains in
        the database, ``-wal`` or ``-shm``. ``now`` defaults to the clock; a naive datetime is UTC."""
        ts = epoch(now) if now is not None else self._db.clock()
        assert ts is not None
        result = SweepResult(at=ts)
        db = self._db
        with db.lock:
            with db.tx():
                if not db.try_lock("retention"):
                    result.skipped = True
                    logger.info("retention sweep skipped: another worker is sweeping")
                    return result
                expired_calls = "SELECT tenant_id, call_id FROM calls WHERE expires_at <= ?"
                of_expired = f"expires_at <= ? OR (tenant_id, call_id) IN ({expired_calls})"
                paths = [self._data_dir / r["path"] for r in db.rows(
                    f"SELECT path FROM recordings WHERE ({of_expired}) AND location = 'file'", (ts, ts))]  # fmt: skip
                chunks = f"DELETE FROM recording_chunks WHERE recording_id IN (SELECT id FROM recordings WHERE {of_expired})"
                result.deleted["recording_chunks"] = db.execute(chunks, (ts, ts))  # a database recording's audio
                for table in ("recordings", "turns", "reports", "report_jobs"):
                    result.deleted[table] = db.execute(f"DELETE FROM {table} WHERE {of_expired}", (ts, ts))
                paths += [self._data_dir / r["path"] for r in db.rows("SELECT path FROM exports WHERE expires_at <= ?", (ts,))]
                for table in ("calls", "contacts", "outbox", "exports", "call_attempts"):
                    result.deleted[table] = db.execute(f"DELETE FROM {table} WHERE expires_at <= ?", (ts,))
                db.execute(
                    "DELETE FROM webhook_deliveries WHERE expires_at <= ? OR event_id NOT IN (SELECT event_id FROM outbox)",
                    (ts,),
                )
                result.transcripts_cleared = db.execute(
                    "UPDATE turns SET text_enc = NULL, generated_enc = NULL, text_expires_at = NULL "
                    "WHERE text_expires_at IS NOT NULL AND text_expires_at <= ?",
                    (ts,),
                )
                summary = ",".join(f"{k}={v}" for k, v in result.deleted.items() if v)
                self._audit.append_in_tx(
                    actor,
                    None,
                    "retention.swept",
                    f"rows:{sum(result.deleted.values())};texts:{result.transcripts_cleared}"
                    + (f";{summary}" if summary else ""),
                )
            for p in paths:
                result.files_removed += int(shred(p))
            result.files_removed += self._remove_orphan_files()
            result.wal_truncated = db.compact()
        logger.info(
            "retention sweep: {} rows deleted, {} transcripts cleared, {} files removed",
            sum(result.deleted.values()), result.transcripts_cleared, result.files_removed,
        )  # fmt: skip
        return result

    def _remove_orphan_files(self) -> int:
        """Recording and export files no row knows (a crash between writing a file and its row)."""
        known = {str(r["path"]) for t in ("recordings", "exports") for r in self._db.rows(f"SELECT path FROM {t}")}
        # (a database recording's path names no file: its chunks are rows, deleted with it)
        removed = 0
        for name in (RECORDINGS_DIRNAME, EXPORTS_DIRNAME):
            folder = self._data_dir / name
            if not folder.exists():
                continue
            for tenant_dir in folder.iterdir():
                if not tenant_dir.is_dir():
                    continue
                for f in tenant_dir.iterdir():
                    if str(f.relative_to(self._data_dir)) not in known:
                        removed += int(shred(f))
        return removed
