"""``voicecore bench overhead``: what the runtime itself adds per turn, with instant fake models.

The same call flow as ``bench latency`` — a Twilio caller on 127.0.0.1, the real server
app (``voicecore.server.create_app``), the real pipeline, policy layer and storage —
but every model is replaced, in this benchmark only, by an instant fake:

- ``InstantWhisper``: returns a fixed transcript at once;
- ``InstantLlama``: streams a fixed reply, word by word, at once;
- ``InstantPiper``: returns silence as long as the clause would take to say;
- ``InstantSmartTurn``: answers "turn complete" at once, and notes when.

The server runs in this process (the fakes are objects, and the caller shares the clock):
``running_server`` on an ephemeral port. Per turn:

- **runtime** (``runtime_ms``): from the moment the end-of-turn decision was taken (the fake
  smart-turn answered) to the first agent media message at the caller — everything the
  runtime does between a finished caller turn and audio on the line: speaking frames,
  the STT/LLM/TTS processors and their thread hand-offs, the policy's context builder
  (redaction, history), clause splitting, resampling, μ-law encoding, pacing, the
  WebSocket. The target is ≤ 10 ms;
- **after the transcript** (``after_stt_final_ms``): the stored timeline's LLM first token,
  first clause and first audio out, minus its STT final (server clock);
- **pause detection** (``pause_detection_ms``): end of caller speech (sent audio) → the
  decision: the VAD's ``pause_ms`` of silence, a setting rather than overhead;
- **storage**: time to store each call's record (``Store.save_call``), per call and per turn;
- **greeting** (``greeting_ms``): ``start`` → first agent media, with instant TTS.

Utterances without commas are used, so the instant smart-turn does not end a turn at
a pause inside one; a turn that still ended before the caller finished is counted in
``split_turns`` and left out of the figures.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    BENCH_POLICY_YAML,
    envelope,
    output_dir,
    pyplot,
    save_figure,
    stats,
    stats_row,
    text_table,
    write_json,
)
from benchmarks.corpus import CORPUS, load_corpus
from benchmarks.latency import PlayedCall, play_call, split_calls
from voicecore.model_pool import ModelPool
from voicecore.services.llm import Generation, GenerationStats, LlamaEngine
from voicecore.services.stt import WhisperEngine
from voicecore.services.tts import PiperEngine
from voicecore.services.vad import SmartTurnEngine
from voicecore.storage import Store
from voicecore.testing.callers import wait_stored_call

FAKE_TRANSCRIPT = "What are your opening hours on Saturday?"
FAKE_REPLY = "We are open on Saturday from nine to one. Can I book you in?"
SPEECH_S_PER_CHAR = 0.06


class InstantWhisper(WhisperEngine):
    """A Whisper engine that hears the same words every time, at once."""

    def __init__(self, text: str = FAKE_TRANSCRIPT):  # noqa: D107 - no model to load
        self.model_dir = "instant"
        self.preset = None
        self.text = text
        self.jobs_run = 0

    def transcribe_sync(self, audio: np.ndarray, prompt: str | None = None) -> str:
        self.jobs_run += 1
        return self.text

    async def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> str:
        return self.transcribe_sync(audio, prompt)


class InstantLlama(LlamaEngine):
    """An LLM engine that streams the same reply every time, at once."""

    def __init__(self, reply: str = FAKE_REPLY):  # noqa: D107 - no model to load
        self.path = "instant"
        self.preset = None
        self.reply = reply
        self.n_ctx = 2048
        self.generations = 0

    def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def prompt_tokens(self, messages: list[Any], generated: dict[str, list[int]] | None = None, *,
                      generation_header: bool = True) -> list[int]:
        return [len(m.content) for m in messages]

    def prefill_sync(self, owner: str, prompt: list[int]) -> int:
        return 0

    async def prefill(self, owner: str, prompt: list[int]) -> int:
        return 0

    def forget(self, owner: str) -> None:
        pass

    def cached_prefix(self, tokens: list[int]) -> int:
        return 0

    def generate_sync(self, owner: str, prompt: list[int], params: Any, cancel: Any, on_text: Any = None, *,
                      said: list[int] | None = None, yield_after: int | None = None) -> Generation:
        t0 = time.monotonic()
        words = self.reply.split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        st = GenerationStats(prompt_tokens=len(prompt), evaluated_prompt_tokens=0, first_token_s=0.0)
        for p in pieces:
            if on_text is not None:
                on_text(p)
        st.generated_tokens = len(pieces)
        st.total_s = time.monotonic() - t0
        self.generations += 1
        return Generation(text="".join(pieces), tokens=list(range(len(pieces))), stats=st)

    async def generate(self, owner: str, prompt: list[int], params: Any, cancel: Any,
                       on_text: Any = None, *, said: list[int] | None = None,
                       yield_after: int | None = None) -> Generation:
        return self.generate_sync(owner, prompt, params, cancel, on_text)


class InstantPiper(PiperEngine):
    """A TTS engine that says everything as silence, of about the length speech would take."""

    def __init__(self, sample_rate: int = 22050):  # noqa: D107 - no voice to load
        self.model_path = "instant"
        self.sample_rate = sample_rate
        self.syntheses = 0

    def synthesize_sync(self, text: str, length_scale: float = 1.0, speaker_id: int | None = None,
                        urgent: bool = False) -> bytes:
        self.syntheses += 1
        return bytes(2 * int(self.sample_rate * SPEECH_S_PER_CHAR * max(1, len(text))))

    async def synthesize(self, text: str, length_scale: float = 1.0, speaker_id: int | None = None, *,
                         cache: bool = False, urgent: bool = False) -> bytes:
        return self.synthesize_sync(text, length_scale, speaker_id)


class InstantSmartTurn(SmartTurnEngine):
    """Smart-turn that finds every pause the end of the turn, at once; notes when it was asked."""

    def __init__(self) -> None:  # noqa: D107 - no model to load
        self.path = "instant"
        self.decisions: list[float] = []

    def probability(self, audio_16k: np.ndarray) -> float:
        return 1.0

    async def predict(self, audio_16k: np.ndarray) -> float:
        self.decisions.append(time.monotonic())
        return 1.0


class InstantModelPool(ModelPool):
    """The shared model pool with every model replaced by its instant fake."""

    def __init__(self) -> None:
        super().__init__()
        self.fake_stt = InstantWhisper()
        self.fake_llm = InstantLlama()
        self.fake_tts = InstantPiper()
        self.fake_turn = InstantSmartTurn()

    def stt(self, ref: str) -> WhisperEngine:
        return self.fake_stt

    def llm(self, ref: str) -> LlamaEngine:
        return self.fake_llm

    def tts(self, ref: str) -> PiperEngine:
        return self.fake_tts

    def smart_turn(self) -> SmartTurnEngine:
        return self.fake_turn


class TimedStore(Store):
    """The real store, timing how long each call record takes to store."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.save_times: list[tuple[float, int]] = []  # (seconds, turns)
        save = self.calls.save

        def timed_save(record: Any, policy: Any = None, **kwargs: Any) -> bool:
            t0 = time.perf_counter()
            try:
                return save(record, policy, **kwargs)
            finally:
                if record.ended_at is not None:  # the closed record (serve also saves open calls as they go)
                    self.save_times.append((time.perf_counter() - t0, len(record.turns)))

        self.calls.save = timed_save  # type: ignore[method-assign]


def turn_rows(call: PlayedCall, decisions: list[float], stored: Any) -> list[dict[str, Any]]:
    rows = []
    replies = [] if stored is None or stored.turns is None else [
        t for t in stored.turns if t.role == "agent" and t.kind == "reply" and t.timeline]
    for turn in call.turns:
        sp = turn.spoken
        row: dict[str, Any] = {"call": call.index, "utterance": turn.utterance.id, "answered": turn.answer is not None,
                               "split": False, "runtime_ms": None, "pause_detection_ms": None,
                               "voice_to_voice_ms": None, "after_stt_final_ms": None}
        if turn.answer is not None and sp.speech_end_at is not None:
            row["voice_to_voice_ms"] = round((turn.answer.t - sp.speech_end_at) * 1000, 1)
            start = sp.onset_sent_at or sp.queued_at
            mine = [d for d in decisions if start <= d <= turn.answer.t]
            if mine:
                decision = mine[-1]
                if decision < sp.speech_end_at - 0.05:
                    row["split"] = True
                else:
                    row["runtime_ms"] = round((turn.answer.t - decision) * 1000, 2)
                    row["pause_detection_ms"] = round((decision - sp.speech_end_at) * 1000, 1)
        w0 = sp.wall(sp.onset_sent_at or sp.queued_at)
        w1 = sp.wall(turn.window_end) if turn.window_end != float("inf") else float("inf")
        answer = [t for t in replies if t.started_at is not None and w0 <= t.started_at < w1]
        if answer and not row["split"]:
            tl = answer[-1].timeline
            base = tl.get("stt_final")
            if base is not None:
                row["after_stt_final_ms"] = {
                    s: None if tl.get(s) is None else round(tl[s] - base, 2)
                    for s in ("llm_first_token", "first_clause", "first_audio_out")
                }
        rows.append(row)
    return rows


def run(*, smoke: bool = False, out: str | Path | None = None, turns: int = 20,
        pipeline: str = "receptionist") -> tuple[dict[str, Any], Path]:
    return asyncio.run(_run(smoke=smoke, out=out, turns=turns, pipeline=pipeline))


async def _run(*, smoke: bool, out: str | Path | None, turns: int, pipeline: str) -> tuple[dict[str, Any], Path]:
    from voicecore.server import create_app, running_server

    started = time.time()
    folder = output_dir("overhead", out)
    clean = [s.id for s in CORPUS if "," not in s.text]
    corpus = load_corpus(clean)
    n_turns = 2 if smoke else max(1, turns)
    rng = random.Random(7)
    picked = [corpus[i % len(corpus)] for i in range(n_turns)]
    rng.shuffle(picked)
    groups = split_calls(picked, 2 if smoke else 4)
    doc = envelope("overhead", smoke=smoke, started=started, config={
        "pipeline": pipeline, "turns": n_turns, "calls": len(groups), "server": "in-process (running_server)",
        "fake_transcript": FAKE_TRANSCRIPT, "fake_reply": FAKE_REPLY,
    })
    pool = InstantModelPool()
    data_dir = folder / "voicecore-data"
    store = TimedStore(data_dir)
    # no post-call reports: the instant LLM cannot write one, and they run after the call anyway
    key = store.tenants.create("bench", policy_yaml=BENCH_POLICY_YAML.replace("  reports: 1", "  reports: 0"),
                              actor="bench")
    app = create_app(data_dir=data_dir, pool=pool, store=store, pipeline=pipeline, sweep_interval_s=3600)
    calls: list[PlayedCall] = []
    rows: list[dict[str, Any]] = []
    async with running_server(app) as base_url:
        ws_url = "ws" + base_url.removeprefix("http") + "/ws/twilio"
        for i, group in enumerate(groups):
            call = await play_call("voicecore", i, ws_url, key, group, pause=(0.3, 0.6))
            calls.append(call)
            stored = await wait_stored_call(store, "bench", call.caller.ids, timeout=20, with_turns=True, actor="bench")
            rows += turn_rows(call, pool.fake_turn.decisions, stored)
    store.close()
    greetings = [round((c.greeting.t - c.caller.opened_at) * 1000, 1)
                 for c in calls if c.greeting is not None and c.caller.opened_at is not None]
    saves = store.save_times
    doc["summary"] = {
        "turns": len(rows),
        "answered": sum(1 for r in rows if r["answered"]),
        "split_turns": sum(1 for r in rows if r["split"]),
        "runtime_ms": stats([r["runtime_ms"] for r in rows]),
        "after_stt_final_ms": {
            s: stats([(r["after_stt_final_ms"] or {}).get(s) for r in rows])
            for s in ("llm_first_token", "first_clause", "first_audio_out")
        },
        "pause_detection_ms": stats([r["pause_detection_ms"] for r in rows]),
        "voice_to_voice_ms": stats([r["voice_to_voice_ms"] for r in rows]),
        "greeting_ms": stats(greetings),
        "storage_ms_per_call": stats([s * 1000 for s, _ in saves]),
        "storage_ms_per_turn": stats([s * 1000 / max(1, n) for s, n in saves]),
    }
    for key_ in ("runtime_ms", "storage_ms_per_call", "storage_ms_per_turn"):
        doc["summary"][key_] = {k: (round(v, 2) if isinstance(v, float) else v)
                                for k, v in doc["summary"][key_].items()}
    doc["turns"] = rows
    doc["plots"] = plot_overhead(rows, folder)
    doc["duration_s"] = round(time.time() - started, 1)
    write_json(folder / "overhead.json", doc)
    return doc, folder


def plot_overhead(rows: list[dict[str, Any]], out: Path) -> list[str]:
    vals = [r["runtime_ms"] for r in rows if r["runtime_ms"] is not None]
    if not vals:
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(vals, bins=min(30, max(5, len(vals) // 2)))
    ax.axvline(10, color="r", linestyle="--", linewidth=1, label="target 10 ms")
    ax.set_xlabel("runtime per turn: end-of-turn decision → first agent media (ms)")
    ax.set_ylabel("turns")
    ax.set_title("voicecore runtime overhead (instant fake models)")
    ax.legend()
    return [save_figure(fig, out / "overhead.png")]


def report(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    rows = [stats_row("runtime (decision → first media)", s["runtime_ms"])]
    for k, label in (("llm_first_token", "STT final → LLM first token"), ("first_clause", "STT final → first clause"),
                     ("first_audio_out", "STT final → first audio out")):
        rows.append(stats_row(label, s["after_stt_final_ms"][k]))
    rows.append(stats_row("storage per call", s["storage_ms_per_call"]))
    rows.append(stats_row("storage per turn", s["storage_ms_per_turn"]))
    rows.append(stats_row("greeting after start", s["greeting_ms"]))
    rows.append(stats_row("pause detection (setting)", s["pause_detection_ms"]))
    return "\n".join([
        "voicecore runtime overhead with instant fake models (ms)",
        text_table(["ms", "n", "p50", "p95", "max"], rows),
        f"turns answered: {s['answered']}/{s['turns']}, split by a pause: {s['split_turns']}",
    ])
