"""Checking that a request really comes from the telephony provider, the provider's way.

Pure functions (no I/O, the time passed in): each takes the tenant's provider
credentials and the request as received, and raises :class:`SignatureError`
naming what is wrong (never a secret) or returns.

- **Twilio** — ``X-Twilio-Signature``: HMAC over the full public URL and the POST
  parameters, checked with the ``twilio`` package's ``RequestValidator`` (HMAC-SHA1
  with the auth token; HMAC-SHA256 when ``X-Twilio-Webhooks-Signature-Settings``
  names it).
- **Telnyx** — ``telnyx-signature-ed25519`` over ``"{telnyx-timestamp}|{raw body}"``
  with the account's Ed25519 public key (base64 of the 32 raw bytes, from the
  Mission Control Portal), the timestamp within 300 s (as Telnyx's SDK checks).
- **Plivo** — ``X-Plivo-Signature-V3`` (one or more, comma-separated) and
  ``X-Plivo-Signature-V3-Nonce``, checked with ``plivo``'s ``validate_v3_signature``.
- **Vonage** — ``Authorization: Bearer <JWT>`` signed HS256 with the account's
  signature secret (signed webhooks, and the ``{"type": "vonage"}`` WebSocket
  authorization), fresh ``iat``, the expected ``application_id`` when one is
  configured, and ``payload_hash`` (SHA-256 of the body) when present.

:data:`CREDENTIAL_FIELDS` says which credentials each provider needs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import jwt
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from plivo.utils.signature_v3 import validate_v3_signature
from twilio.request_validator import RequestValidator, get_signature_algorithm

__all__ = [
    "CREDENTIAL_FIELDS",
    "CredentialField",
    "SignatureError",
    "check_credentials",
    "private_key_pem",
    "check_twilio_signature",
    "check_telnyx_signature",
    "check_plivo_signature",
    "check_vonage_jwt",
    "unverified_jwt_claims",
    "looks_like_jwt",
    "TIMESTAMP_TOLERANCE_S",
]

#: How far a signed timestamp (Telnyx ``telnyx-timestamp``, Vonage ``iat``) may be from now.
TIMESTAMP_TOLERANCE_S: Final = 300


class SignatureError(Exception):
    """The request is not (provably) from the provider; ``reason`` says why, with no secret in it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CredentialField:
    name: str
    help: str
    secret: bool = True  # stored encrypted and never shown again; False: an account id, shown
    required: bool = True


#: Provider → the credentials a tenant stores for it: what checks the provider's signatures and,
#: optional, what places outbound calls through its REST API (:mod:`voicecore.telephony.dialing`).
#: Exotel and Asterisk sign nothing: their streams authenticate with a voicecore stream secret.
CREDENTIAL_FIELDS: Final[dict[str, tuple[CredentialField, ...]]] = {
    "twilio": (
        CredentialField("auth_token", "the account's Auth Token (Console → Account info); signs every webhook"),
        CredentialField("account_sid", "the Account SID (AC…); webhooks for other accounts are refused; "
                                       "outbound calls are placed in this account",
                        secret=False, required=False),  # fmt: skip
    ),
    "telnyx": (
        CredentialField("public_key", "the account's public key (Mission Control → Keys & Credentials → "
                                      "Public Key), base64; checks the Ed25519 webhook signatures"),  # fmt: skip
        CredentialField("api_key", "an API key (Mission Control → Keys & Credentials → API Keys, KEY…); "
                                   "places outbound calls", required=False),  # fmt: skip
        CredentialField("connection_id", "the Call Control application's id (its connection_id); outbound calls "
                                         "go out through it", secret=False, required=False),  # fmt: skip
    ),
    "vonage": (
        CredentialField("signature_secret", "the account's signature secret (Dashboard → API settings); "
                                            "checks the signed-webhook JWT"),  # fmt: skip
        CredentialField("application_id", "the Voice application's id; JWTs for other applications are refused",
                        secret=False, required=False),  # fmt: skip
        CredentialField("private_key", "the Voice application's private key (PEM, or the PEM base64-encoded on "
                                       "one line); signs the JWT that places outbound calls", required=False),  # fmt: skip
    ),
    "plivo": (
        CredentialField("auth_token", "the account's Auth Token (Console → Overview); checks X-Plivo-Signature-V3"),
        CredentialField("auth_id", "the Auth ID (MA…); outbound calls are placed in this account",
                        secret=False, required=False),  # fmt: skip
    ),
    "exotel": (),
    # Asterisk's media streams use a stream secret; these place outbound calls through ARI.
    "asterisk": (
        CredentialField("ari_url", "the ARI base URL (http[s]://host:8088, as in http.conf)", secret=False,
                        required=False),  # fmt: skip
        CredentialField("ari_user", "the ARI user (ari.conf)", secret=False, required=False),
        CredentialField("ari_password", "the ARI user's password (ari.conf)", required=False),
        CredentialField("trunk", "the PJSIP endpoint outbound calls leave through (PJSIP/<number>@<trunk>)",
                        secret=False, required=False),  # fmt: skip
    ),
}

#: Credentials that may hold a multi-line PEM (and so blanks and line breaks) and be longer.
_PEM_FIELDS: Final = frozenset({("vonage", "private_key")})
MAX_PEM_CHARS: Final = 16384


def check_credentials(provider: str, fields: Mapping[str, str]) -> dict[str, str]:
    """Validate credentials a tenant wants to store for ``provider`` (names and formats);
    returns them with surrounding blanks removed. Raises ``ValueError`` naming the problem."""
    if provider not in CREDENTIAL_FIELDS:
        raise ValueError(f"unknown provider {provider!r}; known: {', '.join(CREDENTIAL_FIELDS)}")
    known = {f.name: f for f in CREDENTIAL_FIELDS[provider]}
    out: dict[str, str] = {}
    for name, value in fields.items():
        if name not in known:
            allowed = ", ".join(known) or "none (it uses a stream secret)"
            raise ValueError(f"{provider} has no credential {name!r}; its credentials: {allowed}")
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{provider} {name} must be a non-empty string")
        value = value.strip()
        if (provider, name) in _PEM_FIELDS:
            out[name] = private_key_pem(value, f"{provider} {name}")
            continue
        if len(value) > 4096 or any(ord(c) < 33 for c in value):
            raise ValueError(f"{provider} {name} must be at most 4096 printable characters without spaces")
        out[name] = value
    if provider == "telnyx" and "public_key" in out:
        _telnyx_key(out["public_key"])
    if provider == "asterisk" and "ari_url" in out:
        parts = urlsplit(out["ari_url"])
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.username:
            raise ValueError("asterisk ari_url must look like http[s]://host:8088 (no query, no credentials)")
    return out


def private_key_pem(value: str, what: str = "private_key") -> str:
    """A private key given as PEM text (line breaks kept, or flattened to blanks by a form field) or as
    the PEM base64-encoded on one line; returns the PEM text. ``ValueError`` naming ``what`` otherwise
    (never the key). Checks that it loads as an RSA private key (Vonage signs RS256)."""
    text = value.strip()
    if len(text) > MAX_PEM_CHARS:
        raise ValueError(f"{what} must be at most {MAX_PEM_CHARS} characters")
    if "-----BEGIN" not in text:
        try:
            text = base64.b64decode("".join(text.split()), validate=True).decode("ascii").strip()
        except (binascii.Error, ValueError):
            raise ValueError(f"{what} must be a PEM private key (-----BEGIN PRIVATE KEY-----…) or that PEM "
                             "base64-encoded") from None  # fmt: skip
    head, sep, rest = text.partition("-----BEGIN ")
    label, sep2, rest = rest.partition("-----")
    body, sep3, _ = rest.partition("-----END ")
    if not (sep and sep2 and sep3) or head.strip():
        raise ValueError(f"{what} is not a PEM block (-----BEGIN …----- … -----END …-----)")
    pem = f"-----BEGIN {label}-----\n" + "\n".join(body.split()) + f"\n-----END {label}-----\n"
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(f"{what} does not load as an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{what} must be an RSA private key (Vonage signs its JWTs with RS256)")
    return pem


# --- Twilio -------------------------------------------------------------------------------


def check_twilio_signature(
    auth_token: str,
    url: str,
    params: Mapping[str, Any],
    signature: str | None,
    *,
    signature_settings: str | None = None,
) -> None:
    """``url`` is the public URL Twilio requested (scheme, host, path and query as sent);
    ``params`` the POST form (a multi-dict with ``getlist`` works), empty for GET."""
    if not signature:
        raise SignatureError("no X-Twilio-Signature header")
    validator = RequestValidator(auth_token)
    if not validator.validate(url, params, signature, get_signature_algorithm(signature_settings)):
        raise SignatureError("X-Twilio-Signature does not match (is the public URL and the auth token right?)")


# --- Telnyx -------------------------------------------------------------------------------


def _telnyx_key(public_key_b64: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(public_key_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("telnyx public_key is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"telnyx public_key must be 32 bytes (base64 of the raw Ed25519 key), got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def check_telnyx_signature(
    public_key_b64: str, body: bytes, signature_b64: str | None, timestamp: str | None, *, now: float
) -> None:
    """``body``: the raw request body, unchanged. ``now``: epoch seconds."""
    if not signature_b64 or not timestamp:
        raise SignatureError("no telnyx-signature-ed25519 / telnyx-timestamp headers")
    if not timestamp.isdigit():
        raise SignatureError("telnyx-timestamp is not a number of seconds")
    if abs(now - int(timestamp)) > TIMESTAMP_TOLERANCE_S:
        raise SignatureError(f"telnyx-timestamp is more than {TIMESTAMP_TOLERANCE_S} s from now (replayed or clock skew)")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("telnyx-signature-ed25519 is not base64") from None
    try:
        _telnyx_key(public_key_b64).verify(signature, timestamp.encode() + b"|" + body)
    except InvalidSignature:
        raise SignatureError("telnyx-signature-ed25519 does not match (is the public key right?)") from None
    except ValueError as e:
        raise SignatureError(f"the stored Telnyx public key is unusable: {e}") from None


# --- Plivo --------------------------------------------------------------------------------


def check_plivo_signature(
    auth_token: str,
    method: str,
    url: str,
    params: Mapping[str, Any],
    nonce: str | None,
    signature: str | None,
) -> None:
    """``url``: the public URL Plivo requested (with its query); ``params``: the POST form
    (values as strings, or lists of strings), empty for GET."""
    if not signature or not nonce:
        raise SignatureError("no X-Plivo-Signature-V3 / X-Plivo-Signature-V3-Nonce headers")
    if method.upper() not in ("GET", "POST"):
        raise SignatureError(f"Plivo signs GET and POST requests, not {method}")
    form = {k: (v if len(v) > 1 else v[0]) for k, v in _multi(params).items()}
    if not validate_v3_signature(method.upper(), url, nonce, auth_token, signature, form):
        raise SignatureError("X-Plivo-Signature-V3 does not match (is the public URL and the auth token right?)")


def _multi(params: Mapping[str, Any]) -> dict[str, list[str]]:
    getlist = getattr(params, "getlist", None)
    out: dict[str, list[str]] = {}
    for key in params:
        values = getlist(key) if getlist else params[key]
        out[str(key)] = [str(v) for v in (values if isinstance(values, list) else [values])]
    return out


# --- Vonage -------------------------------------------------------------------------------


def looks_like_jwt(token: str | None) -> bool:
    """Three base64url segments separated by dots (a JWT), as opposed to a voicecore token."""
    if not token or token.count(".") != 2:
        return False
    return all(part and all(c.isalnum() or c in "-_=" for c in part) for part in token.split("."))


def unverified_jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT *without* checking its signature: only to pick which secret checks it."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as e:
        raise SignatureError(f"malformed JWT ({type(e).__name__})") from None
    if not isinstance(claims, dict):
        raise SignatureError("JWT claims are not an object")
    return claims


def check_vonage_jwt(
    signature_secret: str,
    token: str | None,
    *,
    now: float,
    body: bytes | None = None,
    application_id: str | None = None,
) -> dict[str, Any]:
    """Check a Vonage signed-webhook JWT (HS256 with the signature secret) and return its claims.

    ``body``: the raw body of a POST (checked against ``payload_hash`` when the JWT has one).
    ``application_id``: refuse JWTs issued for another application."""
    if not token:
        raise SignatureError("no Authorization: Bearer <JWT> from Vonage")
    try:
        claims = jwt.decode(
            token, signature_secret, algorithms=["HS256"], options={"require": ["iat"], "verify_iat": False}
        )
    except jwt.InvalidSignatureError:
        raise SignatureError("the Vonage JWT signature does not match (is the signature secret right?)") from None
    except jwt.ExpiredSignatureError:
        raise SignatureError("the Vonage JWT has expired") from None
    except jwt.PyJWTError as e:
        raise SignatureError(f"the Vonage JWT is not valid ({type(e).__name__})") from None
    iat = claims.get("iat")
    if not isinstance(iat, (int, float)) or abs(now - float(iat)) > TIMESTAMP_TOLERANCE_S:
        raise SignatureError(f"the Vonage JWT was issued more than {TIMESTAMP_TOLERANCE_S} s from now")
    if application_id and claims.get("application_id") not in (None, application_id):
        raise SignatureError("the Vonage JWT is for another application")
    payload_hash = claims.get("payload_hash")
    if body and isinstance(payload_hash, str) and payload_hash:
        if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), payload_hash.lower()):
            raise SignatureError("the body does not match the Vonage JWT's payload_hash")
    return claims
