"""Turning call records into what people read: transcripts, latency tables, JSON."""

from __future__ import annotations

import json
import statistics
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from voicecore.records import TIMELINE_STAGES, CallRecord, Turn, TurnTimeline

if TYPE_CHECKING:
    from voicecore.storage.db import StoredCall

STAGE_LABELS = {
    "stt_final": "STT final",
    "llm_first_token": "LLM 1st token",
    "first_clause": "1st clause",
    "first_audio_out": "1st audio out",
}


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


def turn_timelines(record: CallRecord) -> list[dict[str, float | None]]:
    """Per answered caller turn: each stage in ms after the end of caller speech."""
    out = []
    for t in record.turns:
        if t.role == "agent" and t.kind == "reply" and t.timeline is not None:
            out.append(t.timeline.relative_ms())
    return out


def latency_summary(timelines: list[dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
    summary: dict[str, dict[str, float | None]] = {}
    for stage in TIMELINE_STAGES[1:]:
        vals = [t[stage] for t in timelines if t.get(stage) is not None]
        summary[stage] = {
            "p50": _round(percentile(vals, 50)),
            "p95": _round(percentile(vals, 95)),
            "max": _round(max(vals)) if vals else None,
            "n": len(vals),
        }
    return summary


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.0f}"


def latency_table(timelines: list[dict[str, float | None]]) -> str:
    """A text table: one row per turn, ms after the end of caller speech, then p50/p95."""
    stages = TIMELINE_STAGES[1:]
    header = ["turn"] + [STAGE_LABELS[s] for s in stages]
    rows = [[str(i + 1)] + [_fmt(t.get(s)) for s in stages] for i, t in enumerate(timelines)]
    if timelines:
        summary = latency_summary(timelines)
        rows.append(["p50"] + [_fmt(summary[s]["p50"]) for s in stages])
        rows.append(["p95"] + [_fmt(summary[s]["p95"]) for s in stages])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    return "\n".join(lines) + "\n(ms after the end of caller speech)"


def transcript_text(record: CallRecord) -> str:
    lines = []
    for t in record.turns:
        if t.role == "event":
            lines.append(f"  [{t.kind or 'event'}] {t.text}")
            continue
        who = "caller" if t.role == "caller" else "agent "
        suffix = " [cut by barge-in]" if t.interrupted else ""
        lines.append(f"  {who}: {t.text}{suffix}")
    return "\n".join(lines)


def call_json(record: CallRecord, audio_out: str | None = None) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- stored calls
# What ``voicecore calls list/show`` (and the admin API) print for calls read back from
# storage (:class:`voicecore.storage.StoredCall`). A stored call is turned back into a
# CallRecord so the transcript and latency formatting above is the one used for live calls.

NOT_STORED = "[text not stored]"


def _utc(ts: float | None) -> str:
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def record_from_stored(call: StoredCall) -> CallRecord:
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
                role=t.role,  # type: ignore[arg-type]
                text=t.text if t.text is not None else NOT_STORED,
                started_at=t.started_at if t.started_at is not None else call.started_at,
                timeline=timeline,
                interrupted=t.interrupted,
                generated_text=t.generated_text,
                kind=t.kind,
            )
        )
    return record


def stored_call_timelines(call: StoredCall) -> list[dict[str, float | None]]:
    """Per answered caller turn of a stored call: each stage in ms after the end of caller speech."""
    return turn_timelines(record_from_stored(call))


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


def calls_table(calls: list[StoredCall]) -> str:
    """One line per stored call (metadata only, no transcript text)."""
    rows = []
    for c in calls:
        flags = [f for f, on in (("opt-out", c.optout), ("recording", c.has_recording)) if on]
        rows.append(
            [
                c.call_id,
                _utc(c.started_at),
                _duration(c.duration_s),
                c.transport,
                c.end_reason or "—",
                str(c.turn_count),
                c.caller or "—",
                ",".join(flags),
            ]
        )
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


def stored_call_text(call: StoredCall, report: dict[str, Any] | None = None) -> str:
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
        ("started", _utc(call.started_at)),
        ("ended", _utc(call.ended_at)),
        ("duration", _duration(call.duration_s)),
        ("transport", call.transport),
        ("pipeline", call.pipeline or "—"),
        ("end reason", call.end_reason or "—"),
        ("caller", call.caller or "—"),
        ("callee", call.callee or "—"),
        ("opt-out", "yes" if call.optout else "no"),
        ("recording", "yes" if call.has_recording else "no"),
        ("transcript", transcript_state),
        ("expires", _utc(call.expires_at)),
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


def stored_call_json(call: StoredCall, report: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``calls show --json`` shape: the stored call (turns with role, text, interrupted flag and
    timeline), the per-turn timelines with their p50/p95, and the report (or null)."""
    timelines = stored_call_timelines(call) if call.turns is not None else []
    d = call.to_dict()
    d["timelines"] = timelines
    d["latency_ms"] = latency_summary(timelines)
    d["report"] = report
    return d
