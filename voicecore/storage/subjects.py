"""Data subjects (phone numbers) at a tenant: contacts, the opt-out list, restriction, export, erasure.

A number is looked up by its keyed hash (HMAC with the tenant's key), never in
clear. The opt-out list and restrictions survive erasure and retention as that
hash, so "do not call" and "do not process" keep working after every other trace
is gone. Reads of contact fields, of the opt-out list and exports are audited
with the actor their caller names; so is every change.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger

from voicecore.policy.decisions import expires_at as policy_expires_at
from voicecore.policy.models import Policy
from voicecore.policy.phone import normalize_phone
from voicecore.policy.redaction import scrub_number
from voicecore.storage.audit import AuditLog
from voicecore.storage.calls import (
    CALL_COLUMNS,
    CallRepository,
    call_from_row,
    report_from_row,
)
from voicecore.storage.crypto import TenantKeys, field_aad
from voicecore.storage.database import Database, StorageError, shred
from voicecore.storage.outbox import Outbox
from voicecore.storage.tenants import EXPORTS_DIRNAME, TenantRepository
from voicecore.views import call_view, iso, report_view


@dataclass(frozen=True)
class OptOutEntry:
    phone: str | None  # None after the subject was erased (only the keyed hash is left)
    phone_hash: str
    source: str
    created_at: float


@dataclass
class ErasureResult:
    subject_hash: str
    calls: int = 0
    turns: int = 0
    recordings: int = 0
    reports: int = 0
    report_jobs: int = 0  # reports not made yet (their jobs, with the words they are made from)
    contacts: int = 0
    outbox: int = 0
    exports: int = 0
    mentions_scrubbed: int = 0
    opted_out: bool = False
    wal_truncated: bool = False


#: An export kept for the subject is deleted this long after it was made (or with the subject's erasure).
EXPORT_TTL_DAYS = 7


@dataclass(frozen=True)
class ExportInfo:
    """A stored (encrypted) subject export: no content, the subject by the start of its keyed hash."""

    export_id: str
    subject: str  # "subject:<first 16 hex digits of the keyed hash>"
    bytes: int
    created_at: float
    expires_at: float


@dataclass
class SubjectExport:
    """Everything a tenant holds about one data subject, in memory: the ``export.json`` document
    and the recordings as WAV bytes keyed by their path in the document (``recordings/*.wav``)."""

    document: dict[str, Any]
    recordings: dict[str, bytes] = field(default_factory=dict)

    def to_zip(self) -> bytes:
        """``export.json`` and ``recordings/*.wav`` as one zip file (in memory)."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("export.json", json.dumps(self.document, indent=2, ensure_ascii=False))
            for name, wav in self.recordings.items():
                z.writestr(name, wav)
        return buffer.getvalue()

    def write(self, target: Path) -> None:
        """Write ``export.json`` and the recordings under ``target`` (a new folder), files mode 0600."""
        for rel, wav in self.recordings.items():
            (target / "recordings").mkdir(exist_ok=True, mode=0o700)
            fd = os.open(target / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(wav)
        fd = os.open(target / "export.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.document, f, indent=2, ensure_ascii=False)


def _new_folder(parent: Path, name: str) -> Path:
    """A new folder ``parent/name`` (``name-2``, ... when it exists), mode 0700."""
    parent.mkdir(parents=True, exist_ok=True)
    target, n = parent / name, 1
    while True:
        try:
            target.mkdir(mode=0o700)
            return target
        except FileExistsError:
            n += 1
            target = parent / f"{name}-{n}"


def _scrub_json(value: Any, e164: str, region: str) -> tuple[Any, int]:
    """``value`` (JSON) with every mention of ``e164`` replaced, and how many there were."""
    if isinstance(value, str):
        return scrub_number(value, e164, region)
    if isinstance(value, list):
        items = [_scrub_json(v, e164, region) for v in value]
        return [v for v, _ in items], sum(n for _, n in items)
    if isinstance(value, dict):
        pairs = {k: _scrub_json(v, e164, region) for k, v in value.items()}
        return {k: v for k, (v, _) in pairs.items()}, sum(n for _, n in pairs.values())
    return value, 0


class SubjectRepository:
    """Contacts, opt-outs, restrictions and the subject rights (export, erasure)."""

    def __init__(
        self,
        db: Database,
        tenants: TenantRepository,
        calls: CallRepository,
        outbox: Outbox,
        audit: AuditLog,
        data_dir: Path,
    ):
        self._db = db
        self._data_dir = data_dir
        self._tenants = tenants
        self._calls = calls
        self._outbox = outbox
        self._audit = audit

    def hash(self, tenant: str, phone: str) -> str:
        """The keyed hash a tenant's data about ``phone`` is indexed by (also in audit object ids)."""
        return self._tenants.subject(tenant, phone).hash

    def e164(self, tenant: str, phone: str) -> str:
        """``phone`` in E.164 form, read in the tenant policy's region."""
        return normalize_phone(phone, self._tenants.policy(tenant).phone_region)

    # -- contacts ------------------------------------------------------------------------

    def upsert_contact(
        self, tenant: str, phone: str, fields: dict[str, Any], *, policy: Policy | None = None
    ) -> str | None:
        """Store (or replace) the contact for ``phone`` with ``retention.contacts``; fields encrypted.
        Returns the contact id, or ``None`` when the policy does not store contacts."""
        with self._db.lock:
            t = self._tenants.row(tenant)
            policy = policy or self._tenants.policy_of(t)
            now = self._db.clock()
            exp = policy_expires_at(policy, "contacts", now)
            if exp is None:
                return None
            keys = self._tenants.data_keys(t)
            e164 = normalize_phone(phone, policy.phone_region)
            h = keys.keyed_hash("subject:" + e164)
            existing = self._db.one(
                "SELECT id, created_at FROM contacts WHERE tenant_id = ? AND phone_hash = ?", (t.id, h)
            )
            contact_id = existing["id"] if existing else secrets.token_hex(16)
            body = {**{k: v for k, v in fields.items() if v is not None}, "phone": e164}
            with self._db.tx():
                if existing:  # updated in place: its segments stay
                    self._db.execute(
                        "UPDATE contacts SET fields_enc = ?, updated_at = ?, expires_at = ? WHERE id = ?",
                        (keys.encrypt_json(body, field_aad("contacts", t.id, contact_id, "fields")), now, exp,
                         contact_id),
                    )  # fmt: skip
                    return contact_id
                self._db.insert(
                    "contacts",
                    {
                        "id": contact_id,
                        "tenant_id": t.id,
                        "phone_hash": h,
                        "fields_enc": keys.encrypt_json(body, field_aad("contacts", t.id, contact_id, "fields")),
                        "created_at": existing["created_at"] if existing else now,
                        "updated_at": now,
                        "expires_at": exp,
                    },
                )
            return contact_id

    def contact(self, tenant: str, phone: str, *, actor: str) -> dict[str, Any] | None:
        """The contact fields for ``phone`` (to pass through the policy's context builder), or
        ``None``. Audited (``contact.read``) when there is one."""
        with self._db.lock:
            t = self._tenants.row(tenant)
            keys = self._tenants.data_keys(t)
            e164 = normalize_phone(phone, self._tenants.policy_of(t).phone_region)
            h = keys.keyed_hash("subject:" + e164)
            r = self._db.one("SELECT id, fields_enc FROM contacts WHERE tenant_id = ? AND phone_hash = ?", (t.id, h))
            if r is None:
                return None
            fields = dict(keys.decrypt_json(r["fields_enc"], field_aad("contacts", t.id, r["id"], "fields")))
            self._audit.append(actor, tenant, "contact.read", f"subject:{h[:16]}")
            return fields

    def delete_contact(self, tenant: str, phone: str, *, actor: str) -> bool:
        with self._db.lock:
            s = self._tenants.subject(tenant, phone)
            with self._db.tx():
                n = self._db.execute("DELETE FROM contacts WHERE tenant_id = ? AND phone_hash = ?", (s.tenant.id, s.hash))
                if n:
                    self._audit.append_in_tx(actor, tenant, "contact.deleted", s.audit_id)
            return bool(n)

    # -- opt-outs ------------------------------------------------------------------------

    def add_optout(
        self, tenant: str, phone: str, *, source: str = "call", call_id: str | None = None, actor: str
    ) -> bool:
        """Put ``phone`` on the tenant's do-not-call list, flag the call (if stored) and write an
        ``optout.requested`` outbox event, all in one transaction. Returns whether it is new."""
        with self._db.lock:
            s = self._tenants.subject(tenant, phone)
            tid = s.tenant.id
            with self._db.tx():
                if self._db.exists("SELECT 1 AS x FROM opt_outs WHERE tenant_id = ? AND phone_hash = ?", (tid, s.hash)):
                    return False
                self._db.insert(
                    "opt_outs",
                    {
                        "tenant_id": tid,
                        "phone_hash": s.hash,
                        "phone_enc": s.keys.encrypt_text(s.e164, field_aad("opt_outs", tid, s.hash, "phone")),
                        "source": source,
                        "call_id": call_id,
                        "created_at": self._db.clock(),
                    },
                )
                if call_id is not None:
                    self._db.execute("UPDATE calls SET optout = 1 WHERE tenant_id = ? AND call_id = ?", (tid, call_id))
                self._outbox.add_in_tx(
                    s.tenant,
                    s.keys,
                    "optout.requested",
                    {"phone": s.e164, "call_id": call_id, "source": source, "requested_at": iso(self._db.clock())},
                    call_id=call_id,
                    subject_hash=s.hash,
                )
                self._audit.append_in_tx(actor, tenant, "optout.added", s.audit_id)
            logger.info("opt-out recorded for tenant {} (source {})", tenant, source)
            return True

    def _remove_optout_hash(self, tenant: str, tenant_id: str, h: str, actor: str) -> bool:
        with self._db.tx():
            n = self._db.execute("DELETE FROM opt_outs WHERE tenant_id = ? AND phone_hash = ?", (tenant_id, h))
            if n:
                self._audit.append_in_tx(actor, tenant, "optout.removed", f"subject:{h[:16]}")
        return bool(n)

    def remove_optout(self, tenant: str, phone: str, *, actor: str) -> bool:
        with self._db.lock:
            s = self._tenants.subject(tenant, phone)
            return self._remove_optout_hash(tenant, s.tenant.id, s.hash, actor)

    def remove_optout_hash(self, tenant: str, phone_hash: str, *, actor: str) -> bool:
        """Take the opt-out with keyed hash ``phone_hash`` (as :meth:`optouts` shows it) off the list."""
        with self._db.lock:
            return self._remove_optout_hash(tenant, self._tenants.row(tenant).id, phone_hash, actor)

    def is_opted_out(self, tenant: str, phone: str) -> bool:
        """Whether outbound calls to ``phone`` must be refused."""
        with self._db.lock:
            s = self._tenants.subject(tenant, phone)
            return self._db.exists(
                "SELECT 1 AS x FROM opt_outs WHERE tenant_id = ? AND phone_hash = ?", (s.tenant.id, s.hash)
            )

    def optouts(self, tenant: str, *, actor: str) -> list[OptOutEntry]:
        """The tenant's do-not-call list, numbers decrypted. Audited (``optouts.read``)."""
        with self._db.lock:
            t = self._tenants.row(tenant)
            keys = self._tenants.data_keys(t)
            entries = [
                OptOutEntry(
                    keys.decrypt_text(r["phone_enc"], field_aad("opt_outs", t.id, r["phone_hash"], "phone")),
                    r["phone_hash"],
                    r["source"],
                    r["created_at"],
                )
                for r in self._db.rows(
                    "SELECT phone_hash, phone_enc, source, created_at FROM opt_outs WHERE tenant_id = ? "
                    "ORDER BY created_at",
                    (t.id,),
                )
            ]
            self._audit.append(actor, tenant, "optouts.read", "optouts")
            return entries

    # -- restriction ---------------------------------------------------------------------

    def restrict(self, tenant: str, phone: str, *, actor: str) -> bool:
        """Restrict processing for ``phone``: calls from it are not stored, recordings refused,
        outbound calls must be refused (check :meth:`is_restricted`). Nothing is deleted."""
        with self._db.lock:
            s = self._tenants.subject(tenant, phone)
            with self._db.tx():
                if self._tenants.is_restricted_hash(s.tenant.id, s.hash):
                    return False
                self._db.insert(
                    "restrictions", {"tenant_id": s.tenant.id, "phone_hash": s.hash, "created_at": self._db.clock()}
                )
                self._audit.append_in_tx(actor, tenant, "subject.restricted", s.audit_id)
            return True

    def unrestrict(self, tenant: str, phone: str, *, actor: str) -> bool:
        with self._db.lock:
            s = self._tenants.subject(tenant, phone)
            with self._db.tx():
                n = self._db.execute(
                    "DELETE FROM restrictions WHERE tenant_id = ? AND phone_hash = ?", (s.tenant.id, s.hash)
                )
                if n:
                    self._audit.append_in_tx(actor, tenant, "subject.unrestricted", s.audit_id)
            return bool(n)

    def is_restricted(self, tenant: str, phone: str) -> bool:
        with self._db.lock:
            s = self._tenants.subject(tenant, phone)
            return self._tenants.is_restricted_hash(s.tenant.id, s.hash)

    # -- export --------------------------------------------------------------------------

    def _collect(self, tenant: str, phone: str) -> tuple[SubjectExport, str]:
        """Inside the lock: the export of one subject in memory, and its keyed hash."""
        s = self._tenants.subject(tenant, phone)
        tid, h, keys = s.tenant.id, s.hash, s.keys
        calls_out: list[dict[str, Any]] = []
        call_rows = self._db.rows(
            f"SELECT {CALL_COLUMNS} FROM calls c WHERE c.tenant_id = ? AND (c.caller_hash = ? OR "
            "c.callee_hash = ?) ORDER BY c.started_at",
            (tid, h, h),
        )
        for r in call_rows:
            call = call_from_row(r, tenant, keys)
            call.turns = self._calls.turns(tid, keys, call.call_id, with_text=True)
            calls_out.append({**call_view(call), "recordings": []})
        subject_calls = "SELECT call_id FROM calls WHERE tenant_id = ? AND (caller_hash = ? OR callee_hash = ?)"
        reports = [
            report_view(report_from_row(r, keys))
            for r in self._db.rows(
                f"SELECT * FROM reports WHERE tenant_id = ? AND (subject_hash = ? OR call_id IN ({subject_calls})) "
                "ORDER BY created_at",
                (tid, h, tid, h, h),
            )
        ]
        recordings: list[dict[str, Any]] = []
        files: dict[str, bytes] = {}
        for r in self._db.rows(
            f"SELECT * FROM recordings WHERE tenant_id = ? AND (subject_hash = ? OR call_id IN ({subject_calls})) "
            "ORDER BY created_at",
            (tid, h, tid, h, h),
        ):
            wav = self._calls.recording_wav(keys, r)
            if wav is None:
                continue
            entry = {"call_id": r["call_id"], "track": r["track"], "file": f"recordings/{r['call_id']}-{r['track']}.wav"}
            files[entry["file"]] = wav
            recordings.append(entry)
            for d in calls_out:
                if d["call_id"] == r["call_id"]:
                    d["recordings"].append(entry["file"])
        contacts = [
            keys.decrypt_json(r["fields_enc"], field_aad("contacts", tid, r["id"], "fields"))
            for r in self._db.rows(
                "SELECT id, fields_enc FROM contacts WHERE tenant_id = ? AND phone_hash = ?", (tid, h)
            )
        ]
        document = {
            "format": "voicecore-subject-export/1",
            "tenant": tenant,
            "subject": s.e164,
            "exported_at": iso(self._db.clock()),
            "opted_out": self._db.exists("SELECT 1 AS x FROM opt_outs WHERE tenant_id = ? AND phone_hash = ?", (tid, h)),
            "restricted": self._tenants.is_restricted_hash(tid, h),
            "calls": calls_out,
            "reports": reports,
            "contacts": contacts,
            "recordings": recordings,
            "call_ids": [r["call_id"] for r in call_rows],
        }
        return SubjectExport(document, files), h

    def export_data(self, tenant: str, phone: str, *, actor: str) -> SubjectExport:
        """Everything the tenant holds about ``phone``, in memory (what :meth:`export` writes to
        disk; the HTTP API sends it). Audited (``subject.exported``)."""
        with self._db.lock:
            data, h = self._collect(tenant, phone)
            self._audit.append(actor, tenant, "subject.exported", f"subject:{h[:16]}")
        logger.info("subject export for tenant {}: {} calls, {} recordings", tenant, len(data.document["calls"]),
                    len(data.recordings))  # fmt: skip
        return data

    def export(self, tenant: str, phone: str, out_dir: str | Path, *, actor: str) -> Path:
        """Write everything the tenant holds about ``phone`` to a new directory under ``out_dir``:
        ``export.json`` (calls with turns, reports, contacts, opt-out and restriction status) and
        ``recordings/*.wav``. Returns the directory (mode 0700). Audited (``subject.exported``).
        A plaintext copy outside voicecore: neither retention nor erasure reaches it
        (:meth:`store_export` keeps one that they do)."""
        data = self.export_data(tenant, phone, actor=actor)
        h = self.hash(tenant, phone)
        stamp = datetime.fromtimestamp(self._db.clock(), UTC).strftime("%Y%m%dT%H%M%SZ")
        target = _new_folder(Path(out_dir), f"{tenant}-{h[:12]}-{stamp}")
        data.write(target)
        return target

    # -- stored exports ------------------------------------------------------------------

    def store_export(self, tenant: str, phone: str, *, actor: str) -> ExportInfo:
        """Export everything the tenant holds about ``phone`` into the store: a zip encrypted with
        the tenant's key, kept :data:`EXPORT_TTL_DAYS` days (the retention sweep deletes it) and
        deleted with the subject's erasure or the tenant. Audited (``subject.exported``)."""
        data = self.export_data(tenant, phone, actor=actor)
        with self._db.lock:
            s = self._tenants.subject(tenant, phone)
            now = self._db.clock()
            export_id = "ex_" + secrets.token_hex(10)
            rel = Path(EXPORTS_DIRNAME) / s.tenant.id / f"{export_id}.vcexp"
            blob = s.keys.encrypt(data.to_zip(), field_aad("exports", s.tenant.id, export_id, "zip").encode())
            (self._data_dir / rel).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self._data_dir / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            info = ExportInfo(export_id, s.audit_id, len(blob), now, now + EXPORT_TTL_DAYS * 86400)
            with self._db.tx():
                self._db.insert(
                    "exports",
                    {"id": export_id, "tenant_id": s.tenant.id, "subject_hash": s.hash, "path": str(rel),
                     "bytes": info.bytes, "created_at": now, "expires_at": info.expires_at},
                )  # fmt: skip
            return info

    def exports(self, tenant: str) -> list[ExportInfo]:
        """The tenant's stored exports, newest first (no content)."""
        t = self._tenants.row(tenant)
        return [
            ExportInfo(r["id"], f"subject:{r['subject_hash'][:16]}", r["bytes"], r["created_at"], r["expires_at"])
            for r in self._db.rows(
                "SELECT id, subject_hash, bytes, created_at, expires_at FROM exports WHERE tenant_id = ? "
                "ORDER BY created_at DESC",
                (t.id,),
            )
        ]

    def read_export(self, tenant: str, export_id: str, *, actor: str) -> bytes:
        """A stored export's zip, decrypted (in memory). Audited (``export.read``)."""
        with self._db.lock:
            t = self._tenants.row(tenant)
            r = self._db.one("SELECT id, path FROM exports WHERE tenant_id = ? AND id = ?", (t.id, export_id))
            if r is None:
                raise StorageError(f"tenant {tenant!r} has no export {export_id!r} (expired, erased or never made)")
            blob = (self._data_dir / r["path"]).read_bytes()
            data = self._tenants.data_keys(t).decrypt(blob, field_aad("exports", t.id, export_id, "zip").encode())
            self._audit.append(actor, t, "export.read", f"export:{export_id}")
            return data

    def write_export(self, tenant: str, export_id: str, out_dir: str | Path, *, actor: str) -> Path:
        """A stored export unpacked under ``out_dir`` (a new folder): a plaintext copy that
        retention and erasure no longer reach. Audited (``export.read``)."""
        data = self.read_export(tenant, export_id, actor=actor)
        target = _new_folder(Path(out_dir), f"{tenant}-{export_id}")
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for name in z.namelist():
                path = (target / name).resolve()
                if target.resolve() not in path.parents:
                    raise StorageError(f"export {export_id}: unexpected member {name!r}")
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(z.read(name))
        return target

    # -- erasure -------------------------------------------------------------------------

    def erase(self, tenant: str, phone: str, *, actor: str) -> ErasureResult:
        """Erase everything the tenant holds about ``phone``: its calls, turns, recordings (files
        shredded, chunk rows deleted), reports (and report jobs not done yet), contact, stored exports, outbox events, pending
        call tokens, and mentions of the number in other calls' transcripts, reports, report jobs, contacts and outbox
        payloads (replaced by "[erased]"). Only the keyed hash survives
        (opt-out and restriction keep working). Then the database is compacted so no bytes remain.
        Other tenants are untouched. Audited (``subject.erased``); ``subject.erased`` outbox event."""
        with self._db.lock:
            s = self._tenants.subject(tenant, phone)
            tid, h = s.tenant.id, s.hash
            res = ErasureResult(subject_hash=h)
            subject_calls = "SELECT call_id FROM calls WHERE tenant_id = ? AND (caller_hash = ? OR callee_hash = ?)"
            sc = (tid, h, h)
            of_subject = f"tenant_id = ? AND (subject_hash = ? OR call_id IN ({subject_calls}))"
            with self._db.tx():
                paths = [
                    self._data_dir / r["path"]
                    for r in self._db.rows(f"SELECT path FROM recordings WHERE {of_subject} AND location = 'file'",
                                           (tid, h, *sc))  # fmt: skip
                ]
                self._db.execute(  # a database recording's chunks (the foreign key cascades too)
                    f"DELETE FROM recording_chunks WHERE recording_id IN (SELECT id FROM recordings WHERE {of_subject})",
                    (tid, h, *sc),
                )
                res.recordings = self._db.execute(f"DELETE FROM recordings WHERE {of_subject}", (tid, h, *sc))
                res.turns = self._db.execute(
                    f"DELETE FROM turns WHERE tenant_id = ? AND call_id IN ({subject_calls})", (tid, *sc)
                )
                res.reports = self._db.execute(f"DELETE FROM reports WHERE {of_subject}", (tid, h, *sc))
                # reports not made yet: their jobs hold the subject's words
                res.report_jobs = self._db.execute(f"DELETE FROM report_jobs WHERE {of_subject}", (tid, h, *sc))
                res.outbox = self._db.execute(f"DELETE FROM outbox WHERE {of_subject}", (tid, h, *sc))
                self._db.execute(
                    "DELETE FROM webhook_deliveries WHERE tenant_id = ? AND event_id NOT IN "
                    "(SELECT event_id FROM outbox WHERE tenant_id = ?)",
                    (tid, tid),
                )
                self._db.execute(
                    f"UPDATE opt_outs SET call_id = NULL WHERE tenant_id = ? AND call_id IN ({subject_calls})",
                    (tid, *sc),
                )
                res.calls = self._db.execute(
                    "DELETE FROM calls WHERE tenant_id = ? AND (caller_hash = ? OR callee_hash = ?)", sc
                )
                # the subject's place in campaigns and its dial attempts (keyed hashes, times, outcomes)
                self._db.execute("DELETE FROM campaign_contacts WHERE tenant_id = ? AND phone_hash = ?", (tid, h))
                self._db.execute("DELETE FROM call_attempts WHERE tenant_id = ? AND phone_hash = ?", (tid, h))
                res.contacts = self._db.execute("DELETE FROM contacts WHERE tenant_id = ? AND phone_hash = ?", (tid, h))
                # a call token minted for the subject's call (its numbers, encrypted, for a few minutes)
                self._db.execute("DELETE FROM call_tokens WHERE tenant_id = ? AND (caller_hash = ? OR callee_hash = ?)",
                                 (tid, h, h))  # fmt: skip
                paths += [
                    self._data_dir / r["path"]
                    for r in self._db.rows("SELECT path FROM exports WHERE tenant_id = ? AND subject_hash = ?", (tid, h))
                ]
                res.exports = self._db.execute("DELETE FROM exports WHERE tenant_id = ? AND subject_hash = ?", (tid, h))
                res.opted_out = (
                    self._db.execute(
                        "UPDATE opt_outs SET phone_enc = NULL WHERE tenant_id = ? AND phone_hash = ?", (tid, h)
                    )
                    > 0
                )
                res.mentions_scrubbed = self._scrub_mentions(tid, s.keys, s.e164, s.policy.phone_region)
                self._outbox.add_in_tx(
                    s.tenant, s.keys, "subject.erased", {"subject_hash": h, "erased_at": iso(self._db.clock())}
                )
                self._audit.append_in_tx(actor, tenant, "subject.erased", s.audit_id)
            for p in paths:
                shred(p)
            res.wal_truncated = self._db.compact(full=True)
        logger.info(
            "subject erased for tenant {}: {} calls, {} turns, {} recordings, {} reports, {} contacts, {} mentions",
            tenant, res.calls, res.turns, res.recordings, res.reports, res.contacts, res.mentions_scrubbed,
        )  # fmt: skip
        return res

    def _scrub_mentions(self, tid: str, keys: TenantKeys, e164: str, region: str) -> int:
        """Inside a transaction: replace mentions of ``e164`` in the tenant's remaining data."""
        count = 0
        for tr in self._db.rows(
            "SELECT id, call_id, idx, text_enc, generated_enc FROM turns WHERE tenant_id = ? "
            "AND (text_enc IS NOT NULL OR generated_enc IS NOT NULL)",
            (tid,),
        ):
            row_key = f"{tr['call_id']}/{tr['idx']}"
            for column, enc in (("text", tr["text_enc"]), ("generated", tr["generated_enc"])):
                text = keys.decrypt_text(enc, field_aad("turns", tid, row_key, column))
                if text is None:
                    continue
                new, n = scrub_number(text, e164, region)
                if n:
                    count += n
                    blob = keys.encrypt_text(new, field_aad("turns", tid, row_key, column))
                    self._db.execute(f"UPDATE turns SET {column}_enc = ? WHERE id = ?", (blob, tr["id"]))
        # Events waiting for (or kept after) delivery: a payload that names the number no longer does.
        for r in self._db.rows("SELECT id, event_id, payload_enc FROM outbox WHERE tenant_id = ?", (tid,)):
            aad = field_aad("outbox", tid, r["event_id"], "payload")
            payload, n = _scrub_json(keys.decrypt_json(r["payload_enc"], aad), e164, region)
            if n:
                count += n
                self._db.execute("UPDATE outbox SET payload_enc = ? WHERE id = ?", (keys.encrypt_json(payload, aad), r["id"]))
        for table, column in (("reports", "body"), ("contacts", "fields"), ("report_jobs", "input")):
            for r in self._db.rows(
                f"SELECT id, {column}_enc FROM {table} WHERE tenant_id = ? AND {column}_enc IS NOT NULL", (tid,)
            ):
                aad = field_aad(table, tid, r["id"], column)
                body, n = _scrub_json(keys.decrypt_json(r[f"{column}_enc"], aad), e164, region)
                if n:
                    count += n
                    self._db.execute(
                        f"UPDATE {table} SET {column}_enc = ? WHERE id = ?", (keys.encrypt_json(body, aad), r["id"])
                    )
        return count
