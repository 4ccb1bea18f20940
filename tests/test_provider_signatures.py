"""Provider signature checks (voicecore.telephony.signatures), against the providers' documented
algorithms: each request is signed here the way the provider's documentation says it signs, then
checked — and every tampered field, stale timestamp and wrong secret is refused with a reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from voicecore.telephony.signatures import (
    SignatureError,
    check_credentials,
    check_plivo_signature,
    check_telnyx_signature,
    check_twilio_signature,
    check_vonage_jwt,
    looks_like_jwt,
    unverified_jwt_claims,
)

# --------------------------------------------------------------------------- Twilio

# The example of Twilio's "Webhooks security" page (and twilio-python's own tests): auth token
# 12345, this URL and these parameters are signed RSOYDt4T1cUTdK1PDd93/VVr8B8=.
TWILIO_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
TWILIO_PARAMS = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234",
                 "From": "+14158675309", "To": "+18005551212"}  # fmt: skip
TWILIO_SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_twilio_documented_example_verifies() -> None:
    check_twilio_signature("12345", TWILIO_URL, TWILIO_PARAMS, TWILIO_SIGNATURE)
    # Twilio signs with or without the default port: both forms of the URL verify.
    check_twilio_signature("12345", TWILIO_URL.replace("mycompany.com", "mycompany.com:443"), TWILIO_PARAMS,
                           TWILIO_SIGNATURE)  # fmt: skip


@pytest.mark.parametrize(
    ("token", "url", "params", "signature", "reason"),
    [
        ("12345", TWILIO_URL, TWILIO_PARAMS, None, "no X-Twilio-Signature"),
        ("54321", TWILIO_URL, TWILIO_PARAMS, TWILIO_SIGNATURE, "does not match"),
        ("12345", TWILIO_URL.replace("https", "http"), TWILIO_PARAMS, TWILIO_SIGNATURE, "does not match"),
        ("12345", TWILIO_URL + "&x=1", TWILIO_PARAMS, TWILIO_SIGNATURE, "does not match"),
        ("12345", TWILIO_URL, TWILIO_PARAMS | {"To": "+18005551213"}, TWILIO_SIGNATURE, "does not match"),
        ("12345", TWILIO_URL, TWILIO_PARAMS | {"Extra": "1"}, TWILIO_SIGNATURE, "does not match"),
    ],
    ids=["missing", "wrong-token", "http-not-https", "query-changed", "param-changed", "param-added"],
)
def test_twilio_tampering_is_refused(token: str, url: str, params: dict[str, str], signature: str | None,
                                     reason: str) -> None:  # fmt: skip
    with pytest.raises(SignatureError, match=reason):
        check_twilio_signature(token, url, params, signature)


def test_twilio_sha256_when_the_settings_header_says_so() -> None:
    digest = hmac.new(b"shared-key", (TWILIO_URL + "".join(k + v for k, v in sorted(TWILIO_PARAMS.items()))).encode(),
                      hashlib.sha256).digest()  # fmt: skip
    signature = base64.b64encode(digest).decode()
    check_twilio_signature("shared-key", TWILIO_URL, TWILIO_PARAMS, signature,
                           signature_settings="key=webhooks_sharedkey_1,algorithm=HMAC_SHA256")  # fmt: skip
    with pytest.raises(SignatureError):
        check_twilio_signature("shared-key", TWILIO_URL, TWILIO_PARAMS, signature)  # read as SHA-1: no match


# --------------------------------------------------------------------------- Telnyx

TELNYX_BODY = b'{"data":{"event_type":"call.initiated","payload":{"call_control_id":"v3:abc","from":"+13122010094"}}}'


def telnyx_keys() -> tuple[Ed25519PrivateKey, str]:
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private, base64.b64encode(public).decode()


def telnyx_sign(private: Ed25519PrivateKey, timestamp: str, body: bytes) -> str:
    """As Telnyx documents it: Ed25519 over "{telnyx-timestamp}|{raw body}", base64."""
    return base64.b64encode(private.sign(timestamp.encode() + b"|" + body)).decode()


def test_telnyx_signature_over_timestamp_and_raw_body() -> None:
    private, public = telnyx_keys()
    now = time.time()
    ts = str(int(now))
    check_telnyx_signature(public, TELNYX_BODY, telnyx_sign(private, ts, TELNYX_BODY), ts, now=now)
    cases = {
        "body changed": (TELNYX_BODY.replace(b"+1312", b"+1999"), telnyx_sign(private, ts, TELNYX_BODY), ts, now),
        "timestamp changed": (TELNYX_BODY, telnyx_sign(private, ts, TELNYX_BODY), str(int(now) - 1), now),
        "replayed after 5 minutes": (TELNYX_BODY, telnyx_sign(private, ts, TELNYX_BODY), ts, now + 301),
        "other key": (TELNYX_BODY, telnyx_sign(telnyx_keys()[0], ts, TELNYX_BODY), ts, now),
        "not base64": (TELNYX_BODY, "%%%", ts, now),
        "no headers": (TELNYX_BODY, None, None, now),
    }
    for name, (body, signature, stamp, at) in cases.items():
        with pytest.raises(SignatureError):
            check_telnyx_signature(public, body, signature, stamp, now=at)
            pytest.fail(f"accepted: {name}")


def test_a_telnyx_public_key_is_checked_when_stored() -> None:
    assert check_credentials("telnyx", {"public_key": telnyx_keys()[1]})
    with pytest.raises(ValueError, match="32 bytes"):
        check_credentials("telnyx", {"public_key": base64.b64encode(b"short").decode()})
    with pytest.raises(ValueError, match="not base64"):
        check_credentials("telnyx", {"public_key": "***"})


# --------------------------------------------------------------------------- Plivo


def plivo_v3(auth_token: str, method: str, url: str, params: dict[str, str], nonce: str) -> str:
    """Plivo's V3 signature as its documentation describes it, written out independently:
    POST → URL (without query) + "?" + [sorted query "k=v&…" + "."] + params sorted by name as
    "k1v1k2v2…"; GET → URL + "?" + all params sorted "k=v&…"; then HMAC-SHA256 of that + "." + nonce."""
    base, _, query = url.partition("?")
    query_pairs = dict(pair.split("=", 1) for pair in query.split("&") if pair)
    if method == "GET":
        merged = query_pairs | params
        text = base + ("?" + "&".join(f"{k}={merged[k]}" for k in sorted(merged)) if merged else "")
    else:
        text = base + "?"
        if query_pairs:
            text += "&".join(f"{k}={query_pairs[k]}" for k in sorted(query_pairs)) + "."
        text += "".join(f"{k}{params[k]}" for k in sorted(params))
    digest = hmac.new(auth_token.encode(), f"{text}.{nonce}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


PLIVO_FORM = {"CallUUID": "9a4c7b4e-0000-4f1e-9b0f-2f0c0d1e2f30", "Direction": "inbound", "From": "14155550100",
              "To": "14155550199", "CallStatus": "ringing"}  # fmt: skip


@pytest.mark.parametrize("url", ["https://voice.example.com/providers/plivo/acme/answer",
                                 "https://voice.example.com/providers/plivo/acme/answer?pipeline=receptionist"])
def test_plivo_v3_post_and_get(url: str) -> None:
    nonce = "12345678901234567890"
    check_plivo_signature("plivo-auth", "POST", url, PLIVO_FORM, nonce, plivo_v3("plivo-auth", "POST", url, PLIVO_FORM, nonce))
    check_plivo_signature("plivo-auth", "GET", url, {}, nonce, plivo_v3("plivo-auth", "GET", url, {}, nonce))
    # the header may carry several signatures (e.g. during a token rotation): any one may match
    several = "bm90LWl0," + plivo_v3("plivo-auth", "POST", url, PLIVO_FORM, nonce)
    check_plivo_signature("plivo-auth", "POST", url, PLIVO_FORM, nonce, several)
    good = plivo_v3("plivo-auth", "POST", url, PLIVO_FORM, nonce)
    for token, form, n, signature in (
        ("other", PLIVO_FORM, nonce, good),
        ("plivo-auth", PLIVO_FORM | {"To": "14155550198"}, nonce, good),
        ("plivo-auth", PLIVO_FORM, "another-nonce", good),
        ("plivo-auth", PLIVO_FORM, nonce, None),
    ):
        with pytest.raises(SignatureError):
            check_plivo_signature(token, "POST", url, form, n, signature)


# --------------------------------------------------------------------------- Vonage


def vonage_jwt(secret: str, **claims: object) -> str:
    """A signed-webhook JWT as Vonage documents it: HS256 with the account's signature secret."""
    body = {"iat": int(time.time()), "jti": "2b5bb3d8-0000", "iss": "Vonage", "api_key": "abcd1234",
            "application_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"} | claims  # fmt: skip
    return jwt.encode(body, secret, algorithm="HS256")


def test_vonage_jwt_checks() -> None:
    secret = "vonage-signature-secret-0123456789abcdef"
    token = vonage_jwt(secret)
    assert looks_like_jwt(token) and not looks_like_jwt("vck_0123456789ab_secret") and not looks_like_jwt("ct" + "a" * 40)
    claims = check_vonage_jwt(secret, token, now=time.time(), application_id="aaaaaaaa-bbbb-cccc-dddd-0123456789ab")
    assert claims["api_key"] == "abcd1234"
    assert unverified_jwt_claims(token)["application_id"] == "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
    body = b'{"from":"447700900000","to":"447700900001","uuid":"63f61863"}'
    hashed = vonage_jwt(secret, payload_hash=hashlib.sha256(body).hexdigest())
    check_vonage_jwt(secret, hashed, now=time.time(), body=body)
    refusals = {
        "wrong secret": (vonage_jwt("another-secret-0123456789012345-abcdefgh"), {}),
        "stale": (vonage_jwt(secret, iat=int(time.time()) - 600), {}),
        "other application": (token, {"application_id": "ffffffff-0000-0000-0000-000000000000"}),
        "body changed": (hashed, {"body": body.replace(b"447700900001", b"447700900002")}),
        "alg none": (jwt.encode({"iat": int(time.time())}, None, algorithm="none"), {}),
        "no iat": (jwt.encode({"application_id": "x"}, secret, algorithm="HS256"), {}),
        "missing": (None, {}),
    }
    for name, (value, options) in refusals.items():
        with pytest.raises(SignatureError):
            check_vonage_jwt(secret, value, now=time.time(), **options)  # type: ignore[arg-type]
            pytest.fail(f"accepted: {name}")


# --------------------------------------------------------------------------- credentials


@pytest.mark.parametrize(
    ("provider", "fields", "message"),
    [
        ("twilio", {"auth_tokn": "x"}, "no credential 'auth_tokn'"),
        ("twilio", {"auth_token": "  "}, "non-empty"),
        ("twilio", {"auth_token": "has space"}, "printable"),
        ("exotel", {"auth_token": "x"}, "stream secret"),
        ("skype", {"x": "y"}, "unknown provider"),
    ],
)
def test_bad_credentials_name_the_problem(provider: str, fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_credentials(provider, fields)
