"""``voicecore bench latency``: turn latency and word error rate over the Twilio protocol.

The corpus (``corpus.py``) is played in real time by :class:`~voicecore.testing.callers.TwilioClient` to a real
``voicecore serve`` subprocess on 127.0.0.1, a few utterances per call; after each
utterance the caller waits for the agent's answer to finish playing, then pauses.

Per turn:

- **voice-to-voice** (client clock): end of caller speech — the last voiced sample of the
  utterance, by energy, mapped to the time the frame holding it was sent — to the first
  agent media message received after it;
- **server stages** (from the stored call record's turn timelines, ``store.calls.get``):
  STT final, LLM first token, first clause, first audio out, in ms after the *server's*
  end of speech (the arrival of the last audio frame its VAD judged voiced);
- **speech-end skew**: the server's end of speech minus the client's, on the shared wall
  clock (server end of speech = the caller turn's ``started_at`` − its ``stt_final``
  offset). ``client_aligned_ms`` = server stage + skew: the stages on the same origin as
  voice-to-voice. Noise judged voiced by the VAD makes the skew positive;
- the transcript stored for the turn, for the word error rate against the corpus text.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    VoicecoreServer,
    envelope,
    output_dir,
    pyplot,
    save_figure,
    stats,
    stats_row,
    text_table,
    wer_summary,
    word_errors,
    write_json,
)
from benchmarks.corpus import CORPUS, SAMPLE_RATE, SMOKE_IDS, Utterance, load_corpus
from voicecore.testing.callers import AgentMedia, TwilioClient, wait_stored_call
from voicecore.testing.callers import Utterance as Spoken

STAGES = ("stt_final", "llm_first_token", "first_clause", "first_audio_out")
STAGE_LABELS = {
    "voice_to_voice": "voice-to-voice (client)",
    "stt_final": "STT final",
    "llm_first_token": "LLM first token",
    "first_clause": "first clause",
    "first_audio_out": "first audio out",
    "greeting": "greeting after start",
}
ANSWER_TIMEOUT_S = 15.0


# --------------------------------------------------------------------------- one call


@dataclass
class PlayedTurn:
    utterance: Utterance
    spoken: Spoken
    answer: AgentMedia | None
    window_end: float  # monotonic: the next utterance's onset (or the hang-up)


@dataclass
class PlayedCall:
    system: str
    index: int
    caller: TwilioClient
    greeting: AgentMedia | None
    turns: list[PlayedTurn] = field(default_factory=list)
    started_at: float = 0.0
    ended_at: float = 0.0
    closed_early: bool = False  # the server ended the call before the caller was done
    skipped: list[Utterance] = field(default_factory=list)  # not played: the call had ended


async def _first(done: asyncio.Event, closed: asyncio.Event, timeout: float) -> bool:
    """Wait until ``done`` (True) or ``closed`` / the timeout (False)."""
    waits = [asyncio.ensure_future(done.wait()), asyncio.ensure_future(closed.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    return done.is_set()


async def play_call(system: str, index: int, ws_url: str, token: str | None, utterances: list[Utterance], *,
                    answer_timeout: float = ANSWER_TIMEOUT_S, pause: tuple[float, float] = (0.5, 1.0),
                    rng: random.Random | None = None) -> PlayedCall:
    """One call: wait for the greeting, then each utterance, each time until the answer has played."""
    rng = rng or random.Random(index)
    caller = TwilioClient(ws_url, token=token, label=f"{system}-{index}")
    call = PlayedCall(system, index, caller, None, started_at=time.monotonic())
    await caller.start()
    assert caller.opened_at is not None
    call.greeting = await caller.wait_media_after(caller.opened_at, 20.0)
    await caller.wait_agent_quiet(quiet=0.8, timeout=30.0)
    pending: PlayedTurn | None = None
    for utt in utterances:
        if caller.closed.is_set():
            call.closed_early = True
            break
        spoken = caller.speak(utt.samples, rate=SAMPLE_RATE, voiced=(utt.voiced_start, utt.voiced_end), label=utt.id)
        if not await _first(spoken.done, caller.closed, utt.seconds + 30) or spoken.speech_end_at is None:
            call.closed_early = True  # the server closed the call (or the microphone stalled)
            break
        if pending is not None:
            pending.window_end = spoken.onset_sent_at or spoken.queued_at
        remaining = answer_timeout - (time.monotonic() - spoken.speech_end_at)
        answer = await caller.wait_media_after(spoken.speech_end_at, max(0.0, remaining))
        if answer is not None and answer.t - spoken.speech_end_at > answer_timeout:
            answer = None
        turn = PlayedTurn(utt, spoken, answer, float("inf"))
        call.turns.append(turn)
        pending = turn
        await caller.wait_agent_quiet(quiet=0.8, timeout=30.0)
        await asyncio.sleep(rng.uniform(*pause))
    call.skipped = utterances[len(call.turns):]
    call.ended_at = time.monotonic()
    if pending is not None:
        pending.window_end = call.ended_at
    await caller.hangup()
    return call


# --------------------------------------------------------------------------- per-turn results


def client_turn(call: PlayedCall, turn: PlayedTurn) -> dict[str, Any]:
    """What the caller measured for one turn, and the corpus facts."""
    sp = turn.spoken
    v2v = None
    if turn.answer is not None and sp.speech_end_at is not None:
        v2v = round((turn.answer.t - sp.speech_end_at) * 1000, 1)
    return {
        "system": call.system,
        "call": call.index,
        **{k: v for k, v in turn.utterance.describe().items() if k != "id"},
        "utterance": turn.utterance.id,
        "answered": turn.answer is not None,
        "voice_to_voice_ms": v2v,
        "transcript": None,
        "word_errors": None,
        "ref_words": None,
        "server_ms": None,
        "client_aligned_ms": None,
        "speech_end_skew_ms": None,
        "caller_turns": None,  # (from the stored call: voicecore only)
        "rejoined": None,  # a false end of turn inside it was undone (the turn continued)
        "turn_end": None,
        "speculative": None,
    }


def call_rows(call: PlayedCall) -> list[dict[str, Any]]:
    """One row per utterance of the call: the played turns, then those the call ended before."""
    rows = [client_turn(call, t) for t in call.turns]
    for utt in call.skipped:
        rows.append({"system": call.system, "call": call.index,
                     **{k: v for k, v in utt.describe().items() if k != "id"}, "utterance": utt.id,
                     "answered": False, "voice_to_voice_ms": None, "transcript": None, "word_errors": None,
                     "ref_words": None, "server_ms": None, "client_aligned_ms": None, "speech_end_skew_ms": None,
                     "caller_turns": None, "rejoined": None, "turn_end": None, "speculative": None})
    return rows


def attach_stored(call: PlayedCall, rows: list[dict[str, Any]], stored: Any) -> None:
    """Fill in each turn's transcript and server stages from the stored call record.

    A stored turn belongs to the utterance whose window (its onset → the next
    utterance's onset, on the wall clock) holds the turn's ``started_at``. Caller
    turns in the window are the transcript; the last agent reply in it is the answer.
    """
    if stored is None or stored.turns is None:
        return
    call.speculation = (stored.flags or {}).get("speculation")  # type: ignore[attr-defined]
    callers = [t for t in stored.turns if t.role == "caller"]
    replies = [t for t in stored.turns if t.role == "agent" and t.kind == "reply" and t.timeline]
    for turn, row in zip(call.turns, rows):
        sp = turn.spoken
        start = sp.wall(sp.onset_sent_at or sp.queued_at)
        end = sp.wall(turn.window_end) if turn.window_end != float("inf") else float("inf")
        assert start is not None and end is not None
        mine = [t for t in callers if t.started_at is not None and start <= t.started_at < end]
        row["transcript"] = " ".join((t.text or "").strip() for t in mine).strip()
        row["caller_turns"] = len(mine)  # more than one: the utterance was cut into turns (a false end of turn)
        # a turn ended inside it and the caller's speech again rejoined it (one caller turn, answered once)
        row["rejoined"] = any((t.timeline or {}).get("rejoined") for t in mine)
        errors, words = word_errors(turn.utterance.text, row["transcript"])
        row["word_errors"], row["ref_words"] = errors, words
        answer = [t for t in replies if t.started_at is not None and start <= t.started_at < end]
        if not answer:
            continue
        tl = answer[-1].timeline
        row["server_ms"] = {s: tl.get(s) for s in STAGES}
        row["server_ms"]["voice_to_voice"] = tl.get("voice_to_voice_ms")
        row["turn_end"] = tl.get("turn_end")  # smart-turn, semantic or silence
        row["speculative"] = bool(tl.get("speculative"))  # the reply was started at the pause and released
        if mine and mine[-1].timeline and mine[-1].timeline.get("stt_final") is not None and sp.speech_end_at:
            server_end_wall = mine[-1].started_at - mine[-1].timeline["stt_final"] / 1000
            skew = round((server_end_wall - sp.wall(sp.speech_end_at)) * 1000, 1)
            row["speech_end_skew_ms"] = skew
            row["client_aligned_ms"] = {s: (None if tl.get(s) is None else round(tl[s] + skew, 1)) for s in STAGES}


def summarise(rows: list[dict[str, Any]], calls: list[PlayedCall]) -> dict[str, Any]:
    greetings = [
        round((c.greeting.t - c.caller.opened_at) * 1000, 1)
        for c in calls if c.greeting is not None and c.caller.opened_at is not None
    ]
    wer_pairs = [(r["text"], r["transcript"], r["noise"] is not None) for r in rows if r["transcript"] is not None]
    return {
        "turns": len(rows),
        "answered": sum(1 for r in rows if r["answered"]),
        "unanswered": sum(1 for r in rows if not r["answered"]),
        "voice_to_voice_ms": stats([r["voice_to_voice_ms"] for r in rows]),
        "server_stages_ms": {s: stats([(r["server_ms"] or {}).get(s) for r in rows]) for s in STAGES},
        "client_aligned_stages_ms": {s: stats([(r["client_aligned_ms"] or {}).get(s) for r in rows]) for s in STAGES},
        "speech_end_skew_ms": stats([r["speech_end_skew_ms"] for r in rows]),
        "greeting_ms": stats(greetings),
        "wer": wer_summary(wer_pairs) if wer_pairs else None,
        "protocol_errors": sorted({e for c in calls for e in c.caller.violations})[:20],
        "client_late_frames": sum(c.caller.late_sends for c in calls),
        "calls_closed_early": sum(1 for c in calls if c.closed_early),
        "turns_cut": sum(1 for r in rows if (r.get("caller_turns") or 0) > 1),
        "turns_rejoined": sum(1 for r in rows if r.get("rejoined")),
        "turn_end": turn_end_summary(rows),
        "speculation": speculation_summary(rows, calls),
    }


def turn_end_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Voice-to-voice by what ended the caller's turn (smart-turn, semantic, silence)."""
    reasons = sorted({r.get("turn_end") for r in rows if r.get("turn_end")})
    return {reason: {"turns": sum(1 for r in rows if r.get("turn_end") == reason),
                     "voice_to_voice_ms": stats([r["voice_to_voice_ms"] for r in rows if r.get("turn_end") == reason])}
            for reason in reasons}  # fmt: skip


def speculation_summary(rows: list[dict[str, Any]], calls: list[PlayedCall]) -> dict[str, Any]:
    """Replies started at a pause: how many were released (used) or dropped (wasted), the model
    time the dropped ones cost, and voice-to-voice of the turns answered by a released reply."""
    totals: dict[str, float] = {}
    for c in calls:
        for key, value in (getattr(c, "speculation", None) or {}).items():
            totals[key] = round(totals.get(key, 0) + value, 1)
    answered = [r for r in rows if r.get("server_ms")]
    return {**totals, "turns_released": sum(1 for r in answered if r.get("speculative")),
            "turns_with_server_timeline": len(answered),
            "voice_to_voice_ms_released": stats([r["voice_to_voice_ms"] for r in answered if r.get("speculative")]),
            "voice_to_voice_ms_not_released": stats([r["voice_to_voice_ms"] for r in answered
                                                     if not r.get("speculative")])}  # fmt: skip


def summary_table(summary: dict[str, Any], title: str = "") -> str:
    rows = [stats_row(STAGE_LABELS["voice_to_voice"], summary["voice_to_voice_ms"])]
    for s in STAGES:
        rows.append(stats_row(f"{STAGE_LABELS[s]} (server)", summary["server_stages_ms"][s]))
    rows.append(stats_row("speech-end skew", summary["speech_end_skew_ms"]))
    rows.append(stats_row(STAGE_LABELS["greeting"], summary["greeting_ms"]))
    out = ([title] if title else []) + [text_table(["ms", "n", "p50", "p95", "max"], rows)]
    w = summary.get("wer")
    if w:
        def pct(x: dict[str, Any]) -> str:
            return "—" if x["wer"] is None else f"{100 * x['wer']:.1f}%"

        out.append(f"STT word error rate: {pct(w['overall'])} over {w['overall']['words']} words "
                   f"(clean {pct(w['clean'])}, noisy {pct(w['noisy'])})")
    for reason, by in (summary.get("turn_end") or {}).items():
        out.append(f"turns ended by {reason}: {by['turns']}, voice-to-voice p50 {by['voice_to_voice_ms']['p50']} ms")
    spec = summary.get("speculation") or {}
    if spec.get("started"):
        out.append(f"speculative replies: {spec.get('started', 0):.0f} started, {spec.get('used', 0):.0f} used, "
                   f"{spec.get('wasted', 0):.0f} wasted ({spec.get('wasted_model_ms', 0):.0f} ms of model time), "
                   f"{spec.get('skipped_busy', 0):.0f} skipped (model busy); first-clause audio prepared "
                   f"{spec.get('audio_prepared', 0):.0f}, spoken {spec.get('audio_spoken', 0):.0f}")
    out.append(f"turns answered: {summary['answered']}/{summary['turns']}; utterances cut into several turns: "
               f"{summary.get('turns_cut', 0)}; false ends of turn undone (the turn rejoined): "
               f"{summary.get('turns_rejoined', 0)}")
    return "\n".join(out)


def plot_latency(rows: list[dict[str, Any]], out: Path, title: str) -> list[str]:
    plt = pyplot()
    names: list[str] = []
    series = [("voice-to-voice", [r["voice_to_voice_ms"] for r in rows if r["voice_to_voice_ms"] is not None])]
    for s in STAGES:
        series.append((STAGE_LABELS[s], [(r["server_ms"] or {}).get(s) for r in rows
                                         if (r["server_ms"] or {}).get(s) is not None]))
    series = [(n, v) for n, v in series if v]
    if series:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.boxplot([v for _, v in series], tick_labels=[n for n, _ in series], orientation="horizontal",
                   showfliers=True)
        ax.set_xlabel("ms after the end of caller speech")
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
        names.append(save_figure(fig, out / "stages.png"))
    v2v = sorted(r["voice_to_voice_ms"] for r in rows if r["voice_to_voice_ms"] is not None)
    if v2v:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.step(v2v, [(i + 1) / len(v2v) for i in range(len(v2v))], where="post")
        ax.set_xlabel("voice-to-voice (ms)")
        ax.set_ylabel("fraction of turns")
        ax.set_title(f"{title}: voice-to-voice CDF")
        ax.grid(alpha=0.3)
        names.append(save_figure(fig, out / "voice_to_voice_cdf.png"))
    return names


# --------------------------------------------------------------------------- the benchmark


def split_calls(utterances: list[Utterance], per_call: int) -> list[list[Utterance]]:
    return [utterances[i : i + per_call] for i in range(0, len(utterances), per_call)]


async def run_voicecore_calls(server: VoicecoreServer, groups: list[list[Utterance]], *,
                              first_index: int = 0) -> tuple[list[PlayedCall], list[dict[str, Any]]]:
    calls: list[PlayedCall] = []
    rows: list[dict[str, Any]] = []
    for i, group in enumerate(groups):
        call, these = await voicecore_call(server, first_index + i, group)
        calls.append(call)
        rows += these
    return calls, rows


async def voicecore_call(server: VoicecoreServer, index: int, group: list[Utterance]
                         ) -> tuple[PlayedCall, list[dict[str, Any]]]:
    call = await play_call("voicecore", index, server.ws_url, server.api_key, group)
    rows = call_rows(call)
    stored = await wait_stored_call(server.store, server.tenant, call.caller.ids, timeout=20, with_turns=True, actor="bench")
    attach_stored(call, rows, stored)
    return call, rows


def run(*, smoke: bool = False, out: str | Path | None = None, per_call: int = 4, pipeline: str = "receptionist",
        utterances: list[str] | None = None, remote_llm: bool = False) -> tuple[dict[str, Any], Path]:
    """Run the latency benchmark; returns the JSON document and the output folder. ``remote_llm``:
    then the same corpus again with the pipeline's LLM on an OpenAI-compatible server
    (llama-cpp-python's, same GGUF, on 127.0.0.1), and the ratio of the two."""
    return asyncio.run(_run(smoke=smoke, out=out, per_call=per_call, pipeline=pipeline, utterances=utterances,
                            remote_llm=remote_llm))


def remote_pipeline_file(pipeline: str, endpoint: str, model: str, folder: Path) -> Path:
    """``pipeline`` with its LLM at ``endpoint`` (declared ``location: local``), as a YAML file."""
    import yaml

    from voicecore.config import load_pipeline, resolve_pipeline_path

    data = load_pipeline(resolve_pipeline_path(pipeline)).model_dump(mode="json", exclude_none=True)
    data["name"] = f"{data['name']}-remote-llm"
    data["models"]["llm"] = {"endpoint": endpoint, "model": model, "location": "local"}
    path = folder / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


async def _run(*, smoke: bool, out: str | Path | None, per_call: int, pipeline: str,
               utterances: list[str] | None, remote_llm: bool = False) -> tuple[dict[str, Any], Path]:
    started = time.time()
    folder = output_dir("latency", out)
    ids = list(SMOKE_IDS) if smoke else (utterances or [s.id for s in CORPUS])
    corpus = load_corpus(ids)
    groups = split_calls(corpus, 2 if smoke else per_call)
    doc = envelope("latency", smoke=smoke, started=started, config={
        "pipeline": pipeline, "utterances": len(corpus), "calls": len(groups), "utterances_per_call": len(groups[0]),
        "answer_timeout_s": ANSWER_TIMEOUT_S, "server": "voicecore serve (subprocess)", "remote_llm": remote_llm,
    })
    doc["corpus"] = [u.describe() for u in corpus]
    with VoicecoreServer(folder, pipeline=pipeline) as server:
        doc["config"]["server_start_s"] = server.process.started_in_s
        calls, rows = await run_voicecore_calls(server, groups)
    doc["summary"] = summarise(rows, calls)
    doc["turns"] = rows
    doc["plots"] = plot_latency(rows, folder, "voicecore")
    if remote_llm:
        from voicecore.testing.inference import LlamaCppServer

        with LlamaCppServer(folder / "llama-server.log") as llm:
            path = remote_pipeline_file(pipeline, llm.url, llm.alias, folder)
            with VoicecoreServer(folder, pipeline=str(path), log_name="voicecore-serve-remote-llm.log",
                                 data_name="voicecore-data-remote-llm") as server:  # fmt: skip
                r_calls, r_rows = await run_voicecore_calls(server, groups)
            requests = llm.completions()
        r_summary = summarise(r_rows, r_calls)
        local_v2v, remote_v2v = doc["summary"]["voice_to_voice_ms"], r_summary["voice_to_voice_ms"]
        doc["remote_llm"] = {
            "server": "python -m llama_cpp.server (same GGUF, 127.0.0.1)", "pipeline_file": path.name,
            "server_start_s": llm.started_in_s, "chat_completions": requests, "summary": r_summary, "turns": r_rows,
            "ratio_remote_to_in_process": {
                "voice_to_voice_p50": ratio(remote_v2v["p50"], local_v2v["p50"]),
                "voice_to_voice_p95": ratio(remote_v2v["p95"], local_v2v["p95"]),
                "llm_first_token_p50": ratio(r_summary["server_stages_ms"]["llm_first_token"]["p50"],
                                             doc["summary"]["server_stages_ms"]["llm_first_token"]["p50"]),
            },
        }  # fmt: skip
    doc["duration_s"] = round(time.time() - started, 1)
    write_json(folder / "latency.json", doc)
    return doc, folder


def report(doc: dict[str, Any]) -> str:
    out = summary_table(doc["summary"], "voicecore turn latency (ms after the end of caller speech)")
    remote = doc.get("remote_llm")
    if remote:
        out += "\n\n" + summary_table(remote["summary"], "the same, LLM on an OpenAI-compatible server (llama_cpp.server)")
        r = remote["ratio_remote_to_in_process"]
        out += (f"\nremote / in process: voice-to-voice p50 x{r['voice_to_voice_p50']}, p95 x{r['voice_to_voice_p95']}, "
                f"LLM first token p50 x{r['llm_first_token_p50']} ({remote['chat_completions']} chat completions served)")
    return out
