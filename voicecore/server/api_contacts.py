"""``/v1/contacts``: a tenant's contacts for outbound calls (the same calls as ``voicecore contacts``).

=============================================  =====  =======  ======
route                                          admin  analyst  viewer
=============================================  =====  =======  ======
``POST /v1/contacts/import`` (a CSV body)      yes    403      403
``GET /v1/contacts`` (``segment``, paging)     yes    yes      403
``GET /v1/contacts/segments``                  yes    yes      403
``GET /v1/contacts/export`` (CSV)              yes    yes      403
``POST /v1/contacts/lookup`` (a phone)         yes    yes      403
``POST /v1/contacts/delete`` (a phone)         yes    403      403
=============================================  =====  =======  ======

Contacts are personal data: a viewer sees none. Numbers travel in request bodies, never in
URLs. An import answers 200 with what it did, each bad line of the file named with its number
and why (the file's good lines are stored all the same); a file that cannot be used at all is
422 naming why, and nothing is stored. Bodies are capped at 1 MiB like every request: about
15,000 lines; import bigger files with the CLI. Every read and change is audited.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response

from voicecore.outbound.contacts_csv import ContactFileError, parse_mapping
from voicecore.server.api import AUTH_RESPONSES, Admin, Analyst, _run, _store
from voicecore.server.api_models import (
    ContactImportOut,
    ContactLookupOut,
    ContactOut,
    PhoneBody,
)
from voicecore.storage.contacts import ContactsNotKept

router = APIRouter(prefix="/v1")
Segment = Annotated[str | None, Query(max_length=64, description="A segment name (letters, digits, . _ -)")]


@router.post("/contacts/import", response_model=ContactImportOut, tags=["contacts"], responses=AUTH_RESPONSES)
async def import_contacts(
    request: Request,
    p: Admin,
    segment: Segment = None,
    map: Annotated[list[str] | None, Query(description="column=field, repeatable (as `contacts import --map`)")] = None,
) -> dict[str, Any]:
    """Import a contact file sent as the request body (``text/csv``; see ``voicecore contacts import``)."""
    try:
        mapping = parse_mapping(map or [])
    except ContactFileError as e:
        raise HTTPException(422, [{"loc": ["query", "map"], "msg": str(e), "type": "value_error"}]) from None
    data = await request.body()
    if not data.strip():
        raise HTTPException(422, [{"loc": ["body"], "msg": "empty body: send the CSV file", "type": "value_error"}])
    try:
        result = await _run(_store(request).contacts.import_file, p.tenant, data, mapping=mapping, segment=segment,
                            actor=p.actor)  # fmt: skip
    except (ContactFileError, ContactsNotKept) as e:
        raise HTTPException(422, [{"loc": ["body"], "msg": f"{e}; nothing was imported", "type": "value_error"}]) from None
    return result.to_dict()


@router.get("/contacts", response_model=list[ContactOut], tags=["contacts"], responses=AUTH_RESPONSES)
async def list_contacts(
    request: Request,
    p: Analyst,
    segment: Segment = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> list[dict[str, Any]]:
    """The tenant's contacts (of one segment), oldest first. Audited (``contacts.read``)."""
    got = await _run(_store(request).contacts.list, p.tenant, segment=segment, limit=limit, offset=offset,
                     actor=p.actor)  # fmt: skip
    return [c.to_dict() for c in got]


@router.get("/contacts/segments", response_model=dict[str, int], tags=["contacts"], responses=AUTH_RESPONSES)
async def contact_segments(request: Request, p: Analyst) -> dict[str, int]:
    """Each segment and how many contacts it holds."""
    return await _run(_store(request).contacts.segments, p.tenant)


@router.get("/contacts/export", tags=["contacts"], responses={**AUTH_RESPONSES, 200: {"content": {"text/csv": {}}}},
            response_class=Response)  # fmt: skip
async def export_contacts(request: Request, p: Analyst, segment: Segment = None) -> Response:
    """The contacts (of one segment) as CSV. Audited (``contacts.exported``)."""
    text = await _run(_store(request).contacts.export_csv, p.tenant, segment=segment, actor=p.actor)
    return Response(text.encode("utf-8"), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="contacts.csv"'})  # fmt: skip


@router.post("/contacts/lookup", response_model=ContactLookupOut, tags=["contacts"], responses=AUTH_RESPONSES)
async def lookup_contact(request: Request, p: Analyst, body: PhoneBody) -> dict[str, Any]:
    """The contact for a number (``contact`` null when there is none). Audited (``contact.read``)."""
    c = await _run(_store(request).contacts.get, p.tenant, body.phone, actor=p.actor)
    return {"contact": c.to_dict() if c is not None else None}


@router.post("/contacts/delete", tags=["contacts"], responses=AUTH_RESPONSES)
async def delete_contact(request: Request, p: Admin, body: PhoneBody) -> dict[str, bool]:
    """Delete the contact for a number (its calls and opt-out stay). Audited (``contact.deleted``)."""
    return {"deleted": await _run(_store(request).contacts.delete, p.tenant, body.phone, actor=p.actor)}
