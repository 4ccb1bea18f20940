"""A tenant's contacts: imported from contact files, listed, shown, exported, deleted.

Contacts are data subjects like callers: keyed by the keyed hash of their E.164 number
(``phone_hash``), every field encrypted with the tenant key (``fields_enc``: one flat mapping,
the form the policy's contact allow-list reads), each with the ``retention.contacts`` expiry;
they appear in the subject export and go with the subject's erasure. Segments
(``contact_segments``) are labels the tenant chose, in clear.

:meth:`ContactRepository.import_file` reads a file with
:func:`voicecore.outbound.contacts_csv.parse_contacts` and stores it in one transaction: a crash
half-way stores nothing, and running the import again is harmless (a number already there is
merged, not duplicated). Every read of contact fields is audited.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from voicecore.outbound.contacts_csv import (
    FIELDS,
    ContactFile,
    RejectedLine,
    parse_contacts,
)
from voicecore.policy import Policy
from voicecore.policy.decisions import expires_at as policy_expires_at
from voicecore.policy.phone import normalize_phone
from voicecore.storage.audit import AuditLog
from voicecore.storage.crypto import field_aad
from voicecore.storage.database import Database, StorageError
from voicecore.storage.tenants import Tenant, TenantRepository

SEGMENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ContactsNotKept(StorageError):
    """The tenant's policy keeps no contacts (``retention.contacts: 0``)."""


@dataclass
class ImportResult:
    """What an import did: contacts created and updated, lines merged or rejected (with why)."""

    created: int = 0
    updated: int = 0
    merged_lines: int = 0
    data_lines: int = 0
    rejected: list[RejectedLine] = field(default_factory=list)
    segment: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def stored(self) -> int:
        return self.created + self.updated

    def to_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "merged_lines": self.merged_lines,
            "data_lines": self.data_lines,
            "rejected": [{"line": r.line, "reason": r.reason} for r in self.rejected],
            "segment": self.segment,
            "columns": self.columns,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class Contact:
    id: str
    phone: str
    fields: dict[str, str]  # everything but the phone: known fields and the file's other columns
    segments: tuple[str, ...]
    created_at: float
    updated_at: float
    expires_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "phone": self.phone,
            "fields": dict(self.fields),
            "segments": list(self.segments),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "expires_at": self.expires_at,
        }


def check_segment(segment: str | None) -> str | None:
    if segment is not None and not re.match(SEGMENT_PATTERN, segment):
        raise StorageError(
            f"segment name {segment!r}: letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64"
        )
    return segment


class ContactRepository:
    """Contacts of every tenant (see the module)."""

    def __init__(self, db: Database, tenants: TenantRepository, audit: AuditLog):
        self._db = db
        self._tenants = tenants
        self._audit = audit

    def _policy_expiry(self, t: Tenant, policy: Policy, now: float) -> float:
        exp = policy_expires_at(policy, "contacts", now)
        if exp is None:
            raise ContactsNotKept(
                f"the policy {policy.name!r} of tenant {t.name!r} keeps no contacts (retention.contacts is 0)"
            )
        return exp

    def import_file(self, tenant: str, data: bytes, *, mapping: dict[str, str] | None = None,
                    segment: str | None = None, actor: str) -> ImportResult:  # fmt: skip
        """Read a contact file and store its contacts (see the module): a number already stored
        is updated (non-empty values of the file win), new ones are created, each line the file
        got wrong is in ``rejected`` with its number and why. With ``segment`` every contact of
        the file is put in that segment. Raises :class:`ContactsNotKept` when the policy keeps
        no contacts and :class:`~voicecore.outbound.contacts_csv.ContactFileError` when the file
        as a whole is unusable (nothing is stored then)."""
        t0 = time.monotonic()
        check_segment(segment)
        with self._db.lock:
            t = self._tenants.row(tenant)
            policy = self._tenants.policy_of(t)
            now = self._db.clock()
            exp = self._policy_expiry(t, policy, now)
            parsed: ContactFile = parse_contacts(data, region=policy.phone_region, mapping=mapping)
            result = ImportResult(merged_lines=parsed.merged_lines, data_lines=parsed.data_lines,
                                  rejected=list(parsed.rejected), segment=segment, columns=parsed.columns)  # fmt: skip
            keys = self._tenants.data_keys(t)
            restricted = {r["phone_hash"] for r in self._db.rows(
                "SELECT phone_hash FROM restrictions WHERE tenant_id = ?", (t.id,))}  # fmt: skip
            existing = {r["phone_hash"]: r for r in self._db.rows(
                "SELECT id, phone_hash, fields_enc FROM contacts WHERE tenant_id = ?", (t.id,))}  # fmt: skip
            new_rows: list[dict[str, Any]] = []
            updates: list[tuple[bytes, float, float, str]] = []
            segment_rows: list[dict[str, Any]] = []
            for row in parsed.contacts:
                h = keys.keyed_hash("subject:" + row.phone)
                if h in restricted:
                    result.rejected.append(RejectedLine(row.lines[0], "this person has restricted the processing "
                                                                      "of their data: not stored"))  # fmt: skip
                    continue
                before = existing.get(h)
                if before is None:
                    contact_id = secrets.token_hex(16)
                    body = row.to_fields()
                    new_rows.append({
                        "id": contact_id, "tenant_id": t.id, "phone_hash": h,
                        "fields_enc": keys.encrypt_json(body, field_aad("contacts", t.id, contact_id, "fields")),
                        "created_at": now, "updated_at": now, "expires_at": exp,
                    })  # fmt: skip
                    existing[h] = {"id": contact_id, "phone_hash": h, "fields_enc": None}
                    result.created += 1
                else:
                    contact_id = before["id"]
                    old = dict(keys.decrypt_json(before["fields_enc"], field_aad("contacts", t.id, contact_id, "fields")))
                    body = {**old, **row.to_fields()}
                    updates.append((keys.encrypt_json(body, field_aad("contacts", t.id, contact_id, "fields")), now, exp,
                                    contact_id))  # fmt: skip
                    result.updated += 1
                if segment:
                    segment_rows.append({"tenant_id": t.id, "contact_id": contact_id, "segment": segment})
            result.rejected.sort(key=lambda r: r.line)
            with self._db.tx():
                self._db.insert_many("contacts", new_rows)
                for params in updates:
                    self._db.execute("UPDATE contacts SET fields_enc = ?, updated_at = ?, expires_at = ? WHERE id = ?",
                                     params)  # fmt: skip
                if segment_rows:
                    self._insert_segments(t.id, segment, segment_rows)
                self._audit.append_in_tx(actor, tenant, "contacts.imported",
                                         f"contacts:{result.created}+{result.updated}" + (f" segment:{segment}" if segment else ""))  # fmt: skip
        result.seconds = time.monotonic() - t0
        return result

    def _insert_segments(self, tenant_id: str, segment: str, rows: list[dict[str, Any]]) -> None:
        have = {r["contact_id"] for r in self._db.rows(
            "SELECT contact_id FROM contact_segments WHERE tenant_id = ? AND segment = ?", (tenant_id, segment))}  # fmt: skip
        self._db.insert_many("contact_segments", [r for r in rows if r["contact_id"] not in have])

    # -- reading -------------------------------------------------------------------------

    def _contacts(self, t: Tenant, where: str = "", params: tuple[Any, ...] = (), *, segment: str | None = None,
                  limit: int | None = None, offset: int = 0) -> list[Contact]:  # fmt: skip
        keys = self._tenants.data_keys(t)
        join = " JOIN contact_segments s ON s.contact_id = c.id AND s.segment = ?" if segment is not None else ""
        sql = f"SELECT c.* FROM contacts c{join} WHERE c.tenant_id = ?{where} ORDER BY c.created_at, c.id"
        if limit is not None:
            sql += f" LIMIT {int(limit)} OFFSET {int(offset)}"
        rows = self._db.rows(sql, ((segment,) if segment is not None else ()) + (t.id, *params))
        segments: dict[str, list[str]] = {}
        for r in self._db.rows("SELECT contact_id, segment FROM contact_segments WHERE tenant_id = ? ORDER BY segment",
                               (t.id,)):  # fmt: skip
            segments.setdefault(r["contact_id"], []).append(r["segment"])
        out = []
        for r in rows:
            body = dict(keys.decrypt_json(r["fields_enc"], field_aad("contacts", t.id, r["id"], "fields")))
            phone = str(body.pop("phone", ""))
            out.append(Contact(r["id"], phone, {k: str(v) for k, v in body.items()}, tuple(segments.get(r["id"], ())),
                               r["created_at"], r["updated_at"], r["expires_at"]))  # fmt: skip
        return out

    def list(self, tenant: str, *, segment: str | None = None, limit: int = 100, offset: int = 0,
             actor: str) -> list[Contact]:  # fmt: skip
        """The tenant's contacts (of one segment), oldest first. Audited (``contacts.read``)."""
        check_segment(segment)
        with self._db.lock:
            t = self._tenants.row(tenant)
            got = self._contacts(t, segment=segment, limit=limit, offset=offset)
            self._audit.append(actor, tenant, "contacts.read", f"contacts:{len(got)}" + (f" segment:{segment}" if segment else ""))
            return got

    def get(self, tenant: str, phone: str, *, actor: str) -> Contact | None:
        """The contact for ``phone`` or ``None``. Audited (``contact.read``), found or not: a lookup
        tells whether the number is a contact."""
        with self._db.lock:
            t = self._tenants.row(tenant)
            keys = self._tenants.data_keys(t)
            h = keys.keyed_hash("subject:" + normalize_phone(phone, self._tenants.policy_of(t).phone_region))
            got = self._contacts(t, " AND c.phone_hash = ?", (h,))
            self._audit.append(actor, tenant, "contact.read", f"subject:{h[:16]}")
            return got[0] if got else None

    def delete(self, tenant: str, phone: str, *, actor: str) -> bool:
        """Delete the contact for ``phone`` (its segments with it). Audited."""
        with self._db.lock:
            t = self._tenants.row(tenant)
            keys = self._tenants.data_keys(t)
            h = keys.keyed_hash("subject:" + normalize_phone(phone, self._tenants.policy_of(t).phone_region))
            with self._db.tx():
                ids = [r["id"] for r in self._db.rows("SELECT id FROM contacts WHERE tenant_id = ? AND phone_hash = ?",
                                                      (t.id, h))]  # fmt: skip
                for cid in ids:
                    self._db.execute("DELETE FROM contact_segments WHERE contact_id = ?", (cid,))
                    self._db.execute("DELETE FROM contacts WHERE id = ?", (cid,))
                if ids:
                    self._audit.append_in_tx(actor, tenant, "contact.deleted", f"subject:{h[:16]}")
            return bool(ids)

    def segments(self, tenant: str) -> dict[str, int]:
        """Segment name → number of contacts in it."""
        t = self._tenants.row(tenant)
        return {r["segment"]: int(r["n"]) for r in self._db.rows(
            "SELECT segment, COUNT(*) AS n FROM contact_segments WHERE tenant_id = ? GROUP BY segment ORDER BY segment",
            (t.id,))}  # fmt: skip

    def export_csv(self, tenant: str, *, segment: str | None = None, actor: str) -> str:
        """The contacts (of one segment) as CSV: phone, the known fields, then every other column.
        Audited (``contacts.exported``)."""
        contacts = self.list(tenant, segment=segment, limit=10_000_000, actor=actor)
        extra = sorted({k for c in contacts for k in c.fields if k not in FIELDS})
        header = ["phone", *[f for f in FIELDS if f != "phone"], *extra, "segments"]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        for c in contacts:
            w.writerow([c.phone, *[c.fields.get(f, "") for f in header[1:-1]], " ".join(c.segments)])
        self._audit.append(actor, tenant, "contacts.exported", f"contacts:{len(contacts)}")
        return buf.getvalue()
