"""Prometheus text exposition of what ``serve`` is doing: calls, turns, latency histograms."""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

from voicecore.records import TIMELINE_STAGES, CallRecord

LATENCY_BUCKETS_S = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0, 5.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS_S
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1


class Metrics:
    """Counters and histograms; thread-safe; rendered in the Prometheus text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active_calls: dict[str, int] = defaultdict(int)
        self.calls_total: dict[tuple[str, str], int] = defaultdict(int)
        self.turns_total: dict[str, int] = defaultdict(int)
        self.rejected_total: dict[tuple[str, str], int] = defaultdict(int)
        self.unknown_events_total: dict[str, int] = defaultdict(int)
        self.webhooks_rejected_total: dict[tuple[str, str], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {stage: Histogram() for stage in TIMELINE_STAGES[1:]}
        self.workers_reaped = 0  # other workers this one found dead (lease run out)
        self.calls_lost = 0  # their open calls it closed as worker_lost

    def call_started(self, provider: str) -> None:
        with self._lock:
            self.active_calls[provider] += 1

    def call_rejected(self, provider: str, why: str) -> None:
        with self._lock:
            self.rejected_total[(provider, why)] += 1

    def unknown_event(self, provider: str) -> None:
        """A provider sent an event we do not know (counted by provider: the name comes from the far end)."""
        with self._lock:
            self.unknown_events_total[provider] += 1

    def answer_rejected(self, provider: str, why: str) -> None:
        """A provider's answer-URL request failed its signature check (or named no credentials)."""
        with self._lock:
            self.webhooks_rejected_total[(provider, why)] += 1

    def call_ended(self, provider: str, record: CallRecord | None, reason: str) -> None:
        kind = reason.split(":", 1)[0]
        with self._lock:
            self.active_calls[provider] = max(0, self.active_calls[provider] - 1)
            self.calls_total[(provider, kind)] += 1
            if record is None:
                return
            for turn in record.turns:
                if turn.role == "caller":
                    self.turns_total[provider] += 1
                if turn.role == "agent" and turn.timeline is not None and turn.timeline.speech_end is not None:
                    for stage, hist in self.latency.items():
                        at = getattr(turn.timeline, stage)
                        if at is not None:
                            hist.observe(at - turn.timeline.speech_end)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            lines += ["# HELP voicecore_active_calls Calls in progress.", "# TYPE voicecore_active_calls gauge"]
            for provider, n in sorted(self.active_calls.items()):
                lines.append(f'voicecore_active_calls{{transport="{provider}"}} {n}')
            if not self.active_calls:
                lines.append("voicecore_active_calls 0")
            lines += ["# HELP voicecore_calls_total Calls ended, by end reason.", "# TYPE voicecore_calls_total counter"]
            for (provider, kind), n in sorted(self.calls_total.items()):
                lines.append(f'voicecore_calls_total{{transport="{provider}",reason="{kind}"}} {n}')
            lines += [
                "# HELP voicecore_streams_rejected_total Streams closed before a call started.",
                "# TYPE voicecore_streams_rejected_total counter",
            ]
            for (provider, why), n in sorted(self.rejected_total.items()):
                lines.append(f'voicecore_streams_rejected_total{{transport="{provider}",reason="{why}"}} {n}')
            lines += [
                "# HELP voicecore_unknown_events_total Provider media-stream events we do not know (ignored).",
                "# TYPE voicecore_unknown_events_total counter",
            ]
            for provider, n in sorted(self.unknown_events_total.items()):
                lines.append(f'voicecore_unknown_events_total{{transport="{provider}"}} {n}')
            lines += [
                "# HELP voicecore_answer_requests_rejected_total Provider answer-URL requests refused.",
                "# TYPE voicecore_answer_requests_rejected_total counter",
            ]
            for (provider, why), n in sorted(self.webhooks_rejected_total.items()):
                lines.append(f'voicecore_answer_requests_rejected_total{{provider="{provider}",reason="{why}"}} {n}')
            lines += [
                "# HELP voicecore_workers_reaped_total Workers found dead by this one (lease run out).",
                "# TYPE voicecore_workers_reaped_total counter",
                f"voicecore_workers_reaped_total {self.workers_reaped}",
                "# HELP voicecore_calls_closed_worker_lost_total Calls of dead workers closed by this one.",
                "# TYPE voicecore_calls_closed_worker_lost_total counter",
                f"voicecore_calls_closed_worker_lost_total {self.calls_lost}",
            ]
            lines += ["# HELP voicecore_turns_total Caller turns.", "# TYPE voicecore_turns_total counter"]
            for provider, n in sorted(self.turns_total.items()):
                lines.append(f'voicecore_turns_total{{transport="{provider}"}} {n}')
            for stage, hist in self.latency.items():
                name = f"voicecore_{stage}_seconds"
                lines += [
                    f"# HELP {name} Time from the end of caller speech to {stage.replace('_', ' ')}.",
                    f"# TYPE {name} histogram",
                ]
                for b, c in zip(hist.buckets, hist.counts):
                    lines.append(f'{name}_bucket{{le="{b}"}} {c}')
                lines.append(f'{name}_bucket{{le="+Inf"}} {hist.n}')
                lines.append(f"{name}_sum {hist.total:.6f}")
                lines.append(f"{name}_count {hist.n}")
        return "\n".join(lines) + "\n"
