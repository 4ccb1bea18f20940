"""``python -m benchmarks.stt_batch``: how many transcriptions Whisper gets through when calls' turns
end together, batched against one by one.

N corpus utterances (16 kHz espeak-ng speech, ``benchmarks/corpus.py``), each as if from a
different call of one pipeline (the receptionist's recogniser prompt), are handed to
``WhisperEngine.transcribe`` at the same moment; N = 1, 2, 4, 8. The same engine settings run
twice: ``max_batch`` = ``--max-batch`` (batched: the requests waiting while one runs are
transcribed together) and ``max_batch`` = 1 (one by one, as before batching), alternating round
by round, on 1 and 2 CPU threads (the preset's ``cpu_threads``). Figures per (threads, N):

- **wall** (``wall_ms``): from handing over the N requests to the last transcript;
- **latency** (``latency_ms``): each request's own wait, hand-over to its transcript;
- **throughput** (``per_s``): transcripts a second (N / mean wall), and ``speedup``, the
  one-by-one wall over the batched wall;
- **same text** (``same_text``): batched transcripts equal to the one-by-one transcripts of the
  same audio (they should all be), and the word error rate of both against the corpus text.

Target: batching is never slower than one by one at the largest N (``speedup >= 1``). Prints a
table; writes ``stt_batch.json`` (``voicecore.bench/1`` envelope) to ``--out`` (default
``benchmarks/results/stt_batch-<timestamp>/``). ``--smoke``: 1 round, N = 1 and 2, 1 thread.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    PROJECT_ROOT,
    envelope,
    output_dir,
    stats,
    text_table,
    wer_summary,
    write_json,
)
from benchmarks.corpus import load_corpus
from voicecore.agent.facts import FactBook
from voicecore.config import load_pipeline, load_presets, resolve_stt
from voicecore.pipeline import recogniser_prompt
from voicecore.server.logs import setup_logging
from voicecore.services.stt import WhisperEngine

TARGETS = {"speedup_at_largest_n_min": 1.0}
MODES = ("batched", "one_by_one")


def receptionist_prompt() -> str | None:
    config = load_pipeline(PROJECT_ROOT / "pipelines" / "receptionist.yaml")
    return recogniser_prompt(config, FactBook(config.facts) if config.facts is not None else None)


async def one_round(engine: WhisperEngine, audio: list[np.ndarray],
                    prompt: str | None) -> tuple[float, list[float], list[str]]:
    """Hand ``audio`` over at once: (wall ms, latency ms of each request, transcripts)."""
    t0 = time.perf_counter()
    done: list[float] = [0.0] * len(audio)

    async def one(i: int) -> str:
        text = await engine.transcribe(audio[i], prompt)
        done[i] = time.perf_counter()
        return text

    texts = await asyncio.gather(*(one(i) for i in range(len(audio))))
    return (max(done) - t0) * 1000, [(d - t0) * 1000 for d in done], list(texts)


def run(*, smoke: bool = False, out: str | Path | None = None, levels: list[int] | None = None,
        threads: list[int] | None = None, rounds: int = 6, max_batch: int = 8) -> tuple[dict[str, Any], Path]:
    started = time.time()
    folder = output_dir("stt_batch", out)
    if smoke:
        levels, threads, rounds = levels or [1, 2], threads or [1], 1
    levels = levels or [1, 2, 4, 8]
    threads = threads or [1, 2]
    corpus = load_corpus()
    audio = [u.samples.astype(np.float32) / 32768.0 for u in corpus]
    prompt = receptionist_prompt()
    base, path = resolve_stt("default", load_presets())
    doc = envelope("stt_batch", smoke=smoke, started=started, config={
        "levels": levels, "threads": threads, "rounds": rounds, "max_batch": max_batch, "model": path,
        "utterances": len(corpus), "prompt_chars": len(prompt or ""), "targets": TARGETS,
    })
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for n_threads in threads:
        engines = {
            "batched": WhisperEngine(path, base.model_copy(update={"cpu_threads": n_threads, "max_batch": max_batch})),
            "one_by_one": WhisperEngine(path, base.model_copy(update={"cpu_threads": n_threads, "max_batch": 1})),
        }
        for n in levels:
            for r in range(rounds):
                pick = [(r * n + i) % len(corpus) for i in range(n)]  # N different utterances, rotating
                order = MODES if r % 2 == 0 else MODES[::-1]  # alternate who runs first
                texts: dict[str, list[str]] = {}
                for mode in order:
                    engine = engines[mode]
                    batches_before = engine.batches_run
                    wall, latency, texts[mode] = asyncio.run(one_round(engine, [audio[i] for i in pick], prompt))
                    rows.append({"threads": n_threads, "n": n, "round": r, "mode": mode, "wall_ms": round(wall, 1),
                                 "latency_ms": [round(x, 1) for x in latency],
                                 "batches": engine.batches_run - batches_before,
                                 "utterances": [corpus[i].id for i in pick], "transcripts": texts[mode]})
                same = sum(a == b for a, b in zip(texts["batched"], texts["one_by_one"], strict=True))
                for row in rows[-2:]:
                    row["same_text"] = same
        summary[str(n_threads)] = summarise(rows, n_threads, levels, corpus)
    largest = max(levels)
    speedups = [summary[str(t)][str(largest)]["speedup"] for t in threads]
    doc["summary"] = summary
    doc["summary"]["met"] = {"speedup_at_largest_n_min": all(s is not None and s >= TARGETS["speedup_at_largest_n_min"]
                                                             for s in speedups)}
    doc["rows"] = rows
    doc["plots"] = []
    doc["duration_s"] = round(time.time() - started, 1)
    write_json(folder / "stt_batch.json", doc)
    return doc, folder


def summarise(rows: list[dict[str, Any]], n_threads: int, levels: list[int], corpus: list) -> dict[str, Any]:
    text_of = {u.id: u.text for u in corpus}
    noisy = {u.id: u.noisy for u in corpus}
    out: dict[str, Any] = {}
    for n in levels:
        level = [r for r in rows if r["threads"] == n_threads and r["n"] == n]
        entry: dict[str, Any] = {}
        for mode in MODES:
            mine = [r for r in level if r["mode"] == mode]
            walls = [r["wall_ms"] for r in mine]
            mean_wall = sum(walls) / len(walls)
            pairs = [(text_of[u], t, noisy[u]) for r in mine for u, t in zip(r["utterances"], r["transcripts"])]
            entry[mode] = {
                "wall_ms": stats(walls),
                "latency_ms": stats([x for r in mine for x in r["latency_ms"]]),
                "per_s": round(n * 1000 / mean_wall, 2),
                "mean_batch": round(n * len(mine) / max(1, sum(r["batches"] for r in mine)), 2),
                "wer": wer_summary(pairs)["overall"]["wer"],
            }
        b, s = entry["batched"]["wall_ms"]["mean"], entry["one_by_one"]["wall_ms"]["mean"]
        entry["speedup"] = round(s / b, 2) if b else None
        entry["same_text"] = {"equal": sum(r["same_text"] for r in level if r["mode"] == "batched"),
                              "of": n * len([r for r in level if r["mode"] == "batched"])}
        out[str(n)] = entry
    return out


def report(doc: dict[str, Any]) -> str:
    rows = []
    for t in doc["config"]["threads"]:
        for n in doc["config"]["levels"]:
            e = doc["summary"][str(t)][str(n)]
            b, s = e["batched"], e["one_by_one"]
            rows.append([t, n, s["wall_ms"]["mean"], b["wall_ms"]["mean"], e["speedup"], s["per_s"], b["per_s"],
                         s["latency_ms"]["p50"], b["latency_ms"]["p50"], s["latency_ms"]["max"], b["latency_ms"]["max"],
                         b["mean_batch"], f"{e['same_text']['equal']}/{e['same_text']['of']}"])
    met = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in doc["summary"]["met"].items())
    return "\n".join([
        f"Whisper batching ({doc['config']['rounds']} rounds a level; ms; 1x1 = one by one, batch = max_batch "
        f"{doc['config']['max_batch']})",
        text_table(["threads", "N", "wall 1x1", "wall batch", "speedup", "/s 1x1", "/s batch", "lat p50 1x1",
                    "lat p50 batch", "lat max 1x1", "lat max batch", "mean batch", "same text"], rows),
        f"targets met: {met}",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a seconds-long run with the same output schema")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default: benchmarks/results/stt_batch-<timestamp>/)")
    ap.add_argument("--levels", default=None, help="simultaneous requests, comma-separated (default 1,2,4,8)")
    ap.add_argument("--threads", default=None, help="CPU threads of the model, comma-separated (default 1,2)")
    ap.add_argument("--rounds", type=int, default=6, help="rounds per level and mode")
    ap.add_argument("--max-batch", type=int, default=8, help="max_batch of the batched engine")
    args = ap.parse_args()
    setup_logging(os.environ.get("VOICECORE_LOG_LEVEL") or "INFO")  # DEBUG has a line per transcription

    def ints(s: str | None) -> list[int] | None:
        return [int(x) for x in s.split(",")] if s else None

    doc, folder = run(smoke=args.smoke, out=args.out, levels=ints(args.levels), threads=ints(args.threads),
                      rounds=args.rounds, max_batch=args.max_batch)
    print(report(doc))
    print(f"\nResults: {folder / 'stt_batch.json'}")


if __name__ == "__main__":
    main()
