"""Encryption at rest: per-tenant keys in a keystore file, protected by a master key.

* Each tenant has two random 256-bit keys: an AES-GCM data key (transcripts,
  recordings, reports, contacts, outbox payloads) and an HMAC key for the keyed
  hash of phone numbers (lookups, opt-outs that survive erasure, audit object ids).
* The keys live in one keystore file in the **key directory**, outside the data
  directory (``<data_dir>-keys/keystore.bin`` next to it by default, or
  ``VOICECORE_KEY_DIR``), encrypted as a whole with AES-GCM under the master key.
* The master key comes from ``VOICECORE_MASTER_KEY`` (32 bytes, base64 or hex) or,
  when that is not set, from a generated key file in the key directory
  (``master.key``, mode 0600; a key file readable by group or others is refused).
* Deleting a tenant removes its keys from the keystore (and overwrites the old
  keystore file before replacing it). A backup of the data directory holds no
  key, so every ciphertext of that tenant — in the database, in any copy of it,
  in a recording file — is unreadable from then on. Crypto-shredding asks one
  thing of backups: keep the key directory out of data backups, or back it up
  on a shorter lifetime than the data (a key backup older than a deletion still
  opens that tenant's data).
* A data directory made by an older voicecore keeps its ``keystore.bin`` (and
  ``master.key``) inside; it still opens, and :func:`key_locations` reports it so
  ``serve`` can warn that a copy of the directory is a copy of the keys.

Ciphertext format (database fields): ``b"\\x01" + nonce(12) + AES-GCM(ct || tag)``,
with associated data binding the ciphertext to its table, tenant, row and column,
so a ciphertext copied to another row does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MASTER_KEY_ENV = "VOICECORE_MASTER_KEY"
KEY_DIR_ENV = "VOICECORE_KEY_DIR"
MASTER_KEY_FILENAME = "master.key"
KEYSTORE_FILENAME = "keystore.bin"

_KEYSTORE_MAGIC = b"VCKS1\n"
_KEYSTORE_AAD = b"voicecore-keystore-v1"
_FIELD_VERSION = b"\x01"
_NONCE = 12


class CryptoError(Exception):
    """Encryption or key management failed."""


class KeystoreError(CryptoError):
    """The keystore or the master key cannot be used (message says why and what to do)."""


class TenantKeyMissing(CryptoError):
    """The tenant has no key (it was deleted): its ciphertexts cannot be decrypted."""


class DecryptionFailed(CryptoError):
    """A ciphertext did not authenticate under the tenant key (wrong key, tampered or moved)."""


def generate_master_key() -> str:
    """A new random master key, base64-encoded (for ``VOICECORE_MASTER_KEY``)."""
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def decode_master_key(text: str, source: str) -> bytes:
    """32 key bytes from 64 hex characters or base64 (standard or URL-safe)."""
    value = text.strip()
    if len(value) == 64:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    for decoder in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decoder(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(raw) == 32:
            return raw
    raise KeystoreError(
        f"{source}: the master key must be 32 random bytes, base64 or hex encoded "
        "(generate one with: python -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')"
    )


def _check_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeystoreError(
            f"{path}: key file is accessible by group or others (mode {mode:04o}); run: chmod 600 {path}"
        )


def _write_private_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class KeyLocations:
    """Where a data directory's keys are: the keystore file and the master key's source."""

    key_dir: Path
    keystore: Path
    inside_data_dir: bool  # an older layout: a copy of the data directory copies the keys


def key_locations(data_dir: Path, key_dir: Path | str | None = None) -> KeyLocations:
    """The key directory of ``data_dir``: ``key_dir``, else ``VOICECORE_KEY_DIR``, else
    ``<data_dir>-keys`` next to it; a data directory that already holds a keystore
    (an older layout) keeps it."""
    data_dir = Path(data_dir)
    if key_dir is None and not os.environ.get(KEY_DIR_ENV) and (data_dir / KEYSTORE_FILENAME).exists():
        return KeyLocations(data_dir, data_dir / KEYSTORE_FILENAME, True)
    chosen = Path(key_dir or os.environ.get(KEY_DIR_ENV) or data_dir.parent / f"{data_dir.name}-keys")
    inside = chosen.resolve() == data_dir.resolve() or data_dir.resolve() in chosen.resolve().parents
    return KeyLocations(chosen, chosen / KEYSTORE_FILENAME, inside)


def resolve_master_key(key_dir: Path, explicit: bytes | str | None = None) -> tuple[bytes, str]:
    """The master key and where it came from: explicit argument, environment, or the key file
    in ``key_dir`` (generated with mode 0600 on first use)."""
    if explicit is not None:
        if isinstance(explicit, bytes) and len(explicit) == 32:
            return explicit, "argument"
        return decode_master_key(
            explicit.decode() if isinstance(explicit, bytes) else explicit, "master_key"
        ), "argument"
    env = os.environ.get(MASTER_KEY_ENV)
    if env:
        return decode_master_key(env, MASTER_KEY_ENV), MASTER_KEY_ENV
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = key_dir / MASTER_KEY_FILENAME
    if not path.exists():
        try:
            _write_private_new(path, (generate_master_key() + "\n").encode("ascii"))
        except FileExistsError:
            pass  # another process created it first
    _check_private(path)
    return decode_master_key(path.read_text(encoding="ascii"), str(path)), str(path)


_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32, "maxmem": 64 * 1024 * 1024}


def hash_secret(secret: str) -> tuple[bytes, bytes]:
    """(salt, scrypt hash) of a secret shown once and stored only as a hash (API keys, stream secrets)."""
    salt = secrets.token_bytes(16)
    return salt, hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)


def secret_matches(secret: str | None, salt: bytes | None, expected: bytes | None) -> bool:
    """Whether ``secret`` hashes to ``expected``; the scrypt runs (and the comparison is constant
    time) even with nothing to compare against, so a wrong id costs as much as a wrong secret."""
    digest = hashlib.scrypt((secret or "x").encode(), salt=salt or b"\0" * 16, **_SCRYPT)
    return hmac.compare_digest(digest, expected or b"\1" * 32) and expected is not None and secret is not None


def field_aad(table: str, tenant_id: str, row: str, column: str) -> str:
    """Associated data binding a database ciphertext to its table, tenant, row and column."""
    return f"vc1|{table}|{tenant_id}|{row}|{column}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


@dataclass(frozen=True)
class TenantKeys:
    """One tenant's keys. ``encrypt``/``decrypt`` bind ciphertexts to ``aad`` (where they are stored)."""

    tenant_id: str
    enc_key: bytes = field(repr=False)
    hash_key: bytes = field(repr=False)

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return _FIELD_VERSION + nonce + AESGCM(self.enc_key).encrypt(nonce, plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        if not blob or blob[:1] != _FIELD_VERSION or len(blob) < 1 + _NONCE + 16:
            raise DecryptionFailed("not a voicecore ciphertext")
        try:
            return AESGCM(self.enc_key).decrypt(blob[1 : 1 + _NONCE], blob[1 + _NONCE :], aad)
        except InvalidTag:
            raise DecryptionFailed("ciphertext does not authenticate under this tenant key") from None

    def encrypt_text(self, text: str | None, aad: str) -> bytes | None:
        return None if text is None else self.encrypt(text.encode("utf-8"), aad.encode("utf-8"))

    def decrypt_text(self, blob: bytes | None, aad: str) -> str | None:
        return None if blob is None else self.decrypt(blob, aad.encode("utf-8")).decode("utf-8")

    def encrypt_json(self, value: Any, aad: str) -> bytes:
        return self.encrypt(json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8"), aad.encode())

    def decrypt_json(self, blob: bytes, aad: str) -> Any:
        return json.loads(self.decrypt(blob, aad.encode()).decode("utf-8"))

    def keyed_hash(self, value: str) -> str:
        """HMAC-SHA256 of ``value`` under the tenant's hash key (hex)."""
        return hmac.new(self.hash_key, value.encode("utf-8"), hashlib.sha256).hexdigest()


class Keystore:
    """The keystore file: tenant keys and operator keys, encrypted under the master key.

    Safe for several processes on one data directory (``serve`` and the CLI): every
    change is a locked read-modify-write, and reads reload the file when it changed.
    """

    def __init__(self, path: Path, master_key: bytes, master_source: str = "argument"):
        if len(master_key) != 32:
            raise KeystoreError("master key must be 32 bytes")
        self.path = path
        self._master = AESGCM(master_key)
        self._master_source = master_source
        self._cache: dict[str, Any] | None = None
        self._cache_stamp: tuple[int, int, int] | None = None

    # ---------------------------------------------------------------- file I/O

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self) -> dict[str, Any]:
        stamp = self._stamp()
        if stamp is None:
            return {"version": 1, "tenants": {}, "operator": {}}
        if self._cache is not None and stamp == self._cache_stamp:
            return self._cache
        _check_private(self.path)
        raw = self.path.read_bytes()
        if not raw.startswith(_KEYSTORE_MAGIC) or len(raw) < len(_KEYSTORE_MAGIC) + _NONCE + 16:
            raise KeystoreError(f"{self.path}: not a voicecore keystore file")
        body = raw[len(_KEYSTORE_MAGIC) :]
        try:
            plain = self._master.decrypt(body[:_NONCE], body[_NONCE:], _KEYSTORE_AAD)
        except InvalidTag:
            raise KeystoreError(
                f"{self.path}: cannot be decrypted with the master key from {self._master_source} "
                "(wrong VOICECORE_MASTER_KEY, or the keystore was created with another key)"
            ) from None
        data = json.loads(plain)
        self._cache, self._cache_stamp = data, stamp
        return data

    def _write(self, data: dict[str, Any]) -> None:
        nonce = secrets.token_bytes(_NONCE)
        blob = (
            _KEYSTORE_MAGIC
            + nonce
            + self._master.encrypt(nonce, json.dumps(data, sort_keys=True).encode("utf-8"), _KEYSTORE_AAD)
        )
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        _write_private_new(tmp, blob)
        if self.path.exists():
            # Overwrite the old file's blocks before replacing it, so destroyed keys
            # do not linger in a freed copy (best effort: depends on the filesystem).
            size = self.path.stat().st_size
            with open(self.path, "r+b") as old:
                old.write(b"\0" * size)
                old.flush()
                os.fsync(old.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._cache, self._cache_stamp = data, self._stamp()

    # ---------------------------------------------------------------- tenant keys

    def create(self, tenant_id: str) -> TenantKeys:
        """New keys for a tenant (error if it already has keys)."""
        with self._locked():
            data = self._read()
            if tenant_id in data["tenants"]:
                raise KeystoreError(f"tenant id {tenant_id!r} already has keys")
            entry = {
                "enc": _b64(secrets.token_bytes(32)),
                "hash": _b64(secrets.token_bytes(32)),
                "created": time.time(),
            }
            new = {**data, "tenants": {**data["tenants"], tenant_id: entry}}
            self._write(new)
        return self.get(tenant_id)

    def get(self, tenant_id: str) -> TenantKeys:
        entry = self._read()["tenants"].get(tenant_id)
        if entry is None:
            raise TenantKeyMissing(
                f"no key for tenant id {tenant_id!r} (tenant deleted?): its data cannot be decrypted"
            )
        return TenantKeys(tenant_id, _unb64(entry["enc"]), _unb64(entry["hash"]))

    def has(self, tenant_id: str) -> bool:
        return tenant_id in self._read()["tenants"]

    def destroy(self, tenant_id: str) -> bool:
        """Remove a tenant's keys for good. Returns whether there were keys."""
        with self._locked():
            data = self._read()
            if tenant_id not in data["tenants"]:
                return False
            tenants = {k: v for k, v in data["tenants"].items() if k != tenant_id}
            self._write({**data, "tenants": tenants})
        return True

    # ---------------------------------------------------------------- operator keys

    def operator_key(self, purpose: str) -> bytes:
        """A 256-bit operator key for ``purpose`` (e.g. ``audit``), created on first use."""
        existing = self._read()["operator"].get(purpose)
        if existing is not None:
            return _unb64(existing)
        with self._locked():
            data = self._read()
            if purpose not in data["operator"]:
                data = {**data, "operator": {**data["operator"], purpose: _b64(secrets.token_bytes(32))}}
                self._write(data)
            return _unb64(data["operator"][purpose])


class _KeyRows(Protocol):
    """What :class:`DatabaseKeystore` needs of :class:`~voicecore.storage.database.Database`."""

    def fetchone(self, sql: str, params: Any = ()) -> tuple[Any, ...] | None: ...
    def execute(self, sql: str, params: Any = ()) -> int: ...
    def insert_ignore(self, table: str, row: dict[str, Any]) -> int: ...


class DatabaseKeystore:
    """Tenant and operator keys wrapped under the master key in the database's ``wrapped_keys``
    table: every worker of a PostgreSQL deployment sees the same keys, and deleting a tenant
    destroys its key for all of them at once (no worker caches a tenant key).

    Each row is ``nonce(12) + AES-GCM(key material)`` with the row's key id as associated
    data, so a wrapped key copied to another row does not unwrap. The master key comes from
    ``VOICECORE_MASTER_KEY`` or the key file, never from the database.
    """

    def __init__(self, db: _KeyRows, master_key: bytes, master_source: str = "argument"):
        if len(master_key) != 32:
            raise KeystoreError("master key must be 32 bytes")
        self._db = db
        self._master = AESGCM(master_key)
        self._master_source = master_source
        self._operator: dict[str, bytes] = {}
        self.path: Path | None = None

    def _wrap(self, key_id: str, material: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._master.encrypt(nonce, material, f"voicecore-wrapped-key|{key_id}".encode())

    def _unwrap(self, key_id: str, blob: bytes) -> bytes:
        try:
            return self._master.decrypt(blob[:_NONCE], bytes(blob[_NONCE:]), f"voicecore-wrapped-key|{key_id}".encode())
        except InvalidTag:
            raise KeystoreError(
                f"the wrapped key {key_id!r} in the database cannot be unwrapped with the master key from "
                f"{self._master_source} (wrong VOICECORE_MASTER_KEY, or the database was set up with another key)"
            ) from None

    def _load(self, key_id: str) -> bytes | None:
        row = self._db.fetchone("SELECT wrapped FROM wrapped_keys WHERE key_id = ?", (key_id,))
        return None if row is None else self._unwrap(key_id, bytes(row[0]))

    def _put(self, key_id: str, material: bytes) -> bool:
        return bool(self._db.insert_ignore(
            "wrapped_keys", {"key_id": key_id, "wrapped": self._wrap(key_id, material), "created_at": time.time()}
        ))  # fmt: skip

    def create(self, tenant_id: str) -> TenantKeys:
        """New keys for a tenant (error if it already has keys)."""
        if not self._put(f"tenant:{tenant_id}", secrets.token_bytes(64)):
            raise KeystoreError(f"tenant id {tenant_id!r} already has keys")
        return self.get(tenant_id)

    def get(self, tenant_id: str) -> TenantKeys:
        material = self._load(f"tenant:{tenant_id}")
        if material is None:
            raise TenantKeyMissing(
                f"no key for tenant id {tenant_id!r} (tenant deleted?): its data cannot be decrypted"
            )
        return TenantKeys(tenant_id, material[:32], material[32:64])

    def has(self, tenant_id: str) -> bool:
        return self._db.fetchone("SELECT 1 FROM wrapped_keys WHERE key_id = ?", (f"tenant:{tenant_id}",)) is not None

    def destroy(self, tenant_id: str) -> bool:
        """Remove a tenant's keys for good (for every worker). Returns whether there were keys."""
        return self._db.execute("DELETE FROM wrapped_keys WHERE key_id = ?", (f"tenant:{tenant_id}",)) > 0

    def operator_key(self, purpose: str) -> bytes:
        """A 256-bit operator key for ``purpose`` (e.g. ``audit``), created on first use by any worker."""
        key = self._operator.get(purpose)
        if key is None:
            key_id = f"operator:{purpose}"
            key = self._load(key_id)
            if key is None:
                self._put(key_id, secrets.token_bytes(32))  # another worker may win the race: read back
                key = self._load(key_id)
            assert key is not None
            self._operator[purpose] = key
        return key
