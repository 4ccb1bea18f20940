"""A fake of Telnyx Call Control's Dial command (``POST /v2/calls``) and its webhooks.

Written from Telnyx's API reference (Dial, call.* / streaming.* webhooks, API errors):

* ``POST /v2/calls``, JSON, ``Authorization: Bearer <API key>``; required ``to``, ``from``,
  ``connection_id``; ``stream_url`` (+ ``stream_auth_token``, ``stream_bidirectional_codec``),
  ``webhook_url``, ``client_state`` (base64), ``answering_machine_detection``, ``command_id``
  (idempotency: a repeated ``command_id`` answers the same call and dials nothing). Wrong or missing
  key: 401 ``{"errors": [{"code": "10009", "title": "Authentication failed", …}]}``; bad JSON 400
  (10023); a missing or malformed field 422 (10004 / 10016, ``source.pointer``); an unknown
  connection 422. Accepted: 200 ``{"data": {"call_control_id", "call_leg_id", "call_session_id",
  "is_alive": false, "record_type": "call"}}``.
* Webhooks: JSON ``{"data": {"record_type": "event", "event_type", "id", "occurred_at", "payload"},
  "meta": {"attempt", "delivered_to"}}`` signed Ed25519 over ``"{telnyx-timestamp}|{body}"``
  (``telnyx-signature-ed25519``, ``telnyx-timestamp``) with the account's key pair — the tenant
  stores :attr:`FakeTelnyxApi.public_key`. ``call.initiated``, ``call.answered``,
  ``call.machine.detection.ended`` (when detection was asked), ``streaming.started`` /
  ``streaming.stopped``, ``call.hangup`` with ``hangup_cause`` (normal_clearing, user_busy,
  timeout, not_found) and ``sip_hangup_cause``.
* On answer the media stream goes to ``stream_url`` (``TelnyxClient``), ``stream_auth_token`` in
  the ``x-telnyx-streaming-auth-token`` upgrade header.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from voicecore.testing.callers import TelnyxClient
from voicecore.testing.provider_apis.base import DialRecord, FakeProviderApi, new_uuid


def telnyx_error(status: int, code: str, title: str, detail: str, pointer: str | None = None) -> web.Response:
    error: dict[str, Any] = {"code": code, "title": title, "detail": detail}
    if pointer is not None:
        error["source"] = {"pointer": pointer}
    return web.json_response({"errors": [error]}, status=status)


def iso(t: float | None = None) -> str:
    return datetime.fromtimestamp(t if t is not None else time.time(), UTC).isoformat().replace("+00:00", "Z")


def is_e164(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("+") and value[1:].isdigit() and 8 <= len(value) <= 16


class DialledTelnyxClient(TelnyxClient):
    """Telnyx's media stream of a dialled call: its ids and ``client_state`` in the start message."""

    def __init__(self, ws_url: str, *, call_control_id: str, call_session_id: str, client_state: str, **kw: Any):
        super().__init__(ws_url, **kw)
        self.call_control_id = call_control_id
        self.call_session_id = call_session_id
        self.client_state = client_state

    def start_message(self, media_format: dict[str, Any] | None = None) -> str:
        msg = json.loads(super().start_message(media_format))
        msg["start"]["call_session_id"] = self.call_session_id
        msg["start"]["client_state"] = self.client_state
        return json.dumps(msg)


class FakeTelnyxApi(FakeProviderApi):
    """Telnyx's Call Control API for one account: ``api_key``, one Call Control App
    ``connection_id``, an Ed25519 key pair signing the webhooks (``public_key`` for the tenant)."""

    provider = "telnyx"

    def __init__(self, api_key: str, connection_id: str, *, webhook_url: str | None = None,
                 signing_key: Ed25519PrivateKey | None = None, **kw: Any):  # fmt: skip
        super().__init__(**kw)
        self.api_key = api_key
        self.connection_id = connection_id
        self.webhook_url = webhook_url  # the Call Control App's webhook URL (when the dial names none)
        self.signing_key = signing_key or Ed25519PrivateKey.generate()
        self._by_command: dict[str, DialRecord] = {}

    @property
    def public_key(self) -> str:
        """The account's public key as the Mission Control Portal shows it (base64 of the raw 32 bytes)."""
        raw = self.signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v2/calls", self.dial)]

    async def dial(self, request: web.Request) -> web.Response:
        received = time.monotonic()
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            body = None
        params = body if isinstance(body, dict) else {}
        to, from_ = params.get("to"), params.get("from")
        if isinstance(to, list) and len(to) == 1:
            to = to[0]
        note = lambda status, call_id=None: self.note_request(  # noqa: E731
            request, status, to=to if isinstance(to, str) else None, from_=from_ if isinstance(from_, str) else None,
            params=params, call_id=call_id)
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip(), self.api_key):
            note(401)
            return telnyx_error(401, "10009", "Authentication failed", "The required authentication headers were "
                                "either invalid or not included in the request.")  # fmt: skip
        if not isinstance(body, dict):
            note(400)
            return telnyx_error(400, "10023", "Invalid JSON", "The supplied JSON is invalid.")
        for name in ("to", "from", "connection_id"):
            if not params.get(name):
                note(422)
                return telnyx_error(422, "10004", "Missing required parameter",
                                    f"The '{name}' parameter is required.", f"/{name}")  # fmt: skip
        for name, value in (("to", to), ("from", from_)):
            if not is_e164(value):
                note(422)
                return telnyx_error(422, "10016", "Phone number must be in +E.164 format",
                                    f"The '{name}' parameter must be in +E.164 format.", f"/{name}")  # fmt: skip
        if params["connection_id"] != self.connection_id:
            note(422)
            return telnyx_error(422, "10017", "Associated resource does not exist",
                                "The connection_id does not match a Call Control App of this account.",
                                "/connection_id")  # fmt: skip
        command_id = params.get("command_id")
        if isinstance(command_id, str) and command_id in self._by_command:
            record = self._by_command[command_id]
            note(200, record.call_id)
            return web.json_response({"data": self.call_data(record)})
        scenario = self.scenario_for(to)
        if scenario.outcome == "fail_500":
            note(500)
            return telnyx_error(500, "10007", "Unexpected error", "An unexpected error occured.")
        if scenario.outcome == "timeout":
            entry = note(0)
            await self.hold()
            entry.status = 503
            return telnyx_error(503, "10008", "Request timeout", "The request timed out.")
        call_control_id = "v3:" + base64.urlsafe_b64encode(new_uuid().encode()).decode().rstrip("=")
        note(200, call_control_id)
        record = self.place(call_control_id, to, from_, params, received)
        record.ids.update(call_leg_id=new_uuid(), call_session_id=new_uuid())
        if isinstance(command_id, str):
            self._by_command[command_id] = record
        self.spawn(self.run_call(record, self._play), f"telnyx-{to}")
        return web.json_response({"data": self.call_data(record)})

    def call_data(self, record: DialRecord) -> dict[str, Any]:
        data = {"call_control_id": record.call_id, **record.ids, "is_alive": False, "record_type": "call"}
        if record.params.get("client_state"):
            data["client_state"] = record.params["client_state"]
        return data

    # -- the call ----------------------------------------------------------------------------

    def signed(self, body: bytes) -> dict[str, str]:
        timestamp = str(int(time.time()))
        signature = base64.b64encode(self.signing_key.sign(timestamp.encode() + b"|" + body)).decode()
        return {"Content-Type": "application/json", "telnyx-signature-ed25519": signature,
                "telnyx-timestamp": timestamp, "User-Agent": "telnyx-webhooks"}  # fmt: skip

    async def _play(self, record: DialRecord) -> None:
        p = record.params
        url = p.get("webhook_url") or self.webhook_url
        amd = p.get("answering_machine_detection") not in (None, "disabled")
        sc = record.scenario
        base = {"call_control_id": record.call_id, **record.ids, "client_state": p.get("client_state"),
                "connection_id": self.connection_id, "from": record.from_, "to": record.to,
                "direction": "outgoing"}  # fmt: skip

        async def event(event_type: str, **payload: Any) -> None:
            record.status = event_type
            if not isinstance(url, str) or not url:
                return
            body = json.dumps({
                "data": {"record_type": "event", "event_type": event_type, "id": new_uuid(), "occurred_at": iso(),
                         "payload": base | payload},
                "meta": {"attempt": 1, "delivered_to": url},
            }).encode()  # fmt: skip
            await self.post(record, event_type, url, body, self.signed(body))

        async def hangup(cause: str, sip: str, source: str) -> None:
            record.ended_at = time.monotonic()
            await event("call.hangup", state="hangup", hangup_cause=cause, sip_hangup_cause=sip, hangup_source=source,
                        start_time=iso(record.wall), end_time=iso())  # fmt: skip

        await event("call.initiated", state="bridging")
        await asyncio.sleep(sc.ring_s)
        if sc.outcome == "busy":
            await hangup("user_busy", "486", "callee")
            return
        if sc.outcome == "no_answer":
            await hangup("timeout", "487", "unknown")
            return
        if sc.outcome == "failed":
            await hangup("not_found", "404", "unknown")
            return
        record.answered_at = time.monotonic()
        await event("call.answered", state="answered", start_time=iso())
        if amd:
            await event("call.machine.detection.ended", result="machine" if sc.outcome == "machine" else "human")
        if sc.outcome == "machine":
            await asyncio.sleep(sc.machine_greeting_s)
            record.ended_by = "line"
            await hangup("normal_clearing", "200", "callee")
            return
        stream_url = p.get("stream_url")
        if not isinstance(stream_url, str) or not stream_url:
            record.stream_error = "no stream_url: nothing to stream to"
            record.ended_by = "line"
        else:
            record.stream_url = stream_url
            if p.get("stream_bidirectional_codec", "PCMU") != "PCMU":
                record.stream_error = "the fake streams PCMU only"
            stream_id = new_uuid()
            stream = {"stream_id": stream_id, "stream_url": stream_url, "stream_type": "websocket"}
            client = DialledTelnyxClient(
                stream_url, call_control_id=record.call_id, call_session_id=record.ids["call_session_id"],
                client_state=p.get("client_state") or "", token=p.get("stream_auth_token"), token_in="header",
                caller=record.from_, callee=record.to, label=f"telnyx-{record.to}")  # fmt: skip
            client.stream_id = stream_id
            await event("streaming.started", **stream)
            await self.play_callee(record, client)
            await event("streaming.stopped", **stream)
        await hangup("normal_clearing", "200", "caller" if record.ended_by == "agent" else "callee")

