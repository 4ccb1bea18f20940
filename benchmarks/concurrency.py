"""``voicecore bench concurrency``: N simultaneous Twilio callers against one ``voicecore serve``.

The server runs as a subprocess (so its CPU and RSS are its own). For each level N
(default 1, 2, 4, 8, 12, 16) N callers connect together, wait for the greeting, then
for ``window_s`` seconds each one talks like a person: a random corpus utterance, the
agent's answer (until it has played), a pause of 1–3 s, the next utterance. Per level:

- voice-to-voice p50/p95/max over the answered turns, and the p95 counting every
  unanswered turn (no agent audio within 15 s) as 15 s — the figure held against the
  target (default 1.5 s): ``max_n_within_target`` is the largest N that meets it;
- the server's CPU (% of one core, children included; psutil, else /proc) and the
  machine's, sampled every 0.5 s while the level runs;
- the server's RSS (max while the level runs), and per extra call:
  (RSS at N − RSS at 1) / (N − 1), plus the least-squares slope over all levels;
- late audio: ``underruns`` — the caller's emulated line ran dry for more than 60 ms in
  the middle of a reply (audio that came late) — and ``arrival_gaps`` — more than 60 ms
  between two agent media messages of one reply (jitter the line's buffer may hide);
  Twilio media carry no sequence numbers outbound, so a dropped frame shows as a gap;
- ``client_late_frames``: microphone frames the benchmark itself sent > 10 ms late (the
  callers share the machine: a large number means the figures include a starved client).

With ``database_url`` (``--database-url postgresql://...``) the server stores on that
PostgreSQL database, and a ``storage`` section says what PostgreSQL adds per turn against
SQLite: the store's time per call and per turn, ``calls`` calls of ``turns`` turns at once
on each database, with instant fake models (``benchmarks/store_timing.py``; target ≤ 5 ms
at p95). ``storage_only`` skips the levels (no models loaded). The master key is
``VOICECORE_MASTER_KEY`` (the deployment's, as its workers have it); without one a key is
made up for the run, so use a scratch database.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ProcessSampler,
    VoicecoreServer,
    envelope,
    http_get,
    output_dir,
    percentile,
    pyplot,
    save_figure,
    stats,
    text_table,
    write_json,
)
from benchmarks.corpus import CORPUS, SAMPLE_RATE, Utterance, load_corpus
from benchmarks.latency import ANSWER_TIMEOUT_S, _first
from voicecore.testing.callers import TwilioClient

DEFAULT_LEVELS = (1, 2, 4, 8, 12, 16)
PAUSE_S = (1.0, 3.0)


async def one_caller(i: int, ws_url: str, key: str | None, corpus: list[Utterance], window_s: float,
                     rng: random.Random) -> dict[str, Any]:
    caller = TwilioClient(ws_url, token=key, label=f"caller-{i}", caller=f"+1415555{1000 + i:04d}")
    result: dict[str, Any] = {"caller": i, "turns": [], "greeting_ms": None, "closed_early": False}
    try:
        await caller.start()
    except Exception as e:  # a refused connection is a finding at this level
        result["error"] = repr(e)
        return result
    assert caller.opened_at is not None
    greeting = await caller.wait_media_after(caller.opened_at, 20.0)
    if greeting is not None:
        result["greeting_ms"] = round((greeting.t - caller.opened_at) * 1000, 1)
    await caller.wait_agent_quiet(quiet=0.6, timeout=20.0)
    await asyncio.sleep(rng.uniform(0.0, PAUSE_S[1]))
    deadline = time.monotonic() + window_s
    while time.monotonic() < deadline:
        if caller.closed.is_set():
            result["closed_early"] = True
            break
        utt = rng.choice(corpus)
        spoken = caller.speak(utt.samples, rate=SAMPLE_RATE, voiced=(utt.voiced_start, utt.voiced_end), label=utt.id)
        if not await _first(spoken.done, caller.closed, utt.seconds + 30) or spoken.speech_end_at is None:
            result["closed_early"] = True
            break
        remaining = ANSWER_TIMEOUT_S - (time.monotonic() - spoken.speech_end_at)
        answer = await caller.wait_media_after(spoken.speech_end_at, max(0.0, remaining))
        if answer is not None and answer.t - spoken.speech_end_at > ANSWER_TIMEOUT_S:
            answer = None
        await caller.wait_agent_quiet(quiet=0.6, timeout=20.0)
        gaps = caller.gaps(spoken.speech_end_at, time.monotonic())
        result["turns"].append({
            "utterance": utt.id,
            "answered": answer is not None,
            "voice_to_voice_ms": None if answer is None else round((answer.t - spoken.speech_end_at) * 1000, 1),
            "media_messages": gaps["messages"],
            "underruns_ms": [round(g, 1) for g in gaps["underruns"]],
            "arrival_gaps_ms": [round(g, 1) for g in gaps["arrival_gaps"]],
        })
        await asyncio.sleep(rng.uniform(*PAUSE_S))
    await caller.hangup()
    result["client_late_frames"] = caller.late_sends
    result["protocol_errors"] = caller.violations[:5]
    return result


async def _wait_idle(base_url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            health = json.loads(await asyncio.to_thread(http_get, f"{base_url}/healthz"))
            if health.get("active_calls") == 0:
                return
        except Exception:
            pass
        await asyncio.sleep(0.25)


@dataclass
class Target:
    """What the callers dial: a Twilio media-stream WebSocket, its key, and where its /healthz is."""

    ws_url: str
    key: str | None
    base_url: str


class Samplers:
    """Several processes sampled together (the stock Pipecat bot and its llama.cpp server): CPU
    summed over them, RSS summed, the machine's CPU as one sampler saw it."""

    def __init__(self, pids: list[int]):
        self.parts = [ProcessSampler(pid) for pid in pids]

    def start(self) -> None:
        for p in self.parts:
            p.start()

    async def stop(self) -> None:
        for p in self.parts:
            await p.stop()

    def rss_mb(self) -> float:
        return sum(p.rss_mb() for p in self.parts)

    def window(self, t0: float, t1: float) -> dict[str, float | None]:
        parts = [p.window(t0, t1) for p in self.parts]
        out: dict[str, float | None] = {}
        for key in parts[0]:
            values = [w[key] for w in parts]
            if any(v is None for v in values):
                out[key] = None
            elif key.startswith("system_"):
                out[key] = values[0]
            else:  # the sum of the maxima bounds the max of the sum
                out[key] = round(sum(v for v in values if v is not None), 1)
        return out


async def run_level(n: int, server: Target | VoicecoreServer, sampler: ProcessSampler | Samplers,
                    corpus: list[Utterance], window_s: float, seed: int, target_ms: float) -> dict[str, Any]:
    key = server.api_key if isinstance(server, VoicecoreServer) else server.key
    await _wait_idle(server.base_url)
    t0 = time.monotonic()
    results = await asyncio.gather(*(
        one_caller(i, server.ws_url, key, corpus, window_s, random.Random(seed * 1000 + i))
        for i in range(n)
    ))
    t1 = time.monotonic()
    turns = [t for r in results for t in r["turns"]]
    answered = [t["voice_to_voice_ms"] for t in turns if t["answered"]]
    censored = answered + [ANSWER_TIMEOUT_S * 1000] * sum(1 for t in turns if not t["answered"])
    underruns = [g for t in turns for g in t["underruns_ms"]]
    arrivals = [g for t in turns for g in t["arrival_gaps_ms"]]
    p95_all = percentile(censored, 95) if censored else None
    level = {
        "n": n,
        "window_s": window_s,
        "elapsed_s": round(t1 - t0, 1),
        "turns": len(turns),
        "answered": len(answered),
        "unanswered": len(turns) - len(answered),
        "voice_to_voice_ms": stats(answered),
        "voice_to_voice_p95_with_unanswered_ms": None if p95_all is None else round(p95_all, 1),
        "within_target": bool(turns) and p95_all is not None and p95_all <= target_ms,
        "greeting_ms": stats([r["greeting_ms"] for r in results]),
        **sampler.window(t0, t1),
        "underruns_over_60ms": len(underruns),
        "max_underrun_ms": max(underruns) if underruns else 0.0,
        "arrival_gaps_over_60ms": len(arrivals),
        "max_arrival_gap_ms": max(arrivals) if arrivals else 0.0,
        "client_late_frames": sum(r.get("client_late_frames", 0) for r in results),
        "calls_closed_early": sum(1 for r in results if r["closed_early"]),
        "call_errors": [r["error"] for r in results if r.get("error")][:5],
        "protocol_errors": sorted({e for r in results for e in r.get("protocol_errors", [])})[:5],
        "callers": [
            {"caller": r["caller"], "greeting_ms": r["greeting_ms"], "closed_early": r["closed_early"],
             "turns": [{k: t[k] for k in ("utterance", "answered", "voice_to_voice_ms", "media_messages")}
                       for t in r["turns"]]}
            for r in results
        ],
    }
    return level


def _slope(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return None if den == 0 else round(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den, 2)


def run(*, smoke: bool = False, out: str | Path | None = None, levels: list[int] | None = None,
        window_s: float = 40.0, target_ms: float = 1500.0, pipeline: str = "receptionist",
        seed: int = 1, database_url: str | None = None, calls: int = 8, turns: int = 4,
        storage_only: bool = False, against: str | None = None, cpus: str | None = None) -> tuple[dict[str, Any], Path]:
    """``against="pipecat"``: the same levels, seeds and corpus against the stock Pipecat bot
    (``pipecat_baseline.py`` with its LLM on ``llama_cpp.server``, the same GGUF). ``cpus``: the
    servers run pinned to these cores (``taskset -c``, e.g. ``0`` or ``0,1``)."""
    return asyncio.run(_run(smoke=smoke, out=out, levels=levels, window_s=window_s, target_ms=target_ms,
                            pipeline=pipeline, seed=seed, database_url=database_url, calls=calls, turns=turns,
                            storage_only=storage_only, against=against, cpus=cpus))


def _pinned(cmd: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


async def _run(*, smoke: bool, out: str | Path | None, levels: list[int] | None, window_s: float, target_ms: float,
               pipeline: str, seed: int, database_url: str | None = None, calls: int = 8, turns: int = 4,
               storage_only: bool = False, against: str | None = None,
               cpus: str | None = None) -> tuple[dict[str, Any], Path]:
    from benchmarks import store_timing
    from voicecore.storage import MASTER_KEY_ENV
    from voicecore.storage.database import database_url as resolve_url
    from voicecore.storage.database import describe_target

    started = time.time()
    folder = output_dir("concurrency", out)
    ns = [] if storage_only and database_url else [1, 2] if smoke else list(levels or DEFAULT_LEVELS)
    window = 5.0 if smoke else window_s
    corpus = load_corpus([s.id for s in CORPUS])
    doc = envelope("concurrency", smoke=smoke, started=started, config={
        "pipeline": pipeline, "levels": ns, "window_s": window, "target_p95_ms": target_ms, "pause_s": list(PAUSE_S),
        "answer_timeout_s": ANSWER_TIMEOUT_S, "gap_threshold_ms": 60, "seed": seed,
        "server": "voicecore serve (subprocess)", "against": against, "cpus": cpus or "all",
        "database": "SQLite (the data directory's file)" if not database_url else describe_target(resolve_url(database_url)),
    })
    doc["storage"] = None
    if database_url:
        if not os.environ.get(MASTER_KEY_ENV):  # the workers of one database share one master key
            import base64
            import secrets

            os.environ[MASTER_KEY_ENV] = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
            doc["config"]["master_key"] = "made up for this run (no VOICECORE_MASTER_KEY)"
        else:
            doc["config"]["master_key"] = "VOICECORE_MASTER_KEY"
        n_calls, n_turns = (2, 1) if smoke else (max(1, calls), max(1, turns))
        doc["config"].update({"storage_calls": n_calls, "storage_turns_per_call": n_turns})
        doc["storage"] = await store_timing.compare(folder, database_url, calls=n_calls, turns=n_turns,
                                                    pipeline=pipeline)
    out_levels: list[dict[str, Any]] = []
    if not ns:
        return _finish_doc(doc, out_levels, ns, target_ms, None, folder, started)
    server = VoicecoreServer(folder, pipeline=pipeline, database_url=database_url)
    server.process.cmd = _pinned(server.process.cmd, cpus)
    with server:
        sampler = ProcessSampler(server.pid)
        await asyncio.sleep(1.0)
        rss_idle = sampler.rss_mb()
        sampler.start()
        try:
            for n in ns:
                out_levels.append(await run_level(n, server, sampler, corpus, window, seed, target_ms))
        finally:
            await sampler.stop()
        doc["config"]["server_start_s"] = server.process.started_in_s
    if against == "pipecat":
        doc["pipecat"] = await _pipecat_levels(folder, pipeline, ns, corpus, window, seed, target_ms, cpus)
    return _finish_doc(doc, out_levels, ns, target_ms, rss_idle, folder, started)


async def _pipecat_levels(folder: Path, pipeline: str, ns: list[int], corpus: list[Utterance], window: float,
                          seed: int, target_ms: float, cpus: str | None) -> dict[str, Any]:
    """The same levels against the stock Pipecat bot and its llama.cpp server (both sampled)."""
    from benchmarks.compare import (
        LlamaCppServer,
        PipecatBaseline,
        _check_llama_server_extra,
    )

    _check_llama_server_extra()
    llama = LlamaCppServer(folder, pipeline)
    baseline = PipecatBaseline(folder, llama.base_url, pipeline)
    levels: list[dict[str, Any]] = []
    try:
        for proc in (llama, baseline):
            proc.cmd = _pinned(proc.cmd, cpus)
            proc.launch()
        for proc in (llama, baseline):
            proc.wait_ready()
        assert llama.proc is not None and baseline.proc is not None
        sampler = Samplers([baseline.proc.pid, llama.proc.pid])
        await asyncio.sleep(1.0)
        rss_idle = sampler.rss_mb()
        sampler.start()
        target = Target(baseline.ws_url, None, f"http://127.0.0.1:{baseline.port}")
        try:
            for n in ns:
                levels.append(await run_level(n, target, sampler, corpus, window, seed, target_ms))
        finally:
            await sampler.stop()
    finally:
        for proc in (baseline, llama):
            proc.stop()
    ok = [lv["n"] for lv in levels if lv["within_target"]]
    return {"server": "stock Pipecat bot (benchmarks/pipecat_baseline.py) + llama_cpp.server, CPU and RSS summed",
            "levels": levels,
            "summary": {"max_n_within_target": max(ok) if ok else 0, "target_p95_ms": target_ms,
                        "rss_idle_mb": round(rss_idle, 1)}}


def side_by_side(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per level: voicecore's and Pipecat's voice-to-voice p50/p95 and their ratio."""
    pc = {lv["n"]: lv for lv in (doc.get("pipecat") or {}).get("levels", [])}
    rows = []
    for lv in doc.get("levels", []):
        other = pc.get(lv["n"])
        if other is None:
            continue
        row: dict[str, Any] = {"n": lv["n"]}
        for q in ("p50", "p95"):
            a, b = lv["voice_to_voice_ms"].get(q), other["voice_to_voice_ms"].get(q)
            row[f"voicecore_{q}_ms"], row[f"pipecat_{q}_ms"] = a, b
            row[f"ratio_{q}"] = round(a / b, 3) if a is not None and b else None
        row["voicecore_cpu_percent"], row["pipecat_cpu_percent"] = lv["cpu_percent_mean"], other["cpu_percent_mean"]
        rows.append(row)
    return rows


def _finish_doc(doc: dict[str, Any], out_levels: list[dict[str, Any]], ns: list[int], target_ms: float,
                rss_idle: float | None, folder: Path, started: float) -> tuple[dict[str, Any], Path]:
    base = next((lv for lv in out_levels if lv["n"] == min(ns)), None)
    for lv in out_levels:
        lv["rss_per_extra_call_mb"] = None
        if base is not None and lv["n"] > base["n"] and lv["rss_mb_max"] is not None and base["rss_mb_max"] is not None:
            lv["rss_per_extra_call_mb"] = round((lv["rss_mb_max"] - base["rss_mb_max"]) / (lv["n"] - base["n"]), 2)
    ok = [lv["n"] for lv in out_levels if lv["within_target"]]
    pts = [(lv["n"], lv["rss_mb_max"]) for lv in out_levels if lv["rss_mb_max"] is not None]
    doc["summary"] = {
        "max_n_within_target": max(ok) if ok else 0,
        "target_p95_ms": target_ms,
        "rss_idle_mb": None if rss_idle is None else round(rss_idle, 1),
        "rss_per_extra_call_mb": _slope([float(x) for x, _ in pts], [float(y) for _, y in pts]),
        "underruns_over_60ms": sum(lv["underruns_over_60ms"] for lv in out_levels),
    }
    doc["levels"] = out_levels
    doc["plots"] = plot_levels(out_levels, target_ms, folder)
    if doc.get("pipecat"):
        doc["side_by_side"] = side_by_side(doc)
        doc["plots"].append(plot_against(doc, target_ms, folder))
    if doc.get("storage"):
        from benchmarks import store_timing

        doc["plots"] += store_timing.plot(doc["storage"], folder)
    doc["duration_s"] = round(time.time() - started, 1)
    write_json(folder / "concurrency.json", doc)
    return doc, folder


def plot_levels(levels: list[dict[str, Any]], target_ms: float, out: Path) -> list[str]:
    if not levels:
        return []
    plt = pyplot()
    ns = [lv["n"] for lv in levels]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    ax = axes[0]
    ax.plot(ns, [lv["voice_to_voice_ms"]["p50"] for lv in levels], "o-", label="p50")
    ax.plot(ns, [lv["voice_to_voice_ms"]["p95"] for lv in levels], "s-", label="p95 (answered)")
    ax.plot(ns, [lv["voice_to_voice_p95_with_unanswered_ms"] for lv in levels], "x:", label="p95 (unanswered = 15 s)")
    ax.axhline(target_ms, color="r", linestyle="--", linewidth=1, label=f"target {target_ms:.0f} ms")
    ax.set_xlabel("simultaneous calls")
    ax.set_ylabel("voice-to-voice (ms)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    ax.plot(ns, [lv["cpu_percent_mean"] for lv in levels], "o-", label="server (mean)")
    ax.plot(ns, [lv["cpu_percent_max"] for lv in levels], "s:", label="server (max)")
    cores = os.cpu_count() or 1
    ax.plot(ns, [(lv["system_cpu_percent_mean"] or 0) * cores for lv in levels], "x--", label="whole machine (mean)")
    ax.set_xlabel("simultaneous calls")
    ax.set_ylabel("CPU (% of one core)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[2]
    ax.plot(ns, [lv["rss_mb_max"] for lv in levels], "o-", label="server RSS (max)")
    ax2 = ax.twinx()
    ax2.bar(ns, [lv["underruns_over_60ms"] for lv in levels], alpha=0.3, color="r", label="underruns > 60 ms")
    ax.set_xlabel("simultaneous calls")
    ax.set_ylabel("RSS (MB)")
    ax2.set_ylabel("late-audio underruns")
    ax.grid(alpha=0.3)
    for a in axes:
        a.set_xticks(ns)
    fig.suptitle("voicecore under concurrent calls")
    return [save_figure(fig, out / "concurrency.png")]


def plot_against(doc: dict[str, Any], target_ms: float, out: Path) -> str:
    """p95 voice-to-voice (unanswered = 15 s) and CPU against N for both runtimes."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, levels, style in (("voicecore", doc["levels"], "o-"), ("stock Pipecat", doc["pipecat"]["levels"], "s--")):
        ns = [lv["n"] for lv in levels]
        axes[0].plot(ns, [lv["voice_to_voice_p95_with_unanswered_ms"] for lv in levels], style, label=f"{name} p95")
        axes[0].plot(ns, [lv["voice_to_voice_ms"]["p50"] for lv in levels], style, alpha=0.4, label=f"{name} p50")
        axes[1].plot(ns, [lv["cpu_percent_mean"] for lv in levels], style, label=name)
    axes[0].axhline(target_ms, color="r", linestyle=":", linewidth=1, label=f"target {target_ms:.0f} ms")
    axes[0].set_ylabel("voice-to-voice (ms)")
    axes[1].set_ylabel("CPU, all the runtime's processes (% of one core)")
    for a in axes:
        a.set_xlabel("simultaneous calls")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle("voicecore and a stock Pipecat bot, same models, same callers")
    return save_figure(fig, out / "concurrency-vs-pipecat.png")


def report(doc: dict[str, Any]) -> str:
    header = ["N", "turns", "unans.", "v2v p50", "v2v p95", "p95+unans.", "CPU %", "RSS MB", "MB/extra call",
              "underruns", "arr. gaps", "client late"]
    rows = []
    for lv in doc["levels"]:
        rows.append([lv["n"], lv["turns"], lv["unanswered"], lv["voice_to_voice_ms"]["p50"],
                     lv["voice_to_voice_ms"]["p95"], lv["voice_to_voice_p95_with_unanswered_ms"],
                     lv["cpu_percent_mean"], lv["rss_mb_max"], lv["rss_per_extra_call_mb"],
                     lv["underruns_over_60ms"], lv["arrival_gaps_over_60ms"], lv["client_late_frames"]])
    s = doc["summary"]
    lines = [] if not rows else [
        f"voicecore under concurrent Twilio calls on {doc['config'].get('database', 'SQLite')} "
        "(ms; CPU in % of one core)",
        text_table(header, rows),
        f"largest N with voice-to-voice p95 <= {s['target_p95_ms']:.0f} ms: {s['max_n_within_target']}; "
        f"idle RSS {s['rss_idle_mb']} MB, {s['rss_per_extra_call_mb']} MB per extra call (slope)",
    ]
    if doc.get("side_by_side"):
        pc = doc["pipecat"]["summary"]
        lines += ["", "the same callers against a stock Pipecat bot (ms; ratio = voicecore / Pipecat)",
                  text_table(["N", "vc p50", "pc p50", "ratio", "vc p95", "pc p95", "ratio", "vc CPU %", "pc CPU %"],
                             [[r["n"], r["voicecore_p50_ms"], r["pipecat_p50_ms"], r["ratio_p50"], r["voicecore_p95_ms"],
                               r["pipecat_p95_ms"], r["ratio_p95"], r["voicecore_cpu_percent"], r["pipecat_cpu_percent"]]
                              for r in doc["side_by_side"]]),
                  f"largest N within the target: voicecore {s['max_n_within_target']}, "
                  f"stock Pipecat {pc['max_n_within_target']}"]
    if doc.get("storage"):
        from benchmarks import store_timing

        lines += ["" if lines else "", store_timing.report(doc["storage"])]
    return "\n".join(lines).strip("\n")
