"""The admin HTTP API's permission matrix: every /v1 route × role (admin, analyst, viewer) × own /
other tenant's object, through the real app (``create_app``) and a real Store.

What each cell checks:
- a role below the route's least role gets 403 (before anything is looked up);
- another tenant's call, webhook, delivery, opt-out or provider account is 404, as if it did
  not exist, and collection routes answer only with the caller's own tenant's data;
- an allowed request answers as documented and did what it says, read back from the Store:
  the thing was returned, created, changed (the policy PUT writes a policy unlike the stored
  one) or deleted, and the change or content read is audited under the key's id;
- a refused request (403, or 404 for another tenant's object) did nothing: the state the route
  would change is as it was, and nothing was audited (nothing read, nothing changed);
- no response of any cell contains the other tenant's identifiers or content, and no response
  to a viewer contains transcript text or a full phone number.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from voicecore.records import CallRecord, Turn
from voicecore.server import api
from voicecore.storage import MASTER_KEY_ENV, Store

ROLES = ("admin", "analyst", "viewer")
RANK = {"viewer": 0, "analyst": 1, "admin": 2}
MARK = "zebra-marmalade"  # planted in every transcript and report: content a viewer must never see
PUBLIC_URL = "https://voice.example.com"  # the server's public URL (provider snippets are built on it)

POLICY = """version: 1
name: {name}
phone_region: US
recording:
  mode: "on"
retention:
  recordings: 30
  transcripts: 30
  reports: 30
  metadata: 365
  contacts: 30
transcripts:
  store_redacted: false
"""


# --------------------------------------------------------------------------- an in-process HTTP client


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


class AsgiClient:
    """Sends one HTTP request straight into an ASGI app (no sockets, no lifespan)."""

    def __init__(self, app: Any):
        self.app = app

    async def request(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        auth_header: str | None = None,
    ) -> Reply:
        body = content if content is not None else (b"" if json_body is None else json.dumps(json_body).encode())
        headers = [(b"host", b"testserver")]
        if auth_header is not None:
            headers.append((b"authorization", auth_header.encode()))
        elif key is not None:
            headers.append((b"authorization", f"Bearer {key}".encode()))
        if json_body is not None or content is not None:
            headers.append((b"content-type", (content_type or "application/json").encode()))
            headers.append((b"content-length", str(len(body)).encode()))
        raw_path = urllib.parse.quote(path)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": raw_path.encode(),
            "root_path": "",
            "query_string": urllib.parse.urlencode(params or {}).encode(),
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
            "state": {},
        }
        sent = False
        messages: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client never disconnects
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        await self.app(scope, receive, send)
        start = next(m for m in messages if m["type"] == "http.response.start")
        return Reply(
            start["status"],
            {k.decode().lower(): v.decode() for k, v in start.get("headers", [])},
            b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body"),
        )


def build_app(store: Store, data_dir: Path, receptionist: Any) -> Any:
    """``serve``'s app (``create_app``) with the API router mounted (by create_app once the lead adds it)."""
    from starlette.routing import NoMatchFound

    from voicecore.server import create_app
    from voicecore.server.guard import AuthThrottle

    # The matrix sends wrong keys on purpose, all from one address: a budget it never exhausts
    # (the throttle is tested in test_security.py).
    app = create_app(data_dir=data_dir, store=store, preload=False, pipelines={receptionist.name: receptionist},
                     auth_throttle=AuthThrottle(burst=100_000), public_url=PUBLIC_URL)  # fmt: skip
    try:
        app.url_path_for("me")
    except NoMatchFound:
        app.include_router(api.router)
    return app


# --------------------------------------------------------------------------- the world: two tenants


@dataclass
class TenantData:
    name: str
    keys: dict[str, str]
    key_ids: dict[str, str]
    phone: str  # caller of its call
    call_id: str
    optout_phone: str
    optout_hash: str
    webhook_id: str
    delivery_id: str
    wav: bytes
    mark: str  # its planted content
    account_sid: str  # its Twilio account (shown to its admins)
    auth_token: str  # its Twilio auth token (never shown to anyone)

    def identifiers(self) -> list[str]:
        """What must never appear in an answer to the other tenant."""
        return [self.call_id, self.optout_hash, self.webhook_id, self.delivery_id, self.mark, self.phone,
                self.optout_phone, self.account_sid, self.auth_token, *self.key_ids.values()]  # fmt: skip


@dataclass
class World:
    store: Store
    client: AsgiClient
    tenants: dict[str, TenantData] = field(default_factory=dict)
    numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1000))

    def fresh_phone(self) -> str:
        """A number no test has used yet (one that was restricted or erased stays so)."""
        return f"+1415556{next(self.numbers):04d}"

    def add_call(self, tenant: str, phone: str) -> str:
        rec = CallRecord(tenant=tenant, caller=phone, callee="+14155550000", pipeline="receptionist",
                         transport="twilio", started_at=1_700_000_000.0)  # fmt: skip
        rec.turns = [Turn("agent", "Hello, how can I help?", kind="greeting"), Turn("caller", f"{MARK} {tenant} says hi")]
        rec.ended_at = rec.started_at + 30
        rec.end_reason = "hangup"
        assert self.store.calls.save(rec)
        return rec.call_id


def make_tenant(store: Store, name: str, index: int) -> TenantData:
    admin_key = store.tenants.create(name, policy_yaml=POLICY.format(name=f"{name}-policy"), actor="test")
    assert admin_key is not None
    keys = {"admin": admin_key}
    for role in ("analyst", "viewer"):
        keys[role] = store.tenants.create_api_key(name, role=role, actor="test")
    key_ids = {role: key.split("_")[1] for role, key in keys.items()}
    phone = f"+1415555{index}101"
    rec = CallRecord(tenant=name, caller=phone, callee="+14155550000", pipeline="receptionist", transport="twilio",
                     started_at=1_700_000_000.0 + index)  # fmt: skip
    mark = f"{MARK}-{name}"
    rec.turns = [Turn("agent", "Hello, how can I help?", kind="greeting"), Turn("caller", f"My secret is {mark}.")]
    rec.ended_at = rec.started_at + 42
    rec.end_reason = "hangup"
    assert store.calls.save(rec)
    pcm = bytes(range(256)) * 64
    with store.calls.open_recording(name, rec.call_id, 8000, caller=phone) as writer:
        writer.write(pcm)
    wav = store.calls.read_recording(name, rec.call_id, actor="setup")
    assert wav is not None and wav.startswith(b"RIFF")
    store.calls.save_report(name, rec.call_id, {"summary": f"report of {mark}", "purpose": "other"})
    optout_phone = f"+1415555{index}202"
    store.subjects.add_optout(name, optout_phone, source="setup", actor="test")
    (entry,) = [e for e in store.subjects.optouts(name, actor="test") if e.phone == optout_phone]
    endpoint, _secret = store.outbox.create_webhook(name, "http://127.0.0.1:9/hook", description=f"hook of {name}", actor="test")
    store.outbox.dispatch()
    deliveries = store.outbox.deliveries(name, endpoint.id)
    assert deliveries
    imported = store.contacts.import_file(name, f"phone,first_name\n{phone},{mark}\n".encode(), segment="leads",
                                          actor="test")  # fmt: skip
    assert imported.created == 1
    store.campaigns.create(name, f"camp-{name}", pipeline="receptionist", segment="leads", from_number="+14155550000",
                           provider="twilio", window="daily 00:00-24:00", actor="test")  # fmt: skip
    account_sid, auth_token = f"AC{index:032x}", secrets.token_hex(16)
    store.providers.set(name, "twilio", {"auth_token": auth_token, "account_sid": account_sid}, actor="test")
    return TenantData(name, keys, key_ids, phone, rec.call_id, optout_phone, entry.phone_hash, endpoint.id,
                      deliveries[0].id, wav, mark, account_sid, auth_token)  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, receptionist: Any) -> World:
    import os

    saved = os.environ.pop(MASTER_KEY_ENV, None)
    data_dir = tmp_path_factory.mktemp("api-data")
    store = Store(data_dir, allow_insecure_webhooks=True)  # no receiver: nothing is ever delivered
    w = World(store, AsgiClient(build_app(store, data_dir, receptionist)))
    for i, name in enumerate(("acme", "globex"), start=1):
        w.tenants[name] = make_tenant(store, name, i)
    yield w
    store.close()
    if saved is not None:
        os.environ[MASTER_KEY_ENV] = saved


# --------------------------------------------------------------------------- one request per route


@dataclass
class Req:
    method: str
    path: str
    params: dict[str, str] | None = None
    json_body: Any = None
    content: bytes | None = None
    content_type: str | None = None


@dataclass
class Spec:
    """How to call one route for tenant ``me`` about ``target``'s object, and what success means.

    kind: "object" (another tenant's object is 404), "collection" (answers with ``me``'s data
    only), "subject" (a phone number is looked up in ``me``'s data only).
    check: the effect of an allowed call — what it returned, or what it created, changed or
    deleted, read back from the Store (every route has one).
    observe: for a route that changes something, the state it would change (read straight from
    the database, so observing is not itself audited): a refused call (403, or 404 for another
    tenant's object) must leave it as it was.
    audited: the audit action an allowed call appends, with the key's id as the actor.
    """

    kind: str
    ok: int
    build: Callable[[World, TenantData, TenantData], Req]
    check: Callable[[World, TenantData, TenantData, Reply], None]
    observe: Callable[[World, TenantData, TenantData], Any] | None = None
    audited: str | None = None
    check_other: Callable[[World, TenantData, TenantData, Reply], None] | None = None  # after a 404


def _tid(w: World, tenant: str) -> str:
    return w.store.tenants.row(tenant).id


def _me_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    body = r.json()
    assert body["tenant"] == me.name
    assert body["key_id"] in me.key_ids.values()
    assert me.key_ids[body["role"]] == body["key_id"]  # the key used, and its own role


def _calls_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    ids = [c["call_id"] for c in r.json()["calls"]]
    assert me.call_id in ids


def _call_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    body = r.json()
    assert body["call_id"] == me.call_id and body["status"] == "ended" and body["has_recording"]
    assert all("text" not in t for t in body["turns"])


def _transcript_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    body = r.json()
    assert body["stored"] and any(me.mark in (t["text"] or "") for t in body["turns"])


def _recording_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    assert r.headers["content-type"] == "audio/wav" and r.body == me.wav


def _report_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    body = r.json()
    assert body["status"] == "ready" and body["report"]["summary"] == f"report of {me.mark}"


def _export_build(w: World, me: TenantData, target: TenantData) -> Req:
    return Req("POST", "/v1/subjects/export", json_body={"phone": target.phone})


def _export_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    doc = r.json()
    if me is target:
        assert doc["call_ids"] == [me.call_id] and doc["files"] and doc["reports"]
    else:  # the other tenant's subject: this tenant holds nothing about it
        assert doc["calls"] == [] and doc["reports"] == [] and doc["files"] == {}


def _erase_build(w: World, me: TenantData, target: TenantData) -> Req:
    phone = w.fresh_phone()
    call_id = w.add_call(target.name, phone)
    target.__dict__.setdefault("disposable_calls", []).append((phone, call_id))
    return Req("POST", "/v1/subjects/erase", json_body={"phone": phone})


def _erase_observe(w: World, me: TenantData, target: TenantData) -> Any:
    call_id = target.__dict__["disposable_calls"][-1][1]
    return w.store.db.rows("SELECT tenant_id, call_id FROM calls WHERE call_id = ?", (call_id,))


def _erase_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    call_id = target.__dict__["disposable_calls"][-1][1]
    if me is target:
        assert r.json()["calls"] == 1
        assert w.store.calls.get(me.name, call_id, include_transcript=False, actor="test") is None
    else:
        assert r.json()["calls"] == 0
        assert w.store.calls.get(target.name, call_id, include_transcript=False, actor="test") is not None


def _restrict_build(w: World, me: TenantData, target: TenantData) -> Req:
    phone = w.fresh_phone()
    target.__dict__["restricted_phone"] = phone
    return Req("POST", "/v1/subjects/restrict", json_body={"phone": phone, "restricted": True})


def _restrict_observe(w: World, me: TenantData, target: TenantData) -> Any:
    phone = target.__dict__["restricted_phone"]
    return (w.store.subjects.is_restricted(me.name, phone), w.store.subjects.is_restricted(target.name, phone))


def _restrict_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    phone = target.__dict__["restricted_phone"]
    assert r.json() == {"restricted": True, "changed": True}
    assert w.store.subjects.is_restricted(me.name, phone)
    if me is not target:
        assert not w.store.subjects.is_restricted(target.name, phone)


def _optouts_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    assert me.optout_hash in [e["phone_hash"] for e in r.json()]


def _optout_hashes(w: World, tenant: str) -> list[str]:
    return [r["phone_hash"] for r in w.store.db.rows(
        "SELECT phone_hash FROM opt_outs WHERE tenant_id = ? ORDER BY phone_hash", (_tid(w, tenant),))]


def _optouts_observe(w: World, me: TenantData, target: TenantData) -> Any:
    return _optout_hashes(w, me.name), _optout_hashes(w, target.name)


def _optout_add_build(w: World, me: TenantData, target: TenantData) -> Req:
    # "other": a number that is on the other tenant's list
    phone = w.fresh_phone() if me is target else target.optout_phone
    target.__dict__["added_optout"] = phone
    return Req("POST", "/v1/optouts", json_body={"phone": phone})


def _optout_add_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    phone = target.__dict__["added_optout"]
    assert r.json()["added"] is True and w.store.subjects.is_opted_out(me.name, phone)
    w.store.subjects.remove_optout(me.name, phone, actor="test")
    if me is not target:
        assert w.store.subjects.is_opted_out(target.name, phone)


def _optout_delete_build(w: World, me: TenantData, target: TenantData) -> Req:
    if me is target:
        phone = w.fresh_phone()
        w.store.subjects.add_optout(me.name, phone, actor="test")
        h = w.store.subjects.hash(me.name, phone)
        assert h in _optout_hashes(w, me.name)
        target.__dict__["deleted_optout"] = h
        return Req("DELETE", f"/v1/optouts/{h}")
    return Req("DELETE", f"/v1/optouts/{target.optout_hash}")


def _optout_delete_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    assert r.body == b""
    assert target.__dict__["deleted_optout"] not in _optout_hashes(w, me.name)  # off the list
    assert me.optout_hash in _optout_hashes(w, me.name)  # and only that one


def _optout_delete_other_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    assert target.optout_hash in _optout_hashes(w, target.name)


def _policy_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    body = r.json()
    assert body["name"] == w.store.tenants.policy(me.name).name == f"{me.name}-policy"
    assert body["yaml"] == w.store.tenants.policy_yaml(me.name)


CHANGED_POLICY = POLICY.replace("name: {name}", "name: {name}-v2").replace("  transcripts: 30", "  transcripts: 7")


def _policy_put_build(w: World, me: TenantData, target: TenantData) -> Req:
    """A policy unlike the stored one: another name, another transcript retention."""
    stored = w.store.tenants.policy(me.name)
    assert stored.name == f"{me.name}-policy" and stored.retention.transcripts == 30
    return Req("PUT", "/v1/policy", content=CHANGED_POLICY.format(name=f"{me.name}-policy").encode(),
               content_type="application/yaml")  # fmt: skip


def _policy_observe(w: World, me: TenantData, target: TenantData) -> Any:
    return w.store.tenants.policy_yaml(me.name), w.store.tenants.policy_yaml(target.name)


def _policy_put_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    assert r.json()["name"] == f"{me.name}-policy-v2"
    stored = w.store.tenants.policy(me.name)
    assert stored.name == f"{me.name}-policy-v2" and stored.retention.transcripts == 7  # it took effect
    assert w.store.tenants.policy(target.name).name == f"{target.name}-policy" or me is target
    # back to the world's policy, for the routes that follow
    w.store.tenants.set_policy(me.name, POLICY.format(name=f"{me.name}-policy"), actor="test")


def _webhooks_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    ids = [e["id"] for e in r.json()]
    assert me.webhook_id in ids
    assert all("secret" not in e for e in r.json())


def _webhook_ids(w: World, tenant: str) -> list[str]:
    return [r["id"] for r in w.store.db.rows(
        "SELECT id FROM webhook_endpoints WHERE tenant_id = ? ORDER BY id", (_tid(w, tenant),))]


def _webhooks_observe(w: World, me: TenantData, target: TenantData) -> Any:
    return _webhook_ids(w, me.name), _webhook_ids(w, target.name)


def _webhook_create_build(w: World, me: TenantData, target: TenantData) -> Req:
    return Req("POST", "/v1/webhooks", json_body={"url": "https://127.0.0.1:9/voicecore", "events": ["report.ready"]})


def _webhook_create_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    body = r.json()
    assert body["secret"].startswith("whsec_") and body["events"] == ["report.ready"]
    created = w.store.outbox.webhook(me.name, body["id"])
    assert created is not None and created.url == "https://127.0.0.1:9/voicecore"
    assert w.store.outbox.webhook(target.name, body["id"]) is None or me is target
    assert w.store.outbox.delete_webhook(me.name, body["id"], actor="test")


def _webhook_get_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    assert r.json()["id"] == me.webhook_id and "secret" not in r.json()
    assert r.json()["description"] == f"hook of {me.name}"


def _webhook_descriptions(w: World, me: TenantData, target: TenantData) -> Any:
    return [(r["id"], r["description"]) for r in w.store.db.rows(
        "SELECT id, description FROM webhook_endpoints WHERE id IN (?, ?) ORDER BY id", (me.webhook_id, target.webhook_id))]


def _webhook_patch_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    assert r.json()["description"] == "patched" and r.json()["secret"] is None
    stored = w.store.outbox.webhook(me.name, me.webhook_id)
    assert stored is not None and stored.description == "patched"  # it took effect
    w.store.outbox.update_webhook(me.name, me.webhook_id, description=f"hook of {me.name}", actor="test")


def _webhook_patch_other_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    stored = w.store.outbox.webhook(target.name, target.webhook_id)
    assert stored is not None and stored.description == f"hook of {target.name}"


def _webhook_delete_build(w: World, me: TenantData, target: TenantData) -> Req:
    if me is target:
        endpoint, _ = w.store.outbox.create_webhook(me.name, "https://127.0.0.1:9/gone", actor="test")
        target.__dict__["deleted_webhook"] = endpoint.id
        return Req("DELETE", f"/v1/webhooks/{endpoint.id}")
    return Req("DELETE", f"/v1/webhooks/{target.webhook_id}")


def _webhook_delete_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    assert r.body == b""
    assert w.store.outbox.webhook(me.name, target.__dict__["deleted_webhook"]) is None  # gone
    assert w.store.outbox.webhook(me.name, me.webhook_id) is not None  # and only that one


def _webhook_delete_other_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    assert w.store.outbox.webhook(target.name, target.webhook_id) is not None


def _deliveries_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    assert me.delivery_id in [d["id"] for d in r.json()]


def _delivery_state(w: World, delivery_id: str) -> tuple[str, int, float]:
    r = w.store.db.one("SELECT status, attempts, next_attempt_at FROM webhook_deliveries WHERE id = ?", (delivery_id,))
    assert r is not None
    return r["status"], r["attempts"], r["next_attempt_at"]


FAR_FUTURE = 4_000_000_000.0


def _retry_build(w: World, me: TenantData, target: TenantData) -> Req:
    """The delivery dead-lettered after five attempts first, so that a retry has something to change."""
    w.store.db.execute("UPDATE webhook_deliveries SET status = 'dead', attempts = 5, next_attempt_at = ? WHERE id = ?",
                       (FAR_FUTURE, target.delivery_id))  # fmt: skip
    return Req("POST", f"/v1/webhooks/{target.webhook_id}/deliveries/{target.delivery_id}/retry")


def _retry_observe(w: World, me: TenantData, target: TenantData) -> Any:
    return _delivery_state(w, target.delivery_id)


def _retry_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    assert r.json() == {"id": me.delivery_id, "status": "pending"}
    status, attempts, next_at = _delivery_state(w, me.delivery_id)
    assert (status, attempts) == ("pending", 0) and next_at < FAR_FUTURE  # queued again, from scratch


def _retry_other_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    assert _delivery_state(w, target.delivery_id) == ("dead", 5, FAR_FUTURE)


def _provider_rows(w: World, tenant: str) -> list[tuple[str, str | None, float, str | None]]:
    return [(r["provider"], r["account_id"], r["updated_at"], r["stream_key_id"]) for r in w.store.db.rows(
        "SELECT provider, account_id, updated_at, stream_key_id FROM provider_credentials WHERE tenant_id = ? "
        "ORDER BY provider", (_tid(w, tenant),))]  # fmt: skip


def _providers_observe(w: World, me: TenantData, target: TenantData) -> Any:
    return _provider_rows(w, me.name), _provider_rows(w, target.name)


def _providers_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    (twilio,) = [a for a in r.json() if a["provider"] == "twilio"]
    assert (twilio["tenant"], twilio["account_id"], twilio["secrets_set"]) == (me.name, me.account_sid, ["auth_token"])
    assert me.auth_token not in r.text  # names of secrets, never their values


def _provider_set_build(w: World, me: TenantData, target: TenantData) -> Req:
    secret = secrets.token_hex(16)
    target.__dict__["vonage_secret"] = secret
    assert w.store.providers.get(me.name, "vonage") is None
    return Req("PUT", "/v1/providers/vonage",
               json_body={"credentials": {"signature_secret": secret, "application_id": f"app-{me.name}"}})  # fmt: skip


def _provider_set_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    body = r.json()
    assert (body["provider"], body["tenant"], body["secrets_set"]) == ("vonage", me.name, ["signature_secret"])
    assert target.__dict__["vonage_secret"] not in r.text
    stored = w.store.providers.secrets(me.name, "vonage")
    assert stored is not None and stored["signature_secret"] == target.__dict__["vonage_secret"]  # it took effect
    assert w.store.providers.get(me.name, "vonage").account_id == f"app-{me.name}"  # type: ignore[union-attr]
    assert w.store.providers.get(target.name, "vonage") is None or me is target
    assert w.store.providers.delete(me.name, "vonage", actor="test")


def _provider_delete_build(w: World, me: TenantData, target: TenantData) -> Req:
    if me is target:
        w.store.providers.set(me.name, "plivo", {"auth_token": secrets.token_hex(16)}, actor="test")
    else:  # the other tenant has Plivo credentials, this one none: nothing of the other's can be deleted
        w.store.providers.delete(me.name, "plivo", actor="test")
        w.store.providers.set(target.name, "plivo", {"auth_token": secrets.token_hex(16)}, actor="test")
    return Req("DELETE", "/v1/providers/plivo")


def _provider_delete_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    assert r.body == b""
    assert w.store.providers.get(me.name, "plivo") is None  # gone
    assert w.store.providers.get(me.name, "twilio") is not None  # and only that one


def _provider_delete_other_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    assert w.store.providers.get(target.name, "plivo") is not None


def _snippet_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    import re

    body = r.json()
    assert body["provider"] == "telnyx" and body["public_url"] == PUBLIC_URL
    assert "voice.example.com" in body["snippet"]
    (secret,) = set(re.findall(r"vcs[0-9a-f]{60}", body["snippet"]))  # a new stream secret, shown this once
    assert w.store.providers.authenticate_stream_secret("telnyx", secret) == me.name  # it took effect


def _audit_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    entries = r.json()
    assert entries and entries[0]["action"] == "audit.read"
    assert entries[0]["actor"] == f"apikey:{me.key_ids['admin']}"


def _contact_count(w: World, tenant: str) -> int:
    return len(w.store.db.rows("SELECT id FROM contacts WHERE tenant_id = ?", (_tid(w, tenant),)))


def _contacts_observe(w: World, me: TenantData, target: TenantData) -> Any:
    return _contact_count(w, me.name), _contact_count(w, target.name)


def _contact_import_build(w: World, me: TenantData, target: TenantData) -> Req:
    phone = w.fresh_phone()
    target.__dict__["imported_contact"] = phone
    return Req("POST", "/v1/contacts/import", params={"segment": "imported"},
               content=f"phone,first_name\n{phone},Zed\nnot-a-number,Bad\n".encode(), content_type="text/csv")  # fmt: skip


def _contact_import_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    phone = target.__dict__["imported_contact"]
    body = r.json()
    assert (body["created"], body["segment"], [x["line"] for x in body["rejected"]]) == (1, "imported", [3])
    got = w.store.contacts.get(me.name, phone, actor="test")
    assert got is not None and got.fields == {"first_name": "Zed"} and got.segments == ("imported",)
    if me is not target:
        assert w.store.contacts.get(target.name, phone, actor="test") is None
    assert w.store.contacts.delete(me.name, phone, actor="test")


def _contacts_list_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    (c,) = [c for c in r.json() if c["phone"] == me.phone]
    assert c["fields"] == {"first_name": me.mark} and c["segments"] == ["leads"]


def _contact_lookup_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    contact = r.json()["contact"]
    if me is target:
        assert contact["phone"] == me.phone and contact["fields"]["first_name"] == me.mark
    else:
        assert contact is None  # the other tenant's number: not a contact of mine


def _contact_delete_build(w: World, me: TenantData, target: TenantData) -> Req:
    if me is target:
        phone = w.fresh_phone()
        w.store.contacts.import_file(me.name, f"phone\n{phone}\n".encode(), actor="test")
        target.__dict__["deleted_contact"] = phone
        return Req("POST", "/v1/contacts/delete", json_body={"phone": phone})
    return Req("POST", "/v1/contacts/delete", json_body={"phone": target.phone})


def _contact_delete_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    if me is target:
        assert r.json() == {"deleted": True}
        assert w.store.contacts.get(me.name, target.__dict__["deleted_contact"], actor="test") is None
        assert w.store.contacts.get(me.name, me.phone, actor="test") is not None  # and only that one
    else:
        assert r.json() == {"deleted": False}
        assert w.store.contacts.get(target.name, target.phone, actor="test") is not None


def _campaign_names(w: World, tenant: str) -> list[tuple[str, str]]:
    return [(r["name"], r["status"]) for r in w.store.db.rows(
        "SELECT name, status FROM campaigns WHERE tenant_id = ? ORDER BY name", (_tid(w, tenant),))]  # fmt: skip


def _campaigns_observe(w: World, me: TenantData, target: TenantData) -> Any:
    return _campaign_names(w, me.name), _campaign_names(w, target.name)


def _campaign_create_build(w: World, me: TenantData, target: TenantData) -> Req:
    name = f"new-{secrets.token_hex(3)}"
    target.__dict__["new_campaign"] = name
    return Req("POST", "/v1/campaigns", json_body={"name": name, "pipeline": "receptionist", "segment": "leads",
                                                   "from_number": "+14155550000", "provider": "telnyx"})  # fmt: skip


def _campaign_create_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    name = target.__dict__["new_campaign"]
    assert r.json()["name"] == name and r.json()["status"] == "draft"
    assert (name, "draft") in _campaign_names(w, me.name)
    w.store.db.execute("DELETE FROM campaigns WHERE name = ?", (name,))


def _campaign_pause_check(w: World, me: TenantData, target: TenantData, r: Reply) -> None:
    assert r.json()["campaign"]["status"] == "paused"
    assert (f"camp-{me.name}", "paused") in _campaign_names(w, me.name)
    w.store.campaigns.start(me.name, f"camp-{me.name}", actor="test")


SPECS: dict[tuple[str, str], Spec] = {
    ("GET", "/v1/me"): Spec("collection", 200, lambda w, me, t: Req("GET", "/v1/me"), _me_check),
    ("GET", "/v1/calls"): Spec("collection", 200, lambda w, me, t: Req("GET", "/v1/calls"), _calls_check),
    ("GET", "/v1/calls/{call_id}"): Spec("object", 200, lambda w, me, t: Req("GET", f"/v1/calls/{t.call_id}"), _call_check),
    ("GET", "/v1/calls/{call_id}/transcript"): Spec(
        "object", 200, lambda w, me, t: Req("GET", f"/v1/calls/{t.call_id}/transcript"), _transcript_check,
        audited="transcript.read",
    ),
    ("GET", "/v1/calls/{call_id}/recording"): Spec(
        "object", 200, lambda w, me, t: Req("GET", f"/v1/calls/{t.call_id}/recording"), _recording_check,
        audited="recording.read",
    ),
    ("GET", "/v1/calls/{call_id}/report"): Spec(
        "object", 200, lambda w, me, t: Req("GET", f"/v1/calls/{t.call_id}/report"), _report_check,
        audited="report.read",
    ),
    ("POST", "/v1/subjects/export"): Spec("subject", 200, _export_build, _export_check, audited="subject.exported"),
    ("POST", "/v1/subjects/erase"): Spec("subject", 200, _erase_build, _erase_check, _erase_observe,
                                         audited="subject.erased"),
    ("POST", "/v1/subjects/restrict"): Spec("subject", 200, _restrict_build, _restrict_check, _restrict_observe,
                                            audited="subject.restricted"),
    ("GET", "/v1/optouts"): Spec("collection", 200, lambda w, me, t: Req("GET", "/v1/optouts"), _optouts_check,
                                 audited="optouts.read"),
    ("POST", "/v1/optouts"): Spec("subject", 201, _optout_add_build, _optout_add_check, _optouts_observe,
                                  audited="optout.added"),
    ("DELETE", "/v1/optouts/{phone_hash}"): Spec(
        "object", 204, _optout_delete_build, _optout_delete_check, _optouts_observe, audited="optout.removed",
        check_other=_optout_delete_other_check,
    ),
    ("GET", "/v1/policy"): Spec("collection", 200, lambda w, me, t: Req("GET", "/v1/policy"), _policy_check),
    ("PUT", "/v1/policy"): Spec("collection", 200, _policy_put_build, _policy_put_check, _policy_observe,
                                audited="policy.changed"),
    ("GET", "/v1/webhooks"): Spec("collection", 200, lambda w, me, t: Req("GET", "/v1/webhooks"), _webhooks_check),
    ("POST", "/v1/webhooks"): Spec("collection", 201, _webhook_create_build, _webhook_create_check, _webhooks_observe,
                                   audited="webhook.created"),
    ("GET", "/v1/webhooks/{endpoint_id}"): Spec(
        "object", 200, lambda w, me, t: Req("GET", f"/v1/webhooks/{t.webhook_id}"), _webhook_get_check
    ),
    ("PATCH", "/v1/webhooks/{endpoint_id}"): Spec(
        "object", 200,
        lambda w, me, t: Req("PATCH", f"/v1/webhooks/{t.webhook_id}", json_body={"description": "patched"}),
        _webhook_patch_check, _webhook_descriptions, audited="webhook.updated", check_other=_webhook_patch_other_check,
    ),  # fmt: skip
    ("DELETE", "/v1/webhooks/{endpoint_id}"): Spec(
        "object", 204, _webhook_delete_build, _webhook_delete_check, _webhooks_observe, audited="webhook.deleted",
        check_other=_webhook_delete_other_check,
    ),
    ("GET", "/v1/webhooks/{endpoint_id}/deliveries"): Spec(
        "object", 200, lambda w, me, t: Req("GET", f"/v1/webhooks/{t.webhook_id}/deliveries"), _deliveries_check
    ),
    ("POST", "/v1/webhooks/{endpoint_id}/deliveries/{delivery_id}/retry"): Spec(
        "object", 202, _retry_build, _retry_check, _retry_observe, audited="webhook.redelivered",
        check_other=_retry_other_check,
    ),
    ("GET", "/v1/audit"): Spec("collection", 200, lambda w, me, t: Req("GET", "/v1/audit"), _audit_check,
                               audited="audit.read"),
    ("GET", "/v1/providers"): Spec("collection", 200, lambda w, me, t: Req("GET", "/v1/providers"), _providers_check),
    ("PUT", "/v1/providers/{provider}"): Spec("collection", 200, _provider_set_build, _provider_set_check,
                                              _providers_observe, audited="provider.credentials_set"),
    ("DELETE", "/v1/providers/{provider}"): Spec(
        "object", 204, _provider_delete_build, _provider_delete_check, _providers_observe,
        audited="provider.credentials_deleted", check_other=_provider_delete_other_check,
    ),
    ("POST", "/v1/providers/{provider}/snippet"): Spec(
        "collection", 200,
        lambda w, me, t: Req("POST", "/v1/providers/telnyx/snippet", json_body={"new_stream_secret": True}),
        _snippet_check, _providers_observe, audited="provider.stream_secret_created",
    ),
    ("POST", "/v1/contacts/import"): Spec("collection", 200, _contact_import_build, _contact_import_check,
                                          _contacts_observe, audited="contacts.imported"),
    ("GET", "/v1/contacts"): Spec("collection", 200, lambda w, me, t: Req("GET", "/v1/contacts"), _contacts_list_check,
                                  audited="contacts.read"),
    ("GET", "/v1/contacts/segments"): Spec(
        "collection", 200, lambda w, me, t: Req("GET", "/v1/contacts/segments"),
        lambda w, me, t, r: r.json()["leads"] == 1 or pytest.fail(r.text),
    ),
    ("GET", "/v1/contacts/export"): Spec(
        "collection", 200, lambda w, me, t: Req("GET", "/v1/contacts/export"),
        lambda w, me, t, r: (me.phone in r.text and me.mark in r.text) or pytest.fail(r.text), audited="contacts.exported",
    ),
    ("POST", "/v1/contacts/lookup"): Spec(
        "subject", 200, lambda w, me, t: Req("POST", "/v1/contacts/lookup", json_body={"phone": t.phone}),
        _contact_lookup_check, audited="contact.read",
    ),
    ("POST", "/v1/contacts/delete"): Spec("subject", 200, _contact_delete_build, _contact_delete_check,
                                          _contacts_observe),
    ("GET", "/v1/campaigns"): Spec(
        "collection", 200, lambda w, me, t: Req("GET", "/v1/campaigns"),
        lambda w, me, t, r: [c["name"] for c in r.json()] == [f"camp-{me.name}"] or pytest.fail(r.text),
    ),
    ("POST", "/v1/campaigns"): Spec("collection", 201, _campaign_create_build, _campaign_create_check,
                                    _campaigns_observe, audited="campaign.created"),
    ("GET", "/v1/campaigns/{name}"): Spec(
        "object", 200, lambda w, me, t: Req("GET", f"/v1/campaigns/camp-{t.name}"),
        lambda w, me, t, r: r.json()["campaign"]["name"] == f"camp-{me.name}" or pytest.fail(r.text),
    ),
    ("POST", "/v1/campaigns/{name}/{action}"): Spec(
        "object", 200, lambda w, me, t: Req("POST", f"/v1/campaigns/camp-{t.name}/pause"), _campaign_pause_check,
        _campaigns_observe, audited="campaign.paused",
    ),
    ("GET", "/v1/campaigns/{name}/export"): Spec(
        "object", 200, lambda w, me, t: Req("GET", f"/v1/campaigns/camp-{t.name}/export"),
        lambda w, me, t, r: r.text.startswith("phone,name,status") or pytest.fail(r.text), audited="campaign.exported",
    ),
}


def test_every_route_is_in_the_matrix(world: World) -> None:
    paths = world.client.app.openapi()["paths"]
    mounted = {(method.upper(), path) for path, ops in paths.items() if path.startswith("/v1/") for method in ops}
    declared = {(m, p) for m, p, _ in api.ROUTES}
    assert mounted == declared == set(SPECS)


async def send(w: World, req: Req, key: str | None) -> Reply:
    return await w.client.request(
        req.method, req.path, key=key, params=req.params, json_body=req.json_body, content=req.content,
        content_type=req.content_type,
    )  # fmt: skip


@pytest.mark.parametrize("whose", ["own", "other"])
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("route", api.ROUTES, ids=[f"{m} {p}" for m, p, _ in api.ROUTES])
async def test_permission_matrix(world: World, route: tuple[str, str, str], role: str, whose: str) -> None:
    method, path, least = route
    spec = SPECS[(method, path)]
    me = world.tenants["acme"]
    other = world.tenants["globex"]
    target = me if whose == "own" else other
    req = spec.build(world, me, target)
    state = spec.observe(world, me, target) if spec.observe is not None else None
    last_audit = max((e.id for e in world.store.audit.list(limit=1)), default=0)
    reply = await send(world, req, me.keys[role])
    audited = [(e.action, e.actor, e.tenant) for e in world.store.audit.list(limit=50) if e.id > last_audit]
    if RANK[role] < RANK[least] or (whose == "other" and spec.kind == "object"):
        # refused: the status says so, and nothing happened — nothing changed, read or audited
        if RANK[role] < RANK[least]:
            assert reply.status == 403, reply.text
            assert role in reply.json()["detail"] and least in reply.json()["detail"]
        else:
            assert reply.status == 404, reply.text
            if spec.check_other is not None:
                spec.check_other(world, me, target, reply)
        assert set(reply.json()) == {"detail"}, reply.text
        if spec.observe is not None:
            assert spec.observe(world, me, target) == state, "a refused request changed the state"
        assert audited == [], f"a refused request was acted on: {audited}"
    else:
        assert reply.status == spec.ok, reply.text
        spec.check(world, me, target, reply)
        if spec.audited is not None:
            assert (spec.audited, f"apikey:{me.key_ids[role]}", me.name) in audited, audited
    # Nothing of the other tenant leaks into any answer (a number the request itself names aside).
    asked = json.dumps(req.json_body) if req.json_body is not None else ""
    for ident in other.identifiers():
        if ident not in asked:
            assert ident not in reply.text, f"{ident!r} of the other tenant in the answer"
    if role == "viewer":
        assert MARK not in reply.text
        assert me.phone not in reply.text and me.optout_phone not in reply.text


@pytest.mark.parametrize("route", api.ROUTES, ids=[f"{m} {p}" for m, p, _ in api.ROUTES])
async def test_without_a_valid_key_every_route_is_401(world: World, route: tuple[str, str, str]) -> None:
    method, path, _ = route
    me = world.tenants["acme"]
    req = SPECS[(method, path)].build(world, me, me)
    revoked = world.store.tenants.create_api_key("acme", role="admin", actor="test")
    assert world.store.tenants.revoke_api_key("acme", revoked.split("_")[1], actor="test")
    for auth in (None, "Bearer nonsense", f"Bearer {revoked}", f"Basic {me.keys['admin']}", "Bearer vck_000000000000_" + "x" * 43):
        reply = await world.client.request(
            req.method, req.path, auth_header=auth, params=req.params, json_body=req.json_body, content=req.content,
            content_type=req.content_type,
        )  # fmt: skip
        assert reply.status == 401, (auth, reply.text)
        assert reply.headers.get("www-authenticate") == "Bearer"
        assert MARK not in reply.text


async def test_viewer_sees_masked_numbers_and_cannot_filter_by_number(world: World) -> None:
    me = world.tenants["acme"]
    reply = await world.client.request("GET", "/v1/calls", key=me.keys["viewer"])
    (call,) = [c for c in reply.json()["calls"] if c["call_id"] == me.call_id]
    assert call["caller"] == me.phone[:2] + "*" * (len(me.phone) - 4) + me.phone[-2:]
    reply = await world.client.request("GET", "/v1/calls", key=me.keys["viewer"], params={"phone": me.phone})
    assert reply.status == 403
    reply = await world.client.request("GET", "/v1/calls", key=me.keys["analyst"], params={"phone": me.phone})
    assert [c["call_id"] for c in reply.json()["calls"]] == [me.call_id]
    assert reply.json()["calls"][0]["caller"] == me.phone


async def test_call_filters(world: World) -> None:
    me = world.tenants["acme"]
    key = me.keys["analyst"]

    async def ids(**params: str) -> list[str]:
        reply = await world.client.request("GET", "/v1/calls", key=key, params=params)
        assert reply.status == 200, reply.text
        return [c["call_id"] for c in reply.json()["calls"]]

    assert me.call_id in await ids(since="2023-11-14T00:00:00Z", until="2023-11-16T00:00:00+00:00")
    assert me.call_id not in await ids(since="2023-11-15T00:00:00Z")
    assert me.call_id in await ids(status="ended", end_reason="hangup")
    assert me.call_id not in await ids(status="in_progress")
    assert me.call_id not in await ids(end_reason="completed")
    bad = await world.client.request("GET", "/v1/calls", key=key, params={"since": "yesterday"})
    assert bad.status == 422


async def test_content_reads_and_changes_are_audited_with_the_key_id(world: World) -> None:
    me = world.tenants["acme"]
    analyst, admin = me.keys["analyst"], me.keys["admin"]
    actor = f"apikey:{me.key_ids['analyst']}"
    before = world.store.audit.list("acme", limit=1)[0].id
    for path in (f"/v1/calls/{me.call_id}/transcript", f"/v1/calls/{me.call_id}/recording", f"/v1/calls/{me.call_id}/report"):
        assert (await world.client.request("GET", path, key=analyst)).status == 200
    assert (await world.client.request("POST", "/v1/subjects/export", key=analyst, json_body={"phone": me.phone})).status == 200
    # metadata reads are not content: not audited
    assert (await world.client.request("GET", f"/v1/calls/{me.call_id}", key=analyst)).status == 200
    phone = world.fresh_phone()
    assert (await world.client.request("POST", "/v1/optouts", key=admin, json_body={"phone": phone})).status == 201
    entries = [e for e in world.store.audit.list("acme", limit=50) if e.id > before]
    mine = [(e.action, e.object_id) for e in reversed(entries) if e.actor == actor]
    assert [a for a, _ in mine] == ["transcript.read", "recording.read", "report.read", "subject.exported"]
    assert ("optout.added", f"apikey:{me.key_ids['admin']}") in [(e.action, e.actor) for e in entries]
    # the audit log holds no number and no content
    assert all(phone not in (e.object_id or "") and me.phone not in (e.object_id or "") for e in entries)
    assert world.store.audit.verify().ok
    world.store.subjects.remove_optout("acme", phone, actor="test")


async def test_policy_replace_is_validated_and_names_the_field(world: World) -> None:
    key = world.tenants["acme"].keys["admin"]
    bad = await world.client.request(
        "PUT", "/v1/policy", key=key, json_body={"retention": {"transcripts": -1}}
    )
    assert bad.status == 422
    detail = bad.json()["detail"]
    assert detail[0]["field"] == "retention.transcripts" and "retention.transcripts" in detail[0]["msg"]
    bad = await world.client.request(
        "PUT", "/v1/policy", key=key, content=b"retention:\n  transcript: 3\n", content_type="application/yaml"
    )
    assert bad.status == 422 and bad.json()["detail"][0]["field"] == "retention.transcript"
    bad = await world.client.request("PUT", "/v1/policy", key=key, content=b"{not json", content_type="application/json")
    assert bad.status == 422
    wrong_type = await world.client.request("PUT", "/v1/policy", key=key, content=b"x", content_type="text/plain")
    assert wrong_type.status == 415
    assert world.store.tenants.policy("acme").name == "acme-policy"  # unchanged by the rejected ones
    good = await world.client.request(
        "PUT", "/v1/policy", key=key,
        json_body={**world.store.tenants.policy("acme").model_dump(mode="json"), "description": "via JSON"},
    )  # fmt: skip
    assert good.status == 200 and good.json()["policy"]["description"] == "via JSON"
    assert world.store.tenants.policy("acme").description == "via JSON"


async def test_webhook_url_rules_and_secret_rotation(world: World) -> None:
    key = world.tenants["acme"].keys["admin"]
    # (which addresses a webhook may reach is tested with a strict store in test_security.py)
    for url in ("ftp://127.0.0.1/x", "https://user:pw@example.com/x", "https://example.com/#frag", "not a url"):
        reply = await world.client.request("POST", "/v1/webhooks", key=key, json_body={"url": url})
        assert reply.status == 422, (url, reply.text)
    reply = await world.client.request("POST", "/v1/webhooks", key=key, json_body={"url": "https://a.example/x", "events": ["nope"]})
    assert reply.status == 422
    created = (await world.client.request("POST", "/v1/webhooks", key=key, json_body={"url": "http://localhost:9/x"})).json()
    rotated = await world.client.request("PATCH", f"/v1/webhooks/{created['id']}", key=key, json_body={"rotate_secret": True})
    assert rotated.status == 200
    assert rotated.json()["secret"].startswith("whsec_") and rotated.json()["secret"] != created["secret"]
    assert rotated.json()["secret_rotated_at"] is not None
    assert (await world.client.request("DELETE", f"/v1/webhooks/{created['id']}", key=key)).status == 204
    assert (await world.client.request("GET", f"/v1/webhooks/{created['id']}", key=key)).status == 404


async def test_subject_export_as_zip_holds_the_recording(world: World) -> None:
    import io
    import zipfile

    me = world.tenants["acme"]
    reply = await world.client.request(
        "POST", "/v1/subjects/export", key=me.keys["admin"], json_body={"phone": me.phone, "format": "zip"}
    )
    assert reply.status == 200 and reply.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(reply.body)) as z:
        doc = json.loads(z.read("export.json"))
        assert doc["call_ids"] == [me.call_id]
        (rec,) = doc["recordings"]
        assert z.read(rec["file"]) == me.wav
