"""``voicecore bench ...``: latency, side by side, concurrency, overhead, outbound, dialogue and endpointing.

Each verb is a thin call into ``benchmarks/<name>.py``'s ``run()`` (the same function
the smoke tests call): it prints a table and writes ``<name>.json`` and PNG plots to
``--out`` (default ``benchmarks/results/<name>-<timestamp>/``). ``--smoke`` runs a
seconds-long version with the same output schema. The benchmarks live in the checkout's
``benchmarks/`` folder (see its README.md) and need the ``bench`` extra (matplotlib,
psutil, ``llama-cpp-python[server]``) and espeak-ng and sox.

"""

from __future__ import annotations

import importlib
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from voicecore.config import PROJECT_ROOT


def _benchmark(name: str) -> ModuleType:
    """``benchmarks.<name>`` from the checkout (the folder is not part of the installed package)."""
    if not (PROJECT_ROOT / "benchmarks" / "__init__.py").exists():
        raise click.ClickException(f"the benchmarks need a voicecore checkout ({PROJECT_ROOT / 'benchmarks'} not found)")
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    try:
        return importlib.import_module(f"benchmarks.{name}")
    except ImportError as e:
        raise click.ClickException(f"cannot load benchmarks.{name}: {e} (pip install -e '.[bench]')") from None


def _finish(module: ModuleType, doc: dict[str, Any], folder: Path) -> None:
    click.echo(module.report(doc))
    click.echo(f"\nResults: {folder / (doc['benchmark'] + '.json')}")
    for plot in doc.get("plots") or []:
        click.echo(f"Plot:    {folder / plot}")


def _run(name: str, **kwargs: Any) -> None:
    module = _benchmark(name)
    try:
        doc, folder = module.run(**kwargs)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None
    _finish(module, doc, folder)


def out_option(f):
    return click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="Output folder (default: benchmarks/results/<name>-<timestamp>/).")(f)


def smoke_option(f):
    return click.option("--smoke", is_flag=True,
                        help="A seconds-long run with the same output schema (CI; figures are not meaningful).")(f)


@click.group()
def bench() -> None:
    """Benchmarks on the embedded default models, over the Twilio protocol on 127.0.0.1.

    \b
    latency      per-stage turn latency, voice-to-voice and STT word error rate
    compare      the same corpus against a stock Pipecat pipeline, as voicecore/Pipecat ratios
    concurrency  N simultaneous callers: voice-to-voice, CPU, RSS, late audio (--database-url:
                 on PostgreSQL, and what it adds per turn against SQLite)
    overhead     instant fake models: what the runtime itself adds per turn
    outbound     campaign calls through a fake Twilio API: answer → greeting p50/p95
    dialogue     scripted text conversations scored against the pipeline's facts and calendar
    endpointing  end-of-speech error per speech detector in street/office/line noise (turn detector only)
    """


@bench.command()
@smoke_option
@out_option
@click.option("--per-call", default=4, show_default=True, help="Utterances per call.")
@click.option("--pipeline", default="receptionist", show_default=True, help="Agent the server answers with.")
@click.option("--remote-llm", is_flag=True,
              help="Then again with the LLM on an OpenAI-compatible server (llama_cpp.server, same GGUF) and "
                   "print the ratio.")
def latency(smoke: bool, out: Path | None, per_call: int, pipeline: str, remote_llm: bool) -> None:
    """Turn latency per stage and voice-to-voice (p50/p95/max), and STT word error rate."""
    _run("latency", smoke=smoke, out=out, per_call=per_call, pipeline=pipeline, remote_llm=remote_llm)


@bench.command()
@smoke_option
@out_option
@click.option("--per-call", default=4, show_default=True, help="Utterances per call.")
def compare(smoke: bool, out: Path | None, per_call: int) -> None:
    """voicecore against a stock Pipecat pipeline on the same models, call by call, as ratios."""
    _run("compare", smoke=smoke, out=out, per_call=per_call)


@bench.command()
@smoke_option
@out_option
@click.option("--levels", default="1,2,4,8,12,16", show_default=True, help="Numbers of simultaneous callers.")
@click.option("--window", "window_s", default=40.0, show_default=True, type=float,
              help="Seconds of calling per level.")
@click.option("--target-ms", default=1500.0, show_default=True, type=float,
              help="The voice-to-voice p95 a level must stay under to count as sustained.")
@click.option("--database-url", default=None, metavar="URL",
              help="PostgreSQL (postgresql://user:password@host:port/db, a scratch database) the server stores on; "
                   "adds what it costs per turn against SQLite (store time per turn, p50/p95; target <= 5 ms at "
                   "p95). The master key is $VOICECORE_MASTER_KEY (else one made up for the run).")
@click.option("--calls", default=8, show_default=True, type=click.IntRange(min=1),
              help="With --database-url: simultaneous calls timed on each database (instant fake models).")
@click.option("--turns", default=4, show_default=True, type=click.IntRange(min=1),
              help="With --database-url: turns per timed call.")
@click.option("--storage-only", is_flag=True, help="With --database-url: only the storage comparison (no models).")
@click.option("--against", type=click.Choice(["pipecat"]), default=None,
              help="Run the same levels against a stock Pipecat bot on the same models, side by side.")
@click.option("--cpus", default=None, metavar="LIST",
              help="Pin the servers to these cores (taskset -c LIST, e.g. 0 or 0,1).")
def concurrency(smoke: bool, out: Path | None, levels: str, window_s: float, target_ms: float,
                database_url: str | None, calls: int, turns: int, storage_only: bool, against: str | None,
                cpus: str | None) -> None:
    """N simultaneous Twilio callers: voice-to-voice p50/p95, CPU, RSS per call, late audio.

    With --database-url: on that PostgreSQL database, and what it adds per turn against SQLite."""
    if storage_only and not database_url:
        raise click.BadParameter("--storage-only compares databases: give --database-url", param_hint="--storage-only")
    try:
        ns = [int(x) for x in levels.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"not a comma-separated list of integers: {levels!r}", param_hint="--levels") from None
    if not ns or min(ns) < 1:
        raise click.BadParameter("levels must be positive integers", param_hint="--levels")
    if cpus is not None and not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", cpus):
        raise click.BadParameter(f"not a core list like 0 or 0,1 or 0-3: {cpus!r}", param_hint="--cpus")
    if cpus is not None and shutil.which("taskset") is None:
        raise click.BadParameter("taskset is not installed (util-linux)", param_hint="--cpus")
    _run("concurrency", smoke=smoke, out=out, levels=ns, window_s=window_s, target_ms=target_ms,
         database_url=database_url, calls=calls, turns=turns, storage_only=storage_only, against=against, cpus=cpus)


@bench.command()
@smoke_option
@out_option
@click.option("--turns", default=20, show_default=True, help="Caller turns to time.")
def overhead(smoke: bool, out: Path | None, turns: int) -> None:
    """Instant fake models: the time the runtime itself adds per turn (p50/p95)."""
    _run("overhead", smoke=smoke, out=out, turns=turns)


@bench.command()
@smoke_option
@out_option
@click.option("--calls", default=10, show_default=True, type=click.IntRange(min=1), help="Campaign calls to time.")
@click.option("--max-concurrent", default=1, show_default=True, type=click.IntRange(min=1),
              help="Calls at once (1: latency, not contention).")
def outbound(smoke: bool, out: Path | None, calls: int, max_concurrent: int) -> None:
    """Dial-to-greeting of campaign calls (answer → first agent audio), through a fake Twilio REST API."""
    _run("outbound", smoke=smoke, out=out, calls=calls, max_concurrent=max_concurrent)


@bench.command()
@smoke_option
@out_option
@click.option("--pipeline", "pipelines", multiple=True, metavar="NAME",
              help="A dialogue set: benchmarks/dialogues/NAME.yaml, or a path (repeatable; default: every set).")
def dialogue(smoke: bool, out: Path | None, pipelines: tuple[str, ...]) -> None:
    """Scripted text calls (the road of `voicecore chat`) scored against the pipeline's facts.

    Fact accuracy, answers as expected, booking success (the event in the calendar file), messages
    and transfers taken when asked, turns per booking, and the latency voicecore's agent logic adds
    per turn. Each call runs at the set's fixed date with a fresh calendar."""
    _run("dialogue", smoke=smoke, out=out, pipelines=list(pipelines) or None)


def _csv(value: str, param: str, kind: type = str) -> list:
    try:
        items = [kind(x.strip()) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"not a comma-separated list of {kind.__name__}: {value!r}",
                                 param_hint=param) from None
    if not items:
        raise click.BadParameter("give at least one", param_hint=param)
    return items


@bench.command()
@smoke_option
@out_option
@click.option("--vad", "detectors", default="silero,webrtc,webrtc+noise-floor", show_default=True,
              help="Speech detectors to compare (turn_taking.vad values).")
@click.option("--noise", "noises", default="street,office,line", show_default=True,
              help="Noise kinds mixed under the corpus (benchmarks/noise.py); 'none' for the corpus alone.")
@click.option("--snr", "snrs", default="5,10,20", show_default=True, help="Signal-to-noise ratios (dB).")
@click.option("--corpus/--no-corpus", default=True, show_default=True,
              help="Also the bench latency corpus as played there (clean and noisy halves).")
@click.option("--smart-turn/--no-smart-turn", default=True, show_default=True,
              help="Ask smart-turn v3 at pauses, as the pipeline does.")
@click.option("--smart-turn-ms", default=100.0, show_default=True, type=click.FloatRange(min=0),
              help="Audio time after a pause at which smart-turn's answer lands (its inference time).")
@click.option("--wideband", is_flag=True, help="Skip the phone line (8 kHz μ-law) the streams go through by default.")
@click.option("--pipeline", default="receptionist", show_default=True, help="Agent whose turn_taking is used.")
@click.option("--barge-in/--no-barge-in", default=True, show_default=True,
              help="Also every stream with the agent talking: barge-in onset, missed and false barge-ins.")
@click.option("--echo-erl", "echo_erls", default="20,30,40", show_default=True,
              help="Barge-in over the agent's own echo, this many dB under it ('none': no echo streams).")
def endpointing(smoke: bool, out: Path | None, detectors: str, noises: str, snrs: str, corpus: bool,
                smart_turn: bool, smart_turn_ms: float, wideband: bool, pipeline: str, barge_in: bool,
                echo_erls: str) -> None:
    """End-of-speech error and false ends of turn per speech detector, in street/office/line noise;
    barge-in onset and false barge-ins with the agent talking.

    Runs only the turn detector on the audio (no STT, LLM or server): seconds per condition."""
    kinds = [] if noises.strip() == "none" else _csv(noises, "--noise")
    erls = [] if echo_erls.strip() == "none" else _csv(echo_erls, "--echo-erl", float)
    _run("endpointing", smoke=smoke, out=out, detectors=_csv(detectors, "--vad"), noises=kinds,
         snrs=_csv(snrs, "--snr", float), corpus=corpus, smart_turn=smart_turn, smart_turn_ms=smart_turn_ms,
         phone=not wideband, pipeline=pipeline, barge_in=barge_in, echo_erls=erls)
