"""``voicecore bench compare``: voicecore and a stock Pipecat pipeline, same corpus, same run, call by call.

Three subprocesses on 127.0.0.1: ``voicecore serve``; llama-cpp-python's OpenAI-compatible
server on the same GGUF (``python -m llama_cpp.server --model <gguf> --model_alias
smollm2``, with voicecore's preset n_ctx/threads/batch so the model runs the same way);
and the stock Pipecat bot (``pipecat_baseline.py``). The corpus is cut into calls of a
few utterances; call *k* is played to both systems one after the other — voicecore first
for even *k*, Pipecat first for odd *k* — so drift in the machine's load falls on both.

Figures are measured the same way for both by the caller: voice-to-voice (end of caller
speech in the sent audio → first agent media message) and the greeting (``start`` →
first agent media). Stages come from each system's own record: voicecore's stored turn
timelines (aligned to the client's end of speech, see ``latency.py``) and, for Pipecat,
the baseline's observer (frame timestamps on the machine's monotonic clock, which the
caller shares): end of user turn, transcription, first LLM text, TTS start (the first
sentence handed to TTS) and the first TTS audio frame. Every figure is reported for
each system and as the voicecore/Pipecat ratio, and voice-to-voice also pair by pair
(the same utterance on both).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ServerProcess,
    VoicecoreServer,
    envelope,
    free_port,
    http_get,
    output_dir,
    pyplot,
    ratio,
    save_figure,
    stats,
    text_table,
    word_errors,
    write_json,
)
from benchmarks.corpus import CORPUS, SMOKE_IDS, load_corpus
from benchmarks.latency import (
    STAGE_LABELS,
    STAGES,
    PlayedCall,
    call_rows,
    play_call,
    split_calls,
    summarise,
    voicecore_call,
)

PIPECAT_STAGES = ("turn_end", *STAGES)


class LlamaCppServer(ServerProcess):
    """``python -m llama_cpp.server`` on the pipeline's GGUF (the ``llama-cpp-python[server]`` extra)."""

    def __init__(self, work_dir: Path, pipeline: str):
        from voicecore.config import (
            load_pipeline,
            load_presets,
            resolve_llm,
            resolve_pipeline_path,
        )

        cfg = load_pipeline(resolve_pipeline_path(pipeline))
        preset, gguf = resolve_llm(cfg.models.llm, load_presets())
        self.port = free_port()
        self.gguf = gguf
        super().__init__(
            "llama_cpp.server",
            [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", "smollm2",
             "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(preset.n_ctx),
             "--n_threads", str(preset.n_threads), "--n_threads_batch", str(preset.n_threads),
             "--n_batch", str(preset.n_batch)],
            f"http://127.0.0.1:{self.port}/v1/models",
            work_dir / "llama-cpp-server.log",
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


class PipecatBaseline(ServerProcess):
    def __init__(self, work_dir: Path, llm_url: str, pipeline: str):
        self.port = free_port()
        super().__init__(
            "stock Pipecat baseline",
            [sys.executable, "-m", "benchmarks.pipecat_baseline", "--port", str(self.port), "--llm-url", llm_url,
             "--pipeline", pipeline],
            f"http://127.0.0.1:{self.port}/healthz",
            work_dir / "pipecat-baseline.log",
        )
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"

    def events(self, stream_sid: str) -> list[dict[str, Any]]:
        data = json.loads(http_get(f"http://127.0.0.1:{self.port}/events/{stream_sid}", timeout=5))
        return data["events"]


def _check_llama_server_extra() -> None:
    try:
        import llama_cpp.server  # noqa: F401
        import pydantic_settings  # noqa: F401
        import sse_starlette  # noqa: F401
        import starlette_context  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            f"bench compare needs llama-cpp-python's server extra ({e}); install it without rebuilding: "
            "pip install 'llama-cpp-python[server]==<the installed version>' (or pip install -e '.[bench]')"
        ) from None


def attach_pipecat_events(call: PlayedCall, rows: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    """Transcript and stages of each Pipecat turn from the baseline's observer events.

    The answer to an utterance is the last LLM response started in its window (onset →
    next onset) before the caller heard the answer; the stages are the events around it,
    in ms after the client's end of caller speech (the same monotonic clock).
    """
    for turn, row in zip(call.turns, rows):
        sp = turn.spoken
        start = sp.onset_sent_at or sp.queued_at
        end = turn.window_end
        mine = [e for e in events if start <= e["t"] < end]
        row["transcript"] = " ".join((e["text"] or "").strip() for e in mine if e["kind"] == "transcription").strip()
        errors, words = word_errors(turn.utterance.text, row["transcript"])
        row["word_errors"], row["ref_words"] = errors, words
        heard = turn.answer.t if turn.answer is not None else end
        starts = [e for e in mine if e["kind"] == "llm_start" and e["t"] <= heard]
        if not starts or sp.speech_end_at is None:
            continue
        t_llm = starts[-1]["t"]

        def rel(t: float | None) -> float | None:
            return None if t is None else round((t - sp.speech_end_at) * 1000, 1)

        def first_after(kind: str, t: float) -> float | None:
            return next((e["t"] for e in mine if e["kind"] == kind and e["t"] >= t), None)

        def last_before(kind: str, t: float) -> float | None:
            found = [e["t"] for e in mine if e["kind"] == kind and e["t"] <= t]
            return found[-1] if found else None

        row["client_aligned_ms"] = {
            "turn_end": rel(last_before("user_stopped", t_llm)),
            "stt_final": rel(last_before("transcription", t_llm)),
            "llm_first_token": rel(first_after("llm_text", t_llm)),
            "first_clause": rel(first_after("tts_started", t_llm)),
            "first_audio_out": rel(first_after("tts_audio", t_llm)),
        }


async def pipecat_call(baseline: PipecatBaseline, index: int, group: list[Any]) -> tuple[PlayedCall, list[dict[str, Any]]]:
    call = await play_call("pipecat", index, baseline.ws_url, None, group)
    rows = call_rows(call)
    await asyncio.sleep(0.3)
    events = await asyncio.to_thread(baseline.events, call.caller.stream_sid)
    attach_pipecat_events(call, rows, events)
    return call, rows


def _figure(summary: dict[str, Any], key: str, stage: str | None, q: str) -> float | None:
    if stage is None:
        return summary[key][q]
    return summary[key][stage][q]


def compare_ratios(vc: dict[str, Any], pc: dict[str, Any]) -> dict[str, Any]:
    """voicecore / Pipecat for every figure both have (stages on the client's end-of-speech origin)."""
    out: dict[str, Any] = {}
    for q in ("p50", "p95", "max"):
        out[f"voice_to_voice_{q}"] = ratio(vc["voice_to_voice_ms"][q], pc["voice_to_voice_ms"][q])
        out[f"greeting_{q}"] = ratio(vc["greeting_ms"][q], pc["greeting_ms"][q])
        for s in STAGES:
            out[f"{s}_{q}"] = ratio(vc["client_aligned_stages_ms"][s][q], pc["client_aligned_stages_ms"][s][q])
    if vc.get("wer") and pc.get("wer"):
        out["wer"] = ratio(vc["wer"]["overall"]["wer"], pc["wer"]["overall"]["wer"])
    out["answered"] = ratio(vc["answered"], pc["answered"])
    return out


def pair_rows(vc_rows: list[dict[str, Any]], pc_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same utterance of the same call on both systems: voice-to-voice and each stage, with ratios."""
    pcs = {(r["call"], r["utterance"]): r for r in pc_rows}
    pairs = []
    for r in vc_rows:
        p = pcs.get((r["call"], r["utterance"]))
        if p is None:
            continue
        stages = {}
        for s in STAGES:
            a = (r["client_aligned_ms"] or {}).get(s)
            b = (p["client_aligned_ms"] or {}).get(s)
            stages[s] = {"voicecore_ms": a, "pipecat_ms": b, "ratio": ratio(a, b)}
        pairs.append({
            "call": r["call"],
            "utterance": r["utterance"],
            "voicecore_ms": r["voice_to_voice_ms"],
            "pipecat_ms": p["voice_to_voice_ms"],
            "ratio": ratio(r["voice_to_voice_ms"], p["voice_to_voice_ms"]),
            "stages": stages,
        })
    return pairs


def _ratio_stats(values: list[float | None]) -> dict[str, Any]:
    out = stats(values)
    return {k: (v if k == "n" or v is None else round(float(v), 3)) for k, v in out.items()}


def plot_compare(vc_rows: list[dict[str, Any]], pc_rows: list[dict[str, Any]], pairs: list[dict[str, Any]],
                 out: Path) -> list[str]:
    plt = pyplot()
    names: list[str] = []
    labels = ["voice-to-voice", *[STAGE_LABELS[s] for s in STAGES]]
    keys = [None, *STAGES]

    def values(rows: list[dict[str, Any]], key: str | None) -> list[float]:
        if key is None:
            return [r["voice_to_voice_ms"] for r in rows if r["voice_to_voice_ms"] is not None]
        return [(r["client_aligned_ms"] or {}).get(key) for r in rows
                if (r["client_aligned_ms"] or {}).get(key) is not None]

    fig, ax = plt.subplots(figsize=(9, 5))
    pos = range(len(labels))
    for offset, rows, name, colour in ((-0.18, vc_rows, "voicecore", "tab:blue"),
                                       (0.18, pc_rows, "stock Pipecat", "tab:orange")):
        data = [values(rows, k) or [float("nan")] for k in keys]
        bp = ax.boxplot(data, positions=[p + offset for p in pos], widths=0.3, orientation="horizontal",
                        patch_artist=True, manage_ticks=False)
        for box in bp["boxes"]:
            box.set_facecolor(colour)
            box.set_alpha(0.6)
        ax.plot([], [], color=colour, linewidth=8, alpha=0.6, label=name)
    ax.set_yticks(list(pos))
    ax.set_yticklabels(labels)
    ax.set_xlabel("ms after the end of caller speech")
    ax.set_title("voicecore vs stock Pipecat, same corpus and models")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    names.append(save_figure(fig, out / "compare_stages.png"))

    pts = [(p["pipecat_ms"], p["voicecore_ms"]) for p in pairs if p["pipecat_ms"] and p["voicecore_ms"]]
    if pts:
        fig, ax = plt.subplots(figsize=(5.5, 5))
        ax.scatter([x for x, _ in pts], [y for _, y in pts])
        hi = max(max(x for x, _ in pts), max(y for _, y in pts)) * 1.05
        ax.plot([0, hi], [0, hi], "k--", linewidth=0.8, label="ratio 1")
        ax.plot([0, hi], [0, hi / 2], "g:", linewidth=0.8, label="ratio 0.5")
        ax.set_xlim(0, hi)
        ax.set_ylim(0, hi)
        ax.set_xlabel("stock Pipecat voice-to-voice (ms)")
        ax.set_ylabel("voicecore voice-to-voice (ms)")
        ax.set_title("the same utterance on both")
        ax.legend()
        ax.grid(alpha=0.3)
        names.append(save_figure(fig, out / "compare_pairs.png"))
    return names


def run(*, smoke: bool = False, out: str | Path | None = None, per_call: int = 4,
        pipeline: str = "receptionist") -> tuple[dict[str, Any], Path]:
    return asyncio.run(_run(smoke=smoke, out=out, per_call=per_call, pipeline=pipeline))


async def _run(*, smoke: bool, out: str | Path | None, per_call: int, pipeline: str) -> tuple[dict[str, Any], Path]:
    _check_llama_server_extra()
    started = time.time()
    folder = output_dir("compare", out)
    corpus = load_corpus(list(SMOKE_IDS) if smoke else [s.id for s in CORPUS])
    groups = split_calls(corpus, 2 if smoke else per_call)
    doc = envelope("compare", smoke=smoke, started=started, config={
        "pipeline": pipeline, "utterances": len(corpus), "calls_per_system": len(groups),
        "utterances_per_call": len(groups[0]), "order": "call k: voicecore first for even k, Pipecat first for odd k",
    })
    doc["corpus"] = [u.describe() for u in corpus]
    llama = LlamaCppServer(folder, pipeline)
    vc_calls: list[PlayedCall] = []
    pc_calls: list[PlayedCall] = []
    vc_rows: list[dict[str, Any]] = []
    pc_rows: list[dict[str, Any]] = []
    server = VoicecoreServer(folder, pipeline=pipeline)
    baseline = PipecatBaseline(folder, llama.base_url, pipeline)
    procs = (server.process, llama, baseline)
    try:
        for proc in procs:  # the three start side by side
            proc.launch()
        for proc in procs:
            proc.wait_ready()
        doc["config"]["start_s"] = {"voicecore": server.process.started_in_s,
                                    "llama_cpp_server": llama.started_in_s,
                                    "pipecat_baseline": baseline.started_in_s}
        doc["config"]["llama_cpp_server_cmd"] = " ".join(Path(c).name if c == sys.executable else c
                                                         for c in llama.cmd)
        for k, group in enumerate(groups):
            order = ("voicecore", "pipecat") if k % 2 == 0 else ("pipecat", "voicecore")
            for system in order:
                if system == "voicecore":
                    call, rows = await voicecore_call(server, k, group)
                    vc_calls.append(call)
                    vc_rows += rows
                else:
                    call, rows = await pipecat_call(baseline, k, group)
                    pc_calls.append(call)
                    pc_rows += rows
    finally:
        for proc in procs:
            proc.stop()
        server.store.close()
    vc = summarise(vc_rows, vc_calls)
    pc = summarise(pc_rows, pc_calls)
    pc["turn_end_ms"] = stats([(r["client_aligned_ms"] or {}).get("turn_end") for r in pc_rows])
    pairs = pair_rows(vc_rows, pc_rows)
    doc["systems"] = {"voicecore": vc, "pipecat": pc}
    doc["ratios"] = compare_ratios(vc, pc)
    doc["pairs"] = pairs
    doc["pair_ratio"] = _ratio_stats([p["ratio"] for p in pairs])
    doc["pair_ratio_stages"] = {st: _ratio_stats([p["stages"][st]["ratio"] for p in pairs]) for st in STAGES}
    doc["turns"] = {"voicecore": vc_rows, "pipecat": pc_rows}
    doc["plots"] = plot_compare(vc_rows, pc_rows, pairs, folder)
    doc["duration_s"] = round(time.time() - started, 1)
    write_json(folder / "compare.json", doc)
    return doc, folder


def report(doc: dict[str, Any]) -> str:
    vc, pc, r = doc["systems"]["voicecore"], doc["systems"]["pipecat"], doc["ratios"]
    rows = []

    def add(label: str, a: dict[str, Any], b: dict[str, Any], key: str) -> None:
        rows.append([label, a["p50"], b["p50"], r.get(f"{key}_p50"), a["p95"], b["p95"], r.get(f"{key}_p95")])

    add("voice-to-voice", vc["voice_to_voice_ms"], pc["voice_to_voice_ms"], "voice_to_voice")
    for s in STAGES:
        add(STAGE_LABELS[s], vc["client_aligned_stages_ms"][s], pc["client_aligned_stages_ms"][s], s)
    add("greeting after start", vc["greeting_ms"], pc["greeting_ms"], "greeting")
    header = ["ms", "voicecore p50", "Pipecat p50", "ratio", "voicecore p95", "Pipecat p95", "ratio"]
    lines = ["voicecore vs stock Pipecat (stages in ms after the client's end of caller speech)",
             text_table(header, rows)]
    pr = doc["pair_ratio"]
    lines.append(f"voice-to-voice ratio pair by pair: median {pr['p50']}, p95 {pr['p95']} over {pr['n']} pairs")
    for name, s in (("voicecore", vc), ("Pipecat", pc)):
        w = (s.get("wer") or {}).get("overall") or {}
        wer = "—" if w.get("wer") is None else f"{100 * w['wer']:.1f}%"
        lines.append(f"{name}: WER {wer}, answered {s['answered']}/{s['turns']}")
    return "\n".join(lines)
