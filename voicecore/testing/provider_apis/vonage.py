"""A fake of the Vonage Voice API's "Create an outbound call" (``POST /v1/calls``) and its event webhooks.

Written from Vonage's Voice API reference, its JWT authentication and signed-webhook guides and its
API error format (RFC 7807):

* ``POST /v1/calls``, JSON, ``Authorization: Bearer <JWT>`` signed RS256 with the application's
  private key (claims ``application_id``, ``iat``, ``jti``, optional ``exp``/``nbf``), checked here
  with the application's public key. ``to``: ``[{"type": "phone", "number": …}]``; ``from``:
  ``{"type": "phone", "number": …}`` (or ``random_from_number: true``); ``ncco`` or ``answer_url``;
  ``event_url`` (one URL in an array), ``event_method``, ``machine_detection`` (continue | hangup).
  Wrong or missing JWT: 401 ``{"type": ".../api-errors#unauthorized", "title": …, "detail": …,
  "instance": …}``; a bad body: 400 with ``invalid_parameters``. Accepted: 201
  ``{"uuid", "status": "started", "direction": "outbound", "conversation_uuid"}``.
* Events: JSON to ``event_url`` (``status`` started, ringing, answered, human / machine (when
  detection was asked), completed with ``duration``; busy, timeout, failed), signed as Vonage's
  signed webhooks are: ``Authorization: Bearer <JWT HS256 with the signature secret>`` with
  ``iat``, ``jti``, ``iss: Vonage``, ``api_key``, ``application_id`` and ``payload_hash``
  (SHA-256 of the body).
* On answer the NCCO runs: a ``connect`` action to a ``websocket`` endpoint becomes Vonage's media
  WebSocket (``VonageClient`` at the ``content-type``'s rate, the endpoint's ``headers`` echoed in
  ``websocket:connected``, ``authorization: {"type": "vonage"}`` → Vonage's JWT on the upgrade).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from voicecore.testing.callers import VonageClient
from voicecore.testing.provider_apis.base import DialRecord, FakeProviderApi, new_uuid

ERRORS = "https://developer.nexmo.com/api-errors"


def vonage_error(status: int, kind: str, title: str, detail: str, **extra: Any) -> web.Response:
    body = {"type": f"{ERRORS}{kind}", "title": title, "detail": detail, "instance": uuid.uuid4().hex} | extra
    return web.json_response(body, status=status, content_type="application/problem+json")


def iso(t: float | None = None) -> str:
    return datetime.fromtimestamp(t if t is not None else time.time(), UTC).isoformat(timespec="milliseconds")


def is_number(value: Any) -> bool:
    digits = value[1:] if isinstance(value, str) and value.startswith("+") else value
    return isinstance(digits, str) and digits.isdigit() and 7 <= len(digits) <= 15


class DialledVonageClient(VonageClient):
    """Vonage's media WebSocket of a dialled call: the NCCO endpoint's headers in ``websocket:connected``."""

    def __init__(self, ws_url: str, *, echoed: dict[str, Any], uuid_: str, conversation_uuid: str, **kw: Any):
        super().__init__(ws_url, **kw)
        self.echoed = echoed
        self.uuid = uuid_
        self.conversation_uuid = conversation_uuid

    def opening_messages(self) -> list[str | bytes]:
        return [self.connected_message(**self.echoed)]


def websocket_endpoint(ncco: Any) -> dict[str, Any] | None:
    """The first ``connect`` action's websocket endpoint of an NCCO."""
    if not isinstance(ncco, list):
        return None
    for action in ncco:
        if isinstance(action, dict) and action.get("action") == "connect":
            for endpoint in action.get("endpoint") or []:
                if isinstance(endpoint, dict) and endpoint.get("type") == "websocket" and endpoint.get("uri"):
                    return endpoint
    return None


class FakeVonageApi(FakeProviderApi):
    """The Voice API for one application (``application_id`` and its RSA key pair, generated unless
    ``private_key_pem`` is given: the dialer signs with :attr:`private_key_pem`) and one account
    (``signature_secret`` signs the webhooks, ``api_key`` names the account in them)."""

    provider = "vonage"

    def __init__(self, application_id: str, signature_secret: str, *, private_key_pem: str | None = None,
                 api_key: str = "abcd1234", event_url: str | None = None, **kw: Any):  # fmt: skip
        super().__init__(**kw)
        self.application_id = application_id
        self.signature_secret = signature_secret
        self.api_key = api_key
        self.event_url = event_url  # the application's event URL (when the request names none)
        if private_key_pem is None:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            private_key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()).decode()  # fmt: skip
        self.private_key_pem = private_key_pem
        private = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
        self.public_key_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/calls", self.create_call)]

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        try:
            claims = jwt.decode(token.strip(), self.public_key_pem, algorithms=["RS256"],
                                options={"require": ["iat", "jti", "application_id"]}, leeway=30)  # fmt: skip
        except jwt.PyJWTError:
            return False
        return claims.get("application_id") == self.application_id

    def _invalid(self, body: dict[str, Any]) -> list[dict[str, str]]:
        problems = []
        to = body.get("to")
        if not (isinstance(to, list) and to and all(isinstance(e, dict) for e in to)):
            problems.append({"name": "to", "reason": "must be an array of endpoints"})
        elif to[0].get("type") == "phone" and not is_number(to[0].get("number")):
            problems.append({"name": "to[0].number", "reason": "must be a phone number in E.164 format"})
        frm = body.get("from")
        if not body.get("random_from_number"):
            if not isinstance(frm, dict) or frm.get("type") != "phone" or not is_number(frm.get("number")):
                problems.append({"name": "from", "reason": "must be a phone endpoint with an E.164 number"})
        if not body.get("ncco") and not body.get("answer_url"):
            problems.append({"name": "ncco", "reason": "either ncco or answer_url is required"})
        event_url = body.get("event_url")
        if event_url is not None and not (isinstance(event_url, list) and len(event_url) == 1):
            problems.append({"name": "event_url", "reason": "must be an array with one URL"})
        if body.get("machine_detection") not in (None, "continue", "hangup"):
            problems.append({"name": "machine_detection", "reason": "must be one of continue, hangup"})
        return problems

    async def create_call(self, request: web.Request) -> web.Response:
        received = time.monotonic()
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            body = None
        params = body if isinstance(body, dict) else {}
        to_list = params.get("to")
        to = to_list[0].get("number") if isinstance(to_list, list) and to_list and isinstance(to_list[0], dict) else None
        frm = params.get("from")
        from_ = frm.get("number") if isinstance(frm, dict) else None
        note = lambda status, call_id=None: self.note_request(  # noqa: E731
            request, status, to=to, from_=from_, params=params, call_id=call_id)
        if not self._authorized(request):
            note(401)
            return vonage_error(401, "#unauthorized", "Invalid credentials supplied",
                                "You did not provide correct credentials.")  # fmt: skip
        if not isinstance(body, dict):
            note(400)
            return vonage_error(400, "#invalid-json", "Malformed JSON", "Malformed JSON payload.")
        problems = self._invalid(body)
        if problems:
            note(400)
            return vonage_error(400, "/voice#validation", "Bad Request", "The request failed due to validation errors",
                                invalid_parameters=problems)  # fmt: skip
        scenario = self.scenario_for(to or "")
        if scenario.outcome == "fail_500":
            note(500)
            return vonage_error(500, "#internal-error", "Internal Error", "An internal error occurred.")
        if scenario.outcome == "timeout":
            entry = note(0)
            await self.hold()
            entry.status = 503
            return vonage_error(503, "#unavailable", "Service Unavailable", "The service is unavailable.")
        call_uuid = new_uuid()
        note(201, call_uuid)
        record = self.place(call_uuid, to or "", from_ or "", params, received)
        record.ids["conversation_uuid"] = "CON-" + new_uuid()
        self.spawn(self.run_call(record, self._play), f"vonage-{to}")
        return web.json_response({"uuid": call_uuid, "status": "started", "direction": "outbound",
                                  "conversation_uuid": record.ids["conversation_uuid"]}, status=201)  # fmt: skip

    # -- the call ----------------------------------------------------------------------------

    def webhook_jwt(self, body: bytes | None = None) -> str:
        """Vonage's signed-webhook JWT (HS256 with the signature secret)."""
        claims: dict[str, Any] = {"iat": int(time.time()), "jti": new_uuid(), "iss": "Vonage", "api_key": self.api_key,
                                  "application_id": self.application_id}  # fmt: skip
        if body is not None:
            claims["payload_hash"] = hashlib.sha256(body).hexdigest()
        return jwt.encode(claims, self.signature_secret, algorithm="HS256")

    async def _play(self, record: DialRecord) -> None:
        p = record.params
        event_urls = p.get("event_url") or ([self.event_url] if self.event_url else [])
        url = event_urls[0] if event_urls else None
        amd = p.get("machine_detection") in ("continue", "hangup")
        sc = record.scenario
        base = {"from": record.from_, "to": record.to, "uuid": record.call_id,
                "conversation_uuid": record.ids["conversation_uuid"], "direction": "outbound"}  # fmt: skip

        async def event(status: str, **extra: Any) -> None:
            record.status = status
            if not isinstance(url, str) or not url:
                return
            body = json.dumps(base | {"status": status, "timestamp": iso()} | extra).encode()
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.webhook_jwt(body)}"}
            await self.post(record, status, url, body, headers)

        async def completed() -> None:
            record.ended_at = time.monotonic()
            answered = record.answered_at or record.ended_at
            duration = round(record.ended_at - answered)
            start = record.wall + (answered - record.received_at)
            await event("completed", duration=str(duration), start_time=iso(start), end_time=iso(),
                        rate="0.01270000", price=f"{0.0127 * duration / 60:.8f}", network="23410")  # fmt: skip

        await event("started")
        await asyncio.sleep(sc.ring_s)
        if sc.outcome in ("busy", "failed"):
            record.ended_at = time.monotonic()
            await event(sc.outcome)
            return
        await event("ringing")
        await asyncio.sleep(sc.ring_s)
        if sc.outcome == "no_answer":
            record.ended_at = time.monotonic()
            await event("timeout")
            return
        record.answered_at = time.monotonic()
        await event("answered", start_time=iso())
        if amd:
            await event("machine" if sc.outcome == "machine" else "human", call_uuid=record.call_id)
        if sc.outcome == "machine":
            await asyncio.sleep(sc.machine_greeting_s)  # "hangup": Vonage ends it; "continue": the machine does
            record.ended_by = "line"
            await completed()
            return
        ncco = p.get("ncco") or await self._fetch_ncco(record, p.get("answer_url"), p.get("answer_method") or "GET")
        endpoint = websocket_endpoint(ncco)
        if endpoint is None:
            record.stream_error = "the NCCO has no connect action to a websocket endpoint: the call ends"
            record.ended_by = "line"
        else:
            record.stream_url = endpoint["uri"]
            content_type = str(endpoint.get("content-type", "audio/l16;rate=8000"))
            rate = 16000 if content_type.endswith("rate=16000") else 8000
            upgrade: dict[str, str] = {}
            auth = endpoint.get("authorization")
            if isinstance(auth, dict) and auth.get("type") == "vonage":
                upgrade["Authorization"] = f"Bearer {self.webhook_jwt()}"
            elif isinstance(auth, dict) and auth.get("type") == "custom" and isinstance(auth.get("value"), str):
                upgrade["Authorization"] = auth["value"]
            headers = endpoint.get("headers") if isinstance(endpoint.get("headers"), dict) else {}
            client = DialledVonageClient(record.stream_url, echoed=headers, uuid_=record.call_id,
                                         conversation_uuid=record.ids["conversation_uuid"], rate=rate,
                                         headers=upgrade, caller=record.from_, callee=record.to,
                                         label=f"vonage-{record.to}")  # fmt: skip
            await self.play_callee(record, client)
        await completed()

    async def _fetch_ncco(self, record: DialRecord, url: Any, method: str) -> Any:
        """The NCCO at ``answer_url`` (with the signed-webhook JWT)."""
        if not isinstance(url, list) or not url or self._http is None:
            return None
        query = {"to": record.to, "from": record.from_, "uuid": record.call_id,
                 "conversation_uuid": record.ids["conversation_uuid"]}  # fmt: skip
        headers = {"Authorization": f"Bearer {self.webhook_jwt()}"}
        try:
            if method.upper() == "POST":
                request = self._http.post(url[0], json=query, headers=headers)
            else:
                request = self._http.get(f"{url[0]}{'&' if '?' in url[0] else '?'}{urlencode(query)}", headers=headers)
            async with request as resp:
                return await resp.json(content_type=None) if resp.status == 200 else None
        except Exception:
            return None
