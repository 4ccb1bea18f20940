"""``voicecore bench endpointing``: where each speech detector puts the end of speech, in noise.

Only the turn detector runs (``voicecore.services.vad.TurnDetector``: the speech detector,
the turn bookkeeping and smart-turn v3 at pauses, exactly as a call runs them) — no STT,
LLM, TTS or server — on audio fed in 20 ms chunks, faster than real time; every decision
is counted in audio samples, so the figures do not depend on the machine's load (the CPU
cost per second of audio does).

Conditions (one audio stream each, the utterances in corpus order):

- ``<noise> <snr> dB`` for noise in street / office / line (``noise.py``) and each SNR: the
  corpus's 24 utterances *without* their noise, each brought to the same active speech
  level (−26 dBFS), ``LEAD_S`` of noise first and ``GAP_S`` of noise after each utterance,
  one noise track under the whole stream (``sox -m``) at the SNR;
- ``corpus clean`` / ``corpus noisy``: the ``bench latency`` corpus as it is played there
  (16 clean utterances; the 8 with their own white/pink/brown noise), each file then
  ``GAP_S`` of digital silence (the Twilio caller sends silence between utterances).

By default every stream then goes through the phone line the latency benchmark uses
(16 kHz → 8 kHz μ-law → 16 kHz, the runtime's codec and resampler). The true end of each
utterance's speech is known from its clean speech (``corpus.py``: the last 10 ms window
over RMS 300 before any noise is added). Per utterance:

- **end-of-speech error** = the detected end of speech of the turn that holds the
  utterance's end (the end of its last voiced frame, what a turn's timeline records)
  − the true end. A turn still open when the next utterance begins (the detector never
  heard the speech stop) is **unended** and counts at the gap (``GAP_S`` + the file's
  tail): a censored value;
- **end of turn** = when the turn was declared over (smart-turn at a pause, its answer
  landing ``SMART_TURN_MS`` of audio after the pause and counting only if the caller is
  still in that pause, as in a call; or ``end_of_turn_silence_ms`` of silence; the
  transcript cue needs the STT and is not used here) − the true end;
- **onset** = when the start of speech was declared (what triggers a barge-in) − the
  true start of the utterance's speech;
- **cut** (false end of turn): the utterance heard as more than one turn (each extra
  turn counts); **missed**: no turn heard any of it; **false start**: a turn over noise
  alone, touching no utterance.

**Barge-in** (``--barge-in``, on by default): every stream again, with the agent talking all
along (its Piper voice, ``noise.agent_track``; each 20 ms frame reported to the detector as a
call's output does, ``ECHO_DELAY_MS`` before its echo would come back), so every start of
speech is a barge-in (``turn_taking.barge_in_ms``, the echo floor), and ``echo <ERL> dB``
streams: the clean-speech layout over the agent's own echo ``ERL`` dB under it, with line
noise ``ECHO_LINE_SNR_DB`` under the speech. Per condition: the **barge-in onset** (barge-in
declared − true start of the utterance; one declared from ``BARGE_IN_EARLY_MS`` before the
start to ``BARGE_IN_LATE_MS`` after the end belongs to the utterance), **missed** utterances
(no barge-in of their own) and **false barge-ins** (declared over noise or echo alone: the
agent cut off for nothing). Turns end on silence there (no smart-turn).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    envelope,
    output_dir,
    pyplot,
    save_figure,
    stats,
    text_table,
    write_json,
)
from benchmarks.corpus import (
    CORPUS,
    DEFAULT_CACHE,
    SAMPLE_RATE,
    SMOKE_IDS,
    VOICED_RMS,
    Utterance,
    clean_spec,
    load_utterances,
)
from benchmarks.noise import (
    DESCRIPTIONS,
    KINDS,
    active_level,
    agent_track,
    make_noise,
    mix_at_snr,
    telephone,
)
from voicecore.testing.callers import voiced_bounds

DETECTORS = ("silero", "webrtc", "webrtc+noise-floor")
SNRS = (5.0, 10.0, 20.0)
LEAD_S = 2.0
GAP_S = 3.0
SPEECH_DBFS = -26.0
CHUNK = 320  # 20 ms at 16 kHz: what the runtime's resampler hands the detector per Twilio frame
TARGET_MS = 100.0
# When smart-turn's answer lands after the pause: its inference on one core of the 2-core
# reference machine (whisper features + ONNX, 8 s of audio) is ~100-130 ms.
SMART_TURN_MS = 100.0
# Barge-in: the agent's echo, ERL dB under the agent's audio as sent, comes back ECHO_DELAY_MS after
# the output sent it (its lead of 100-120 ms + the line's round trip), over line noise.
ECHO_ERLS = (20.0, 30.0, 40.0)
ECHO_DELAY_MS = 200.0
ECHO_LINE_SNR_DB = 20.0
# A barge-in belongs to an utterance when declared from this long before its true start (Silero may
# hear a soft onset under the RMS threshold that places the true start) to this long after its end.
BARGE_IN_EARLY_MS = 100.0
BARGE_IN_LATE_MS = 300.0


@dataclass
class Span:
    utterance: str
    noisy: bool  # the corpus utterance carries noise of its own
    start: int  # true voiced bounds, samples in the stream
    end: int
    next_start: int  # the next utterance's start (or the stream's end)


@dataclass
class Stream:
    condition: str
    noise: str | None
    snr_db: float | None
    audio: np.ndarray
    spans: list[Span]
    echo_db: float | None = None  # an echo condition: the agent's echo this far (dB) under the agent


@dataclass
class DetectedTurn:
    start: int  # estimated onset (the start event less speech_start_ms)
    started: int  # when the start of speech was declared (the barge-in trigger)
    voiced_end: int = 0
    end: int | None = None  # when the end of turn was declared
    reason: str = ""
    pauses: int = 0


@dataclass
class Run:
    turns: list[DetectedTurn] = field(default_factory=list)
    detector_s: float = 0.0  # CPU (thread time) spent in the detector
    smart_turn_s: float = 0.0
    smart_turn_calls: int = 0


# --------------------------------------------------------------------------- audio


def _place(length: int, pieces: list[tuple[int, np.ndarray]]) -> np.ndarray:
    out = np.zeros(length, np.float64)
    for offset, x in pieces:
        out[offset: offset + x.size] += x
    return np.clip(out, -32768, 32767).astype(np.int16)


def _layout(utterances: list[Utterance], gain: list[float]) -> tuple[np.ndarray, list[Span]]:
    lead, gap = int(LEAD_S * SAMPLE_RATE), int(GAP_S * SAMPLE_RATE)
    pieces, spans, at = [], [], lead
    for u, g in zip(utterances, gain):
        pieces.append((at, u.samples.astype(np.float64) * g))
        spans.append(Span(u.id, u.noisy, at + u.voiced_start, at + u.voiced_end, 0))
        at += u.samples.size + gap
    for a, b in zip(spans, spans[1:]):
        a.next_start = b.start
    if spans:
        spans[-1].next_start = at
    return _place(at, pieces), spans


def _heard_bounds(clean: np.ndarray, spans: list[Span], phone: bool) -> list[Span]:
    """The true speech bounds as the detector can hear them: measured (as ``corpus.py`` does, 10 ms
    windows over RMS 300) on the clean speech after the same line; the phone band drops the
    hiss of a final "s" over 4 kHz, which no detector on the line can hear."""
    if not phone:
        return spans
    heard = telephone(clean)
    out = []
    for sp in spans:
        lo, hi = max(0, sp.start - SAMPLE_RATE // 2), min(heard.size, sp.end + SAMPLE_RATE // 2)
        try:
            a, b = voiced_bounds(heard[lo:hi], SAMPLE_RATE, threshold=VOICED_RMS, window_ms=10.0)
        except ValueError:
            a, b = sp.start - lo, sp.end - lo
        out.append(Span(sp.utterance, sp.noisy, lo + a, lo + b, sp.next_start))
    return out


def build_streams(ids: list[str] | None, noises: list[str], snrs: list[float], *, corpus: bool = True,
                  phone: bool = True, cache_dir: Path | None = None, agent: Callable[[int], np.ndarray] | None = None,
                  echo_erls: list[float] | None = None) -> list[Stream]:
    """The streams of every condition; with ``echo_erls``, ``agent(n)`` (the agent's track, ``n``
    samples) gives the echo streams too."""
    cache = Path(cache_dir or DEFAULT_CACHE)
    specs = [s for s in CORPUS if ids is None or s.id in ids]
    clean = load_utterances([clean_spec(s) for s in specs], cache)
    streams: list[Stream] = []
    if corpus:
        as_played = load_utterances(specs, cache)
        for noisy in (False, True):
            group = [i for i, u in enumerate(as_played) if u.noisy == noisy]
            if group:
                audio, _ = _layout([as_played[i] for i in group], [1.0] * len(group))
                speech, spans = _layout([clean[i] for i in group], [1.0] * len(group))
                for sp in spans:
                    sp.noisy = noisy
                streams.append(Stream(f"corpus {'noisy' if noisy else 'clean'}", None, None, audio,
                                      _heard_bounds(speech, spans, phone)))
    if noises:
        level = 32768 * 10 ** (SPEECH_DBFS / 20)
        speech, spans = _layout(clean, [level / max(active_level(u.samples), 1.0) for u in clean])
        for sp in spans:
            sp.noisy = True
        spans = _heard_bounds(speech, spans, phone)
        for kind in noises:
            noise = make_noise(kind, speech.size / SAMPLE_RATE, cache)
            for snr in snrs:
                mixed = mix_at_snr(speech, noise, snr, level, cache)
                streams.append(Stream(f"{kind} {snr:g} dB", kind, snr, mixed, [Span(**vars(s)) for s in spans]))
    if echo_erls and agent is not None:
        level = 32768 * 10 ** (SPEECH_DBFS / 20)
        speech, spans = _layout(clean, [level / max(active_level(u.samples), 1.0) for u in clean])
        spans = _heard_bounds(speech, spans, phone)
        delay = int(ECHO_DELAY_MS * SAMPLE_RATE / 1000)
        echo = np.concatenate([np.zeros(delay), agent(speech.size - delay)]).astype(np.float64)
        line = make_noise("line", speech.size / SAMPLE_RATE, cache)
        for erl in echo_erls:
            heard = _place(speech.size, [(0, echo * 10 ** (-erl / 20))])
            under = _place(speech.size, [(0, speech.astype(np.float64)), (0, heard.astype(np.float64))])
            mixed = mix_at_snr(under, line, ECHO_LINE_SNR_DB, level, cache)
            streams.append(Stream(f"echo {erl:g} dB", "echo", None, mixed, [Span(**vars(s)) for s in spans],
                                  echo_db=erl))
    if phone:
        for st in streams:
            st.audio = telephone(st.audio)
    return streams


# --------------------------------------------------------------------------- detection


def detect_turns(audio: np.ndarray, params: Any, silero: Any = None, smart_turn: Any = None,
                 smart_turn_ms: float = SMART_TURN_MS, agent: np.ndarray | None = None) -> Run:
    """Feed ``audio`` to a fresh turn detector in 20 ms chunks. Smart-turn (if given) is asked at
    each pause and its answer lands ``smart_turn_ms`` of audio later, as in a call, where it counts
    only if the caller is still in that pause. ``agent`` (16 kHz, as long as ``audio``): the agent
    talks all along, each 20 ms of it reported to the detector as it is sent (before the caller
    audio at the same offset), so every start of speech is a barge-in."""
    from voicecore.services.vad import TurnDetector, TurnEvent
    from voicecore.services.vad_analyzers import make_analyzer

    # no STT here: no pause transcripts for smart-turn to wait for (end of speech is what is scored)
    params = params.model_copy(update={"smart_turn_reads_transcript": False})
    det = TurnDetector(params, make_analyzer(params, silero))
    det.agent_speaking = agent is not None
    run = Run()
    current: DetectedTurn | None = None
    pending: tuple[int, int, float] | None = None  # smart-turn's answer: (pause id, due sample, p(complete))
    onset_lag = (det.barge_in_samples + det.analyzer.onset_lag_samples if agent is not None
                 else int(params.speech_start_ms * SAMPLE_RATE / 1000)) + det.analyzer.num_frames_required()
    delay = int(smart_turn_ms * SAMPLE_RATE / 1000)

    def close(reason: str) -> None:
        nonlocal current, pending
        if current is not None:
            current.end, current.voiced_end, current.reason = det.samples, det.voiced_end, reason
            current = None
        pending = None
        det.end_turn()

    for off in range(0, audio.size, CHUNK):
        t0 = time.thread_time()
        if agent is not None:
            det.agent_audio(agent[off: off + CHUNK])
        events = det.feed(audio[off: off + CHUNK].tobytes())
        run.detector_s += time.thread_time() - t0
        for ev in events:
            if ev == TurnEvent.SPEECH_STARTED:
                pending = None
                current = DetectedTurn(start=max(0, det.samples - onset_lag), started=det.samples)
                run.turns.append(current)
            elif ev == TurnEvent.SPEECH_RESUMED:
                pending = None
            elif ev == TurnEvent.PAUSE and current is not None:
                current.pauses += 1
                if smart_turn is not None:
                    t0 = time.thread_time()
                    prob = smart_turn.probability(det.turn_audio().astype(np.float32) / 32768.0)
                    run.smart_turn_s += time.thread_time() - t0
                    run.smart_turn_calls += 1
                    pending = (det.turn.pause_id, det.samples + delay, prob)
            elif ev == TurnEvent.END_OF_TURN:
                close(det.turn.end_reason or "silence")
        if pending is not None and det.samples >= pending[1]:
            pause_id, _, prob = pending
            pending = None
            if prob > 0.5 and det.smart_turn_says_complete(pause_id):
                close(det.turn.end_reason)
        if current is not None:
            current.voiced_end = det.voiced_end
    return run


# --------------------------------------------------------------------------- scoring


def _ms(samples: int) -> float:
    return round(samples * 1000 / SAMPLE_RATE, 1)


def score(stream: Stream, run: Run) -> tuple[list[dict[str, Any]], int]:
    """One row per utterance, and the number of false starts (turns over noise alone)."""
    rows: list[dict[str, Any]] = []
    touched: set[int] = set()
    for sp in stream.spans:
        mine = [i for i, t in enumerate(run.turns) if t.start < sp.end and t.voiced_end > sp.start]
        touched.update(mine)
        row: dict[str, Any] = {"utterance": sp.utterance, "true_end_s": round(sp.end / SAMPLE_RATE, 3),
                               "turns": len(mine), "cuts": max(0, len(mine) - 1), "missed": not mine,
                               "unended": False, "eos_error_ms": None, "end_of_turn_ms": None, "reason": None,
                               "onset_ms": None}
        if mine:
            row["onset_ms"] = _ms(run.turns[mine[0]].started - sp.start)
            last = run.turns[mine[-1]]
            if last.end is None or last.end > sp.next_start or last.voiced_end > sp.next_start:
                row["unended"] = True
                row["eos_error_ms"] = _ms(sp.next_start - sp.end)  # censored: the detector never heard it stop
            else:
                row["eos_error_ms"] = _ms(last.voiced_end - sp.end)
                row["end_of_turn_ms"] = _ms(last.end - sp.end)
                row["reason"] = last.reason
        rows.append(row)
    false_starts = sum(1 for i in range(len(run.turns)) if i not in touched)
    return rows, false_starts


def summarise(rows: list[dict[str, Any]], false_starts: int, run: Run | None, audio_s: float) -> dict[str, Any]:
    errors = [r["eos_error_ms"] for r in rows if r["eos_error_ms"] is not None]
    return {
        "utterances": len(rows),
        "cuts": sum(r["cuts"] for r in rows),
        "utterances_cut": sum(1 for r in rows if r["cuts"]),
        "missed": sum(1 for r in rows if r["missed"]),
        "unended": sum(1 for r in rows if r["unended"]),
        "false_starts": false_starts,
        "eos_error_ms": stats(errors),
        "abs_eos_error_ms": stats([abs(e) for e in errors]),
        "within_target": round(sum(1 for e in errors if abs(e) <= TARGET_MS) / len(rows), 3) if rows else None,
        "end_of_turn_ms": stats([r["end_of_turn_ms"] for r in rows]),
        "onset_ms": stats([r["onset_ms"] for r in rows]),
        "detector_us_per_s": None if run is None else round(run.detector_s * 1e6 / max(audio_s, 1e-9), 1),
    }


# --------------------------------------------------------------------------- the benchmark


def run(*, smoke: bool = False, out: str | Path | None = None, detectors: list[str] | None = None,
        noises: list[str] | None = None, snrs: list[float] | None = None, corpus: bool = True,
        smart_turn: bool = True, smart_turn_ms: float = SMART_TURN_MS, phone: bool = True,
        pipeline: str = "receptionist", utterances: list[str] | None = None, barge_in: bool = True,
        echo_erls: list[float] | None = None) -> tuple[dict[str, Any], Path]:
    """Run the endpointing benchmark; returns the JSON document and the output folder."""
    from voicecore.config import load_pipeline, resolve_pipeline_path
    from voicecore.services.vad import SmartTurnEngine
    from voicecore.services.vad_analyzers import SileroVADEngine

    started = time.time()
    folder = output_dir("endpointing", out)
    detectors = list(detectors or DETECTORS)
    noises = list(KINDS if noises is None else noises)
    snrs = list(SNRS if snrs is None else snrs)
    echo_erls = list(ECHO_ERLS if echo_erls is None else echo_erls) if barge_in else []
    ids = list(SMOKE_IDS) if smoke else utterances
    if smoke:
        noises, snrs, echo_erls = noises[-1:], snrs[1:2] or snrs[:1], echo_erls[1:2] or echo_erls[:1]
    unknown = [d for d in detectors if d not in DETECTORS]
    if unknown:
        raise RuntimeError(f"unknown detector(s) {', '.join(unknown)} (known: {', '.join(DETECTORS)})")
    config = load_pipeline(resolve_pipeline_path(pipeline))
    base = config.turn_taking
    cache = DEFAULT_CACHE

    def agent(n: int) -> np.ndarray:
        from voicecore.model_pool import ModelPool

        return agent_track(n / SAMPLE_RATE, cache, str(config.models.tts), lambda: ModelPool().tts(config.models.tts))

    streams = build_streams(ids, noises, snrs, corpus=corpus, phone=phone, agent=agent, echo_erls=echo_erls)
    silero = SileroVADEngine() if "silero" in detectors else None
    turn_model = SmartTurnEngine() if smart_turn and base.smart_turn else None
    doc = envelope("endpointing", smoke=smoke, started=started, config={
        "pipeline": pipeline, "detectors": detectors, "noises": noises, "snr_db": snrs, "corpus": corpus,
        "phone_line": "16 kHz -> 8 kHz mu-law -> 16 kHz" if phone else None, "smart_turn": turn_model is not None,
        "smart_turn_answer_ms": smart_turn_ms if turn_model is not None else None,
        "speech_dbfs": SPEECH_DBFS, "lead_s": LEAD_S, "gap_s": GAP_S, "chunk_ms": CHUNK * 1000 // SAMPLE_RATE,
        "target_ms": TARGET_MS, "turn_taking": base.model_dump(), "noise_kinds": {k: DESCRIPTIONS[k] for k in noises},
        "barge_in": barge_in, "echo_erl_db": echo_erls, "echo_delay_ms": ECHO_DELAY_MS if barge_in else None,
        "echo_line_snr_db": ECHO_LINE_SNR_DB if echo_erls else None,
    })  # fmt: skip
    results, rows_out = [], []
    for det_name in detectors:
        params = base.model_copy(update={"vad": det_name})
        pooled: dict[str, list[dict[str, Any]]] = {}  # "noise sets" pools every noise x SNR
        pooled_fs: dict[str, int] = {}
        for st in streams:
            if st.echo_db is not None:
                continue  # no agent, no echo
            r = detect_turns(st.audio, params, silero, turn_model, smart_turn_ms)
            rows, false_starts = score(st, r)
            s = summarise(rows, false_starts, r, st.audio.size / SAMPLE_RATE)
            results.append({"detector": det_name, "condition": st.condition, "noise": st.noise, "snr_db": st.snr_db,
                            "smart_turn_calls": r.smart_turn_calls, **s})
            rows_out += [{"detector": det_name, "condition": st.condition, **row} for row in rows]
            group = "noise sets" if st.noise else st.condition
            pooled.setdefault(group, []).extend(rows)
            pooled_fs[group] = pooled_fs.get(group, 0) + false_starts
        for group, rows in pooled.items():
            results.append({"detector": det_name, "condition": f"all: {group}", "noise": None, "snr_db": None,
                            "smart_turn_calls": None, **summarise(rows, pooled_fs[group], None, 0.0)})
    doc["results"] = results
    doc["utterances"] = rows_out
    doc["barge_in"] = barge_in_pass(streams, base, detectors, silero, agent) if barge_in else []
    doc["plots"] = plot(results, folder)
    doc["duration_s"] = round(time.time() - started, 1)
    write_json(folder / "endpointing.json", doc)
    return doc, folder


def barge_in_pass(streams: list[Stream], base: Any, detectors: list[str], silero: Any,
                  agent: Callable[[int], np.ndarray]) -> list[dict[str, Any]]:
    """Every stream again with the agent (``agent(n)``: its first ``n`` samples) talking all along:
    per detector and condition the barge-in onset, the utterances that never barged in and the
    false barge-ins (over noise or echo alone). Turns end on silence (smart-turn would only end
    them sooner, and every utterance follows ``GAP_S`` of noise)."""
    rows: list[dict[str, Any]] = []
    for det_name in detectors:
        params = base.model_copy(update={"vad": det_name})
        pooled: list[dict[str, Any]] = []
        pooled_fs = 0
        for st in streams:
            r = detect_turns(st.audio, params, silero, agent=agent(st.audio.size))
            scored, false_barge_ins = score_barge_ins(st, r)
            rows.append(_barge_in_row(det_name, st.condition, st.noise, st.snr_db, st.echo_db, scored, false_barge_ins))
            if st.noise and st.echo_db is None:
                pooled += scored
                pooled_fs += false_barge_ins
        if pooled:
            rows.append(_barge_in_row(det_name, "all: noise sets", None, None, None, pooled, pooled_fs))
    return rows


def score_barge_ins(stream: Stream, run: Run) -> tuple[list[dict[str, Any]], int]:
    """Per utterance its first barge-in (one declared from ``BARGE_IN_EARLY_MS`` before its true
    start to ``BARGE_IN_LATE_MS`` after its true end; ``missed`` if none), and the false barge-ins:
    those declared outside every utterance (a barge-in on noise or echo that then runs into an
    utterance is still false, and the utterance missed)."""
    early, late = (int(ms * SAMPLE_RATE / 1000) for ms in (BARGE_IN_EARLY_MS, BARGE_IN_LATE_MS))
    starts = [t.started for t in run.turns]
    rows, claimed = [], set()
    for sp in stream.spans:
        mine = [i for i, at in enumerate(starts) if sp.start - early <= at <= sp.end + late]
        claimed.update(mine)
        rows.append({"utterance": sp.utterance, "missed": not mine,
                     "onset_ms": _ms(starts[mine[0]] - sp.start) if mine else None})
    return rows, sum(1 for i in range(len(starts)) if i not in claimed)


def _barge_in_row(detector: str, condition: str, noise: str | None, snr_db: float | None, echo_db: float | None,
                  scored: list[dict[str, Any]], false_barge_ins: int) -> dict[str, Any]:
    return {"detector": detector, "condition": condition, "noise": noise, "snr_db": snr_db, "echo_erl_db": echo_db,
            "utterances": len(scored), "missed": sum(1 for r in scored if r["missed"]),
            "false_barge_ins": false_barge_ins, "onset_ms": stats([r["onset_ms"] for r in scored])}


def report(doc: dict[str, Any]) -> str:
    rows = []
    for r in doc["results"]:
        e, a, t = r["eos_error_ms"], r["abs_eos_error_ms"], r["end_of_turn_ms"]
        rows.append([r["detector"], r["condition"], r["utterances"], e["p50"], e["p95"], a["p95"],
                     r["within_target"], t["p50"], r["onset_ms"]["p50"], r["cuts"], r["unended"], r["missed"],
                     r["false_starts"], r["detector_us_per_s"]])
    header = ["detector", "condition", "n", "eos p50", "eos p95", "|eos| p95", f"<={TARGET_MS:g}ms", "eot p50",
              "onset p50", "cuts", "unended", "missed", "false starts", "us/s audio"]
    text = ("end of speech per detector (ms, detected − true end; eot = end of turn declared − true end;\n"
            "onset = start of speech declared − true start)\n"
            + text_table(header, rows))
    if doc.get("barge_in"):
        brows = [[r["detector"], r["condition"], r["utterances"], r["onset_ms"]["p50"], r["onset_ms"]["p95"],
                  r["onset_ms"]["max"], r["missed"], r["false_barge_ins"]] for r in doc["barge_in"]]
        text += ("\n\nbarge-in: the agent talking all along (onset = barge-in declared − true start, ms; "
                 "false barge-ins: over noise or echo alone)\n"
                 + text_table(["detector", "condition", "n", "onset p50", "onset p95", "onset max", "missed",
                               "false barge-ins"], brows))
    return text


def plot(results: list[dict[str, Any]], folder: Path) -> list[str]:
    plt = pyplot()
    per = [r for r in results if not r["condition"].startswith("all: ")]
    if not per:
        return []
    conditions = list(dict.fromkeys(r["condition"] for r in per))
    detectors = list(dict.fromkeys(r["detector"] for r in per))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 0.9 * len(conditions) + 3), 7), sharex=True)
    width = 0.8 / len(detectors)
    x = np.arange(len(conditions))
    for i, d in enumerate(detectors):
        by = {r["condition"]: r for r in per if r["detector"] == d}
        p50 = [by[c]["eos_error_ms"]["p50"] if c in by else None for c in conditions]
        p95 = [by[c]["eos_error_ms"]["p95"] if c in by else None for c in conditions]
        xs = x + (i - (len(detectors) - 1) / 2) * width
        ax1.bar(xs, [v if v is not None else np.nan for v in p95], width, alpha=0.35, color=f"C{i}")
        ax1.bar(xs, [v if v is not None else np.nan for v in p50], width * 0.5, color=f"C{i}", label=d)
        bad = [sum(by[c][k] for k in ("cuts", "unended", "missed", "false_starts")) if c in by else 0
               for c in conditions]
        ax2.bar(xs, bad, width, color=f"C{i}", label=d)
    ax1.axhline(TARGET_MS, color="k", lw=0.8, ls="--")
    ax1.axhline(-TARGET_MS, color="k", lw=0.8, ls="--")
    ax1.axhline(0, color="k", lw=0.5)
    ax1.set_ylabel("end-of-speech error (ms)\nbar p50, shade p95")
    ax1.set_yscale("symlog", linthresh=200)
    ax1.legend(fontsize=8)
    ax1.grid(axis="y", alpha=0.3)
    ax2.set_ylabel("cuts + unended + missed\n+ false starts")
    ax2.set_xticks(x, conditions, rotation=40, ha="right")
    ax2.grid(axis="y", alpha=0.3)
    ax1.set_title("end of speech per speech detector and condition")
    return [save_figure(fig, folder / "endpointing.png")]
