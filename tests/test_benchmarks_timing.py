"""The timing benchmarks that took over the tests' wall-clock assertions (``benchmarks/cpu_priority.py``,
``benchmarks/barge_in.py``), in their ``--smoke`` form, as a user runs them (``python -m benchmarks.X``).

Only the JSON they write is checked (its schema, see ``benchmarks/README.md``), never the figures:
those depend on the machine, which is why they are benchmarks and not tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAT_KEYS = {"n", "p50", "p95", "max", "mean"}


def run_module(name: str, out: Path, *args: str, timeout: float = 300) -> dict[str, Any]:
    env = {**os.environ, "VOICECORE_LOG_LEVEL": "WARNING"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--smoke", "--out", str(out), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=timeout)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    path = out / f"{name}.json"
    assert f"Results: {path}" in done.stdout and "targets met:" in done.stdout, done.stdout
    doc = json.loads(path.read_text())
    assert doc["schema"] == "voicecore.bench/1" and doc["benchmark"] == name and doc["smoke"] is True
    assert isinstance(doc["duration_s"], float) and doc["plots"] == []
    assert {"cpus", "platform", "python", "load_avg", "versions"} <= set(doc["environment"])
    assert isinstance(doc["config"]["targets"], dict)
    return doc


def test_cpu_priority_benchmark_writes_its_figures(tmp_path: Path) -> None:
    doc = run_module("cpu_priority", tmp_path)
    s = doc["summary"]
    for key in ("fast_path_us", "wake_up_ms", "paused_ms", "bound_overshoot_ms"):
        assert set(s[key]) == STAT_KEYS and s[key]["n"] > 0, (key, s[key])
    assert s["fast_path_us"]["n"] == doc["config"]["fast_path_calls"]
    assert set(s["met"]) == {"fast_path_max_ms", "wake_up_p95_ms", "paused_max_ms", "bound_overshoot_p95_ms",
                             "bound_overshoot_max_ms"}  # fmt: skip
    assert all(isinstance(v, bool) for v in s["met"].values())


@pytest.mark.models
def test_barge_in_benchmark_writes_its_figures(tmp_path: Path) -> None:
    doc = run_module("barge_in", tmp_path)
    s = doc["summary"]
    assert s["trials"] == 1 and len(doc["trials"]) == 1
    for key in ("onset_to_clear_ms", "onset_to_detect_ms", "onset_to_decision_audio_ms", "detect_to_clear_ms",
                "detect_to_last_audio_ms", "detect_to_llm_stopped_ms"):
        assert set(s[key]) == STAT_KEYS, (key, s[key])
    assert set(s["met"]) == {"onset_to_clear_p95_ms", "detect_to_clear_p95_ms", "detect_to_last_audio_p95_ms"}
    assert doc["config"]["line"] == "phone" and doc["config"]["turn_taking"]["barge_in_ms"] > 0
    (trial,) = doc["trials"]
    assert trial["answered"] is True and "barge_in" in trial
    if trial["barge_in"]:
        assert {"onset_to_clear_ms", "onset_to_decision_audio_ms"} <= set(trial)


@pytest.mark.models
def test_stt_batch_benchmark_writes_its_figures(tmp_path: Path) -> None:
    """``benchmarks/stt_batch.py``: Whisper batched against one by one (smoke: N = 1, 2 on 1 thread)."""
    doc = run_module("stt_batch", tmp_path)
    s = doc["summary"]
    assert doc["config"]["levels"] == [1, 2] and doc["config"]["threads"] == [1]
    assert set(s) == {"1", "met"} and set(s["1"]) == {"1", "2"}
    for n, e in s["1"].items():
        for mode in ("batched", "one_by_one"):
            assert set(e[mode]) == {"wall_ms", "latency_ms", "per_s", "mean_batch", "wer"}, e[mode]
            assert set(e[mode]["wall_ms"]) == STAT_KEYS and e[mode]["latency_ms"]["n"] == int(n)
        assert e["same_text"]["of"] == int(n) and isinstance(e["speedup"], float)
    assert set(s["met"]) == {"speedup_at_largest_n_min"}
    assert {r["mode"] for r in doc["rows"]} == {"batched", "one_by_one"}
