"""``/v1/campaigns``: outbound campaigns (the same calls as ``voicecore campaigns``).

=============================================  =====  =======  ======
route                                          admin  analyst  viewer
=============================================  =====  =======  ======
``GET /v1/campaigns``                          yes    yes      403
``POST /v1/campaigns``                         yes    403      403
``GET /v1/campaigns/{name}`` (its status)      yes    yes      403
``POST /v1/campaigns/{name}/start|pause|resume``  yes  403     403
``GET /v1/campaigns/{name}/export`` (CSV)      yes    yes      403
=============================================  =====  =======  ======

Another tenant's campaign is 404 like one that does not exist; a setting that is wrong is 422
naming it. Every change and export is audited.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from voicecore.server.api import AUTH_RESPONSES, NOT_FOUND, Admin, Analyst, _run, _store
from voicecore.storage.campaigns import DIAL_PROVIDERS

router = APIRouter(prefix="/v1")
Name = Annotated[str, Path(max_length=64, description="The campaign's name")]


class CampaignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    pipeline: str = Field(min_length=1, max_length=200)
    segment: str = Field(min_length=1, max_length=64)
    from_number: str = Field(min_length=1, max_length=64)
    provider: str = Field(pattern="^(" + "|".join(DIAL_PROVIDERS) + ")$")
    window: str = Field(default="us-tcpa", max_length=500)
    max_concurrent: int = Field(default=1, ge=1, le=1000)
    max_attempts: int = Field(default=3, ge=1, le=50)
    retry_after_s: float = Field(default=7200.0, ge=60, le=90 * 86400)
    start_at: float | None = Field(default=None, description="epoch seconds: dial nobody before")
    machine_action: str = Field(default="hangup", pattern="^(hangup|voicemail)$")
    voicemail: str | None = Field(default=None, max_length=2000)


@router.get("/campaigns", tags=["campaigns"], responses=AUTH_RESPONSES)
async def list_campaigns(request: Request, p: Analyst) -> list[dict[str, Any]]:
    """The tenant's campaigns."""
    return [c.to_dict() for c in await _run(_store(request).campaigns.list, p.tenant)]


@router.post("/campaigns", status_code=201, tags=["campaigns"], responses=AUTH_RESPONSES)
async def create_campaign(request: Request, p: Admin, body: CampaignIn) -> dict[str, Any]:
    """Create a campaign (a draft; ``POST /v1/campaigns/{name}/start`` dials). Audited."""
    args = body.model_dump()
    name = args.pop("name")
    c = await _run(_store(request).campaigns.create, p.tenant, name, **args, actor=p.actor)
    return c.to_dict()


@router.get("/campaigns/{name}", tags=["campaigns"], responses={**AUTH_RESPONSES, **NOT_FOUND})
async def campaign_status(request: Request, p: Analyst, name: Name) -> dict[str, Any]:
    """Where the campaign stands: contacts by status and outcome, why the waiting ones wait."""
    return (await _run(_store(request).campaigns.status, p.tenant, name)).to_dict()


@router.post("/campaigns/{name}/{action}", tags=["campaigns"], responses={**AUTH_RESPONSES, **NOT_FOUND})
async def campaign_action(request: Request, p: Admin, name: Name,
                          action: Annotated[str, Path(pattern="^(start|pause|resume)$")]) -> dict[str, Any]:  # fmt: skip
    """Start (its segment's contacts join it), pause (calls in progress go on) or resume. Audited."""
    campaigns = _store(request).campaigns
    if action == "pause":
        await _run(campaigns.pause, p.tenant, name, actor=p.actor)
        joined = 0
    else:
        joined = await _run(campaigns.start, p.tenant, name, actor=p.actor)
    c = await _run(campaigns.get, p.tenant, name)
    return {"campaign": c.to_dict(), "joined": joined}


@router.get("/campaigns/{name}/export", tags=["campaigns"], response_class=Response,
            responses={**AUTH_RESPONSES, **NOT_FOUND, 200: {"content": {"text/csv": {}}}})  # fmt: skip
async def export_campaign(request: Request, p: Analyst, name: Name) -> Response:
    """One CSV line per contact. Audited (``campaign.exported``)."""
    text = await _run(_store(request).campaigns.export_csv, p.tenant, name, actor=p.actor)
    return Response(text.encode("utf-8"), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})  # fmt: skip

