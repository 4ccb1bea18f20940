"""A tenant's accounts at the telephony providers: signature secrets and stream secrets.

- **Provider credentials** (:data:`voicecore.telephony.signatures.CREDENTIAL_FIELDS`):
  what checks the provider's signatures on its answer-URL requests — Twilio's auth
  token, Telnyx's public key, Vonage's signature secret, Plivo's auth token — stored
  encrypted with the tenant key, never shown again. Account ids (Twilio account SID,
  Vonage application id, Plivo auth id) are stored in clear: they are not secret, and
  the Vonage application id finds the tenant of a WebSocket signed only with
  Vonage's JWT.
- **Stream secrets** (``vcs<key id><secret>``, letters and digits only): for providers
  that connect with static credentials instead of fetching an answer URL — Telnyx Call
  Control's ``stream_auth_token``, Exotel's ``wss://user:secret@…`` applet URL, Asterisk's
  ``websocket_client.conf`` password. A stream secret opens media streams of *that*
  provider for *that* tenant and nothing else (it is not an API key); it is shown once
  and stored as a scrypt hash.

:meth:`ProviderAccounts.authenticate_stream_secret` runs scrypt: call it from a thread.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from voicecore.storage.audit import AuditLog
from voicecore.storage.crypto import field_aad, hash_secret, secret_matches
from voicecore.storage.database import Database, StorageError
from voicecore.storage.tenants import TenantRepository
from voicecore.telephony.signatures import CREDENTIAL_FIELDS, check_credentials
from voicecore.telephony.snippets import (
    STREAM_SECRET_PROVIDERS,
    SnippetContext,
    check_public_url,
    provider_snippet,
)

__all__ = ["ProviderAccounts", "ProviderAccountInfo", "STREAM_SECRET_PATTERN"]

#: ``vcs`` + 12 hex key id + 48 hex secret: letters and digits only, so it fits everywhere
#: a provider carries it (Plivo-style header values, URL user-info, Asterisk config).
STREAM_SECRET_PATTERN = re.compile(r"^vcs([0-9a-f]{12})([0-9a-f]{48})$")
#: Provider field holding the clear account id, per provider.
_ACCOUNT_FIELD = {"twilio": "account_sid", "vonage": "application_id", "plivo": "auth_id"}


@dataclass(frozen=True)
class ProviderAccountInfo:
    """What a tenant has set for one provider (names of the secrets, never their values)."""

    tenant: str
    provider: str
    secrets_set: tuple[str, ...]
    account_id: str | None
    has_stream_secret: bool
    created_at: float
    updated_at: float

    @property
    def missing(self) -> tuple[str, ...]:
        """Required credentials not set yet."""
        return tuple(f.name for f in CREDENTIAL_FIELDS[self.provider] if f.required and f.name not in self.secrets_set
                     and f.name != _ACCOUNT_FIELD.get(self.provider))  # fmt: skip


def _check_provider(provider: str) -> None:
    if provider not in CREDENTIAL_FIELDS:
        raise StorageError(f"unknown provider {provider!r}; known: {', '.join(CREDENTIAL_FIELDS)}")


class ProviderAccounts:
    """Per-tenant provider credentials and stream secrets."""

    def __init__(self, db: Database, tenants: TenantRepository, audit: AuditLog):
        self._db = db
        self._tenants = tenants
        self._audit = audit

    @staticmethod
    def _aad(tenant_id: str, provider: str) -> str:
        return field_aad("provider_credentials", tenant_id, provider, "secrets")

    def _row(self, tenant_id: str, provider: str) -> dict[str, Any] | None:
        return self._db.one(
            "SELECT * FROM provider_credentials WHERE tenant_id = ? AND provider = ?", (tenant_id, provider)
        )

    def _info(self, tenant: str, row: dict[str, Any]) -> ProviderAccountInfo:
        keys = self._tenants.data_keys(row["tenant_id"])
        stored = keys.decrypt_json(row["secrets_enc"], self._aad(row["tenant_id"], row["provider"]))
        return ProviderAccountInfo(
            tenant=tenant,
            provider=row["provider"],
            secrets_set=tuple(sorted(stored)),
            account_id=row["account_id"],
            has_stream_secret=row["stream_hash"] is not None,
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    # -- credentials -------------------------------------------------------------------

    def set(self, tenant: str, provider: str, fields: dict[str, str], *, actor: str) -> ProviderAccountInfo:
        """Store (or change) credentials for ``provider``; fields not given keep their values.
        Raises ``StorageError`` for an unknown provider or credential, or a malformed value."""
        _check_provider(provider)
        try:
            given = check_credentials(provider, fields)
        except ValueError as e:
            raise StorageError(str(e)) from None
        with self._db.lock:
            t = self._tenants.row(tenant)
            keys = self._tenants.data_keys(t)
            aad = self._aad(t.id, provider)
            now = self._db.clock()
            row = self._row(t.id, provider)
            stored: dict[str, str] = keys.decrypt_json(row["secrets_enc"], aad) if row else {}
            account_field = _ACCOUNT_FIELD.get(provider)
            account_id = row["account_id"] if row else None
            for name, value in given.items():
                if name == account_field:
                    account_id = value
                else:
                    stored[name] = value
            with self._db.tx():
                if row is None:
                    self._db.insert("provider_credentials", {
                        "tenant_id": t.id, "provider": provider, "secrets_enc": keys.encrypt_json(stored, aad),
                        "account_id": account_id, "stream_key_id": None, "stream_salt": None, "stream_hash": None,
                        "created_at": now, "updated_at": now,
                    })  # fmt: skip
                else:
                    self._db.execute(
                        "UPDATE provider_credentials SET secrets_enc = ?, account_id = ?, updated_at = ? "
                        "WHERE tenant_id = ? AND provider = ?",
                        (keys.encrypt_json(stored, aad), account_id, now, t.id, provider),
                    )
                self._audit.append_in_tx(actor, t, "provider.credentials_set", f"provider:{provider}")
            info_row = self._row(t.id, provider)
            assert info_row is not None
            return self._info(t.name, info_row)

    def get(self, tenant: str, provider: str) -> ProviderAccountInfo | None:
        _check_provider(provider)
        t = self._tenants.row(tenant)
        row = self._row(t.id, provider)
        return self._info(t.name, row) if row else None

    def list(self, tenant: str) -> list[ProviderAccountInfo]:
        t = self._tenants.row(tenant)
        rows = self._db.rows("SELECT * FROM provider_credentials WHERE tenant_id = ? ORDER BY provider", (t.id,))
        return [self._info(t.name, r) for r in rows]

    def secrets(self, tenant: str, provider: str) -> dict[str, str] | None:
        """The stored credentials in clear (account id included), to check a request's signature;
        ``None`` if the tenant (or its account at this provider) does not exist."""
        _check_provider(provider)
        try:
            t = self._tenants.row(tenant)
        except StorageError:
            return None
        row = self._row(t.id, provider)
        if row is None:
            return None
        stored: dict[str, str] = self._tenants.data_keys(t).decrypt_json(row["secrets_enc"], self._aad(t.id, provider))
        account_field = _ACCOUNT_FIELD.get(provider)
        if account_field and row["account_id"]:
            stored[account_field] = row["account_id"]
        return stored

    def tenants_with_account(self, provider: str, account_id: str) -> list[str]:
        """Tenants whose account id at ``provider`` is ``account_id`` (e.g. a Vonage application id)."""
        _check_provider(provider)
        rows = self._db.rows(
            "SELECT t.name FROM provider_credentials p JOIN tenants t ON t.id = p.tenant_id "
            "WHERE p.provider = ? AND p.account_id = ? ORDER BY t.name",
            (provider, account_id),
        )
        return [r["name"] for r in rows]

    def delete(self, tenant: str, provider: str, *, actor: str) -> bool:
        """Forget the tenant's credentials and stream secret for ``provider``."""
        _check_provider(provider)
        with self._db.lock:
            t = self._tenants.row(tenant)
            with self._db.tx():
                n = self._db.execute(
                    "DELETE FROM provider_credentials WHERE tenant_id = ? AND provider = ?", (t.id, provider)
                )
                if n:
                    self._audit.append_in_tx(actor, t, "provider.credentials_deleted", f"provider:{provider}")
        return bool(n)

    # -- stream secrets -----------------------------------------------------------------

    def create_stream_secret(self, tenant: str, provider: str, *, actor: str) -> str:
        """A new stream secret for ``provider`` (the previous one stops working). Shown once."""
        _check_provider(provider)
        key_id = secrets.token_hex(6)
        secret = secrets.token_hex(24)
        salt, digest = hash_secret(secret)
        with self._db.lock:
            t = self._tenants.row(tenant)
            keys = self._tenants.data_keys(t)
            now = self._db.clock()
            with self._db.tx():
                if self._row(t.id, provider) is None:
                    self._db.insert("provider_credentials", {
                        "tenant_id": t.id, "provider": provider,
                        "secrets_enc": keys.encrypt_json({}, self._aad(t.id, provider)), "account_id": None,
                        "stream_key_id": None, "stream_salt": None, "stream_hash": None,
                        "created_at": now, "updated_at": now,
                    })  # fmt: skip
                self._db.execute(
                    "UPDATE provider_credentials SET stream_key_id = ?, stream_salt = ?, stream_hash = ?, "
                    "updated_at = ? WHERE tenant_id = ? AND provider = ?",
                    (key_id, salt, digest, now, t.id, provider),
                )
                self._audit.append_in_tx(actor, t, "provider.stream_secret_created", f"provider:{provider}")
        return f"vcs{key_id}{secret}"

    def authenticate_stream_secret(self, provider: str, value: str | None) -> str | None:
        """The tenant whose stream secret for ``provider`` is ``value``, else ``None`` (constant
        time; a scrypt is computed even for unknown key ids)."""
        m = STREAM_SECRET_PATTERN.match(value or "")
        row = (
            self._db.one(
                "SELECT p.provider, p.stream_salt, p.stream_hash, t.name FROM provider_credentials p "
                "JOIN tenants t ON t.id = p.tenant_id WHERE p.stream_key_id = ?",
                (m.group(1),),
            )
            if m
            else None
        )
        if not secret_matches(m.group(2) if m else None, row["stream_salt"] if row else None,
                              row["stream_hash"] if row else None):  # fmt: skip
            return None
        if row is None or row["provider"] != provider:
            return None
        return str(row["name"])

    # -- what to paste into the provider ------------------------------------------------

    def snippet(
        self,
        tenant: str,
        provider: str,
        *,
        public_url: str,
        pipeline: str | None = None,
        new_stream_secret: bool = False,
        telnyx_codec: str = "PCMU",
        telnyx_sample_rate: int = 8000,
        actor: str,
    ) -> str:
        """The call-control snippet for ``provider`` (:func:`voicecore.telephony.snippets.provider_snippet`).

        Providers configured with static credentials (Telnyx Call Control, Exotel, Asterisk)
        get a stream secret: created (and printed, this once) when the tenant has none or
        ``new_stream_secret`` asks for a new one. ``ValueError`` for a malformed public URL."""
        _check_provider(provider)
        public_url = check_public_url(public_url)
        info = self.get(tenant, provider)
        secret = None
        if provider in STREAM_SECRET_PROVIDERS and (new_stream_secret or info is None or not info.has_stream_secret):
            secret = self.create_stream_secret(tenant, provider, actor=actor)
            info = self.get(tenant, provider)
        required = [f.name for f in CREDENTIAL_FIELDS[provider] if f.required]
        missing = tuple(required) if info is None else info.missing
        return provider_snippet(SnippetContext(
            provider=provider, tenant=tenant, public_url=public_url, pipeline=pipeline, missing_credentials=missing,
            stream_secret=secret, has_stream_secret=bool(info and info.has_stream_secret),
            telnyx_codec=telnyx_codec, telnyx_sample_rate=telnyx_sample_rate,
        ))  # fmt: skip
