"""Pure policy decisions: recording, retention/expiry, consent answers, processing location.

Every function here is a function of (policy, data) → decision, with no I/O, so
the call pipeline and storage ask the same questions and get the same answers.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from voicecore.policy.models import DATA_CLASSES, KNOWN_REGIONS, Policy

SECONDS_PER_DAY = 86400

# --------------------------------------------------------------------------- retention


def is_stored(policy: Policy, data_class: str) -> bool:
    """Whether ``data_class`` (recordings, transcripts, reports, metadata, contacts) is stored at all."""
    return policy.retention_days(data_class) > 0


def expires_at(policy: Policy, data_class: str, now: float) -> float | None:
    """Expiry (epoch seconds) for data of ``data_class`` written at ``now``; ``None`` = never store it."""
    days = policy.retention_days(data_class)
    if days <= 0:
        return None
    return now + days * SECONDS_PER_DAY


# --------------------------------------------------------------------------- recording


@dataclass(frozen=True)
class RecordingDecision:
    """What the pipeline does about recording at the start of a call."""

    mode: Literal["off", "on", "consent"]
    start_immediately: bool  # open the recording writer as the call starts
    ask_consent: bool  # play ``announcement`` and wait for an answer before recording
    announcement: str | None  # text to speak at the start (consent question or notice), if any
    consent_dtmf: str


def recording_decision(policy: Policy) -> RecordingDecision:
    rec = policy.recording
    allowed = rec.mode != "off" and policy.retention.recordings > 0
    return RecordingDecision(
        mode=rec.mode,
        start_immediately=allowed and rec.mode == "on",
        ask_consent=allowed and rec.mode == "consent",
        announcement=rec.announcement if rec.mode != "off" else None,
        consent_dtmf=rec.consent_dtmf,
    )


def may_record(policy: Policy, consent: bool | None = None) -> bool:
    """Whether audio may be written now: ``on``, or ``consent`` with an explicit yes. Never with ``off``."""
    if policy.retention.recordings <= 0:
        return False
    if policy.recording.mode == "on":
        return True
    if policy.recording.mode == "consent":
        return consent is True
    return False


_YES = re.compile(
    r"^(?:(?:oh|um|uh|well|sure|yes|yeah|yep|yup|ok|okay|fine|alright|all right|of course|certainly|absolutely|"
    r"go ahead|that's fine|that is fine|that's ok|that's okay|no problem|not a problem|please do|please|thanks|thank you|"
    r"i agree|i consent|i do|agreed|correct|sounds good)"
    r"(?:[\s,.!]+|$))+$"
)
_NO = re.compile(
    r"\b(?:no|nope|nah|don't|do not|dont|not okay|not ok|i do not agree|i don't agree|i refuse|refuse|"
    r"rather not|prefer not|not really|decline|stop)\b"
)


def consent_answer(text: str | None = None, dtmf: str | None = None, consent_dtmf: str = "1") -> bool | None:
    """Interpret the caller's answer to the recording question.

    ``True`` for a clear yes (spoken, or the consent DTMF digit), ``False`` for a
    clear no (or any other DTMF digit), ``None`` when the answer is unclear, which
    the pipeline must treat as no consent.
    """
    if dtmf:
        return dtmf == consent_dtmf
    if not text:
        return None
    t = re.sub(r"\s+", " ", text.lower().replace("\u2019", "'")).strip()
    if _NO.search(re.sub(r"\b(?:no|not a) problem\b", "", t)):
        return False
    t = re.sub(r"[^\w' ,.!]", "", t)
    if _YES.match(t):
        return True
    return None


# --------------------------------------------------------------------------- processing location


class LocationViolation(RuntimeError):
    """A pipeline names a model backend the tenant's policy does not allow; ``reasons`` says which."""

    def __init__(self, reasons: list[str]):
        self.reasons = reasons
        super().__init__("processing location not allowed by policy: " + "; ".join(reasons))


def _host_is_local(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class BackendInfo:
    """One model backend of a pipeline, as the location check sees it."""

    kind: str  # stt | llm | tts | vad | ...
    is_local: bool  # runs in this process / on this machine
    region: str | None = None  # declared processing region of a remote backend (KNOWN_REGIONS)
    endpoint: str | None = None  # URL of a remote backend, for the message

    @classmethod
    def from_endpoint(cls, kind: str, endpoint: str | None, region: str | None = None) -> BackendInfo:
        """A backend described by its endpoint: no endpoint (in-process), a unix socket, or a loopback
        host (``localhost``, ``127.0.0.1``, ``::1``) is local; anything else is remote."""
        if not endpoint:
            return cls(kind, True, region, None)
        parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
        if parts.scheme in ("unix", "http+unix", "file"):
            return cls(kind, True, region, endpoint)
        return cls(kind, _host_is_local(parts.hostname or ""), region, endpoint)


def location_violations(policy: Policy, backends: Iterable[BackendInfo]) -> list[str]:
    """Reasons each backend breaks ``policy.processing`` (empty when the pipeline may start)."""
    proc = policy.processing
    reasons: list[str] = []
    for b in backends:
        if b.is_local:
            continue
        where = f" ({b.endpoint})" if b.endpoint else ""
        if proc.local_only:
            reasons.append(f"{b.kind} backend{where} is remote but the policy allows local processing only")
        elif proc.allowed_regions:
            if b.region is None:
                reasons.append(
                    f"{b.kind} backend{where} declares no region; the policy allows only {', '.join(proc.allowed_regions)}"
                )
            elif b.region not in KNOWN_REGIONS:
                reasons.append(f"{b.kind} backend{where} declares unknown region {b.region!r}")
            elif b.region not in proc.allowed_regions:
                reasons.append(
                    f"{b.kind} backend{where} runs in region {b.region!r}; the policy allows only "
                    f"{', '.join(proc.allowed_regions)}"
                )
    return reasons


def check_pipeline_location(policy: Policy, backends: Iterable[BackendInfo]) -> None:
    """Raise :class:`LocationViolation` when any backend is not allowed by the policy."""
    reasons = location_violations(policy, backends)
    if reasons:
        raise LocationViolation(reasons)


# --------------------------------------------------------------------------- outbound calls


def outbound_refusal(*, opted_out: bool, restricted: bool) -> str | None:
    """Why an outbound call to a number must not be placed, or ``None`` when it may.

    A number on the tenant's opt-out list is never called again (until the tenant
    removes it), and a restricted subject is not processed at all."""
    if opted_out:
        return "the number asked not to be called again (opt-out list)"
    if restricted:
        return "the number's owner restricted processing of their data"
    return None


__all__ = [
    "DATA_CLASSES",
    "BackendInfo",
    "LocationViolation",
    "RecordingDecision",
    "check_pipeline_location",
    "consent_answer",
    "expires_at",
    "is_stored",
    "location_violations",
    "may_record",
    "outbound_refusal",
    "recording_decision",
]
