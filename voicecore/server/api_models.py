"""The request and response models of the ``/v1`` admin API (they make its OpenAPI document).

The response dicts themselves come from :mod:`voicecore.views`, the one JSON shape of each
stored object; these models describe them and filter what each route returns.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from voicecore.storage import EVENT_TYPES

Role = Literal["admin", "agent", "analyst", "viewer"]
EventType = Literal["call.ended", "report.ready", "optout.requested", "subject.erased", "campaign.contact_done"]


class Me(BaseModel):
    key_id: str
    tenant: str
    role: Role


class TurnMeta(BaseModel):
    idx: int
    role: str
    kind: str | None
    started_at: str | None
    interrupted: bool
    timeline: dict[str, float | None] | None = Field(description="ms after the end of caller speech per stage")


class CallOut(BaseModel):
    call_id: str
    pipeline: str
    transport: str
    caller: str | None = Field(description="E.164; masked for viewers")
    callee: str | None
    provider_ids: dict[str, str]
    started_at: str
    ended_at: str | None
    duration_s: float | None
    status: Literal["ended", "in_progress"]
    end_reason: str | None
    turn_count: int
    optout: bool
    has_recording: bool
    transcript_redacted: bool
    flags: dict[str, Any]
    expires_at: str


class CallDetail(CallOut):
    turns: list[TurnMeta]


class CallList(BaseModel):
    calls: list[CallOut]
    limit: int
    offset: int


class TranscriptTurn(BaseModel):
    idx: int
    role: str
    kind: str | None
    started_at: str | None
    interrupted: bool
    text: str | None
    generated_text: str | None


class TranscriptOut(BaseModel):
    call_id: str
    stored: bool = Field(description="false when the policy keeps no transcript (or it expired)")
    redacted: bool
    turns: list[TranscriptTurn]


class ReportOut(BaseModel):
    report_id: str
    call_id: str
    status: Literal["ready", "failed"]
    error: str | None
    report: dict[str, Any] | None
    created_at: str | None
    expires_at: str | None


class PhoneBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phone: str = Field(min_length=1, max_length=64, description="The data subject's number (read in the policy's region)")


class ExportBody(PhoneBody):
    format: Literal["json", "zip"] = Field(
        default="json", description="json: recordings inline as base64; zip: export.json and recordings/*.wav"
    )


class RestrictBody(PhoneBody):
    restricted: bool = True


class ErasureOut(BaseModel):
    subject_hash: str
    calls: int
    turns: int
    recordings: int
    reports: int
    contacts: int
    outbox: int
    mentions_scrubbed: int
    opted_out: bool


class RestrictOut(BaseModel):
    restricted: bool
    changed: bool


class OptOutOut(BaseModel):
    phone: str | None = Field(description="null once the subject was erased (only the hash is kept)")
    phone_hash: str
    source: str
    created_at: str | None


class OptOutAdded(BaseModel):
    phone: str
    added: bool


class PolicyOut(BaseModel):
    name: str
    yaml: str
    policy: dict[str, Any]


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, description="https:// (http:// only to 127.0.0.1/localhost)")
    events: list[EventType] = Field(default_factory=lambda: list(EVENT_TYPES), min_length=1, max_length=4)
    description: str | None = Field(default=None, max_length=200)


class WebhookPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, min_length=1, max_length=2048)
    events: list[EventType] | None = Field(default=None, min_length=1, max_length=4)
    description: str | None = Field(default=None, max_length=200)
    active: bool | None = None
    rotate_secret: bool = False


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[EventType]
    description: str | None
    active: bool
    created_at: str | None
    updated_at: str | None
    secret_rotated_at: str | None


class WebhookWithSecret(WebhookOut):
    secret: str | None = Field(description="The signing secret: shown only here, when created or rotated")


class DeliveryOut(BaseModel):
    id: str
    event_id: str
    event_type: str
    status: Literal["pending", "delivered", "dead"]
    attempts: int
    next_attempt_at: str | None
    last_status: int | None
    last_error: str | None
    created_at: str | None
    delivered_at: str | None


class Redelivered(BaseModel):
    id: str
    status: Literal["pending"]


class AuditOut(BaseModel):
    id: int
    at: str | None
    actor: str
    action: str
    object_id: str | None


ProviderName = Literal["twilio", "telnyx", "vonage", "plivo", "exotel", "asterisk"]


class ProviderCredentialsIn(BaseModel):
    """Credentials for one provider (Twilio: auth_token, account_sid; Telnyx: public_key;
    Vonage: signature_secret, application_id; Plivo: auth_token, auth_id)."""

    model_config = ConfigDict(extra="forbid")

    credentials: dict[str, str] = Field(min_length=1, max_length=8)


class ProviderAccountOut(BaseModel):
    provider: ProviderName
    tenant: str
    secrets_set: list[str]
    missing: list[str]
    account_id: str | None
    has_stream_secret: bool
    created_at: str | None
    updated_at: str | None


class SnippetBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pipeline: str | None = Field(default=None, max_length=128)
    new_stream_secret: bool = False


class SnippetOut(BaseModel):
    provider: ProviderName
    public_url: str
    snippet: str = Field(description="What to paste into the provider (a new stream secret appears here once)")


class RejectedLineOut(BaseModel):
    line: int
    reason: str


class ContactImportOut(BaseModel):
    created: int
    updated: int
    merged_lines: int = Field(description="lines folded into an earlier line with the same number")
    data_lines: int
    rejected: list[RejectedLineOut]
    segment: str | None
    columns: dict[str, str] = Field(description="each header and the field it was read as (var:NAME: a variable)")
    seconds: float


class ContactOut(BaseModel):
    id: str
    phone: str
    fields: dict[str, str]
    segments: list[str]
    created_at: float
    updated_at: float
    expires_at: float


class ContactLookupOut(BaseModel):
    contact: ContactOut | None
