"""The tenant admin HTTP API (``/v1/...``), mounted by ``serve``: ``app.include_router(api.router)``.

Every request carries a tenant API key as ``Authorization: Bearer vck_...``
(created and revoked with ``voicecore tenants key-add`` / ``key-revoke``; stored as
scrypt hashes). A key belongs to one tenant and has one role:

========================================  =====  =======  ======
route                                     admin  analyst  viewer
========================================  =====  =======  ======
``GET /v1/me``                            yes    yes      yes [2]
``GET /v1/calls`` (metadata)              yes    yes      yes [1]
``GET /v1/calls/{id}`` (metadata)         yes    yes      yes [1]
``GET /v1/calls/{id}/transcript``         yes    yes      403
``GET /v1/calls/{id}/recording``          yes    yes      403
``GET /v1/calls/{id}/report``             yes    yes      403
``POST /v1/subjects/export``              yes    yes      403
``POST /v1/subjects/erase``               yes    403      403
``POST /v1/subjects/restrict``            yes    403      403
``GET|POST /v1/optouts``                  yes    403      403
``DELETE /v1/optouts/{phone_hash}``       yes    403      403
``GET|PUT /v1/policy``                    yes    403      403
``/v1/webhooks...`` (CRUD, deliveries)    yes    403      403
``GET /v1/audit``                         yes    403      403
``/v1/providers...`` (credentials,        yes    403      403
snippets: :mod:`.api_providers`)
``/v1/contacts...`` (import, delete)      yes    403      403
``/v1/contacts...`` (list, look up,       yes    yes      403
export: :mod:`.api_contacts`)
``/v1/campaigns...`` (create, start,      yes    403      403
pause, resume: :mod:`.api_campaigns`)
``/v1/campaigns...`` (list, status,       yes    yes      403
export)
========================================  =====  =======  ======

[1] A viewer sees call metadata only: phone numbers masked (``+1*******71``), no
filtering by number, and never any transcript text.

[2] Also an ``agent`` key, the role for taking calls (media streams, WebRTC, provider
webhooks: :mod:`voicecore.server.calls`), which may do nothing else here.

The guard in front of the app (:mod:`voicecore.server.guard`) checks the key before
the request body is read, caps bodies at 1 MiB (413), and answers 429 with
``Retry-After`` to an address whose key checks keep failing.

A missing or unknown key is 401; a role that may not do something gets 403
before anything is looked up; another tenant's call, webhook or opt-out is 404,
exactly like one that does not exist. Every read of call content (transcript,
recording, report, subject export, the opt-out list, the audit log) and every
change is appended to the audit log with ``actor = "apikey:<key id>"`` (the
repositories do it themselves, so the CLI, which calls the same methods, is
audited the same way). Every answer's shape comes from :mod:`voicecore.views`. Phone numbers travel in request bodies, not URLs (access logs), except
the ``phone`` filter of ``GET /v1/calls``.

Validation errors are 422 with FastAPI's shape (``{"detail": [{"loc", "msg",
"type"}]}``), never echoing what was sent; a rejected policy names the field in
``loc`` and ``msg``. Store
calls run in worker threads (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import (
    APIRouter,
    Depends,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
    Security,
)
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from voicecore.policy.models import (
    PolicyError,
    check_document_nesting,
    load_policy_text,
    policy_from_data,
    policy_to_yaml,
)
from voicecore.policy.phone import InvalidPhoneNumber
from voicecore.server.api_models import (
    AuditOut,
    CallDetail,
    CallList,
    DeliveryOut,
    ErasureOut,
    ExportBody,
    Me,
    OptOutAdded,
    OptOutOut,
    PhoneBody,
    PolicyOut,
    Redelivered,
    ReportOut,
    RestrictBody,
    RestrictOut,
    TranscriptOut,
    WebhookIn,
    WebhookOut,
    WebhookPatch,
    WebhookWithSecret,
)
from voicecore.server.guard import api_key_of
from voicecore.storage import CryptoError, StorageError, Store, UnknownTenant
from voicecore.storage.campaigns import UnknownCampaign
from voicecore.views import (
    audit_view,
    call_view,
    delivery_view,
    optout_view,
    plain_view,
    report_view,
    webhook_view,
)

T = TypeVar("T")

# ``agent`` keys take calls; on /v1 they may only ask who they are.
_RANK: dict[str, int] = {"agent": -1, "viewer": 0, "analyst": 1, "admin": 2}
POLICY_MAX_BODY = 64 * 1024
_ID = r"^[A-Za-z0-9_.:\-]{1,128}$"

router = APIRouter(prefix="/v1")
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="A tenant API key: `Authorization: Bearer vck_<id>_<secret>`.",
)


# --------------------------------------------------------------------------- auth


@dataclass(frozen=True)
class Principal:
    key_id: str
    tenant: str
    role: str

    @property
    def actor(self) -> str:
        return f"apikey:{self.key_id}"

    def at_least(self, role: str) -> bool:
        return _RANK[self.role] >= _RANK[role]


def _store(request: Request) -> Store:
    return request.app.state.vc.store  # type: ignore[no-any-return]


async def _run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A Store call in a worker thread, its errors turned into HTTP answers."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except UnknownTenant:
        raise HTTPException(401, "the API key's tenant no longer exists", {"WWW-Authenticate": "Bearer"}) from None
    except InvalidPhoneNumber as e:
        raise _unprocessable(["body", "phone"], f"invalid phone number: {e}", "value_error.phone") from None
    except PolicyError as e:
        raise _policy_error(e) from None
    except CryptoError:
        raise HTTPException(503, "the tenant's data cannot be decrypted (keystore)") from None
    except UnknownCampaign:
        raise HTTPException(404, "campaign not found") from None
    except StorageError as e:
        raise _unprocessable(["body"], str(e), "value_error") from None


def _unprocessable(loc: list[str | int], msg: str, kind: str) -> HTTPException:
    return HTTPException(422, [{"loc": loc, "msg": msg, "type": kind}])


def _policy_error(e: PolicyError) -> HTTPException:
    detail = [
        {"loc": ["body", *field.replace("[", ".").replace("]", "").split(".")], "msg": f"{field}: {message}",
         "type": "policy_invalid", "field": field}
        for field, message in e.problems
    ]  # fmt: skip
    return HTTPException(422, detail)


async def principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
) -> Principal:
    """The API key's tenant and role, as the guard checked it before the body was read
    (:mod:`voicecore.server.guard`); 401 without a valid key."""
    info = api_key_of(request.scope)
    if info is None:  # an app without the guard in front: check here
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(401, "missing API key (Authorization: Bearer vck_...)", {"WWW-Authenticate": "Bearer"})
        info = await asyncio.to_thread(_store(request).tenants.authenticate, credentials.credentials)
    if info is None:
        raise HTTPException(401, "invalid or revoked API key", {"WWW-Authenticate": "Bearer"})
    return Principal(info.key_id, info.tenant, info.role)


def require(role: str) -> Callable[..., Any]:
    """A dependency: the principal, if its role is at least ``role`` (else 403)."""

    async def dependency(p: Annotated[Principal, Depends(principal)]) -> Principal:
        if not p.at_least(role):
            raise HTTPException(403, f"this API key's role ({p.role}) may not do this; it needs {role}")
        return p

    return dependency


AnyKey = Annotated[Principal, Depends(principal)]
Viewer = Annotated[Principal, Depends(require("viewer"))]
Analyst = Annotated[Principal, Depends(require("analyst"))]
Admin = Annotated[Principal, Depends(require("admin"))]
CallId = Annotated[str, Path(pattern=_ID, description="The call id.")]

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed request (a body that cannot be parsed)"},
    401: {"description": "Missing, unknown or revoked API key"},
    403: {"description": "The key's role may not do this"},
    413: {"description": "Request body too large"},
    429: {"description": "Too many failed authentications from this address (see Retry-After)"},
}
NOT_FOUND = {404: {"description": "Not found for this tenant"}}


# --------------------------------------------------------------------------- models


def _epoch_or_422(value: datetime | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp()
    except (OverflowError, ValueError, OSError):
        raise _unprocessable(["query", name], "date/time out of range", "value_error.datetime") from None


# --------------------------------------------------------------------------- identity


@router.get("/me", response_model=Me, tags=["keys"], responses=AUTH_RESPONSES)
async def me(p: AnyKey) -> dict[str, Any]:
    """The tenant and role of the API key used."""
    return {"key_id": p.key_id, "tenant": p.tenant, "role": p.role}


# --------------------------------------------------------------------------- calls


@router.get("/calls", response_model=CallList, tags=["calls"], responses=AUTH_RESPONSES)
async def list_calls(
    request: Request,
    p: Viewer,
    since: Annotated[datetime | None, Query(description="Calls started at or after (ISO 8601; UTC if no offset)")] = None,
    until: Annotated[datetime | None, Query(description="Calls started before (ISO 8601)")] = None,
    phone: Annotated[str | None, Query(min_length=1, max_length=64, description="From or to this number (analyst, admin)")] = None,
    status: Annotated[Literal["ended", "in_progress"] | None, Query()] = None,
    end_reason: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> dict[str, Any]:
    """The tenant's calls, newest first: metadata only (viewers see masked numbers)."""
    if phone is not None and not p.at_least("analyst"):
        raise HTTPException(403, "filtering by phone number needs the analyst or admin role")
    calls = await _run(
        _store(request).calls.list,
        p.tenant,
        actor=p.actor,
        since=_epoch_or_422(since, "since"),
        until=_epoch_or_422(until, "until"),
        phone=phone,
        end_reason=end_reason,
        ended=None if status is None else status == "ended",
        limit=limit,
        offset=offset,
    )
    masked = not p.at_least("analyst")
    return {"calls": [call_view(c, masked=masked) for c in calls], "limit": limit, "offset": offset}


@router.get("/calls/{call_id}", response_model=CallDetail, tags=["calls"], responses={**AUTH_RESPONSES, **NOT_FOUND})
async def get_call(request: Request, p: Viewer, call_id: CallId) -> dict[str, Any]:
    """One call's metadata and per-turn latency timeline (no transcript text)."""
    call = await _run(_store(request).calls.get, p.tenant, call_id, actor=p.actor, include_transcript=False)
    if call is None:
        raise HTTPException(404, "call not found")
    return call_view(call, masked=not p.at_least("analyst"))


@router.get(
    "/calls/{call_id}/transcript", response_model=TranscriptOut, tags=["calls"], responses={**AUTH_RESPONSES, **NOT_FOUND}
)
async def get_transcript(request: Request, p: Analyst, call_id: CallId) -> dict[str, Any]:
    """The call's transcript as stored (redacted or not, per the policy). Audited (``transcript.read``)."""
    call = await _run(_store(request).calls.get, p.tenant, call_id, actor=p.actor, include_transcript=True)
    if call is None:
        raise HTTPException(404, "call not found")
    turns = call_view(call)["turns"]
    stored = any(t["text"] is not None for t in turns if t["role"] != "event")
    return {"call_id": call.call_id, "stored": stored, "redacted": call.transcript_redacted, "turns": turns}


@router.get(
    "/calls/{call_id}/recording",
    tags=["calls"],
    response_class=StreamingResponse,
    responses={**AUTH_RESPONSES, **NOT_FOUND, 200: {"content": {"audio/wav": {}}, "description": "WAV audio"}},
)
async def get_recording(
    request: Request,
    p: Analyst,
    call_id: CallId,
    track: Annotated[str, Query(pattern=r"^[A-Za-z0-9_.-]{1,32}$")] = "mixed",
) -> StreamingResponse:
    """The call's recording as WAV, streamed (decrypted in memory). Audited (``recording.read``)."""
    wav = await _run(_store(request).calls.read_recording, p.tenant, call_id, actor=p.actor, track=track)
    if wav is None:
        raise HTTPException(404, "no recording for this call")

    def chunks() -> Iterator[bytes]:
        view = memoryview(wav)
        for i in range(0, len(view), 64 * 1024):
            yield bytes(view[i : i + 64 * 1024])

    return StreamingResponse(
        chunks(),
        media_type="audio/wav",
        headers={"Content-Length": str(len(wav)), "Content-Disposition": f'attachment; filename="{call_id}-{track}.wav"'},
    )


@router.get("/calls/{call_id}/report", response_model=ReportOut, tags=["calls"], responses={**AUTH_RESPONSES, **NOT_FOUND})
async def get_report(request: Request, p: Analyst, call_id: CallId) -> dict[str, Any]:
    """The call's latest post-call report (``ready`` or ``failed`` with the reason). Audited (``report.read``)."""
    report = await _run(_store(request).calls.get_report, p.tenant, call_id, actor=p.actor)
    if report is None:
        raise HTTPException(404, "no report for this call")
    return report_view(report)


# --------------------------------------------------------------------------- data subjects


@router.post(
    "/subjects/export",
    tags=["subjects"],
    responses={
        **AUTH_RESPONSES,
        200: {
            "description": "Everything held about the number (JSON, or a zip with export.json and recordings/*.wav)",
            "content": {"application/json": {"schema": {"type": "object"}}, "application/zip": {}},
        },
    },
)
async def export_subject(request: Request, p: Analyst, body: ExportBody) -> Response:
    """Everything the tenant holds about a phone number (calls, turns, reports, contacts, opt-out
    and restriction status, recordings). Audited (``subject.exported``)."""
    data = await _run(_store(request).subjects.export_data, p.tenant, body.phone, actor=p.actor)
    if body.format == "zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("export.json", json.dumps(data.document, indent=2, ensure_ascii=False))
            for name, wav in data.recordings.items():
                z.writestr(name, wav)
        payload = buffer.getvalue()

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(payload), 64 * 1024):
                yield payload[i : i + 64 * 1024]

        return StreamingResponse(
            chunks(),
            media_type="application/zip",
            headers={"Content-Disposition": 'attachment; filename="subject-export.zip"'},
        )
    document = dict(data.document)
    document["files"] = {name: base64.b64encode(wav).decode("ascii") for name, wav in data.recordings.items()}
    return Response(json.dumps(document, ensure_ascii=False), media_type="application/json")


@router.post("/subjects/erase", response_model=ErasureOut, tags=["subjects"], responses=AUTH_RESPONSES)
async def erase_subject(request: Request, p: Admin, body: PhoneBody) -> dict[str, Any]:
    """Erase everything held about a number (a keyed hash stays for the opt-out). Audited."""
    result = await _run(_store(request).subjects.erase, p.tenant, body.phone, actor=p.actor)
    return plain_view(result)


@router.post("/subjects/restrict", response_model=RestrictOut, tags=["subjects"], responses=AUTH_RESPONSES)
async def restrict_subject(request: Request, p: Admin, body: RestrictBody) -> dict[str, Any]:
    """Restrict (or, with ``restricted: false``, lift the restriction of) processing for a number. Audited."""
    subjects = _store(request).subjects
    fn = subjects.restrict if body.restricted else subjects.unrestrict
    changed = await _run(fn, p.tenant, body.phone, actor=p.actor)
    return {"restricted": body.restricted, "changed": changed}


# --------------------------------------------------------------------------- opt-outs


@router.get("/optouts", response_model=list[OptOutOut], tags=["optouts"], responses=AUTH_RESPONSES)
async def list_optouts(request: Request, p: Admin) -> list[dict[str, Any]]:
    """The tenant's do-not-call list. Audited (``optouts.read``)."""
    entries = await _run(_store(request).subjects.optouts, p.tenant, actor=p.actor)
    return [optout_view(e) for e in entries]


@router.post("/optouts", response_model=OptOutAdded, status_code=201, tags=["optouts"], responses=AUTH_RESPONSES)
async def add_optout(request: Request, p: Admin, body: PhoneBody) -> dict[str, Any]:
    """Put a number on the do-not-call list (writes an ``optout.requested`` event). Audited."""
    subjects = _store(request).subjects
    added = await _run(subjects.add_optout, p.tenant, body.phone, source="api", actor=p.actor)
    return {"phone": await _run(subjects.e164, p.tenant, body.phone), "added": added}


@router.delete(
    "/optouts/{phone_hash}", status_code=204, tags=["optouts"], responses={**AUTH_RESPONSES, **NOT_FOUND}
)
async def remove_optout(
    request: Request, p: Admin, phone_hash: Annotated[str, Path(pattern=r"^[0-9a-f]{16,128}$")]
) -> Response:
    """Take a number off the list, by the ``phone_hash`` the list shows. Audited."""
    if not await _run(_store(request).subjects.remove_optout_hash, p.tenant, phone_hash, actor=p.actor):
        raise HTTPException(404, "no such opt-out")
    return Response(status_code=204)


# --------------------------------------------------------------------------- policy

_POLICY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object", "description": "The policy as JSON (see policies/*.yaml)"}},
            "application/yaml": {"schema": {"type": "string", "description": "The policy file's YAML text"}},
        },
    }
}


@router.get("/policy", response_model=PolicyOut, tags=["policy"], responses=AUTH_RESPONSES)
async def get_policy(request: Request, p: Admin) -> dict[str, Any]:
    """The tenant's policy (YAML as stored, and parsed)."""
    tenants = _store(request).tenants
    text = await _run(tenants.policy_yaml, p.tenant)
    policy = await _run(tenants.policy, p.tenant)
    return {"name": policy.name, "yaml": text, "policy": policy.model_dump(mode="json")}


@router.put(
    "/policy",
    response_model=PolicyOut,
    tags=["policy"],
    responses={
        **AUTH_RESPONSES,
        415: {"description": "Not application/json or application/yaml"},
        422: {"description": "The policy is invalid; `detail[].field` names the field"},
    },
    openapi_extra=_POLICY_BODY,
)
async def replace_policy(request: Request, p: Admin) -> dict[str, Any]:
    """Replace the tenant's policy (JSON object or YAML text). Validated first: an invalid policy is
    422 naming the field. Applies to data written from now on. Audited (``policy.changed``)."""
    raw = await request.body()
    if len(raw) > POLICY_MAX_BODY:
        raise _unprocessable(["body"], f"the policy is larger than {POLICY_MAX_BODY} bytes", "value_error.too_large")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _unprocessable(["body"], "the policy is not UTF-8 text", "value_error.encoding") from None
    source = f"policy for tenant {p.tenant!r}"
    try:
        if ctype in ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"):
            load_policy_text(text, source=source)
            yaml_text = text
        elif ctype in ("application/json", "") or ctype.endswith("+json"):
            check_document_nesting(text, source)  # before the parser recurses into it
            try:
                data = json.loads(text)
            except ValueError as e:
                raise _unprocessable(["body"], f"not valid JSON: {e}", "json_invalid") from None
            yaml_text = policy_to_yaml(policy_from_data(data, source=source))
        else:
            raise HTTPException(415, "send the policy as application/json or application/yaml")
    except PolicyError as e:
        raise _policy_error(e) from None
    policy = await _run(_store(request).tenants.set_policy, p.tenant, yaml_text, actor=p.actor)
    return {"name": policy.name, "yaml": yaml_text, "policy": policy.model_dump(mode="json")}


# --------------------------------------------------------------------------- webhooks

WebhookId = Annotated[str, Path(pattern=_ID, description="The webhook endpoint id (wh_...)")]


@router.get("/webhooks", response_model=list[WebhookOut], tags=["webhooks"], responses=AUTH_RESPONSES)
async def list_webhooks(request: Request, p: Admin) -> list[dict[str, Any]]:
    """The tenant's webhook endpoints (never their secrets)."""
    return [webhook_view(e) for e in await _run(_store(request).outbox.webhooks, p.tenant)]


@router.post(
    "/webhooks", response_model=WebhookWithSecret, status_code=201, tags=["webhooks"], responses=AUTH_RESPONSES
)
async def create_webhook(request: Request, p: Admin, body: WebhookIn) -> dict[str, Any]:
    """Add an endpoint; the answer holds its signing secret, shown only this once. Audited."""
    endpoint, secret = await _run(
        _store(request).outbox.create_webhook, p.tenant, body.url, body.events, description=body.description,
        actor=p.actor,
    )  # fmt: skip
    return webhook_view(endpoint, secret, with_secret=True)


@router.get(
    "/webhooks/{endpoint_id}", response_model=WebhookOut, tags=["webhooks"], responses={**AUTH_RESPONSES, **NOT_FOUND}
)
async def get_webhook(request: Request, p: Admin, endpoint_id: WebhookId) -> dict[str, Any]:
    endpoint = await _run(_store(request).outbox.webhook, p.tenant, endpoint_id)
    if endpoint is None:
        raise HTTPException(404, "webhook endpoint not found")
    return webhook_view(endpoint)


@router.patch(
    "/webhooks/{endpoint_id}",
    response_model=WebhookWithSecret,
    tags=["webhooks"],
    responses={**AUTH_RESPONSES, **NOT_FOUND},
)
async def update_webhook(request: Request, p: Admin, endpoint_id: WebhookId, body: WebhookPatch) -> dict[str, Any]:
    """Change the URL, events, description or active flag; ``rotate_secret`` returns a new secret
    (the old one keeps signing beside it for a day). Audited."""
    result = await _run(
        _store(request).outbox.update_webhook,
        p.tenant,
        endpoint_id,
        url=body.url,
        events=body.events,
        description=body.description,
        active=body.active,
        rotate_secret=body.rotate_secret,
        actor=p.actor,
    )
    if result is None:
        raise HTTPException(404, "webhook endpoint not found")
    endpoint, secret = result
    return webhook_view(endpoint, secret, with_secret=True)


@router.delete(
    "/webhooks/{endpoint_id}", status_code=204, tags=["webhooks"], responses={**AUTH_RESPONSES, **NOT_FOUND}
)
async def delete_webhook(request: Request, p: Admin, endpoint_id: WebhookId) -> Response:
    """Remove an endpoint (its undelivered deliveries go with it). Audited."""
    if not await _run(_store(request).outbox.delete_webhook, p.tenant, endpoint_id, actor=p.actor):
        raise HTTPException(404, "webhook endpoint not found")
    return Response(status_code=204)


@router.get(
    "/webhooks/{endpoint_id}/deliveries",
    response_model=list[DeliveryOut],
    tags=["webhooks"],
    responses={**AUTH_RESPONSES, **NOT_FOUND},
)
async def list_deliveries(
    request: Request,
    p: Admin,
    endpoint_id: WebhookId,
    status: Annotated[Literal["pending", "delivered", "dead"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """The endpoint's deliveries, newest first: status, attempts, last error (dead = dead-lettered)."""
    items = await _run(_store(request).outbox.deliveries, p.tenant, endpoint_id, status=status, limit=limit)
    if items is None:
        raise HTTPException(404, "webhook endpoint not found")
    return [delivery_view(d) for d in items]


@router.post(
    "/webhooks/{endpoint_id}/deliveries/{delivery_id}/retry",
    response_model=Redelivered,
    status_code=202,
    tags=["webhooks"],
    responses={**AUTH_RESPONSES, **NOT_FOUND},
)
async def retry_delivery(
    request: Request,
    p: Admin,
    endpoint_id: WebhookId,
    delivery_id: Annotated[str, Path(pattern=_ID)],
) -> dict[str, Any]:
    """Queue a delivery again now (a dead-lettered one gets a fresh set of attempts). Audited."""
    if not await _run(_store(request).outbox.redeliver, p.tenant, endpoint_id, delivery_id, actor=p.actor):
        raise HTTPException(404, "delivery not found")
    return {"id": delivery_id, "status": "pending"}


# --------------------------------------------------------------------------- audit


@router.get("/audit", response_model=list[AuditOut], tags=["audit"], responses=AUTH_RESPONSES)
async def read_audit(
    request: Request, p: Admin, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, Any]]:
    """The tenant's latest audit entries, newest first. Reading it is itself audited (``audit.read``)."""
    audit = _store(request).audit
    await _run(audit.append, p.actor, p.tenant, "audit.read", "audit")
    return [audit_view(e) for e in await _run(audit.list, p.tenant, limit=limit)]


ROUTES: tuple[tuple[str, str, str], ...] = (
    # (method, path, least role) — what the permission-matrix test walks through
    ("GET", "/v1/me", "viewer"),
    ("GET", "/v1/calls", "viewer"),
    ("GET", "/v1/calls/{call_id}", "viewer"),
    ("GET", "/v1/calls/{call_id}/transcript", "analyst"),
    ("GET", "/v1/calls/{call_id}/recording", "analyst"),
    ("GET", "/v1/calls/{call_id}/report", "analyst"),
    ("POST", "/v1/subjects/export", "analyst"),
    ("POST", "/v1/subjects/erase", "admin"),
    ("POST", "/v1/subjects/restrict", "admin"),
    ("GET", "/v1/optouts", "admin"),
    ("POST", "/v1/optouts", "admin"),
    ("DELETE", "/v1/optouts/{phone_hash}", "admin"),
    ("GET", "/v1/policy", "admin"),
    ("PUT", "/v1/policy", "admin"),
    ("GET", "/v1/webhooks", "admin"),
    ("POST", "/v1/webhooks", "admin"),
    ("GET", "/v1/webhooks/{endpoint_id}", "admin"),
    ("PATCH", "/v1/webhooks/{endpoint_id}", "admin"),
    ("DELETE", "/v1/webhooks/{endpoint_id}", "admin"),
    ("GET", "/v1/webhooks/{endpoint_id}/deliveries", "admin"),
    ("POST", "/v1/webhooks/{endpoint_id}/deliveries/{delivery_id}/retry", "admin"),
    ("GET", "/v1/audit", "admin"),
    # voicecore.server.api_providers
    ("GET", "/v1/providers", "admin"),
    ("PUT", "/v1/providers/{provider}", "admin"),
    ("DELETE", "/v1/providers/{provider}", "admin"),
    ("POST", "/v1/providers/{provider}/snippet", "admin"),
    # voicecore.server.api_contacts
    ("POST", "/v1/contacts/import", "admin"),
    ("GET", "/v1/contacts", "analyst"),
    ("GET", "/v1/contacts/segments", "analyst"),
    ("GET", "/v1/contacts/export", "analyst"),
    ("POST", "/v1/contacts/lookup", "analyst"),
    ("POST", "/v1/contacts/delete", "admin"),
    # voicecore.server.api_campaigns
    ("GET", "/v1/campaigns", "analyst"),
    ("POST", "/v1/campaigns", "admin"),
    ("GET", "/v1/campaigns/{name}", "analyst"),
    ("POST", "/v1/campaigns/{name}/{action}", "admin"),
    ("GET", "/v1/campaigns/{name}/export", "analyst"),
)
