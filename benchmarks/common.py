"""What every benchmark shares: output folders, statistics, word error rate, server processes, plots.

Times are ``time.monotonic()`` seconds unless a name says otherwise. On Linux that is
CLOCK_MONOTONIC, one clock for every process of the machine, so times taken in a
server subprocess and in the benchmark's callers can be subtracted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from voicecore.views import percentile

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = PROJECT_ROOT / "benchmarks" / "results"
SCHEMA = "voicecore.bench/1"

# The benchmark tenant's policy: the privacy-first default, except that caller text is
# stored as heard (the word error rate compares it to the corpus) and kept one day.
BENCH_POLICY_YAML = """\
version: 1
name: benchmark
description: Privacy-first default, transcripts stored unredacted for one day (word error rate).
phone_region: US
recording:
  mode: off
retention:
  recordings: 0
  transcripts: 1
  reports: 1
  metadata: 1
  contacts: 1
redaction:
  enabled: true
  categories: [phone, email, card, iban, spoken_digits]
transcripts:
  store_redacted: false
context:
  contact_fields: [name]
  max_history_turns: 12
processing:
  local_only: true
optout:
  enabled: true
  extra_phrases: []
  confirmation: Understood. We will not call you again. Goodbye.
"""


# --------------------------------------------------------------------------- output


def output_dir(name: str, out: str | Path | None = None) -> Path:
    """``out`` if given, else ``benchmarks/results/<name>-<YYYYmmdd-HHMMSS>/`` (created)."""
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = RESULTS_DIR / f"{name}-{stamp}"
    else:
        path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """The machine and the versions that the figures depend on."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg": load,
        "versions": {
            d: _version(d)
            for d in ("voicecore", "pipecat-ai", "llama_cpp_python", "faster-whisper", "piper-tts", "onnxruntime")
        },
    }


def envelope(benchmark: str, *, smoke: bool, started: float, config: dict[str, Any]) -> dict[str, Any]:
    """The fields every benchmark's JSON starts with."""
    return {
        "schema": SCHEMA,
        "benchmark": benchmark,
        "smoke": smoke,
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "duration_s": None,
        "environment": environment(),
        "config": config,
    }


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# --------------------------------------------------------------------------- statistics


def stats(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """``{"n", "p50", "p95", "max", "mean"}`` of the non-null values (ms, rounded to 0.1)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"n": 0, "p50": None, "p95": None, "max": None, "mean": None}
    return {
        "n": len(vals),
        "p50": _r(percentile(vals, 50)),
        "p95": _r(percentile(vals, 95)),
        "max": _r(max(vals)),
        "mean": _r(sum(vals) / len(vals)),
    }


def _r(v: float | None, nd: int = 1) -> float | None:
    return None if v is None else round(float(v), nd)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


# --------------------------------------------------------------------------- word error rate

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen " \
        "sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + _number_words(rest))
    return " ".join(_ONES[int(d)] for d in str(n))


def normalize_text(text: str) -> list[str]:
    """Words for the error rate: lower case, no punctuation, numbers and times spelled out."""
    t = text.lower().replace("’", "'")
    t = re.sub(r"\b(\d{1,2}):00\b", r"\1", t)  # 9:00 -> 9
    t = re.sub(r"\b(\d{1,2}):(\d{2})\b", r"\1 \2", t)  # 9:30 -> 9 30
    t = re.sub(r"(\d)(am|pm)\b", r"\1 \2", t)
    t = re.sub(r"\b([ap])\.m\.", r"\1m", t)
    t = t.replace("%", " percent").replace("&", " and ")
    t = re.sub(r"\d+", lambda m: " " + _number_words(int(m.group())) + " ", t)
    t = re.sub(r"[^a-z' ]+", " ", t)
    t = re.sub(r"'(?![a-z])|(?<![a-z])'", " ", t)
    words = t.split()
    # Spelling variants a speech recogniser legitimately writes either way.
    same = {"okay": "ok", "o'clock": "oclock", "alright": "all right", "mr": "mister", "dr": "doctor"}
    out: list[str] = []
    for w in words:
        out.extend(same.get(w, w).split())
    return out


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance over words (substitutions, insertions and deletions cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word errors, reference words)."""
    ref = normalize_text(reference)
    return edit_distance(ref, normalize_text(hypothesis)), len(ref)


def wer_summary(pairs: Sequence[tuple[str, str | None, bool]]) -> dict[str, Any]:
    """Corpus WER from (reference, hypothesis or None, noisy) triples: errors / reference words."""

    def rate(items: Sequence[tuple[str, str | None, bool]]) -> dict[str, Any]:
        errors = words = 0
        for ref, hyp, _ in items:
            e, n = word_errors(ref, hyp or "")
            errors += e
            words += n
        return {"wer": round(errors / words, 4) if words else None, "errors": errors, "words": words,
                "utterances": len(items)}

    return {
        "overall": rate(pairs),
        "clean": rate([p for p in pairs if not p[2]]),
        "noisy": rate([p for p in pairs if p[2]]),
    }


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
        return r.read()


@dataclass
class ServerProcess:
    """A server started as a subprocess (its output in a log file), ready once ``ready_url`` answers."""

    name: str
    cmd: list[str]
    ready_url: str
    log_path: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None
    started_in_s: float | None = None
    _log: Any = field(default=None, repr=False)
    _t0: float = 0.0

    def start(self, timeout: float = 180.0) -> None:
        """Launch and wait until ready."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process without waiting for it (several servers can start side by side)."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
        if self.env:
            env.update(self.env)
        self._t0 = time.monotonic()
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            self.cmd, cwd=PROJECT_ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Until ``ready_url`` answers; raises (after stopping the process) if it exits or times out."""
        assert self.proc is not None, "launch() first"
        t0 = self._t0
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.proc.returncode} during start-up; log: {self.log_path}\n"
                    + self.log_tail()
                )
            try:
                http_get(self.ready_url, timeout=1.0)
                break
            except Exception:
                pass
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; log: {self.log_path}\n" + self.log_tail())
            time.sleep(0.2)
        self.started_in_s = round(time.monotonic() - t0, 2)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (a graceful shutdown: calls are closed and stored), then SIGKILL after ``timeout``."""
        code = None
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                code = self.proc.wait(10)
        elif self.proc is not None:
            code = self.proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code


@contextlib.contextmanager
def running(server: ServerProcess, timeout: float = 180.0) -> Iterator[ServerProcess]:
    server.start(timeout)
    try:
        yield server
    finally:
        server.stop()


def without_end_call(pipeline: str, folder: Path) -> Path | str:
    """``pipeline`` (a name or a file) without ``tools.end_call``, as a YAML file in ``folder``;
    ``pipeline`` itself when it declares no such tool."""
    import yaml

    from voicecore.config import load_pipeline, resolve_pipeline_path

    config = load_pipeline(resolve_pipeline_path(pipeline))
    if config.tools.end_call is None:
        return pipeline
    data = config.model_dump(mode="json", exclude_none=True)
    data["tools"].pop("end_call", None)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{data['name']}-no-end-call.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class VoicecoreServer:
    """``voicecore serve`` in a subprocess on 127.0.0.1, with a fresh data directory and one tenant.

    The tenant (``bench``) has :data:`BENCH_POLICY_YAML`; its API key goes in Twilio's
    ``start.customParameters.token``. Stored calls are read back through ``store``.
    """

    def __init__(self, work_dir: Path, *, pipeline: str = "receptionist", log_name: str = "voicecore-serve.log",
                 data_name: str = "voicecore-data", database_url: str | None = None,
                 end_call: bool = False):  # fmt: skip
        """``database_url``: PostgreSQL instead of the data directory's SQLite file (the tenant then
        gets a name of its own, ``bench-<hex>``: the database may hold an earlier run's).
        ``end_call`` False serves the pipeline without its ``end_call`` tool: a corpus caller's
        "that is all, thank you" would otherwise hang up before the rest of the call's utterances."""
        import secrets

        if not end_call:
            pipeline = str(without_end_call(pipeline, work_dir))

        from voicecore.storage import Store

        self.data_dir = work_dir / data_name
        self.store = Store(self.data_dir, database_url=database_url)
        self.tenant = f"bench-{secrets.token_hex(4)}" if database_url else "bench"
        self.api_key = self.store.tenants.create(self.tenant, policy_yaml=BENCH_POLICY_YAML, actor="bench")
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws/twilio"
        self.process = ServerProcess(
            "voicecore serve",
            [sys.executable, "-m", "voicecore", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", str(self.data_dir), "--pipeline", pipeline],
            f"{self.base_url}/healthz",
            work_dir / log_name,
            # the URL (and its password) in the environment, not on a command line others can list
            env={"VOICECORE_DATABASE_URL": database_url} if database_url else None,
        )

    def __enter__(self) -> VoicecoreServer:
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.stop()
        self.store.close()

    @property
    def pid(self) -> int:
        return self.process.pid


# --------------------------------------------------------------------------- process CPU and memory


class ProcessSampler:
    """Samples a process's CPU (% of one core, children included) and RSS every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.5):
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float, float, float]] = []  # (t, cpu %, rss MB, system cpu %)
        self._task: asyncio.Task | None = None

    @staticmethod
    def _proc_times(pid: int) -> tuple[float, float]:
        """(process cpu seconds, rss MB) from /proc, for when psutil is not installed."""
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(parts[11]) + int(parts[12])) / ticks
        with open(f"/proc/{pid}/statm") as f:
            rss_pages = int(f.read().split()[1])
        return cpu, rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    @staticmethod
    def _system_busy() -> tuple[float, float]:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return float(sum(vals) - idle), float(sum(vals))

    def rss_mb(self) -> float:
        try:
            import psutil

            return psutil.Process(self.pid).memory_info().rss / 2**20
        except ImportError:
            return self._proc_times(self.pid)[1]

    async def _run(self) -> None:
        try:
            import psutil

            proc = psutil.Process(self.pid)
            proc.cpu_percent(None)
            psutil.cpu_percent(None)
            while True:
                await asyncio.sleep(self.interval)
                self.samples.append((time.monotonic(), proc.cpu_percent(None), proc.memory_info().rss / 2**20,
                                     psutil.cpu_percent(None)))
        except ImportError:
            cpu0, _ = self._proc_times(self.pid)
            busy0, total0 = self._system_busy()
            t0 = time.monotonic()
            while True:
                await asyncio.sleep(self.interval)
                cpu1, rss = self._proc_times(self.pid)
                busy1, total1 = self._system_busy()
                t1 = time.monotonic()
                sys_pct = 100.0 * (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0
                self.samples.append((t1, 100.0 * (cpu1 - cpu0) / (t1 - t0), rss, sys_pct))
                cpu0, busy0, total0, t0 = cpu1, busy1, total1, t1
        except Exception:  # the process ended
            return

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def window(self, t0: float, t1: float) -> dict[str, float | None]:
        sel = [s for s in self.samples if t0 <= s[0] <= t1]
        if not sel:
            return {"cpu_percent_mean": None, "cpu_percent_max": None, "rss_mb_mean": None, "rss_mb_max": None,
                    "system_cpu_percent_mean": None}
        return {
            "cpu_percent_mean": _r(sum(s[1] for s in sel) / len(sel)),
            "cpu_percent_max": _r(max(s[1] for s in sel)),
            "rss_mb_mean": _r(sum(s[2] for s in sel) / len(sel)),
            "rss_mb_max": _r(max(s[2] for s in sel)),
            "system_cpu_percent_mean": _r(sum(s[3] for s in sel) / len(sel)),
        }


# --------------------------------------------------------------------------- printing and plots


def text_table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [[_cell(c) for c in r] for r in rows]
    widths = [max(len(str(r[i])) for r in [header, *cells]) for i in range(len(header))]
    lines = ["  ".join(str(h).rjust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}" if abs(v) < 1 else f"{v:.1f}"
    return str(v)


def stats_row(label: str, s: dict[str, Any]) -> list[Any]:
    return [label, s.get("n"), s.get("p50"), s.get("p95"), s.get("max")]


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (the ``bench`` extra installs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path.name
