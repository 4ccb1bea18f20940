"""``voicecore bench dialogue``: scripted text conversations against a pipeline, scored against its facts.

Each conversation of a dialogue set (``benchmarks/dialogues/<pipeline>.yaml``, see
:mod:`benchmarks.dialogue_scoring`) is one call through :class:`voicecore.simulate.TextCall`,
the road of ``voicecore chat``: the session, the policy, the LLM processor with its facts,
booking dialogue and call tools, on the real embedded model (SmolLM2-135M). Each call has a
fresh ``.ics`` calendar in a temporary folder and runs at the set's fixed "now"
(:func:`voicecore.agent.clock.pinned_now`), so "tomorrow" and the free slots are the same on
every run.

Scored per pipeline:

- **fact accuracy**: the share of agent replies in which every stated day, time, price,
  address and phone number is backed by the facts (the runtime's checker,
  ``FactBook.check``, sentence by sentence);
- **line accuracy**: the share of caller lines whose reply says what the set expects;
- **booking success**: the share of booking conversations that end with the expected event
  (service, day, time, name) in the calendar file; an event nobody asked for is a failure;
- **turns per booking**: caller turns until the event was in the calendar;
- **messages** and **transfers** taken when asked (the call record's message turns, the
  transfer the session asked of the provider; a text call has no provider, so the transfer is
  asked and refused as ``unavailable``, which still counts as the tool having been used);
- **added latency per turn**: time spent in voicecore's agent logic (facts, booking dialogue
  and calendar, call tools, the fact check of generated clauses), model generation excluded,
  measured by wrapping those classes' methods in this process; and the **turn latency** (a
  line sent → the whole reply back) p50/p95, by what answered (facts, booking, tools, model).

Every line that failed is listed with its conversation, what was said and what was wrong.
"""

from __future__ import annotations

import asyncio
import functools
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.common import (
    envelope,
    output_dir,
    pyplot,
    save_figure,
    stats,
    text_table,
    write_json,
)
from benchmarks.dialogue_scoring import (
    DIALOGUES_DIR,
    SOURCES,
    Conversation,
    DialogueSet,
    calendar_events,
    fact_errors,
    line_problems,
    load_dialogues,
    local,
    messages_of,
    outcome_problems,
    turn_of_booking,
)

SMOKE_PER_SET = 8
TARGETS = {"fact_accuracy": 1.0, "booking_success": 0.9, "added_latency_p50_ms": 30.0}


# --------------------------------------------------------------------------- timing the agent logic


class AgentTimer:
    """Wraps the agent's classes (in this process, while installed) to time what each caller turn
    spends in them, and to tell which of them answered it. Nested calls count once."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._spent = 0.0
        self._answered: set[str] = set()
        self._undo: list[Callable[[], None]] = []

    def _wrap(self, owner: type, name: str, source: str | None) -> None:
        original = getattr(owner, name)
        timer = self

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(timer._local, "depth", 0)
            timer._local.depth = depth + 1
            t0 = time.perf_counter()
            try:
                result = original(*args, **kwargs)
            finally:
                timer._local.depth = depth
                if depth == 0:
                    with timer._lock:
                        timer._spent += time.perf_counter() - t0
            if source is not None and result is not None:
                with timer._lock:
                    timer._answered.add(source)
            return result

        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, original))

    @contextmanager
    def installed(self) -> Iterator[AgentTimer]:
        from voicecore.agent.booking import BookingDialogue
        from voicecore.agent.calendar import AppointmentBook
        from voicecore.agent.call_tools import CallTools
        from voicecore.agent.facts import FactBook

        for owner, name, source in ((FactBook, "answer", "facts"), (FactBook, "check", None),
                                    (CallTools, "handle", "tools"), (CallTools, "offer", "tools"),
                                    (BookingDialogue, "handle", "booking"), (BookingDialogue, "question", "booking"),
                                    (AppointmentBook, "__init__", None)):  # fmt: skip
            self._wrap(owner, name, source)
        try:
            yield self
        finally:
            for undo in reversed(self._undo):
                undo()
            self._undo.clear()

    def start_turn(self) -> None:
        with self._lock:
            self._spent, self._answered = 0.0, set()

    def end_turn(self, generated: bool) -> tuple[float, str]:
        """(ms spent in the agent logic, what answered: model, tools, booking or facts)."""
        with self._lock:
            spent, answered = self._spent, set(self._answered)
        source = "model" if generated else next((s for s in ("tools", "booking", "facts") if s in answered), "facts")
        return spent * 1000, source


# --------------------------------------------------------------------------- one conversation


def with_calendar(config: Any, ics: Path) -> Any:
    """The pipeline with its ``book_appointment`` calendar in ``ics`` (and the rest unchanged)."""
    tools = config.tools
    if tools.book_appointment is None:
        return config
    calendar = tools.book_appointment.calendar.model_copy(update={"ics": str(ics), "caldav": None})
    booking = tools.book_appointment.model_copy(update={"calendar": calendar})
    return config.model_copy(update={"tools": tools.model_copy(update={"book_appointment": booking})})


async def run_conversation(config: Any, pool: Any, conv: Conversation, ds: DialogueSet, timer: AgentTimer,
                           ) -> dict[str, Any]:  # fmt: skip
    from voicecore.agent.clock import pinned_now
    from voicecore.agent.facts import FactBook
    from voicecore.simulate import TextCall

    zone = FactBook(config.facts).zone
    now = local(conv.now or ds.now, zone)
    turns: list[dict[str, Any]] = []
    after_each: list[list[dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="vc-dialogue-") as tmp, pinned_now(now):
        ics = Path(tmp) / "calendar.ics"
        book = FactBook(config.facts)  # the scorer's own, at the pinned "now"
        call = await TextCall.open(with_calendar(config, ics), pool)
        try:
            if config.greeting:
                await call.next_reply()
            for i, line in enumerate(conv.lines):
                if call.ended:
                    turns.append({"line": i, "say": line.say, "reply": None, "source": None, "agent_ms": None,
                                  "turn_ms": None, "fact_errors": [], "problems": ["the call had ended"]})  # fmt: skip
                    after_each.append(after_each[-1] if after_each else [])
                    continue
                timer.start_turn()
                t0 = time.perf_counter()
                reply, stats_ = await call.say(line.say)
                turn_ms = (time.perf_counter() - t0) * 1000
                agent_ms, source = timer.end_turn(generated=stats_ is not None)
                await asyncio.sleep(0.02)  # a second reply of the same turn (a refused transfer) joins it
                while not call.transport.replies.empty():
                    reply = f"{reply or ''} {call.transport.replies.get_nowait()}".strip()
                errors = fact_errors(book, reply, slots=source == "booking") if reply else []
                turns.append({"line": i, "say": line.say, "reply": reply, "source": source,
                              "agent_ms": round(agent_ms, 3), "turn_ms": round(turn_ms, 1),
                              "first_token_ms": round(stats_.first_token_s * 1000, 1)
                              if stats_ is not None and stats_.first_token_s is not None else None,
                              "fact_errors": errors, "problems": line_problems(line, reply)})  # fmt: skip
                after_each.append(calendar_events(ics, zone))
            hung_up = call.ended
        finally:
            record = await call.close()
        events = calendar_events(ics, zone)
    tools = config.tools
    problems = outcome_problems(
        conv, events=events, messages=messages_of(record.turns), transfer=record.flags.get("transfer"),
        transfer_to=tools.transfer.to if tools.transfer else None, hung_up=hung_up, zone=zone,
    )  # fmt: skip
    booked_at = turn_of_booking(conv.booking, after_each, zone) if conv.booking is not None else None
    return {
        "id": conv.id, "tags": conv.tags, "now": now.isoformat(), "turns": turns, "events": events,
        "messages": len(messages_of(record.turns)), "transfer": record.flags.get("transfer"), "hung_up": hung_up,
        "booked_at_turn": booked_at, "problems": problems,
        "passed": not problems and all(not t["problems"] and not t["fact_errors"] for t in turns),
    }  # fmt: skip


# --------------------------------------------------------------------------- a set, and the summary


def _share(ok: int, n: int) -> float | None:
    return round(ok / n, 4) if n else None


def summarize(conversations: list[dict[str, Any]], sets: list[DialogueSet] | None = None,
              by_id: dict[str, Conversation] | None = None) -> dict[str, Any]:  # fmt: skip
    """The figures of a set (or of several: their conversations together)."""
    turns = [t for c in conversations for t in c["turns"]]
    replied = [t for t in turns if t["reply"] is not None]
    expected = by_id or {}

    def expects(c: dict[str, Any], what: str) -> bool:
        conv = expected.get(c["key"])
        return bool(conv is not None and getattr(conv, what))

    def outcome_ok(c: dict[str, Any], word: str) -> bool:
        return not any(word in p for p in c["problems"])

    bookings = [c for c in conversations if expects(c, "booking")]
    messages = [c for c in conversations if expects(c, "message")]
    transfers = [c for c in conversations if expects(c, "transfer")]
    ends = [c for c in conversations if expects(c, "end_call")]
    booked = [c for c in bookings if c["booked_at_turn"] is not None and outcome_ok(c, "more event")]
    unwanted = [c for c in conversations if any("without being asked" in p and "booked" in p for p in c["problems"])]
    return {
        "conversations": len(conversations),
        "conversations_passed": sum(1 for c in conversations if c["passed"]),
        "lines": len(turns),
        "replies": len(replied),
        "fact_accuracy": _share(sum(1 for t in replied if not t["fact_errors"]), len(replied)),
        "fact_errors": sum(len(t["fact_errors"]) for t in turns),
        "line_accuracy": _share(sum(1 for t in turns if not t["problems"]), len(turns)),
        "bookings": {"expected": len(bookings), "booked": len(booked), "unwanted": len(unwanted),
                     "success": _share(len(booked), len(bookings))},  # fmt: skip
        "turns_per_booking": stats([c["booked_at_turn"] for c in booked]),
        "messages": {"expected": len(messages), "taken": sum(1 for c in messages if outcome_ok(c, "no message")),
                     "success": _share(sum(1 for c in messages if outcome_ok(c, "no message")), len(messages))},
        "transfers": {"expected": len(transfers), "made": sum(1 for c in transfers if outcome_ok(c, "no transfer")),
                      "success": _share(sum(1 for c in transfers if outcome_ok(c, "no transfer")), len(transfers))},
        "end_calls": {"expected": len(ends), "made": sum(1 for c in ends if outcome_ok(c, "did not hang up")),
                      "success": _share(sum(1 for c in ends if outcome_ok(c, "did not hang up")), len(ends))},
        "answered_by": {s: sum(1 for t in replied if t["source"] == s) for s in SOURCES},
        "added_latency_ms": stats([t["agent_ms"] for t in replied]),
        "added_latency_ms_by_source": {s: stats([t["agent_ms"] for t in replied if t["source"] == s]) for s in SOURCES},
        "turn_latency_ms": stats([t["turn_ms"] for t in replied]),
        "turn_latency_ms_by_source": {s: stats([t["turn_ms"] for t in replied if t["source"] == s]) for s in SOURCES},
    }  # fmt: skip


def failures(conversations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every line that failed (a fact error or an unmet expectation) and every unmet outcome."""
    out = []
    for c in conversations:
        for t in c["turns"]:
            what = [f"fact: {e}" for e in t["fact_errors"]] + t["problems"]
            if what:
                out.append({"conversation": c["id"], "line": t["line"], "say": t["say"], "reply": t["reply"],
                            "source": t["source"], "what": what})  # fmt: skip
        if c["problems"]:
            out.append({"conversation": c["id"], "line": None, "say": None, "reply": None, "source": None,
                        "what": c["problems"]})  # fmt: skip
    return out


def dialogue_sets(names: list[str] | None) -> list[Path]:
    if names:
        paths = [Path(n) if n.endswith((".yaml", ".yml")) else DIALOGUES_DIR / f"{n}.yaml" for n in names]
    else:
        paths = sorted(DIALOGUES_DIR.glob("*.yaml"))
    missing = [str(p) for p in paths if not p.exists()]
    if missing or not paths:
        raise RuntimeError(f"no dialogue set {', '.join(missing) or 'in ' + str(DIALOGUES_DIR)}")
    return paths


def run(*, smoke: bool = False, out: str | Path | None = None, pipelines: list[str] | None = None,
        ) -> tuple[dict[str, Any], Path]:  # fmt: skip
    return asyncio.run(_run(smoke=smoke, out=out, pipelines=pipelines))


async def _run(*, smoke: bool, out: str | Path | None, pipelines: list[str] | None) -> tuple[dict[str, Any], Path]:
    from voicecore.config import load_pipeline, resolve_pipeline_path
    from voicecore.model_pool import ModelPool

    started = time.time()
    folder = output_dir("dialogue", out)
    sets = [load_dialogues(p) for p in dialogue_sets(pipelines)]
    chosen = {ds.pipeline: ([c for c in ds.conversations if c.smoke][:SMOKE_PER_SET] or ds.conversations[:1])
              if smoke else list(ds.conversations) for ds in sets}  # fmt: skip
    doc = envelope("dialogue", smoke=smoke, started=started, config={
        "pipelines": [ds.pipeline for ds in sets], "dialogue_sets": [ds.path for ds in sets],
        "conversations": sum(len(v) for v in chosen.values()),
        "lines": sum(len(c.lines) for v in chosen.values() for c in v), "model": "pipeline's (default: SmolLM2-135M)",
        "targets": TARGETS,
    })  # fmt: skip
    pool = ModelPool()
    timer = AgentTimer()
    doc["pipelines"] = {}
    everything: list[dict[str, Any]] = []
    by_key: dict[str, Conversation] = {}
    with timer.installed():
        for ds in sets:
            config = load_pipeline(resolve_pipeline_path(ds.pipeline))
            await asyncio.to_thread(pool.llm, config.models.llm)  # loaded before the first turn is timed
            results = []
            for conv in chosen[ds.pipeline]:
                result = await run_conversation(config, pool, conv, ds, timer)
                result["key"] = f"{ds.pipeline}/{conv.id}"
                by_key[result["key"]] = conv
                results.append(result)
            everything += results
            doc["pipelines"][ds.pipeline] = {
                "dialogues": ds.path, "now": str(ds.now),
                "summary": summarize(results, by_id=by_key),
                "failures": failures(results),
                "conversations": results,
            }  # fmt: skip
    doc["summary"] = summarize(everything, by_id=by_key)
    doc["plots"] = plot_dialogue(doc, folder)
    doc["duration_s"] = round(time.time() - started, 1)
    write_json(folder / "dialogue.json", doc)
    return doc, folder


# --------------------------------------------------------------------------- output


def plot_dialogue(doc: dict[str, Any], out: Path) -> list[str]:
    plt = pyplot()
    names = list(doc["pipelines"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    metrics = [("fact accuracy", lambda s: s["fact_accuracy"]), ("line accuracy", lambda s: s["line_accuracy"]),
               ("booking", lambda s: s["bookings"]["success"]), ("messages", lambda s: s["messages"]["success"]),
               ("transfers", lambda s: s["transfers"]["success"])]  # fmt: skip
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        s = doc["pipelines"][name]["summary"]
        vals = [(f(s) or 0.0) * 100 for _, f in metrics]
        ax1.bar([i + k * width for i in range(len(metrics))], vals, width, label=name)
    ax1.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(metrics))], [m for m, _ in metrics],
                   rotation=20)  # fmt: skip
    ax1.set_ylim(0, 105)
    ax1.set_ylabel("%")
    ax1.set_title("scores on the dialogue sets")
    ax1.legend(fontsize=8)
    for name in names:
        convs = doc["pipelines"][name]["conversations"]
        vals = sorted(t["agent_ms"] for c in convs for t in c["turns"] if t["agent_ms"] is not None)
        if vals:
            ax2.plot(vals, [(i + 1) / len(vals) for i in range(len(vals))], label=f"{name}: agent logic")
        totals = sorted(t["turn_ms"] for c in convs for t in c["turns"] if t["turn_ms"] is not None)
        if totals:
            ax2.plot(totals, [(i + 1) / len(totals) for i in range(len(totals))], linestyle="--",
                     label=f"{name}: whole turn")  # fmt: skip
    ax2.axvline(TARGETS["added_latency_p50_ms"], color="r", linewidth=1, linestyle=":", label="30 ms")
    ax2.set_xscale("log")
    ax2.set_xlabel("ms per caller turn (log)")
    ax2.set_ylabel("share of turns")
    ax2.set_title("added latency (agent logic) and whole turn")
    ax2.legend(fontsize=7)
    return [save_figure(fig, out / "dialogue.png")]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def report(doc: dict[str, Any]) -> str:
    rows = []
    for name, p in [*doc["pipelines"].items(), ("all", {"summary": doc["summary"]})]:
        s = p["summary"]
        rows.append([name, s["conversations"], s["lines"], _pct(s["fact_accuracy"]), _pct(s["line_accuracy"]),
                     f"{s['bookings']['booked']}/{s['bookings']['expected']}", s["turns_per_booking"]["p50"],
                     f"{s['messages']['taken']}/{s['messages']['expected']}",
                     f"{s['transfers']['made']}/{s['transfers']['expected']}",
                     s["added_latency_ms"]["p50"], s["added_latency_ms"]["p95"],
                     s["turn_latency_ms"]["p50"], s["turn_latency_ms"]["p95"]])  # fmt: skip
    lines = [
        "voicecore dialogue benchmark (text calls on the pipeline's model, fixed date, fresh calendar per call)",
        text_table(["pipeline", "calls", "lines", "facts", "lines ok", "booked", "turns/bk", "msgs", "xfers",
                    "added p50", "p95", "turn p50", "p95"], rows),  # fmt: skip
    ]
    fails = [(name, f) for name, p in doc["pipelines"].items() for f in p["failures"]]
    if fails:
        lines.append(f"\n{len(fails)} failure(s):")
        for name, f in fails[:40]:
            where = f"{name}/{f['conversation']}" + (f" line {f['line'] + 1}" if f["line"] is not None else "")
            said = f" {f['say']!r} → {f['reply']!r}" if f["say"] else ""
            lines.append(f"  {where}:{said}: {'; '.join(f['what'])}")
        if len(fails) > 40:
            lines.append(f"  … and {len(fails) - 40} more in the JSON")
    return "\n".join(lines)
