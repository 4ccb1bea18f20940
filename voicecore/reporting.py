"""Turning call records into what people read: transcripts, latency tables, JSON."""

from __future__ import annotations

import statistics
from typing import Any

from voicecore.records import TIMELINE_STAGES, CallRecord

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
