"""A fake of Twilio's Programmable Voice REST API: "Create a Call" and its status callbacks.

Written from Twilio's documentation (Call resource, status callbacks, <Connect><Stream>):

* ``POST /2010-04-01/Accounts/{AccountSid}/Calls.json``, form-encoded (``To``, ``From``, one of
  ``Twiml`` / ``Url``, ``StatusCallback``, ``StatusCallbackEvent`` (repeated, or space-separated),
  ``StatusCallbackMethod``, ``MachineDetection``, ``Timeout``), HTTP Basic auth
  ``AccountSid:AuthToken``. Wrong or missing credentials: 401
  ``{"code": 20003, "message": "Authenticate", "more_info": …, "status": 401}``; a missing
  parameter: 400 with its error code (21201 To, 21603 From, 21205 Url/Twiml). Accepted: 201 with
  the Call resource in JSON, ``status: "queued"``.
* Status callbacks: form POSTs signed with ``X-Twilio-Signature``
  (``RequestValidator(auth_token).compute_signature(url, params)``), only for the subscribed
  events (``completed`` always): ``initiated`` (CallStatus initiated), ``ringing`` (ringing),
  ``answered`` (in-progress, with ``AnsweredBy`` when MachineDetection is on), ``completed``
  (CallStatus completed / busy / no-answer / failed, ``CallDuration``), with ``CallbackSource``
  call-progress-events and an increasing ``SequenceNumber``.
* ``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`` ("Update a Call": new ``Twiml``
  or ``Url`` for a live call, e.g. ``<Dial>`` to transfer it): 200 with the Call resource, 404
  (code 20404) for a call the account does not have; the running ``<Connect><Stream>`` ends
  (a fake-placed call's media stream stops). Every update is kept in ``api.updates``.
* On answer the TwiML runs: ``<Connect><Stream url=…>`` with its ``<Parameter>``s becomes
  Twilio's media stream (``TwilioClient``, the parameters in ``start.customParameters``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import hmac
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from twilio.request_validator import RequestValidator

from voicecore.testing.callers import TwilioClient
from voicecore.testing.provider_apis.base import DialRecord, FakeProviderApi, new_sid

API_VERSION = "2010-04-01"


def twilio_error(status: int, code: int, message: str) -> web.Response:
    """Twilio's REST error body."""
    return web.json_response(
        {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status},
        status=status,
        headers={"WWW-Authenticate": 'Basic realm="Twilio API"'} if status == 401 else None,
    )


def rfc2822(t: float | None = None) -> str:
    return email.utils.format_datetime(datetime.fromtimestamp(t if t is not None else time.time(), UTC))


def parse_stream(twiml: str) -> tuple[str, dict[str, str]] | None:
    """The ``<Connect><Stream url>`` of a TwiML document and its ``<Parameter>``s (None: no stream)."""
    try:
        root = ET.fromstring(twiml.strip())
    except ET.ParseError:
        return None
    if root.tag != "Response":
        return None
    stream = root.find("./Connect/Stream")
    if stream is None or not stream.get("url"):
        return None
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter") if p.get("name")}
    return stream.get("url", ""), params


@dataclass
class CallUpdate:
    """One "Update a Call" request as received."""

    call_sid: str
    params: dict[str, list[str]]
    authorized: bool  # signed with the account's Basic auth
    status: int  # what the fake answered


class FakeTwilioApi(FakeProviderApi):
    """Twilio's REST API for one account (``account_sid``, ``auth_token``)."""

    provider = "twilio"

    def __init__(self, account_sid: str, auth_token: str, **kw: Any):
        super().__init__(**kw)
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.updates: list[CallUpdate] = []
        #: Live calls the fake did not place (inbound test calls) that "Update a Call" accepts.
        self.live_calls: set[str] = set()

    def routes(self) -> list[web.RouteDef]:
        return [web.post(f"/{API_VERSION}/Accounts/{{sid}}/Calls.json", self.create_call),
                web.post(f"/{API_VERSION}/Accounts/{{sid}}/Calls/{{call_sid}}.json", self.update_call)]

    async def update_call(self, request: web.Request) -> web.Response:
        form = await request.post() if request.content_type == "application/x-www-form-urlencoded" else {}
        params = {k: [str(v) for v in form.getall(k)] for k in set(form)} if form else {}
        call_sid = request.match_info["call_sid"]
        update = CallUpdate(call_sid, params, self._authorized(request), 0)
        self.updates.append(update)
        record = self.call(call_sid)
        if not update.authorized:
            update.status = 401
            return twilio_error(401, 20003, "Authenticate")
        if record is None and call_sid not in self.live_calls:
            update.status = 404
            return twilio_error(404, 20404, f"The requested resource /{API_VERSION}/Accounts/{self.account_sid}"
                                            f"/Calls/{call_sid}.json was not found")  # fmt: skip
        if not any(params.get(k) for k in ("Twiml", "Url", "Status")):
            update.status = 400
            return twilio_error(400, 21205, "Url parameter is required.")
        update.status = 200
        if record is not None and record.client is not None and not record.client.closed.is_set():
            self.spawn(record.client.hangup(), f"twilio-update-{call_sid}")  # the <Stream> ends: Twilio stops it
        if record is None:
            record = DialRecord(call_sid, "", "", self.default_scenario, params, time.monotonic(), time.time())
        return web.json_response(self.resource(record) | {"status": "in-progress"}, status=200)

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return (hmac.compare_digest(user, self.account_sid) and hmac.compare_digest(password, self.auth_token)
                and request.match_info["sid"] == self.account_sid)  # fmt: skip

    async def create_call(self, request: web.Request) -> web.Response:
        received = time.monotonic()
        form = await request.post() if request.content_type == "application/x-www-form-urlencoded" else {}
        params = {k: [str(v) for v in form.getall(k)] for k in set(form)} if form else {}
        to, from_ = (params.get("To") or [None])[0], (params.get("From") or [None])[0]
        if not self._authorized(request):
            self.note_request(request, 401, to=to, from_=from_, params=params)
            return twilio_error(401, 20003, "Authenticate")
        error = None
        if not to:
            error = (21201, "No 'To' number is specified")
        elif not from_:
            error = (21603, "A 'From' phone number is required.")
        elif not (to.startswith("+") and to[1:].isdigit() and 8 <= len(to) <= 16):
            error = (21211, f"Invalid 'To' Phone Number: {to}")
        elif not any(params.get(k) for k in ("Twiml", "Url", "ApplicationSid")):
            error = (21205, "Url parameter is required.")
        if error is not None:
            self.note_request(request, 400, to=to, from_=from_, params=params)
            return twilio_error(400, *error)
        assert to is not None and from_ is not None
        scenario = self.scenario_for(to)
        if scenario.outcome == "fail_500":
            self.note_request(request, 500, to=to, from_=from_, params=params)
            return twilio_error(500, 20500, "An internal server error has occurred")
        if scenario.outcome == "timeout":
            entry = self.note_request(request, 0, to=to, from_=from_, params=params)
            await self.hold()
            entry.status = 503
            return twilio_error(503, 20503, "Service unavailable")
        sid = new_sid("CA")
        self.note_request(request, 201, to=to, from_=from_, params=params, call_id=sid)
        record = self.place(sid, to, from_, params, received)
        self.spawn(self.run_call(record, self._play), f"twilio-{sid}")
        return web.json_response(self.resource(record), status=201)

    def resource(self, record: DialRecord) -> dict[str, Any]:
        """The Call resource as Twilio answers a create-call request."""
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{record.call_id}"
        return {
            "account_sid": self.account_sid, "annotation": None, "answered_by": None, "api_version": API_VERSION,
            "caller_name": None, "date_created": rfc2822(record.wall), "date_updated": rfc2822(record.wall),
            "direction": "outbound-api", "duration": None, "end_time": None, "forwarded_from": None,
            "from": record.from_, "from_formatted": record.from_, "group_sid": None, "parent_call_sid": None,
            "phone_number_sid": None, "price": None, "price_unit": "USD", "queue_time": "0",
            "sid": record.call_id, "start_time": None, "status": "queued",
            "subresource_uris": {name: f"{uri}/{name.title().replace('_', '')}.json" for name in
                                 ("notifications", "recordings", "payments", "events", "siprec", "streams",
                                  "transcriptions", "user_defined_message_subscriptions", "user_defined_messages")},
            "to": record.to, "to_formatted": record.to, "trunk_sid": None, "uri": f"{uri}.json",
        }  # fmt: skip

    # -- the call ----------------------------------------------------------------------------

    def _call_params(self, record: DialRecord, call_status: str) -> dict[str, str]:
        return {"AccountSid": self.account_sid, "ApiVersion": API_VERSION, "CallSid": record.call_id,
                "CallStatus": call_status, "Called": record.to, "Caller": record.from_, "Direction": "outbound-api",
                "From": record.from_, "To": record.to}  # fmt: skip

    def signed(self, url: str, params: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        signature = RequestValidator(self.auth_token).compute_signature(url, params)
        return urlencode(params).encode(), {"Content-Type": "application/x-www-form-urlencoded",
                                            "X-Twilio-Signature": signature, "User-Agent": "TwilioProxy/1.1"}

    async def _play(self, record: DialRecord) -> None:
        p = record.params
        first = lambda k: (p.get(k) or [None])[0]  # noqa: E731
        url = first("StatusCallback")
        events = {e for v in p.get("StatusCallbackEvent", []) for e in v.replace(",", " ").split()} | {"completed"}
        amd = first("MachineDetection") in ("Enable", "DetectMessageEnd")
        sc = record.scenario
        seq = 0

        async def status(event: str, call_status: str, **extra: str) -> None:
            nonlocal seq
            record.status = call_status
            if not url or event not in events:
                return
            params = self._call_params(record, call_status) | {
                "CallbackSource": "call-progress-events", "SequenceNumber": str(seq), "Timestamp": rfc2822()} | extra
            seq += 1
            body, headers = self.signed(url, params)
            await self.post(record, event, url, body, headers)

        async def final(call_status: str, sip: str, **extra: str) -> None:
            record.ended_at = time.monotonic()
            duration = 0 if record.answered_at is None else round(record.ended_at - record.answered_at)
            await status("completed", call_status, CallDuration=str(duration), SipResponseCode=sip, **extra)

        await status("initiated", "initiated")
        if sc.outcome in ("busy", "failed"):
            await asyncio.sleep(sc.ring_s)
            await final(*(("busy", "486") if sc.outcome == "busy" else ("failed", "404")))
            return
        await status("ringing", "ringing")
        await asyncio.sleep(sc.ring_s)
        if sc.outcome == "no_answer":
            await final("no-answer", "487")
            return
        record.answered_at = time.monotonic()
        if sc.outcome == "machine" and first("AsyncAmd") == "true":
            await self._machine_with_media(record, status, final, first)
            return
        answered = {"AnsweredBy": "machine_start" if sc.outcome == "machine" else "human"} if amd else {}
        await status("answered", "in-progress", **answered)
        if sc.outcome == "machine":
            await asyncio.sleep(sc.machine_greeting_s)  # the machine's greeting, then it hangs up
            record.ended_by = "line"
            await final("completed", "200", **answered)
            return
        twiml = first("Twiml") or await self._fetch_twiml(record, first("Url"), first("Method") or "POST", answered)
        stream = parse_stream(twiml or "")
        if stream is None:
            record.stream_error = "the TwiML has no <Connect><Stream url=…>: the call ends"
            record.ended_by = "line"
        else:
            record.stream_url, custom = stream
            client = TwilioClient(record.stream_url, custom=custom, call_sid=record.call_id, caller=record.from_,
                                  callee=record.to, label=f"twilio-{record.to}")  # fmt: skip
            client.account_sid = self.account_sid
            await self.play_callee(record, client)
        await final("completed", "200", **answered)

    async def _machine_with_media(self, record: DialRecord, status: Any, final: Any, first: Any) -> None:
        """Asynchronous AMD as Twilio documents it: the call is connected at once (the TwiML runs,
        the media stream opens) while detection listens; the machine plays its greeting; the
        verdict (``AnsweredBy=machine_end_beep``) goes to ``AsyncAmdStatusCallback``; whatever the
        agent says next is recorded as the voicemail, until the agent hangs up (or 30 s)."""
        sc = record.scenario
        await status("answered", "in-progress")
        stream = parse_stream(first("Twiml") or "")
        if stream is None:
            record.stream_error = "the TwiML has no <Connect><Stream url=…>: the call ends"
            await final("completed", "200")
            return
        record.stream_url, custom = stream
        client = TwilioClient(record.stream_url, custom=custom, call_sid=record.call_id, caller=record.from_,
                              callee=record.to, label=f"twilio-machine-{record.to}")  # fmt: skip
        client.account_sid = self.account_sid
        record.client = client
        if not await client.connect():
            record.stream_error = f"upgrade refused with HTTP {client.handshake_status}"
            await final("completed", "200")
            return
        record.stream_connected_at = client.connected_at
        await client.open()
        client.start_mic()
        record.stream_started_at = client.opened_at
        greeting = await self.speech(" ".join(sc.script) or "Hi, you have reached my voicemail. Please leave a "
                                     "message after the tone.", sc)  # fmt: skip
        utt = client.speak(greeting)
        await asyncio.wait_for(utt.done.wait(), utt.seconds + 15)
        verdict_at = time.monotonic()
        url = first("AsyncAmdStatusCallback")
        if url:
            params = {"AccountSid": self.account_sid, "CallSid": record.call_id, "AnsweredBy": "machine_end_beep",
                      "MachineDetectionDuration": str(int((verdict_at - record.answered_at) * 1000))}  # fmt: skip
            body, headers = self.signed(url, params)
            await self.post(record, "amd", url, body, headers)
        message = await client.wait_media_after(verdict_at, 30)
        record.voicemail_at = message.t if message is not None else None
        try:
            await asyncio.wait_for(client.closed.wait(), 30)
            record.ended_by = "agent"
        except (TimeoutError, asyncio.TimeoutError):
            record.ended_by = "callee"
            await client.hangup()
        await client.close()
        await final("completed", "200")

    async def _fetch_twiml(self, record: DialRecord, url: str | None, method: str, extra: dict[str, str]) -> str | None:
        """The TwiML at ``Url`` (a signed request as for any Twilio webhook)."""
        if not url or self._http is None:
            return None
        params = self._call_params(record, "in-progress") | extra
        if method.upper() == "GET":
            full = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
            headers = {"X-Twilio-Signature": RequestValidator(self.auth_token).compute_signature(full, {})}
            request = self._http.get(full, headers=headers)
        else:
            body, headers = self.signed(url, params)
            request = self._http.post(url, data=body, headers=headers)
        try:
            async with request as resp:
                return await resp.text() if resp.status == 200 else None
        except Exception:
            return None
