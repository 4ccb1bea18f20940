"""``/v1/providers``: a tenant's provider credentials and call-control snippets (admin keys only).

=============================================  =====  =========================
route                                          admin  others
=============================================  =====  =========================
``GET /v1/providers``                          yes    403
``PUT /v1/providers/{provider}``               yes    403
``DELETE /v1/providers/{provider}``            yes    403
``POST /v1/providers/{provider}/snippet``      yes    403
=============================================  =====  =========================

The same repository calls as ``voicecore providers``; secrets are never returned (a new
stream secret appears once, inside the snippet that uses it). Audited.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, Response

from voicecore.server.api import AUTH_RESPONSES, Admin, _run, _store
from voicecore.server.api_models import (
    ProviderAccountOut,
    ProviderCredentialsIn,
    SnippetBody,
    SnippetOut,
)
from voicecore.telephony.snippets import SNIPPET_PROVIDERS
from voicecore.views import provider_account_view

router = APIRouter(prefix="/v1")
Provider = Annotated[str, Path(pattern="^(" + "|".join(SNIPPET_PROVIDERS) + ")$", description="The provider.")]


@router.get("/providers", response_model=list[ProviderAccountOut], tags=["providers"], responses=AUTH_RESPONSES)
async def list_providers(request: Request, p: Admin) -> list[dict[str, Any]]:
    """Which provider credentials the tenant has set (names only)."""
    return [provider_account_view(a) for a in await _run(_store(request).providers.list, p.tenant)]


@router.put("/providers/{provider}", response_model=ProviderAccountOut, tags=["providers"], responses=AUTH_RESPONSES)
async def set_provider(request: Request, p: Admin, provider: Provider, body: ProviderCredentialsIn) -> dict[str, Any]:
    """Store (or change) the credentials that check this provider's signatures; fields not given
    keep their values. Encrypted with the tenant key; never shown again. Audited."""
    info = await _run(_store(request).providers.set, p.tenant, provider, body.credentials, actor=p.actor)
    return provider_account_view(info)


@router.delete("/providers/{provider}", status_code=204, tags=["providers"],
               responses={**AUTH_RESPONSES, 404: {"description": "No credentials for this provider"}})  # fmt: skip
async def delete_provider(request: Request, p: Admin, provider: Provider) -> Response:
    """Forget the provider credentials and stream secret: that provider's calls stop at once. Audited."""
    if not await _run(_store(request).providers.delete, p.tenant, provider, actor=p.actor):
        raise HTTPException(404, f"no {provider} credentials")
    return Response(status_code=204)


@router.post("/providers/{provider}/snippet", response_model=SnippetOut, tags=["providers"],
             responses={**AUTH_RESPONSES, 404: {"description": "Unknown pipeline"},
                        409: {"description": "The server has no public URL (serve --public-url)"}})  # fmt: skip
async def provider_snippet(request: Request, p: Admin, provider: Provider, body: SnippetBody) -> dict[str, Any]:
    """What to paste into the provider for this tenant, built on the server's public URL
    (``serve --public-url``; 409 without one). May create a stream secret (shown once)."""
    state = request.app.state.vc
    if not state.public_url:
        raise HTTPException(409, "the server has no public URL: start it with serve --public-url https://host")
    if body.pipeline is not None and body.pipeline not in state.pipelines:
        raise HTTPException(404, f"unknown pipeline {body.pipeline!r}")
    text = await _run(
        _store(request).providers.snippet, p.tenant, provider, public_url=state.public_url, pipeline=body.pipeline,
        new_stream_secret=body.new_stream_secret, telnyx_codec=state.telnyx_codec,
        telnyx_sample_rate=state.telnyx_sample_rate, actor=p.actor,
    )  # fmt: skip
    return {"provider": provider, "public_url": state.public_url, "snippet": text}
