"""Signed webhooks from the outbox: a real HTTP receiver on 127.0.0.1 that checks every signature.

Covers: signing and verification (the documented snippet), URL rules, the policy filter on
payloads, fan-out to subscribed endpoints only (and never across tenants), retries with
backoff into the dead-letter state and back, and a restart mid-delivery (the worker process
is killed with SIGKILL while the receiver holds the request; a new worker on the same data
directory delivers the event).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import Receiver, undo_revisions_after_0003

from voicecore.records import CallRecord, Turn
from voicecore.server.webhooks import (
    SIGNATURE_HEADER,
    WebhookWorker,
    deliverable_payload,
    encode_body,
    signature_header,
    verify_signature,
    worker_settings_from_env,
)
from voicecore.storage import (
    MASTER_KEY_ENV,
    SCHEMA_VERSION,
    InvalidWebhookUrl,
    StorageError,
    Store,
    check_webhook_url,
    migrate,
)
from voicecore.storage.database import Database

ROOT = Path(__file__).resolve().parent.parent
NO_CONTACTS_POLICY = """version: 1
name: no-contacts
retention:
  recordings: 0
  transcripts: 0
  reports: 30
  metadata: 90
  contacts: 0
"""



def verify(secret: str, body: bytes, header: str, tolerance_s: int = 300) -> bool:
    """The verification snippet of the voicecore.webhooks docstring, verbatim."""
    fields = [item.split("=", 1) for item in header.split(",") if "=" in item]
    t = next((v for k, v in fields if k == "t"), None)
    if t is None or not t.isdigit() or abs(time.time() - int(t)) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, v) for k, v in fields if k == "v1")


ALLOW_INSECURE_WEBHOOKS = True  # receivers on 127.0.0.1
TENANTS = {"acme": None, "globex": None}


def ended_call(tenant: str, caller: str = "+14155552671") -> CallRecord:
    rec = CallRecord(tenant=tenant, caller=caller, callee="+14155550000", pipeline="receptionist", transport="twilio",
                     provider_ids={"callSid": "CA123"}, started_at=1_700_000_000.0)  # fmt: skip
    rec.turns = [Turn("agent", "Hi, how can I help?", kind="greeting"), Turn("caller", "I need a cleaning please")]
    rec.ended_at = rec.started_at + 61
    rec.end_reason = "hangup"
    return rec


def status_of(store: Store, endpoint_id: str, tenant: str = "acme") -> str | None:
    deliveries = store.outbox.deliveries(tenant, endpoint_id)
    return deliveries[0].status if deliveries else None


async def deliver_until(worker: WebhookWorker, done: Any, timeout: float = 20.0) -> None:
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "webhook not delivered in time"
            await worker.run_once(session)
            await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- pure parts


def test_signature_scheme() -> None:
    secret = "whsec_test-secret"
    body = encode_body({"type": "report.ready", "data": {"x": "é"}})
    now = int(time.time())
    header = signature_header([secret], body, now)
    assert header == f"t={now},v1=" + hmac.new(secret.encode(), f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    assert verify(secret, body, header) and verify_signature(secret, body, header)
    assert not verify(secret, body + b" ", header)  # body changed
    assert not verify("whsec_other", body, header)  # wrong secret
    old = signature_header([secret], body, now - 3600)
    assert not verify(secret, body, old)  # replayed an hour later
    assert not verify(secret, body, "v1=" + header.split("v1=")[1])  # no timestamp
    rotated = signature_header(["whsec_new", secret], body, now)  # during a rotation both verify
    assert verify("whsec_new", body, rotated) and verify(secret, body, rotated)


# What the test's DNS answers (no lookup leaves the machine): a public host, and names that
# point at the loopback, a metadata service or nowhere.
FAKE_DNS = {
    "hooks.example.com": ["93.184.216.34"],
    "v6.example.com": ["2606:2800:220:1:248:1893:25c8:1946"],
    "localhost": ["127.0.0.1", "::1"],
    "127.0.0.1.nip.io": ["127.0.0.1"],
    "metadata.google.internal": ["169.254.169.254"],
    "mixed.example.com": ["93.184.216.34", "10.0.0.7"],
    "0x7f000001": ["127.0.0.1"],
}


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    from voicecore.storage import outbox

    def resolve(host: str, port: int) -> list[str]:
        if host.lower() not in FAKE_DNS:
            raise OSError(f"{host}: name does not resolve")
        return FAKE_DNS[host.lower()]

    monkeypatch.setattr(outbox, "resolve_host", resolve)
    return FAKE_DNS


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://hooks.example.com/voicecore", True),
        ("https://hooks.example.com:8443/v?x=1", True),
        ("HTTPS://Hooks.Example.com/x", True),
        ("https://v6.example.com/x", True),
        ("https://93.184.216.34/x", True),
        ("http://hooks.example.com/hook", False),  # plain HTTP
        ("http://127.0.0.1:8080/hook", False),
        ("https://127.0.0.1:22/", False),
        ("https://localhost:6379/", False),
        ("https://10.0.0.1/", False),
        ("https://[fd00:ec2::254]/", False),  # unique-local (a metadata service)
        ("https://metadata.google.internal/", False),
        ("https://127.0.0.1.nip.io/", False),
        ("https://0x7f000001:8443/", False),  # a number that is the loopback
        ("https://mixed.example.com/", False),  # one of its addresses is private
        ("https://169.254.169.254/latest/meta-data", False),  # link-local (cloud metadata)
        ("https://100.64.1.1/", False),  # carrier-grade NAT
        ("https://[::ffff:127.0.0.1]/", False),  # the loopback inside IPv6
        ("https://[64:ff9b::a00:1]/", False),  # NAT64 of 10.0.0.1
        ("https://0.0.0.0/x", False),
        ("https://unknown.example.net/x", False),  # does not resolve
        ("ftp://127.0.0.1/hook", False),
        ("https://user:pass@hooks.example.com/x", False),
        ("https:///nohost", False),
        ("https://hooks.example.com/x#frag", False),
        ("https://hooks.example.com:99999/x", False),
        ("https://exa mple.com/x", False),
        ("", False),
        ("https://hooks.example.com/" + "a" * 3000, False),
    ],
)
def test_webhook_url_rules(fake_dns: dict[str, list[str]], url: str, ok: bool) -> None:
    if ok:
        assert check_webhook_url(url).lower() == url.lower()
    else:
        with pytest.raises(InvalidWebhookUrl):
            check_webhook_url(url)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://127.0.0.1:8080/hook", True),
        ("http://localhost/hook", True),
        ("http://[::1]:9000/hook", True),
        ("https://10.0.0.1/", True),
        ("ftp://127.0.0.1/hook", False),
        ("http://user:pw@127.0.0.1/x", False),
        ("http://127.0.0.1/x#frag", False),
        ("", False),
    ],
)
def test_insecure_webhooks_for_local_development(url: str, ok: bool) -> None:
    if ok:
        assert check_webhook_url(url, allow_insecure=True).lower() == url.lower()
    else:
        with pytest.raises(InvalidWebhookUrl):
            check_webhook_url(url, allow_insecure=True)


def test_payloads_carry_only_what_the_policy_allows() -> None:
    from voicecore.policy.models import load_policy_text

    keep_all = load_policy_text("version: 1\n")
    strict = load_policy_text(NO_CONTACTS_POLICY)
    ended = {"type": "call.ended", "data": {"call_id": "c1", "caller": "+14155552671", "callee": "+14155550000"}}
    assert deliverable_payload(ended, keep_all) == ended
    out = deliverable_payload(ended, strict)
    assert out["data"] == {"call_id": "c1", "caller": None, "callee": None}
    assert out["withheld_by_policy"] == ["caller", "callee"]
    report = {
        "type": "report.ready",
        "data": {
            "call_id": "c1",
            "report": {
                "purpose": "book an appointment",
                "contact": {"name": "Maria Lopez", "phone": "+14155552671", "email": None},
                "need": "I'd like a cleaning.",
                "summary": "Maria Lopez called to book a cleaning.",
                "appointment": {"requested": "next Tuesday at ten", "slot": "2024-05-21T10:00:00"},
                "optout_requested": False,
            },
        },
    }
    assert deliverable_payload(report, keep_all) == report
    filtered = deliverable_payload(report, strict)["data"]["report"]
    assert filtered["contact"] == {"name": None, "phone": None, "email": None}
    assert filtered["need"] is None and filtered["summary"] is None
    assert filtered["appointment"] == {"requested": None, "slot": "2024-05-21T10:00:00"}
    assert filtered["purpose"] == "book an appointment"
    assert "Maria" not in json.dumps(deliverable_payload(report, strict))
    optout = {"type": "optout.requested", "data": {"phone": "+14155552671"}}
    assert deliverable_payload(optout, strict) == optout  # the number is what the tenant must act on
    assert report["data"]["report"]["need"] == "I'd like a cleaning."  # the stored event is not changed


def test_backoff_is_exponential_with_jitter(store: Store) -> None:
    low = WebhookWorker(store, base_delay_s=5, max_delay_s=3600, rng=lambda: 0.0)
    high = WebhookWorker(store, base_delay_s=5, max_delay_s=3600, rng=lambda: 0.999999)
    assert [low.backoff(n) for n in (1, 2, 3, 4)] == [2.5, 5.0, 10.0, 20.0]
    assert high.backoff(1) == pytest.approx(7.5, rel=1e-4) and high.backoff(4) == pytest.approx(60, rel=1e-4)
    assert low.backoff(30) == 1800.0  # capped at max_delay_s (times the jitter)
    spread = {WebhookWorker(store).backoff(3) for _ in range(20)}
    assert len(spread) > 1 and all(20.0 <= d < 60.0 for d in spread)  # defaults: 10 s base, 3rd retry


def test_lease_and_poll_from_the_environment_keep_the_timeout_inside_the_lease(store: Store) -> None:
    assert worker_settings_from_env({}) == {}  # the defaults: a 10 s timeout inside a 30 s lease
    default = WebhookWorker(store)
    assert (default.timeout_s, default.lease_s, default.poll_interval_s) == (10.0, 30.0, 1.0)
    short = WebhookWorker(store, **worker_settings_from_env({"VOICECORE_WEBHOOK_LEASE_S": "4",
                                                              "VOICECORE_WEBHOOK_POLL_S": "0.2"}))  # fmt: skip
    assert (short.lease_s, short.poll_interval_s) == (4.0, 0.2) and short.timeout_s == 2.0
    assert worker_settings_from_env({"VOICECORE_WEBHOOK_LEASE_S": "120"})["timeout_s"] == 10.0
    for bad in ("0", "-1", "soon", "nan", "inf"):
        with pytest.raises(ValueError, match="VOICECORE_WEBHOOK_POLL_S must be a positive number"):
            worker_settings_from_env({"VOICECORE_WEBHOOK_POLL_S": bad})


def test_serve_refuses_a_bad_webhook_lease(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from voicecore.cli import cli

    res = CliRunner().invoke(cli, ["serve", "--data-dir", str(tmp_path / "d"), "--port", "1"],
                             env={"VOICECORE_WEBHOOK_LEASE_S": "-5"})  # fmt: skip
    assert res.exit_code == 1 and "VOICECORE_WEBHOOK_LEASE_S must be a positive number" in res.output, res.output


def test_schema_migrates_from_version_1(tmp_path: Path) -> None:
    s = Store(tmp_path / "d", allow_insecure_webhooks=True)
    s.tenants.create("acme", actor="test")
    assert s.calls.save(ended_call("acme"))
    # Turn it back into a version-1 database (undo version 4, 3, then 2).
    s.db.sqlite.execute("DROP TABLE provider_credentials")
    s.db.sqlite.execute("DROP INDEX audit_log_tenant")
    s.db.sqlite.execute("ALTER TABLE audit_log DROP COLUMN tenant_id")
    s.db.sqlite.execute("DROP TABLE exports")
    s.db.sqlite.execute("DROP TABLE webhook_deliveries")
    s.db.sqlite.execute("DROP TABLE webhook_endpoints")
    s.db.sqlite.execute("DROP INDEX outbox_dispatch")
    s.db.sqlite.execute("ALTER TABLE outbox DROP COLUMN dispatched")
    undo_revisions_after_0003(s.db.sqlite)
    for table in ("alembic_version", "audit_head", "wrapped_keys", "call_tokens"):  # what the code before Alembic lacked
        s.db.sqlite.execute(f"DROP TABLE {table}")
    s.db.sqlite.execute("PRAGMA user_version=1")
    s.close()
    with pytest.raises(StorageError, match=r"pre-Alembic schema version 1.*run `voicecore db upgrade --data-dir "):
        Store(tmp_path / "d", allow_insecure_webhooks=True)  # serve refuses an older schema, naming the command
    db = Database(tmp_path / "d" / "voicecore.db")
    assert migrate.upgrade(db) == ("user_version 1", migrate.head_revision())
    db.close()
    s = Store(tmp_path / "d", allow_insecure_webhooks=True)
    assert s.schema_version() == SCHEMA_VERSION == 4
    assert s.audit.verify().ok and [e.action for e in s.audit.list("acme")][-1] == "tenant.created"
    assert len(s.calls.list("acme", actor="test")) == 1
    assert [e.type for e in s.outbox.events("acme", actor="test")] == ["call.ended"]
    endpoint, _ = s.outbox.create_webhook("acme", "https://127.0.0.1:9/x", actor="test")
    assert s.outbox.dispatch() == 1  # the event written before the upgrade is delivered too
    assert s.outbox.deliveries("acme", endpoint.id)[0].status == "pending"
    s.close()


# --------------------------------------------------------------------------- delivery


async def test_events_arrive_signed_at_subscribed_endpoints_only(store: Store, receiver: Receiver) -> None:
    everything, secret = store.outbox.create_webhook("acme", receiver.url, description="all events", actor="test")
    reports_only, secret2 = store.outbox.create_webhook("acme", receiver.url.replace("/hook", "/hook?only=reports"), ["report.ready"], actor="test")
    other, _ = store.outbox.create_webhook("globex", "https://127.0.0.1:9/globex", actor="test")
    rec = ended_call("acme")
    assert store.calls.save(rec)
    store.calls.save_report("acme", rec.call_id, {"purpose": "other", "summary": "Call."})
    store.subjects.add_optout("acme", "+14155552671", call_id=rec.call_id, actor="test")
    assert store.calls.save(ended_call("globex"))  # globex's event goes to globex's endpoint only
    worker = WebhookWorker(store)
    await deliver_until(worker, lambda: len(receiver.received) == 4)
    await asyncio.sleep(0.1)
    assert len(receiver.received) == 4
    by_secret = {everything.id: secret, reports_only.id: secret2}
    endpoint_of = {d.id: e.id for e in (everything, reports_only) for d in store.outbox.deliveries("acme", e.id)}
    kinds: list[tuple[str, str]] = []
    for r in receiver.received:
        endpoint = endpoint_of[r.headers["X-Voicecore-Delivery"]]
        assert verify(by_secret[endpoint], r.body, r.headers[SIGNATURE_HEADER])
        assert r.headers["Content-Type"] == "application/json"
        payload = r.payload
        assert payload["tenant"] == "acme" and payload["event_id"] == r.headers["X-Voicecore-Event-Id"]
        assert payload["type"] == r.headers["X-Voicecore-Event"] and r.headers["X-Voicecore-Attempt"] == "1"
        kinds.append((endpoint, payload["type"]))
    assert sorted(kinds) == sorted(
        [(everything.id, "call.ended"), (everything.id, "report.ready"), (everything.id, "optout.requested"),
         (reports_only.id, "report.ready")]  # fmt: skip
    )
    ended = next(r.payload for r in receiver.events("call.ended"))
    assert ended["data"]["call_id"] == rec.call_id and ended["data"]["caller"] == "+14155552671"
    assert ended["data"]["duration_s"] == 61.0 and ended["data"]["end_reason"] == "hangup"
    assert next(r.payload for r in receiver.events("optout.requested"))["data"]["phone"] == "+14155552671"
    assert {e.status for e in store.outbox.events("acme", actor="test")} == {"delivered"}
    assert [d.status for d in store.outbox.deliveries("globex", other.id)] == ["pending"]  # not sent anywhere else
    assert worker.delivered == 4 and worker.failed_attempts == 1  # globex's endpoint (nobody listens)


async def test_payloads_follow_the_tenant_policy(store: Store, receiver: Receiver) -> None:
    store.tenants.create("private", policy_yaml=NO_CONTACTS_POLICY, actor="test")
    _, secret = store.outbox.create_webhook("private", receiver.url, actor="test")
    rec = ended_call("private")
    assert store.calls.save(rec)
    store.calls.save_report("private", rec.call_id, {"purpose": "other", "need": "a cleaning", "summary": "Asked.",
                                               "contact": {"name": "Maria", "phone": None, "email": None},
                                               "appointment": {"requested": "Friday", "slot": "2024-05-17"}})  # fmt: skip
    await deliver_until(WebhookWorker(store), lambda: len(receiver.received) == 2)
    for r in receiver.received:
        assert verify(secret, r.body, r.headers[SIGNATURE_HEADER])
        assert b"+1415555" not in r.body and b"Maria" not in r.body and b"cleaning" not in r.body
    report = receiver.events("report.ready")[0].payload
    assert report["data"]["report"]["appointment"]["slot"] == "2024-05-17"
    assert "report.need" in report["withheld_by_policy"]


async def test_failing_endpoint_is_retried_then_dead_lettered_and_can_be_retried(store: Store, receiver: Receiver) -> None:
    endpoint, secret = store.outbox.create_webhook("acme", receiver.url, actor="test")
    store.subjects.add_optout("acme", "+14155552671", actor="test")
    receiver.mode = "fail"
    worker = WebhookWorker(store, max_attempts=3, base_delay_s=0.05, max_delay_s=1.0, rng=lambda: 0.5)
    await deliver_until(worker, lambda: status_of(store, endpoint.id) == "dead")
    (delivery,) = store.outbox.deliveries("acme", endpoint.id)
    assert delivery.attempts == 3 and delivery.last_status == 500 and delivery.last_error == "HTTP 500"
    assert len(receiver.received) == 3
    assert [r.headers["X-Voicecore-Attempt"] for r in receiver.received] == ["1", "2", "3"]
    assert all(verify(secret, r.body, r.headers[SIGNATURE_HEADER]) for r in receiver.received)
    assert len({r.payload["event_id"] for r in receiver.received}) == 1  # the same event each time
    assert [e.status for e in store.outbox.events("acme", actor="test")] == ["dead"]
    assert worker.dead == 1
    # Dead letters stay dead...
    async with aiohttp.ClientSession() as session:
        assert await worker.run_once(session) == 0
    # ...until someone queues them again.
    assert store.outbox.redeliver("acme", endpoint.id, delivery.id, actor="test")
    receiver.mode = "ok"
    await deliver_until(worker, lambda: status_of(store, endpoint.id) == "delivered")
    assert [e.status for e in store.outbox.events("acme", actor="test")] == ["delivered"]
    assert len(receiver.received) == 4


async def test_unreachable_endpoint_counts_as_a_failed_attempt(store: Store) -> None:
    endpoint, _ = store.outbox.create_webhook("acme", "http://127.0.0.1:9/nobody-listens", actor="test")
    store.subjects.add_optout("acme", "+14155552671", actor="test")
    worker = WebhookWorker(store, max_attempts=2, base_delay_s=0.01, timeout_s=2)
    await deliver_until(worker, lambda: status_of(store, endpoint.id) == "dead")
    (d,) = store.outbox.deliveries("acme", endpoint.id)
    assert d.attempts == 2 and d.last_error.startswith("connection failed")


async def test_a_killed_worker_loses_nothing(tmp_path: Path, receiver: Receiver) -> None:
    data = tmp_path / "data"
    store = Store(data, allow_insecure_webhooks=True)
    store.tenants.create("acme", actor="test")
    endpoint, secret = store.outbox.create_webhook("acme", receiver.url, actor="test")
    rec = ended_call("acme")
    assert store.calls.save(rec)
    store.close()
    receiver.mode = "hang"  # the first attempt never gets an answer
    script = (
        "import asyncio, sys\n"
        "from voicecore.storage import Store\n"
        "from voicecore.server.webhooks import WebhookWorker\n"
        "asyncio.run(WebhookWorker(Store(sys.argv[1], allow_insecure_webhooks=True), timeout_s=60, lease_s=2.0,"
        " poll_interval_s=0.1).run())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != MASTER_KEY_ENV}
    proc = subprocess.Popen([sys.executable, "-c", script, str(data)], cwd=ROOT, env=env)
    try:
        assert await asyncio.to_thread(receiver.arrived.wait, 60), "the worker process sent nothing"
    finally:
        proc.send_signal(signal.SIGKILL)  # "serve" dies mid-delivery
        proc.wait(timeout=10)
    assert len(receiver.received) == 1
    first = receiver.received[0]
    assert first.headers["X-Voicecore-Event"] == "call.ended"

    # While nothing runs, another event is written.
    store = Store(data, allow_insecure_webhooks=True)
    store.subjects.add_optout("acme", "+14155550199", actor="test")
    receiver.mode = "ok"
    worker = WebhookWorker(store, poll_interval_s=0.1)  # a new process' worker, same data directory
    task = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + 30
        while {e.status for e in store.outbox.events("acme", actor="test")} != {"delivered"}:
            assert time.monotonic() < deadline, "events not delivered after the restart"
            await asyncio.sleep(0.1)
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=10)
    again = [r for r in receiver.events("call.ended") if r is not first]
    assert len(again) == 1
    assert again[0].payload["event_id"] == first.payload["event_id"]  # the same event, sent again
    assert again[0].headers["X-Voicecore-Attempt"] == "2"
    assert verify(secret, again[0].body, again[0].headers[SIGNATURE_HEADER])
    assert len(receiver.events("optout.requested")) == 1
    deliveries = {d.event_type: d for d in store.outbox.deliveries("acme", endpoint.id)}
    assert deliveries["call.ended"].status == "delivered" and deliveries["call.ended"].attempts == 2
    store.close()


async def test_erasure_drops_undelivered_events_of_the_subject(store: Store, receiver: Receiver) -> None:
    endpoint, _ = store.outbox.create_webhook("acme", receiver.url, actor="test")
    assert store.calls.save(ended_call("acme", caller="+14155552671"))
    store.outbox.dispatch()
    assert len(store.outbox.deliveries("acme", endpoint.id)) == 1
    store.subjects.erase("acme", "+14155552671", actor="test")
    await deliver_until(WebhookWorker(store), lambda: len(receiver.received) == 1)
    await asyncio.sleep(0.1)
    (only,) = receiver.received
    assert only.payload["type"] == "subject.erased" and b"+1415555" not in only.body
    with sqlite3.connect(store.db_path) as raw:
        events = {r[0] for r in raw.execute("SELECT event_id FROM webhook_deliveries")}
    assert events == {only.payload["event_id"]}
