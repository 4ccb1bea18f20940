"""Per-tenant policy: pure decisions about recording, retention, redaction, context and opt-out.

Nothing in this package does I/O except :func:`load_policy` reading the YAML file.
Storage (``voicecore.storage``) and the call pipeline both ask these functions.
"""

from voicecore.policy.context import (
    ContextBuilder,
    RedactedText,
    redact_caller_text,
    redact_tool_arguments,
    stored_transcript_text,
)
from voicecore.policy.decisions import (
    BackendInfo,
    LocationViolation,
    RecordingDecision,
    check_pipeline_location,
    consent_answer,
    expires_at,
    is_stored,
    location_violations,
    may_record,
    outbound_refusal,
    recording_decision,
)
from voicecore.policy.models import (
    DATA_CLASSES,
    DEFAULT_POLICY,
    KNOWN_REGIONS,
    REDACTION_CATEGORIES,
    RETENTION_MAX_DAYS,
    Policy,
    PolicyError,
    load_policy,
    load_policy_text,
    policy_from_data,
    policy_to_yaml,
)
from voicecore.policy.optout import OptOutMatcher, is_optout_request, optout_requested
from voicecore.policy.phone import (
    InvalidPhoneNumber,
    normalize_phone,
    try_normalize_phone,
)
from voicecore.policy.redaction import PLACEHOLDERS, Finding, find_sensitive, redact

__all__ = [
    "outbound_refusal",
    "DATA_CLASSES",
    "DEFAULT_POLICY",
    "KNOWN_REGIONS",
    "PLACEHOLDERS",
    "REDACTION_CATEGORIES",
    "RETENTION_MAX_DAYS",
    "BackendInfo",
    "ContextBuilder",
    "Finding",
    "InvalidPhoneNumber",
    "LocationViolation",
    "OptOutMatcher",
    "Policy",
    "PolicyError",
    "RecordingDecision",
    "RedactedText",
    "check_pipeline_location",
    "consent_answer",
    "expires_at",
    "find_sensitive",
    "is_optout_request",
    "is_stored",
    "load_policy",
    "load_policy_text",
    "location_violations",
    "may_record",
    "normalize_phone",
    "optout_requested",
    "policy_from_data",
    "policy_to_yaml",
    "recording_decision",
    "redact",
    "redact_caller_text",
    "redact_tool_arguments",
    "stored_transcript_text",
    "try_normalize_phone",
]
