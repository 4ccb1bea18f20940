"""Generating a report: asking the model, validating its answers, storing the result; and the
scheduler that runs reports in the background of ``serve`` and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from loguru import logger
from pydantic import ValidationError

from voicecore.policy.context import ContextBuilder
from voicecore.policy.models import Policy
from voicecore.policy.optout import optout_requested
from voicecore.reports.answers import (
    PURPOSE_QUESTION,
    QUESTIONS,
    ModelAnswers,
    PostCallReport,
    ReportAppointment,
    ReportContact,
    _questions_for,
    answer_schema,
    example_messages,
)
from voicecore.reports.transcript import (
    ANSWER_MAX_TOKENS,
    REPORT_ACTOR,
    RESERVED_TOKENS,
    SUMMARY_MAX_TOKENS,
    Candidates,
    find_candidates,
    fit_transcript,
    resolve_slot,
)
from voicecore.services.conversation import ChatMessage
from voicecore.services.llm import Generation

# --------------------------------------------------------------------------- results


@dataclass
class ReportResult:
    """What :func:`generate_report` did: ``ready`` (stored), ``failed`` (stored with the reason)
    or ``skipped`` (nothing stored: reports not kept by the policy, call not stored)."""

    status: Literal["ready", "failed", "skipped"]
    call_id: str
    report_id: str | None = None
    report: dict[str, Any] | None = None
    error: str | None = None
    attempts: int = 0
    seconds: float = 0.0


class ReportEngine(Protocol):
    """What report generation needs from the LLM (:class:`voicecore.services.llm.LlamaEngine`)."""

    n_ctx: int
    path: str

    def prompt_tokens(
        self, messages: list[ChatMessage], generated: dict[str, list[int]] | None = None, *,
        generation_header: bool = True,
    ) -> list[int]: ...  # fmt: skip

    async def complete_json(
        self, owner: str, prompt: list[int], grammar: object, *, max_tokens: int, temperature: float = 0.0,
        seed: int | None = None, repeat_penalty: float = 1.0, no_repeat_words: bool = False, eval_chunk: int = 128,
    ) -> Generation: ...  # fmt: skip

    def forget(self, owner: str) -> None: ...

async def ask_model(
    engine: ReportEngine, owner: str, c: Candidates, *, temperature: float = 0.0, seed: int | None = None
) -> dict[str, Any]:
    """Ask every question the candidates allow, in one exchange; returns the answers (JSON values)
    with ``null`` for questions not asked. Raises ``ValueError`` for output that is not JSON."""
    from llama_cpp import LlamaGrammar

    
    messages = example_messages()
    generated: dict[str, list[int]] = {}
    answers: dict[str, Any] = {f: None for f, _ in QUESTIONS}
    for i, (f, q) in enumerate(_questions_for(c)):
        head = f"Transcript:\n{c.transcript}\n\n" if i == 0 else ""
        if f == "purpose":
            q = PURPOSE_QUESTION + ", ".join(c.purposes) + "."
        messages.append(ChatMessage("user", head + q))
        grammar = LlamaGrammar.from_json_schema(json.dumps(answer_schema(f, c)), verbose=False)
        prompt = engine.prompt_tokens(messages, generated)
        result = await engine.complete_json(
            owner,
            prompt,
            grammar,
            max_tokens=SUMMARY_MAX_TOKENS if f == "summary" else ANSWER_MAX_TOKENS,
            temperature=temperature,
            seed=seed,
            repeat_penalty=1.3 if f == "summary" else 1.0,
            no_repeat_words=f == "summary",
        )
        try:
            value = json.loads(result.text)[f]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"the answer to {f!r} is not complete JSON ({result.stats.generated_tokens} tokens)") from None
        answers[f] = value
        messages.append(ChatMessage("assistant", result.text))
        generated[result.text] = result.tokens
    return answers


def _validation_reason(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:3]:
        where = ".".join(str(p) for p in e.get("loc", ())) or "report"
        parts.append(f"{where}: {str(e.get('msg', 'invalid')).removeprefix('Value error, ')}")
    return "; ".join(parts)


def build_report(
    answers: dict[str, Any], c: Candidates, *, call_date: date, optout: bool, model: str
) -> PostCallReport:
    """Validate the model's answers against the transcript and assemble the report (raises ``ValidationError``)."""
    a = ModelAnswers.model_validate(answers, context={"candidates": c})
    requested = " ".join(p for p in (a.appointment_day, a.appointment_time) if p) or None
    return PostCallReport(
        purpose=a.purpose,
        contact=ReportContact(
            name=a.caller_name,
            phone=c.phones.get(a.phone) if a.phone else None,
            email=c.emails.get(a.email) if a.email else None,
        ),
        need=a.need,
        appointment=ReportAppointment(
            requested=requested, slot=resolve_slot(a.appointment_day, a.appointment_time, call_date)
        ),
        optout_requested=optout,
        summary=a.summary,
        withheld=[w for w in c.withheld if w in ("phone", "email", "card", "iban", "number")],  # type: ignore[misc]
        call_date=call_date,
        model=model,
    )


async def generate_report(
    store: Any,
    engine: ReportEngine,
    tenant: str,
    call_id: str,
    *,
    policy: Policy | None = None,
    call_date: date | None = None,
    turns: Sequence[Any] | None = None,
    actor: str = REPORT_ACTOR,
    engine_lock: asyncio.Lock | None = None,
) -> ReportResult:
    """Generate, validate and store the post-call report of a stored call (see the module docstring).

    ``turns`` are the call's turns as the session holds them (``CallRecord.turns``); without
    them the stored transcript is read (audited as a ``transcript.read`` by ``actor``), which
    holds nothing when the policy keeps no transcripts. ``call_date`` is the day the caller
    spoke on (tenant-local); default: the UTC date the call started. ``engine_lock`` keeps
    reports on one model one at a time (:class:`ReportScheduler` passes its own). Never raises
    for a bad model answer: that becomes a ``failed`` report with the reason.
    """
    t0 = time.monotonic()
    policy = policy or await asyncio.to_thread(store.tenants.policy, tenant)
    result = ReportResult(status="skipped", call_id=call_id)
    if policy.retention.reports == 0:
        result.error = "the tenant policy does not store reports (retention.reports is 0)"
        return result
    call = await asyncio.to_thread(
        store.calls.get, tenant, call_id, actor=actor, include_transcript=turns is None
    )
    if call is None:
        result.error = "the call is not stored (restricted subject, or metadata not kept)"
        return result
    source = list(turns) if turns is not None else list(call.turns or [])
    if call_date is None:
        call_date = datetime.fromtimestamp(call.started_at, UTC).date()
    builder = ContextBuilder(policy)
    transcript = builder.transcript_for_summary(
        t for t in source if getattr(t, "role", None) in ("caller", "agent") and getattr(t, "text", None)
    )
    optout = bool(call.optout) or any(
        optout_requested(policy, t.text) for t in source if getattr(t, "role", None) == "caller"
    )
    model = Path(getattr(engine, "path", "") or "llm").name
    if not any(ln.startswith("Caller: ") for ln in transcript.splitlines()):
        error = "nothing to report: the transcript holds no caller speech"
        if turns is None and policy.retention.transcripts == 0:
            error = "no transcript: the policy stores none and the call's turns were not passed"
        return await _store_failed(store, tenant, call_id, policy, result, error, t0)

    owner = f"report:{call_id}"
    async with engine_lock or contextlib.nullcontext():
        try:
            base = len(engine.prompt_tokens(example_messages()))
            budget = engine.n_ctx - base - RESERVED_TOKENS
            transcript = fit_transcript(
                transcript, budget, lambda text: len(engine.prompt_tokens([ChatMessage("user", text)]))
            )
            c = find_candidates(transcript, policy.phone_region, optout=optout)
            reasons: list[str] = []
            for attempt, (temperature, seed) in enumerate(((0.0, None), (0.5, 1234))):
                result.attempts = attempt + 1
                try:
                    answers = await ask_model(engine, owner, c, temperature=temperature, seed=seed)
                    report = build_report(answers, c, call_date=call_date, optout=optout, model=model)
                except ValidationError as e:
                    reasons.append(f"attempt {attempt + 1}: {_validation_reason(e)}")
                    continue
                except ValueError as e:
                    reasons.append(f"attempt {attempt + 1}: {e}")
                    continue
                body = report.model_dump(mode="json")
                report_id = await asyncio.to_thread(store.calls.save_report, tenant, call_id, body, policy=policy)
                result.status, result.report_id, result.report = "ready", report_id, body
                result.seconds = round(time.monotonic() - t0, 3)
                logger.info(
                    "report for call {} ready in {:.1f} s ({} attempt(s))", call_id[:8], result.seconds, result.attempts
                )
                return result
        finally:
            engine.forget(owner)
    return await _store_failed(store, tenant, call_id, policy, result, "; ".join(reasons), t0)


async def _store_failed(
    store: Any, tenant: str, call_id: str, policy: Policy, result: ReportResult, error: str, t0: float
) -> ReportResult:
    result.status, result.error = "failed", error
    result.report_id = await asyncio.to_thread(
        store.calls.save_report, tenant, call_id, None, status="failed", error=error, policy=policy
    )
    result.seconds = round(time.monotonic() - t0, 3)
    logger.info("report for call {} failed after {} attempt(s)", call_id[:8], result.attempts)
    logger.debug("report for call {} failed: {}", call_id[:8], error)
    return result


class ReportScheduler:
    """Post-call reports generated in the background, one at a time per model.

    Owned by whoever runs calls (the server's state; a CLI run) and drained before it
    stops: ``scheduler.schedule(...)`` after a call is stored, ``await scheduler.drain()``
    at the end. A report yields the model to live turns (see :func:`generate_report`);
    running them one by one per model keeps live calls' saved KV states in the engine.
    """

    def __init__(self) -> None:
        self._pending: set[asyncio.Task[ReportResult]] = set()
        self._locks: dict[int, tuple[Any, asyncio.Lock]] = {}

    @property
    def pending(self) -> int:
        return sum(1 for t in self._pending if not t.done())

    def _lock_for(self, engine: Any) -> asyncio.Lock:
        entry = self._locks.get(id(engine))
        if entry is None or entry[0] is not engine:
            entry = self._locks[id(engine)] = (engine, asyncio.Lock())
        return entry[1]

    def schedule(
        self,
        store: Any,
        engine: ReportEngine,
        tenant: str,
        call_id: str,
        *,
        policy: Policy | None = None,
        turns: Sequence[Any] | None = None,
        call_date: date | None = None,
    ) -> asyncio.Task[ReportResult]:
        """Generate the report of a just-stored call in the background (see :func:`generate_report`);
        an unexpected error is logged (without call content), never raised into the call."""
        lock = self._lock_for(engine)

        async def run() -> ReportResult:
            try:
                return await generate_report(
                    store, engine, tenant, call_id, policy=policy, turns=list(turns) if turns is not None else None,
                    call_date=call_date, engine_lock=lock,
                )  # fmt: skip
            except Exception as e:
                logger.error("report for call {} could not be generated ({})", call_id[:8], type(e).__name__)
                return ReportResult(status="failed", call_id=call_id, error=type(e).__name__)

        task = asyncio.create_task(run(), name=f"report-{call_id[:8]}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def drain(self, timeout: float | None = 60.0) -> int:
        """Wait for the scheduled reports; returns how many were still unfinished after
        ``timeout`` (those keep running; nothing is cancelled)."""
        pending = [t for t in self._pending if not t.done()]
        if not pending:
            return 0
        _done, still = await asyncio.wait(pending, timeout=timeout)
        return len(still)
