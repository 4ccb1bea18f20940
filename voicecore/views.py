"""What people and programs read: the one JSON shape of each stored object, and the text renderings.

Every ``--json`` of the CLI, every ``/v1`` answer and every subject export builds
its objects here, so a stored call (say) has one shape wherever it is read:

* :func:`call_view` — a stored call: times as ISO 8601 (UTC), ``status``
  (``ended`` / ``in_progress``), numbers masked for viewers, turns when they were read;
* :func:`call_detail` — the same plus per-turn latency, its p50/p95 and the report
  (``voicecore calls show --json``);
* :func:`live_call_view` — a call that just ran in this process (``run --json``, ``demo --json``);
* :func:`tenant_view`, :func:`api_key_view`, :func:`optout_view`, :func:`audit_view`,
  :func:`webhook_view`, :func:`delivery_view`, :func:`sweep_view`.

Objects from storage are read by attribute (duck typing), so this module depends on
nothing above :mod:`voicecore.records`. :func:`iso` is the one ISO-time helper.
"""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from typing import Any

from voicecore.records import (
    TIMELINE_STAGES,
    TOOL_TURN_KIND,
    CallRecord,
    ToolCall,
    Turn,
    TurnTimeline,
)

STAGE_LABELS = {
    "stt_final": "STT final",
    "llm_first_token": "LLM 1st token",
    "first_clause": "1st clause",
    "first_audio_out": "1st audio out",
}
NOT_STORED = "[text not stored]"


# --------------------------------------------------------------------------- time and numbers


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 in UTC (``None`` stays ``None``)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def utc_text(ts: float | None) -> str:
    """Epoch seconds as ``2024-05-15 14:03:07Z`` for tables (``—`` for none)."""
    return "—" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def mask_phone(number: str | None) -> str | None:
    """``+14155552671`` → ``+1*******71``: enough to tell calls apart, not to dial."""
    if number is None:
        return None
    if len(number) <= 4:
        return "*" * len(number)
    return number[:2] + "*" * (len(number) - 4) + number[-2:]


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    if len(vals) == 1:
        return vals[0]
    pos = (len(vals) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


# --------------------------------------------------------------------------- stored objects


def turn_view(turn: Any) -> dict[str, Any]:
    """A stored turn: text is ``None`` when not stored, expired or not read."""
    return {
        "idx": turn.idx,
        "role": turn.role,
        "kind": turn.kind,
        "started_at": iso(turn.started_at),
        "interrupted": turn.interrupted,
        "text": turn.text,
        "generated_text": turn.generated_text,
        "timeline": turn.timeline,
    }


def call_view(call: Any, *, masked: bool = False) -> dict[str, Any]:
    """The one JSON shape of a stored call (``masked``: numbers as ``+1*******71``, for viewers).
    ``turns`` is there only when the call was read with its turns."""
    out: dict[str, Any] = {
        "call_id": call.call_id,
        "tenant": call.tenant,
        "pipeline": call.pipeline,
        "transport": call.transport,
        "caller": mask_phone(call.caller) if masked else call.caller,
        "callee": mask_phone(call.callee) if masked else call.callee,
        "provider_ids": dict(call.provider_ids),
        "started_at": iso(call.started_at),
        "ended_at": iso(call.ended_at),
        "duration_s": call.duration_s,
        "status": "ended" if call.ended_at is not None else "in_progress",
        "end_reason": call.end_reason,
        "turn_count": call.turn_count,
        "optout": call.optout,
        "has_recording": call.has_recording,
        "transcript_redacted": call.transcript_redacted,
        "flags": dict(call.flags),
        "stored_at": iso(call.stored_at),
        "expires_at": iso(call.expires_at),
    }
    if call.turns is not None:
        out["turns"] = [turn_view(t) for t in call.turns]
    return out


def call_detail(call: Any, report: dict[str, Any] | None = None) -> dict[str, Any]:
    """``voicecore calls show --json``: :func:`call_view` with the per-turn timelines, their
    p50/p95 and the post-call report (or null)."""
    timelines = turn_timelines(record_from_stored(call)) if call.turns is not None else []
    return {**call_view(call), "timelines": timelines, "latency_ms": latency_summary(timelines), "report": report}


def report_view(r: Any) -> dict[str, Any]:
    """A stored post-call report (``report`` is the body, ``None`` for a failed one)."""
    return {
        "report_id": r.report_id,
        "call_id": r.call_id,
        "status": r.status,
        "error": r.error,
        "report": r.body,
        "created_at": iso(r.created_at),
        "expires_at": iso(r.expires_at),
    }


def export_view(e: Any) -> dict[str, Any]:
    """A stored subject export (no content)."""
    return {"export_id": e.export_id, "subject": e.subject, "bytes": e.bytes, "created_at": iso(e.created_at),
            "expires_at": iso(e.expires_at)}  # fmt: skip


def tenant_view(t: Any) -> dict[str, Any]:
    return {"name": t.name, "policy_name": t.policy_name, "created_at": iso(t.created_at), "active_keys": t.active_keys}


def api_key_view(k: Any) -> dict[str, Any]:
    return {"key_id": k.key_id, "tenant": k.tenant, "role": k.role, "label": k.label,
            "created_at": iso(k.created_at), "revoked_at": iso(k.revoked_at)}  # fmt: skip


def provider_account_view(a: Any) -> dict[str, Any]:
    """A tenant's account at a provider: which secrets are set (never their values)."""
    return {"provider": a.provider, "tenant": a.tenant, "secrets_set": list(a.secrets_set),
            "missing": list(a.missing), "account_id": a.account_id, "has_stream_secret": a.has_stream_secret,
            "created_at": iso(a.created_at), "updated_at": iso(a.updated_at)}  # fmt: skip


def optout_view(e: Any) -> dict[str, Any]:
    return {"phone": e.phone, "phone_hash": e.phone_hash, "source": e.source, "created_at": iso(e.created_at)}


def audit_view(e: Any) -> dict[str, Any]:
    return {"id": e.id, "at": iso(e.at), "actor": e.actor, "tenant": e.tenant, "action": e.action,
            "object_id": e.object_id}  # fmt: skip


def webhook_view(e: Any, secret: str | None = None, *, with_secret: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": e.id,
        "url": e.url,
        "events": list(e.events),
        "description": e.description,
        "active": e.active,
        "created_at": iso(e.created_at),
        "updated_at": iso(e.updated_at),
        "secret_rotated_at": iso(e.secret_rotated_at),
    }
    if with_secret:
        out["secret"] = secret
    return out


def delivery_view(d: Any) -> dict[str, Any]:
    return {
        "id": d.id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": iso(d.next_attempt_at),
        "last_status": d.last_status,
        "last_error": d.last_error,
        "created_at": iso(d.created_at),
        "delivered_at": iso(d.delivered_at),
    }


def plain_view(obj: Any, **extra: Any) -> dict[str, Any]:
    """A result dataclass (erasure, sweep, audit check) as JSON, epoch fields as ISO."""
    d = asdict(obj) if is_dataclass(obj) else dict(obj)
    for key in ("at", "created_at"):
        if isinstance(d.get(key), (int, float)) and not isinstance(d.get(key), bool):
            d[key] = iso(d[key])
    return {**d, **extra}


# --------------------------------------------------------------------------- latency


def turn_timelines(record: CallRecord) -> list[dict[str, float | None]]:
    """Per answered caller turn: each stage in ms after the end of caller speech."""
    return [
        t.timeline.relative_ms()
        for t in record.turns
        if t.role == "agent" and t.kind == "reply" and t.timeline is not None
    ]


def latency_summary(timelines: list[dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
    summary: dict[str, dict[str, float | None]] = {}
    for stage in TIMELINE_STAGES[1:]:
        vals = [t[stage] for t in timelines if t.get(stage) is not None]
        summary[stage] = {
            "p50": _round(percentile(vals, 50)),  # type: ignore[arg-type]
            "p95": _round(percentile(vals, 95)),  # type: ignore[arg-type]
            "max": _round(max(vals)) if vals else None,  # type: ignore[type-var]
            "n": len(vals),
        }
    return summary


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.0f}"


def latency_table(timelines: list[dict[str, float | None]]) -> str:
    """A text table: one row per turn, ms after the end of caller speech, then p50/p95."""
    stages = TIMELINE_STAGES[1:]
    header = ["turn"] + [STAGE_LABELS[s] for s in stages]
    rows = [[str(i + 1)] + [_ms(t.get(s)) for s in stages] for i, t in enumerate(timelines)]
    if timelines:
        summary = latency_summary(timelines)
        rows.append(["p50"] + [_ms(summary[s]["p50"]) for s in stages])
        rows.append(["p95"] + [_ms(summary[s]["p95"]) for s in stages])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    return "\n".join(lines) + "\n(ms after the end of caller speech)"


# --------------------------------------------------------------------------- live calls


def transcript_text(record: CallRecord) -> str:
    lines = []
    for t in record.turns:
        if t.role == "event":
            call = ToolCall.from_text(t.text) if t.kind == TOOL_TURN_KIND else None
            lines.append(f"  [{t.kind or 'event'}] {call.describe() if call is not None else t.text}")
            continue
        who = "caller" if t.role == "caller" else "agent "
        suffix = " [cut by barge-in]" if t.interrupted else ""
        lines.append(f"  {who}: {t.text}{suffix}")
    return "\n".join(lines)


def live_call_view(record: CallRecord, audio_out: str | None = None) -> dict[str, Any]:
    """The ``run --json`` shape: turns with role, text and timeline, and where the audio went."""
    turns = []
    for t in record.turns:
        entry: dict[str, Any] = {"role": t.role, "text": t.text, "timeline": t.timeline.relative_ms() if t.timeline else None}
        if t.kind:
            entry["kind"] = t.kind
        if t.interrupted:
            entry["interrupted"] = True
            entry["generated_text"] = t.generated_text
        turns.append(entry)
    timelines = turn_timelines(record)
    return {
        "call_id": record.call_id,
        "pipeline": record.pipeline,
        "transport": record.transport,
        "duration_s": record.duration_s,
        "end_reason": record.end_reason,
        "turns": turns,
        "latency_ms": latency_summary(timelines),
        "audio_out": audio_out,
    }


# --------------------------------------------------------------------------- stored calls as text


def record_from_stored(call: Any) -> CallRecord:
    """A stored call as a :class:`CallRecord`: timelines rebuilt from the stored offsets (ms after
    the end of caller speech), turn text that is not stored (expired, not kept by the policy, or
    not requested) shown as ``[text not stored]``."""
    record = CallRecord(
        call_id=call.call_id,
        tenant=call.tenant,
        pipeline=call.pipeline,
        transport=call.transport,
        caller=call.caller,
        callee=call.callee,
        provider_ids=dict(call.provider_ids),
        started_at=call.started_at,
        ended_at=call.ended_at,
        end_reason=call.end_reason,
        flags=dict(call.flags),
    )
    for t in call.turns or []:
        timeline = None
        if t.timeline is not None:
            timeline = TurnTimeline(
                **{s: (None if t.timeline.get(s) is None else t.timeline[s] / 1000.0) for s in TIMELINE_STAGES}
            )
        record.turns.append(
            Turn(
                role=t.role,
                text=t.text if t.text is not None else NOT_STORED,
                started_at=t.started_at if t.started_at is not None else call.started_at,
                timeline=timeline,
                interrupted=t.interrupted,
                generated_text=t.generated_text,
                kind=t.kind,
            )
        )
    return record


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain left-aligned text table (header, rule, rows)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.1f} s"


def calls_table(calls: list[Any]) -> str:
    """One line per stored call (metadata only, no transcript text)."""
    rows = []
    for c in calls:
        flags = [f for f, on in (("opt-out", c.optout), ("recording", c.has_recording)) if on]
        rows.append([c.call_id, utc_text(c.started_at), _duration(c.duration_s), c.transport, c.end_reason or "—",
                     str(c.turn_count), c.caller or "—", ",".join(flags)])  # fmt: skip
    header = ["call id", "started (UTC)", "duration", "transport", "end reason", "turns", "caller", "flags"]
    return text_table(header, rows)


def _report_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"  status: {report.get('status')}"]
    if report.get("error"):
        lines.append(f"  error: {report['error']}")
    body = report.get("report")
    if isinstance(body, dict):
        for key, value in body.items():
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            lines.append(f"  {key}: {shown}")
    elif body is not None:
        lines.append(f"  {json.dumps(body, ensure_ascii=False)}")
    return lines


def call_text(call: Any, report: dict[str, Any] | None = None) -> str:
    """What ``voicecore calls show`` prints: call metadata, the transcript (barge-in cuts marked),
    the per-turn latency table and the post-call report, if any."""
    if call.turns is None:
        transcript_state = "not requested"
    elif not any(t.text is not None for t in call.turns if t.role != "event"):
        transcript_state = "not stored"
    else:
        transcript_state = "stored redacted" if call.transcript_redacted else "stored as spoken"
    meta = [
        ("tenant", call.tenant),
        ("started", utc_text(call.started_at)),
        ("ended", utc_text(call.ended_at)),
        ("duration", _duration(call.duration_s)),
        ("transport", call.transport),
        ("pipeline", call.pipeline or "—"),
        ("end reason", call.end_reason or "—"),
        ("caller", call.caller or "—"),
        ("callee", call.callee or "—"),
        ("opt-out", "yes" if call.optout else "no"),
        ("recording", "yes" if call.has_recording else "no"),
        ("transcript", transcript_state),
        ("expires", utc_text(call.expires_at)),
    ]
    width = max(len(k) for k, _ in meta)
    lines = [f"Call {call.call_id}"] + [f"  {k.ljust(width)}  {v}" for k, v in meta]
    record = record_from_stored(call)
    lines += ["", "Transcript"]
    lines.append(transcript_text(record) if record.turns else "  (no turns)")
    lines += ["", "Latency per turn", latency_table(turn_timelines(record))]
    if report is not None:
        lines += ["", "Report"] + _report_lines(report)
    return "\n".join(lines)
