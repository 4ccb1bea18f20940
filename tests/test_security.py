"""Security and privacy hardening (issue 11): each finding of the attack run, reproduced.

1. keys in the log at INFO (uvicorn logged ``?token=`` with the WebSocket path);
2. erasure missed the outbox (a pending event kept the erased number);
3. webhook SSRF (names that resolve to the loopback, checked only as literals);
4. a backup of the data directory decrypted a deleted tenant (the keys sat inside it);
5. roles ignored on call paths (a viewer key opened media streams, learned opt-outs);
6. HTTP 500s (a lone surrogate, 30,000 nested brackets);
7. no throttle, no body cap (scrypt per bad key, 40 MiB read before the 401);
8. exports outlived erasure (plaintext files);
9. the audit log filtered by tenant name (a re-created tenant saw the old log).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from test_api_permissions import AsgiClient
from twilio.request_validator import RequestValidator

from voicecore.records import CallRecord, Turn
from voicecore.server import create_app, running_server
from voicecore.server.guard import AuthThrottle, Throttled
from voicecore.server.webhooks import WebhookWorker
from voicecore.storage import Store
from voicecore.storage.crypto import field_aad
from voicecore.testing.callers import PlivoClient, TelnyxClient, with_query

ALLOW_INSECURE_WEBHOOKS = True  # the stores of this module deliver to receivers on 127.0.0.1
TENANTS = {"acme": None}
ERASED = "+14155550177"


def secret_of(key: str) -> str:
    """The secret part of an API key (``vck_<id>_<secret>``)."""
    return key.split("_", 2)[2]


def call_mentioning(tenant: str, number: str) -> CallRecord:
    """A call from someone else in which ``number`` is said (and so lands in the report too)."""
    rec = CallRecord(tenant=tenant, caller="+14155550123", callee="+14155550000", pipeline="receptionist",
                     transport="twilio")  # fmt: skip
    rec.turns = [Turn("caller", "Please call my wife back on 415 555 0177."), Turn("agent", "Noted.")]
    rec.ended_at = rec.started_at + 10
    return rec


class LogCapture:
    """Every line of every level from loguru and from stdlib logging (uvicorn, websockets, aiohttp)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._sink: int | None = None
        self._handler = logging.Handler(logging.DEBUG)
        self._handler.emit = lambda record: self.lines.append(self._handler.format(record))  # type: ignore[method-assign]
        self._loggers = [logging.getLogger(n) for n in ("", "uvicorn", "uvicorn.error", "websockets", "aiohttp")]

    def __enter__(self) -> LogCapture:
        self._sink = logger.add(self.lines.append, level="TRACE", format="{message} {extra} {exception}")
        for log in self._loggers:
            log.addHandler(self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._sink is not None
        logger.remove(self._sink)
        for log in self._loggers:
            log.removeHandler(self._handler)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def keys(store: Store) -> dict[str, str]:
    out = {"admin": store.tenants.create_api_key("acme", role="admin", actor="test")}
    for role in ("agent", "analyst", "viewer"):
        out[role] = store.tenants.create_api_key("acme", role=role, actor="test")
    return out


@pytest.fixture
def app(store: Store, receptionist: Any, tmp_path: Path) -> Any:
    """The server's app with no models loaded: every request here is refused before a call starts."""
    return create_app(data_dir=tmp_path, store=store, preload=False, pipelines={receptionist.name: receptionist})


# --------------------------------------------------------------------------- 1. keys out of logs


async def test_no_key_token_or_secret_reaches_any_log_line_at_any_level(app: Any, store: Store,
                                                                        keys: dict[str, str]) -> None:  # fmt: skip
    wrong = "vck_0123456789ab_" + "s3cretSECRETs3cretSECRET0123456789abcdefghi"
    async with running_server(app, log_level="debug") as base:
        with LogCapture() as logs:  # once uvicorn has set up its loggers
            ws = "ws" + base.removeprefix("http")
            for token in (keys["viewer"], wrong):  # refused (role, unknown key) after the upgrade
                client = PlivoClient(with_query(f"{ws}/ws/plivo", token=token), label="plivo-query")
                assert await client.start(mic=False)
                await client.wait_closed(10)
                assert client.close_code == 1008
            telnyx = TelnyxClient(f"{ws}/ws/telnyx", token=keys["analyst"], token_in="header")
            assert await telnyx.start(mic=False)
            await telnyx.wait_closed(10)
            http = AsgiClient(app)
            assert (await http.request("GET", "/v1/me", key=keys["admin"])).status == 200
            assert (await http.request("POST", "/webrtc/token", key=keys["viewer"])).status == 403
            import aiohttp

            async with aiohttp.ClientSession() as session:
                url = f"{base}/providers/twilio/acme/answer"
                form = {"CallSid": "CA1", "From": "+14155550100"}
                async with session.post(url, data=form, headers={"X-Twilio-Signature": keys["viewer"]}) as reply:
                    assert reply.status == 403
    text = logs.text
    accepted = [line for line in logs.lines if "[accepted]" in line]
    assert any('"WebSocket /ws/plivo"' in line for line in accepted)  # uvicorn's line (so the test can fail) ...
    assert not any("token" in line for line in accepted)  # ... without the token in its URL
    assert "?token=[redacted]" in text  # the websockets library's DEBUG request line, redacted
    assert "x-telnyx-streaming-auth-token: [redacted]" in text.lower()  # websockets' DEBUG header lines
    for key in (*keys.values(), wrong):
        assert secret_of(key) not in text, "an API key reached the log"


def test_the_redaction_covers_every_form_of_credential() -> None:
    from voicecore.server.logs import redact_secrets

    key = "vck_0123456789ab_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
    for line in (f"GET /ws/vonage?from=1&token={key} HTTP/1.1", f"< Authorization: Bearer {key}",
                 "< x-telnyx-streaming-auth-token: sometoken123", "ct_AbCdEfGhIjKlMnOpQrStUvWx",
                 "whsec_abcdefghijklmnop", "password=hunter2&x=1"):  # fmt: skip
        cleaned = redact_secrets(line)
        assert "[redacted]" in cleaned
        for secret in (key, "sometoken123", "ct_AbCdEfGh", "whsec_abc", "hunter2", "0a1b2c3d4e", "0123456789",
                       "c2lnbmF0dXJl"):
            assert secret not in cleaned


def test_serve_log_level_governs_uvicorn_too(app: Any) -> None:
    from voicecore.server.app import _uvicorn_config

    _uvicorn_config(app, "127.0.0.1", 0, log_level="WARNING")
    assert logging.getLogger("uvicorn.error").getEffectiveLevel() == logging.WARNING
    _uvicorn_config(app, "127.0.0.1", 0, log_level="DEBUG")
    assert logging.getLogger("uvicorn.error").getEffectiveLevel() == logging.DEBUG


# --------------------------------------------------------------------------- 2. erasure reaches the outbox


def outbox_text(store: Store, tenant: str) -> str:
    t = store.tenants.row(tenant)
    keys = store.tenants.data_keys(t)
    payloads = [
        keys.decrypt_json(r["payload_enc"], field_aad("outbox", t.id, r["event_id"], "payload"))
        for r in store.db.rows("SELECT event_id, payload_enc FROM outbox WHERE tenant_id = ?", (t.id,))
    ]
    return json.dumps(payloads)


async def test_erasure_scrubs_the_number_from_pending_outbox_events_before_they_are_sent(
    store: Store, receiver: Any
) -> None:
    if True:  # noqa: SIM108
        store.outbox.create_webhook("acme", receiver.url, ["report.ready"], actor="test")
        rec = call_mentioning("acme", ERASED)
        assert store.calls.save(rec)
        store.calls.save_report("acme", rec.call_id, {"summary": "Call back on 415 555 0177.",
                                                      "contact": {"phone": ERASED}})  # fmt: skip
        assert "0177" in outbox_text(store, "acme")  # pending, with the number (so the test can fail)
        result = store.subjects.erase("acme", ERASED, actor="test")
        assert result.mentions_scrubbed >= 2
        assert "0177" not in outbox_text(store, "acme")
        worker = WebhookWorker(store, poll_interval_s=0.05)
        task = asyncio.create_task(worker.run())
        try:
            deadline = time.monotonic() + 15
            while not receiver.events("report.ready"):
                assert time.monotonic() < deadline, "the report was not delivered"
                await asyncio.sleep(0.05)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)
        (delivered,) = receiver.events("report.ready")
        assert "0177" not in delivered.body.decode() and "[erased]" in delivered.body.decode()


# --------------------------------------------------------------------------- 3. webhook SSRF


async def test_a_name_that_resolves_elsewhere_at_delivery_time_is_not_connected_to(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: public when registered, the loopback when the sender connects."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    connections: list[Any] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                connections.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    real = socket.getaddrinfo
    answers = {"rebind.example.com": "93.184.216.34"}

    def fake_getaddrinfo(host: Any, port_: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], int(port_ or 443)))]
        return real(host, port_, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    strict = Store(store.data_dir, key_dir=store.keys.key_dir)  # the same data, webhooks locked down
    try:
        endpoint, _ = strict.outbox.create_webhook("acme", f"https://rebind.example.com:{port}/hook", actor="test")
        answers["rebind.example.com"] = "127.0.0.1"  # the name now points at this machine
        assert strict.calls.save(call_mentioning("acme", ERASED))
        worker = WebhookWorker(strict, max_attempts=1, poll_interval_s=0.05, timeout_s=2)
        task = asyncio.create_task(worker.run())
        try:
            deadline = time.monotonic() + 15
            while not strict.outbox.deliveries("acme", endpoint.id) or strict.outbox.deliveries(
                "acme", endpoint.id
            )[0].status != "dead":
                assert time.monotonic() < deadline, "the delivery never failed"
                await asyncio.sleep(0.05)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)
        (delivery,) = strict.outbox.deliveries("acme", endpoint.id)
        assert delivery.last_error == "address not allowed" and delivery.last_status is None
        assert connections == [], "the sender connected to the loopback"
    finally:
        stop.set()
        thread.join(2)
        listener.close()
        strict.close()


async def test_registering_internal_addresses_is_refused_through_the_api(app: Any, store: Store, keys: dict[str, str],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    store.outbox.allow_insecure_webhooks = False  # as `serve` runs without --allow-insecure-webhooks
    http = AsgiClient(app)
    for url in ("http://127.0.0.1:22/", "https://localhost:6379/", "https://10.0.0.1/", "https://[fd00:ec2::254]/",
                "https://0x7f000001:8443/", "https://169.254.169.254/latest", "https://100.64.0.1/"):  # fmt: skip
        reply = await http.request("POST", "/v1/webhooks", key=keys["admin"], json_body={"url": url})
        assert reply.status == 422, (url, reply.text)
    assert store.outbox.webhooks("acme") == []


# --------------------------------------------------------------------------- 5. roles on call paths


async def test_only_agent_and_admin_keys_open_calls_and_a_refusal_tells_nothing_about_opt_outs(
    app: Any, store: Store, keys: dict[str, str]
) -> None:
    import aiohttp

    store.subjects.add_optout("acme", "+14155550111", actor="test")
    state = app.state.vc
    async with running_server(app) as base:
        ws = "ws" + base.removeprefix("http")
        for role in ("viewer", "analyst"):
            client = PlivoClient(f"{ws}/ws/plivo", token=keys[role], token_in="extra_headers")
            assert await client.start(mic=False)
            await client.wait_closed(10)
            assert client.close_code == 1008, role
        assert state.calls_started == 0
        async with aiohttp.ClientSession() as session:
            # Provider answer URLs take no API key at all: the provider's signature decides, and a
            # refusal of an outbound call to an opted-out number happens only for a signed request.
            store.providers.set("acme", "twilio", {"auth_token": "twilio-auth-token"}, actor="test")
            url = f"{base}/providers/twilio/acme/answer"
            answers = {}
            for signed in (False, True):
                for callee in ("+14155550111", "+14155550222"):  # opted out, and not
                    form = {"CallSid": f"CA{signed}{callee}", "Direction": "outbound-api", "To": callee}
                    signature = RequestValidator("twilio-auth-token").compute_signature(url, form) if signed else \
                        keys["admin"]
                    async with session.post(url, data=form, headers={"X-Twilio-Signature": signature}) as reply:
                        answers[(signed, callee)] = (reply.status, await reply.text())
            assert answers[(False, "+14155550111")] == answers[(False, "+14155550222")]  # nothing to tell apart
            assert answers[(False, "+14155550111")][0] == 403
            assert "<Hangup" in answers[(True, "+14155550111")][1]
            assert "<Connect>" in answers[(True, "+14155550222")][1]
            for role, status in (("viewer", 403), ("analyst", 403), ("agent", 200), ("admin", 200)):
                async with session.post(f"{base}/webrtc/token", headers={"Authorization": f"Bearer {keys[role]}"}) as r:
                    assert r.status == status, role
    me = await AsgiClient(app).request("GET", "/v1/me", key=keys["agent"])
    assert me.status == 200 and me.json()["role"] == "agent"
    assert (await AsgiClient(app).request("GET", "/v1/calls", key=keys["agent"])).status == 403


# --------------------------------------------------------------------------- 6. no 500s


async def test_lone_surrogates_and_deep_nesting_get_4xx_and_no_traceback(app: Any, keys: dict[str, str]) -> None:
    http = AsgiClient(app)
    surrogate = '{"phone": "\\ud800"}'.encode()
    with LogCapture() as logs:
        for path in ("/v1/optouts", "/v1/subjects/export", "/v1/subjects/erase", "/v1/subjects/restrict"):
            reply = await http.request("POST", path, key=keys["admin"], content=surrogate)
            assert 400 <= reply.status < 500, (path, reply.status, reply.text)
        reply = await http.request("POST", "/v1/webhooks", key=keys["admin"], content=b'{"url": "https://\\udfff/"}')
        assert 400 <= reply.status < 500
        for body, ctype in ((b"[" * 30000 + b"]" * 30000, "application/json"),
                            (b"a: " + b"[" * 30000 + b"]" * 30000, "application/yaml")):  # fmt: skip
            t0 = time.monotonic()
            reply = await http.request("PUT", "/v1/policy", key=keys["admin"], content=body, content_type=ctype)
            assert reply.status == 422 and "nested" in reply.text, reply.text
            assert time.monotonic() - t0 < 2
    assert "Traceback" not in logs.text and "RecursionError" not in logs.text


# --------------------------------------------------------------------------- 7. throttle and body caps


def test_the_throttle_refuses_an_address_once_its_budget_is_spent() -> None:
    now = [0.0]
    throttle = AuthThrottle(burst=3, refill_per_s=1.0, clock=lambda: now[0])
    for _ in range(3):
        throttle.check("10.1.1.1")
        throttle.failed("10.1.1.1")
    with pytest.raises(Throttled) as refused:
        throttle.check("10.1.1.1")
    assert refused.value.retry_after == 1
    throttle.check("10.2.2.2")  # another address is not affected
    now[0] += 1.0
    throttle.check("10.1.1.1")  # one more attempt a second


async def test_bad_keys_are_throttled_per_address_without_a_key_check(app: Any, store: Store,
                                                                      keys: dict[str, str]) -> None:  # fmt: skip
    checks = 0
    real = store.tenants.authenticate

    def counting(key: str | None) -> Any:
        nonlocal checks
        checks += 1
        return real(key)

    store.tenants.authenticate = counting  # type: ignore[method-assign]
    http = AsgiClient(app)
    statuses = [(await http.request("GET", "/v1/me", auth_header="Bearer vck_0123456789ab_" + "x" * 43)).status
                for _ in range(15)]  # fmt: skip
    assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}
    assert checks == 10  # the refused ones cost no scrypt
    refused = await http.request("GET", "/v1/me", key=keys["admin"])  # the same address, even with a good key
    assert refused.status == 429 and int(refused.headers["retry-after"]) >= 1
    # the media streams spend the same budget: the upgrade is accepted, the stream closed with 1008 at once
    async with running_server(app) as base:
        client = TelnyxClient("ws" + base.removeprefix("http") + "/ws/telnyx", token=keys["admin"])
        assert await client.start(mic=False)
        await client.wait_closed(5)
        assert client.close_code == 1008
    assert checks == 10
    assert "throttled" in app.state.vc.metrics.render()


async def test_a_body_is_capped_and_never_read_before_the_key_is_checked(app: Any) -> None:
    read = False

    async def receive() -> dict[str, Any]:
        nonlocal read
        read = True
        return {"type": "http.request", "body": b"{}", "more_body": False}

    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/optouts", "raw_path": b"/v1/optouts", "root_path": "",
             "query_string": b"", "client": ("127.0.0.9", 1), "server": ("testserver", 80), "state": {},
             "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                         (b"content-length", str(900_000).encode())]}  # fmt: skip
    await app(scope, receive, send)
    assert messages[0]["status"] == 401 and not read  # no key: refused before the body
    messages.clear()
    scope["headers"] = [(b"content-length", str(40 << 20).encode())]
    await app(scope, receive, send)
    assert messages[0]["status"] == 413 and not read  # 40 MiB: refused before anything else


# --------------------------------------------------------------------------- 8. exports


def test_exports_are_stored_encrypted_listed_expired_and_erased(store: Store) -> None:
    rec = CallRecord(tenant="acme", caller=ERASED, callee="+14155550000", pipeline="receptionist")
    rec.turns = [Turn("caller", "my code word is pumpernickel")]
    rec.ended_at = rec.started_at + 5
    assert store.calls.save(rec)
    info = store.subjects.store_export("acme", ERASED, actor="test")
    raw = b"".join(p.read_bytes() for p in store.data_dir.rglob("*") if p.is_file())
    assert b"pumpernickel" not in raw  # only ciphertext on disk
    assert [e.export_id for e in store.subjects.exports("acme")] == [info.export_id]
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(store.subjects.read_export("acme", info.export_id, actor="test"))) as z:
        assert "pumpernickel" in z.read("export.json").decode()
    # erasure removes it
    store.subjects.erase("acme", ERASED, actor="test")
    assert store.subjects.exports("acme") == []
    assert not list((store.data_dir / "exports").rglob("*.vcexp"))
    # retention removes an old one
    assert store.calls.save(rec)
    old = store.subjects.store_export("acme", ERASED, actor="test")
    result = store.retention.sweep(old.expires_at + 1, actor="test")
    assert result.deleted["exports"] == 1 and store.subjects.exports("acme") == []
    assert not list((store.data_dir / "exports").rglob("*.vcexp"))


# --------------------------------------------------------------------------- 9. audit by tenant id


def test_a_tenant_created_again_under_an_old_name_starts_with_an_empty_log(store: Store) -> None:
    store.subjects.add_optout("acme", "+14155550100", actor="test")
    store.subjects.optouts("acme", actor="ops")
    assert len(store.audit.list("acme")) >= 4
    store.tenants.delete("acme", actor="ops")
    store.tenants.create("acme", actor="test")
    assert [e.action for e in reversed(store.audit.list("acme"))] == ["tenant.created", "apikey.created"]
    assert store.audit.verify().ok
