"""Generating a report: asking the model, validating its answers, storing the result; and the
scheduler that runs reports in the background of ``serve`` and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

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
from voicecore.reports.grounding import summary_problems
from voicecore.reports.tools import ToolFacts, template_summary, tool_facts
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
from voicecore.storage.report_jobs import (
    REPORT_LEASE_S,
    REPORT_MAX_ATTEMPTS,
    ReportJob,
    ReportJobLost,
)

if TYPE_CHECKING:
    from voicecore.config import PipelineConfig
    from voicecore.model_pool import ModelPool

#: How often a worker looks for report jobs nobody is working on (another worker's, one that died).
REPORT_POLL_S = 15.0
#: A job whose generation raised is claimable again after this long (up to REPORT_MAX_ATTEMPTS claims).
REPORT_RETRY_S = 30.0

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
    engine: ReportEngine, owner: str, c: Candidates, *, temperature: float = 0.0, seed: int | None = None,
    skip: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Ask every question the candidates allow (less ``skip``: what the call's tools answer), in one
    exchange; returns the answers (JSON values) with ``null`` for questions not asked. Raises
    ``ValueError`` for output that is not JSON."""
    from llama_cpp import LlamaGrammar

    messages = example_messages()
    generated: dict[str, list[int]] = {}
    answers: dict[str, Any] = {f: None for f, _ in QUESTIONS}
    for i, (f, q) in enumerate(_questions_for(c, skip)):
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
    answers: dict[str, Any], c: Candidates, *, call_date: date, optout: bool, model: str,
    tools: ToolFacts | None = None, region: str = "US", template_if_bad_summary: bool = False,
) -> PostCallReport:
    """Validate the model's answers against the transcript and assemble the report (raises
    ``ValidationError``). What the call's ``tools`` recorded comes first (the appointment's slot,
    service and status, the purpose, the need, the name); the model's summary is kept only if every
    day, time, price, number and address it states is in the transcript or the tools' results, else
    the summary is :func:`template_summary` (``summary_source: template``). With
    ``template_if_bad_summary`` (the last attempt) a summary that is not valid at all (unfinished,
    degenerate, with words nobody said) is replaced too, when every other answer is valid."""
    problems: list[str] = []
    try:
        a = ModelAnswers.model_validate(answers, context={"candidates": c})
    except ValidationError as e:
        if not template_if_bad_summary or any(tuple(err.get("loc", ()))[:1] != ("summary",) for err in e.errors()):
            raise
        a = ModelAnswers.model_validate({**answers, "summary": None}, context={"candidates": c})
        problems.append(_validation_reason(e))
    tools = tools or ToolFacts()
    requested = " ".join(p for p in (a.appointment_day, a.appointment_time) if p) or None
    purpose = tools.purpose or a.purpose or "other"
    name = tools.name or a.caller_name
    summary, summary_source = a.summary, "model"
    if a.summary is not None:
        problems = summary_problems(a.summary, f"{c.transcript}\n{tools.grounds_text()}", call_date, region)
    if problems or summary is None:
        summary, summary_source = template_summary(tools, purpose, name), "template"
        logger.debug("report summary replaced by the template: {}", "; ".join(problems))
    return PostCallReport(
        purpose=purpose,  # type: ignore[arg-type]
        contact=ReportContact(
            name=name,
            phone=c.phones.get(a.phone) if a.phone else None,
            email=c.emails.get(a.email) if a.email else None,
        ),
        need=tools.need or a.need,
        appointment=ReportAppointment(
            requested=requested,
            slot=tools.slot or resolve_slot(a.appointment_day, a.appointment_time, call_date),
            service=tools.service,
            status=tools.status,  # type: ignore[arg-type]
        ),
        optout_requested=optout,
        summary=summary,  # type: ignore[arg-type]
        summary_source=summary_source,  # type: ignore[arg-type]
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
    job: ReportJob | None = None,
) -> ReportResult:
    """Generate, validate and store the post-call report of a stored call (see the module docstring).

    ``turns`` are the call's turns as the session holds them (``CallRecord.turns``); without
    them the stored transcript is read (audited as a ``transcript.read`` by ``actor``), which
    holds nothing when the policy keeps no transcripts. ``call_date`` is the day the caller
    spoke on (tenant-local); default: the UTC date the call started. ``engine_lock`` keeps
    reports on one model one at a time (:class:`ReportScheduler` passes its own). Never raises
    for a bad model answer: that becomes a ``failed`` report with the reason.

    ``job``: the claimed report job this report finishes (its ``turns`` and ``call_date`` are
    passed too): deleted with the report stored, or without one when nothing is stored (skipped);
    when another worker took the job meanwhile nothing is stored (``skipped``).
    """
    t0 = time.monotonic()
    policy = policy or await asyncio.to_thread(store.tenants.policy, tenant)
    result = ReportResult(status="skipped", call_id=call_id)
    if policy.retention.reports == 0:
        result.error = "the tenant policy does not store reports (retention.reports is 0)"
        return await _skip(store, job, result)
    call = await asyncio.to_thread(
        store.calls.get, tenant, call_id, actor=actor, include_transcript=turns is None
    )
    if call is None:
        result.error = "the call is not stored (restricted subject, or metadata not kept)"
        return await _skip(store, job, result)
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
    tools = tool_facts(source, policy)  # what the call's tools recorded: fields the model is not asked
    if not any(ln.startswith("Caller: ") for ln in transcript.splitlines()):
        error = "nothing to report: the transcript holds no caller speech"
        if turns is None and policy.retention.transcripts == 0:
            error = "no transcript: the policy stores none and the call's turns were not passed"
        return await _store_failed(store, tenant, call_id, policy, result, error, t0, job)

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
            attempts = ((0.0, None), (0.5, 1234))
            for attempt, (temperature, seed) in enumerate(attempts):
                result.attempts = attempt + 1
                try:
                    answers = await ask_model(engine, owner, c, temperature=temperature, seed=seed,
                                              skip=tools.skipped_questions())  # fmt: skip
                    report = build_report(answers, c, call_date=call_date, optout=optout, model=model, tools=tools,
                                          region=policy.phone_region,
                                          template_if_bad_summary=attempt == len(attempts) - 1)  # fmt: skip
                except ValidationError as e:
                    reasons.append(f"attempt {attempt + 1}: {_validation_reason(e)}")
                    continue
                except ValueError as e:
                    reasons.append(f"attempt {attempt + 1}: {e}")
                    continue
                body = report.model_dump(mode="json")
                try:
                    report_id = await asyncio.to_thread(
                        store.calls.save_report, tenant, call_id, body, policy=policy, job=job
                    )
                except ReportJobLost as e:
                    return _lost(result, e, t0)
                result.status, result.report_id, result.report = "ready", report_id, body
                result.seconds = round(time.monotonic() - t0, 3)
                logger.info(
                    "report for call {} ready in {:.1f} s ({} attempt(s), summary from the {})", call_id[:8],
                    result.seconds, result.attempts, report.summary_source,
                )
                return result
        finally:
            engine.forget(owner)
    return await _store_failed(store, tenant, call_id, policy, result, "; ".join(reasons), t0, job)


async def _skip(store: Any, job: ReportJob | None, result: ReportResult) -> ReportResult:
    if job is not None:
        await asyncio.to_thread(store.report_jobs.drop, job)
    return result


def _lost(result: ReportResult, e: ReportJobLost, t0: float) -> ReportResult:
    result.status, result.error, result.report_id, result.report = "skipped", str(e), None, None
    result.seconds = round(time.monotonic() - t0, 3)
    logger.warning("report for call {} not stored: another worker took its job", result.call_id[:8])
    return result


async def _store_failed(
    store: Any, tenant: str, call_id: str, policy: Policy | None, result: ReportResult, error: str, t0: float,
    job: ReportJob | None = None,
) -> ReportResult:
    result.status, result.error = "failed", error
    try:
        result.report_id = await asyncio.to_thread(
            store.calls.save_report, tenant, call_id, None, status="failed", error=error, policy=policy, job=job
        )
    except ReportJobLost as e:
        return _lost(result, e, t0)
    result.seconds = round(time.monotonic() - t0, 3)
    logger.info("report for call {} failed after {} attempt(s)", call_id[:8], result.attempts)
    logger.debug("report for call {} failed: {}", call_id[:8], error)
    return result


#: Which local model makes the report of a call of a given pipeline (``None``: no local model,
#: no report). Blocking (it may load the model): called in a worker thread.
EngineFor = Callable[[str | None], "ReportEngine | None"]


def pipeline_engines(pool: ModelPool, pipelines: Mapping[str, PipelineConfig], default: str) -> EngineFor:
    """The :data:`EngineFor` of a worker: the LLM of the call's pipeline, or of the worker's default
    pipeline when the call's is not one it knows; ``None`` for a remote LLM (reports constrain a
    local model with a JSON grammar; a remote one is not asked)."""

    def engine_for(pipeline: str | None) -> ReportEngine | None:
        config = pipelines.get(pipeline or "") or pipelines[default]
        engine = pool.llm(config.models.llm)
        return None if getattr(engine, "remote", False) else engine  # type: ignore[return-value]

    return engine_for


class ReportScheduler:
    """Post-call reports generated in the background from the report jobs in the database, one at a
    time per model.

    Owned by whoever runs calls (the server's state; a CLI run) and drained before it stops. After a
    call is stored its job is enqueued (``store.report_jobs.enqueue``) and the scheduler told
    (:meth:`submit`). In ``serve``, :meth:`run` claims jobs row by row (this worker's, and those of
    workers that died or whose lease ran out) and :meth:`submit` wakes it; without :meth:`run` (a
    CLI run) :meth:`submit` claims that very call's job and generates it. ``await drain()`` at the
    end. A report yields the model to live turns (see :func:`generate_report`); running them one by
    one per model keeps live calls' saved KV states in the engine.
    """

    def __init__(
        self,
        worker_id: str | None = None,
        *,
        lease_s: float = REPORT_LEASE_S,
        max_attempts: int = REPORT_MAX_ATTEMPTS,
        poll_s: float = REPORT_POLL_S,
    ) -> None:
        self.worker_id = worker_id or f"reports-{os.getpid()}-{secrets.token_hex(3)}"
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.poll_s = poll_s
        self._pending: set[asyncio.Task[ReportResult]] = set()
        self._locks: dict[int, tuple[Any, asyncio.Lock]] = {}
        self._wake: asyncio.Event | None = None  # set while run() claims jobs
        self._idle: asyncio.Event | None = None  # run() found nothing to claim since it was last woken

    @property
    def pending(self) -> int:
        return sum(1 for t in self._pending if not t.done())

    def _lock_for(self, engine: Any) -> asyncio.Lock:
        entry = self._locks.get(id(engine))
        if entry is None or entry[0] is not engine:
            entry = self._locks[id(engine)] = (engine, asyncio.Lock())
        return entry[1]

    def _track(self, coro: Any, name: str) -> asyncio.Task[ReportResult]:
        task = asyncio.create_task(coro, name=name)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

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
        """Generate the report of a stored call in the background from what is given, with no job
        (see :func:`generate_report`); an unexpected error is logged (without call content), never
        raised into the call. Calls use :meth:`submit`, which survives the worker."""
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

        return self._track(run(), f"report-{call_id[:8]}")

    def submit(self, store: Any, engine: ReportEngine, tenant: str, call_id: str) -> asyncio.Task[ReportResult] | None:
        """Start the report of a call whose job this worker just enqueued. With :meth:`run` going
        (``serve``) it is woken and claims the job (``None`` is returned); otherwise a task claims
        this call's job when ``engine`` is free and generates it (:meth:`drain` waits for it)."""
        if self._wake is not None and self._idle is not None:
            self._idle.clear()
            self._wake.set()
            return None
        lock = self._lock_for(engine)

        async def run() -> ReportResult:
            async with lock:  # the job is claimed when the model is free: its lease is spent working
                try:
                    job = await asyncio.to_thread(
                        store.report_jobs.claim, self.worker_id, lease_s=self.lease_s, call=(tenant, call_id)
                    )
                except Exception as e:
                    logger.error("report job of call {} could not be claimed ({})", call_id[:8], type(e).__name__)
                    return ReportResult(status="failed", call_id=call_id, error=type(e).__name__)
                if job is None:
                    return ReportResult(status="skipped", call_id=call_id, error="the job is done or held by another worker")
                return await self._work(store, engine, job, None)

        return self._track(run(), f"report-{call_id[:8]}")

    async def run(self, store: Any, engine_for: EngineFor, *, worker_id: str | None = None) -> None:
        """Claim report jobs from the database and make their reports until cancelled (``serve``):
        at once when :meth:`submit` wakes it, else every ``poll_s`` seconds (jobs of workers that
        died). ``worker_id`` names this worker on the jobs it claims. Cancelled mid-report, the
        job is given back at once."""
        if worker_id is not None:
            self.worker_id = worker_id
        self._wake, self._idle = asyncio.Event(), asyncio.Event()
        try:
            while True:
                self._wake.clear()
                job: ReportJob | None = None
                try:
                    job = await asyncio.to_thread(store.report_jobs.claim, self.worker_id, lease_s=self.lease_s)
                except Exception as e:
                    logger.error("report jobs could not be claimed ({})", type(e).__name__)
                if job is None:
                    self._idle.set()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll_s)
                    continue
                self._idle.clear()
                try:
                    engine = await asyncio.to_thread(engine_for, job.pipeline)
                except Exception as e:
                    logger.error("no model for the report of call {} ({})", job.call_id[:8], type(e).__name__)
                    await asyncio.to_thread(store.report_jobs.release, job, retry_after_s=REPORT_RETRY_S)
                    continue
                await self._work(store, engine, job, self._lock_for(engine) if engine is not None else None)
        finally:
            self._wake = self._idle = None

    async def _work(
        self, store: Any, engine: ReportEngine | None, job: ReportJob, lock: asyncio.Lock | None
    ) -> ReportResult:
        """Make the report of a claimed job (see :func:`generate_report`), renewing the lease meanwhile."""
        cid = job.call_id
        if engine is None:
            logger.info("call {}: no post-call report (the pipeline's LLM is remote)", cid[:8])
            await asyncio.to_thread(store.report_jobs.drop, job)
            return ReportResult(status="skipped", call_id=cid, error="the pipeline's LLM is remote")
        if job.attempts > self.max_attempts:
            error = f"the report was not made in {job.attempts - 1} attempts (each stopped before it finished)"
            result = ReportResult(status="failed", call_id=cid, attempts=job.attempts - 1)
            try:
                return await _store_failed(store, job.tenant, cid, None, result, error, time.monotonic(), job)
            except Exception as e:
                logger.error("report for call {} could not be stored as failed ({})", cid[:8], type(e).__name__)
                return ReportResult(status="failed", call_id=cid, error=type(e).__name__)
        lease = asyncio.create_task(self._keep_lease(store, job), name=f"report-lease-{cid[:8]}")
        try:
            return await generate_report(
                store, engine, job.tenant, cid, turns=job.turns, call_date=job.call_date, engine_lock=lock, job=job
            )
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(store.report_jobs.release, job)  # another worker takes it now
            raise
        except Exception as e:
            logger.error("report for call {} could not be generated ({})", cid[:8], type(e).__name__)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(store.report_jobs.release, job, retry_after_s=REPORT_RETRY_S)
            return ReportResult(status="failed", call_id=cid, error=type(e).__name__)
        finally:
            lease.cancel()

    async def _keep_lease(self, store: Any, job: ReportJob) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                held = await asyncio.to_thread(store.report_jobs.extend, job, self.lease_s)
            except Exception as e:
                logger.warning("lease of the report job of call {} not renewed ({})", job.call_id[:8], type(e).__name__)
                continue
            if not held:
                logger.warning("report job of call {} was taken by another worker", job.call_id[:8])
                return

    async def drain(self, timeout: float | None = 60.0) -> int:
        """Wait for the reports started here (and, with :meth:`run` going, until it finds no job to
        claim); returns how many were still unfinished after ``timeout`` (those keep running; nothing
        is cancelled, and an unfinished job stays in the database for the next worker)."""
        waits: list[asyncio.Future[Any]] = [t for t in self._pending if not t.done()]
        idle = None
        if self._idle is not None and not self._idle.is_set():
            idle = asyncio.ensure_future(self._idle.wait())
            waits.append(idle)
        if not waits:
            return 0
        try:
            _done, still = await asyncio.wait(waits, timeout=timeout)
        finally:
            if idle is not None:
                idle.cancel()
        return len(still)
