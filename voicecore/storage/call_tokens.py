"""One-time call tokens, shared by every worker.

A provider's answer URL (or ``POST /webrtc/token``) on one worker mints a token; the media
stream that presents it may reach any worker behind the load balancer, and is accepted there
once. What the token stands for is a :class:`CallGrant`: the tenant, the pipeline, the
provider and its call id (when known: then only that call's stream may use it), and the caller
and callee numbers some providers' streams do not repeat.

Stored as the token's SHA-256 (a copy of the database holds no usable token), the numbers
encrypted with the tenant key (and their keyed hashes, so a subject's erasure removes the row); redeeming marks the row used in one conditional UPDATE, so two
workers racing for one token cannot both win. Rows live until two minutes after they expire:
the provider call id they name also tells the stream of that call which tenant the provider
announced it for.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from voicecore.storage.crypto import CryptoError
from voicecore.storage.database import Database, StorageError
from voicecore.storage.tenants import TenantRepository

CALL_TOKEN_TTL_S = 120.0
KEEP_AFTER_EXPIRY_S = 120.0

__all__ = ["CALL_TOKEN_TTL_S", "CallGrant", "CallTokens", "is_call_token"]


@dataclass(frozen=True)
class CallGrant:
    """What a one-time call token stands for: a call of ``tenant`` (and the answer request's
    pipeline, provider call id, caller and callee, which some providers' streams do not repeat)."""

    tenant: str
    pipeline: str | None
    expires_at: float
    call_id: str | None = None
    provider: str | None = None
    caller: str | None = field(default=None, repr=False)
    callee: str | None = field(default=None, repr=False)


def is_call_token(token: str) -> bool:
    """``ct`` + 40 hex digits: letters and digits only, so every provider can carry it."""
    return len(token) == 42 and token.startswith("ct") and all(c in "0123456789abcdef" for c in token[2:])


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


class CallTokens:
    """The call tokens of every tenant, in the shared database."""

    def __init__(self, db: Database, tenants: TenantRepository):
        self._db = db
        self._tenants = tenants

    @staticmethod
    def _aad(digest: bytes) -> str:
        return "call_token:" + digest.hex()

    def mint(self, tenant: str, pipeline: str | None, call_id: str | None = None, *, provider: str | None = None,
             caller: str | None = None, callee: str | None = None, ttl_s: float = CALL_TOKEN_TTL_S) -> str:  # fmt: skip
        """A new token for one call of ``tenant`` (bound to the provider and its call id when given)."""
        t = self._tenants.row(tenant)
        token = "ct" + secrets.token_hex(20)
        digest = _digest(token)
        numbers = caller_hash = callee_hash = None
        if caller or callee:
            keys = self._tenants.data_keys(t)
            numbers = keys.encrypt_json({"caller": caller or None, "callee": callee or None}, self._aad(digest))
            region = self._tenants.policy_of(t).phone_region
            # the keyed hashes a subject's erasure finds the row by
            caller_hash = TenantRepository.subject_hash_of(keys, caller, region) if caller else None
            callee_hash = TenantRepository.subject_hash_of(keys, callee, region) if callee else None
        now = self._db.clock()
        with self._db.tx():
            self._db.execute("DELETE FROM call_tokens WHERE expires_at < ?", (now - KEEP_AFTER_EXPIRY_S,))
            self._db.insert("call_tokens", {
                "token_hash": digest, "tenant_id": t.id, "pipeline": pipeline, "provider": provider,
                "call_id": call_id or None, "numbers_enc": numbers, "caller_hash": caller_hash,
                "callee_hash": callee_hash, "expires_at": now + ttl_s, "used_at": None,
            })  # fmt: skip
        return token

    def _grant(self, row: dict, digest: bytes) -> CallGrant | None:
        tenant = self._db.one("SELECT name FROM tenants WHERE id = ?", (row["tenant_id"],))
        if tenant is None:
            return None
        caller = callee = None
        if row["numbers_enc"] is not None:
            try:
                keys = self._tenants.data_keys(row["tenant_id"])
                numbers = keys.decrypt_json(bytes(row["numbers_enc"]), self._aad(digest))
                caller, callee = numbers.get("caller"), numbers.get("callee")
            except (StorageError, CryptoError):  # the tenant was deleted meanwhile (its key destroyed)
                return None
        return CallGrant(tenant["name"], row["pipeline"], row["expires_at"], row["call_id"], row["provider"],
                         caller, callee)  # fmt: skip

    def redeem(self, token: str, call_id: str | None = None, provider: str | None = None) -> CallGrant | None:
        """The grant of a token, used up (on every worker); None if unknown, used, expired, minted
        for another call id or another provider (a token presented for the wrong call is used up too)."""
        if not is_call_token(token):
            return None
        digest = _digest(token)
        now = self._db.clock()
        with self._db.tx():
            won = self._db.execute(
                "UPDATE call_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL AND expires_at >= ?",
                (now, digest, now),
            )
            if won != 1:
                return None  # unknown, expired, or another worker (or an earlier stream) took it
            row = self._db.one("SELECT * FROM call_tokens WHERE token_hash = ?", (digest,))
        if row is None:
            return None
        if row["call_id"] is not None and row["call_id"] != call_id:
            return None  # minted for another call
        if row["provider"] is not None and provider is not None and row["provider"] != provider:
            return None  # minted for another provider's stream
        return self._grant(row, digest)

    def peek(self, token: str) -> CallGrant | None:
        """The grant of a token still unused and unexpired, without using it (diagnostics, tests)."""
        if not is_call_token(token):
            return None
        digest = _digest(token)
        row = self._db.one("SELECT * FROM call_tokens WHERE token_hash = ? AND used_at IS NULL AND expires_at >= ?",
                           (digest, self._db.clock()))  # fmt: skip
        return self._grant(row, digest) if row is not None else None

    def unused(self) -> int:
        """Tokens minted and not yet used nor expired."""
        row = self._db.one("SELECT COUNT(*) AS n FROM call_tokens WHERE used_at IS NULL AND expires_at >= ?",
                           (self._db.clock(),))  # fmt: skip
        return int(row["n"]) if row else 0

    def announced_to_other_tenant(self, call_id: str | None, tenant: str) -> bool:
        """The provider announced call ``call_id`` (its answer URL minted a token for it) for a
        tenant other than ``tenant`` in the last minutes."""
        if not call_id:
            return False
        rows = self._db.rows(
            "SELECT DISTINCT t.name AS name FROM call_tokens c JOIN tenants t ON t.id = c.tenant_id "
            "WHERE c.call_id = ? AND c.expires_at >= ?",
            (call_id, self._db.clock() - KEEP_AFTER_EXPIRY_S + CALL_TOKEN_TTL_S),
        )
        return any(r["name"] != tenant for r in rows)
