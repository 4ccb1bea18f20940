"""``open_call``: how every call starts (see :mod:`voicecore.session`), and the storage lookups it makes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loguru import logger

from voicecore.config import ConfigError, PipelineConfig
from voicecore.model_pool import ModelPool
from voicecore.policy import (
    DEFAULT_POLICY,
    LocationViolation,
    Policy,
    PolicyError,
    check_pipeline_location,
    outbound_refusal,
)
from voicecore.records import CallRecord
from voicecore.services.conversation import PolicyContext
from voicecore.session.call import (
    CALL_ACTOR,
    DEFAULT_TENANT,
    RESTRICTED_NOTICE,
    CallEnded,
    CallSession,
)
from voicecore.storage.live_calls import LiveCallWriter, save_call
from voicecore.storage.tenants import UnknownTenant
from voicecore.transports.base import CallRefused, CallTransport

if TYPE_CHECKING:
    from voicecore.reports import ReportScheduler
    from voicecore.storage import Store


def outbound_check(store: Store, tenant: str, callee: str) -> str | None:
    """Why tenant ``tenant`` must not place (or go on with) an outbound call to ``callee``,
    or ``None`` when it may; blocking (run it in a thread). A bad number raises ``ValueError``."""
    if not callee:
        raise ValueError("an outbound call needs the number it goes to")
    return outbound_refusal(
        opted_out=store.subjects.is_opted_out(tenant, callee), restricted=store.subjects.is_restricted(tenant, callee)
    )


def _caller_state(store: Store, tenant: str, caller: str, policy: Policy) -> tuple[bool, dict[str, Any] | None]:
    """(restricted?, contact fields) for an identified caller; blocking (run in a thread)."""
    try:
        restricted = store.subjects.is_restricted(tenant, caller)
    except ValueError:  # not a phone number (an anonymous or SIP caller id): nothing can be on file
        return False, None
    contact = None
    if not restricted and policy.context.contact_fields and policy.retention.contacts > 0:
        try:
            contact = store.subjects.contact(tenant, caller, actor=CALL_ACTOR)
        except ValueError:
            contact = None
    return restricted, contact


async def _tenant_policy(store: Store | None, tenant: str) -> Policy:
    if store is None:
        return DEFAULT_POLICY
    try:
        return await asyncio.to_thread(store.tenants.policy, tenant)
    except UnknownTenant:
        raise CallRefused(f"unknown tenant {tenant!r}") from None
    except PolicyError as e:
        raise CallRefused(f"the policy of tenant {tenant!r} is invalid: {e}") from None


async def open_call(
    *,
    pool: ModelPool,
    config: PipelineConfig,
    transport: CallTransport,
    store: Store | None = None,
    tenant: str | None = None,
    record: CallRecord | None = None,
    reports: ReportScheduler | None = None,
    realtime: bool = True,
    greet: bool = True,
    on_prompt: Callable[[str], None] | None = None,
    worker_id: str | None = None,
) -> CallSession:
    """Start a call under the tenant's policy and return the running session: the one road
    for every call.

    ``tenant`` None is :data:`DEFAULT_TENANT`. The policy comes from ``store.tenants``
    (``DEFAULT_POLICY`` when ``store`` is None: nothing is stored). The pipeline's
    backends are checked against it and :class:`CallRefused` is raised (unknown tenant,
    invalid policy, a backend the policy does not allow) before any model loads. A
    restricted caller hears :data:`RESTRICTED_NOTICE`, nothing of the call is processed
    or stored, and the session ends itself (``session.closed``). Otherwise the session
    gets the policy's context builder (with the caller's allow-listed contact fields),
    recording as the policy allows (``consent``: asked first), opt-out handling, and at
    the end ``store.calls.save(record, policy)`` in a worker thread, then the post-call
    report on ``reports``. Finish the call with ``session.end(reason)``. With a ``worker_id``
    (``serve``) the open call is saved as it goes, held by that worker (see
    :mod:`voicecore.storage.live_calls`); the saves ride out a database outage.
    """
    tenant = tenant or DEFAULT_TENANT
    record = record or CallRecord(pipeline=config.name, transport=transport.name)
    record.tenant = tenant
    policy = await _tenant_policy(store, tenant)
    try:
        check_pipeline_location(policy, await asyncio.to_thread(pool.backends, config))
    except LocationViolation as e:
        raise CallRefused(
            f"pipeline {config.name!r} may not run under the policy {policy.name!r} of tenant {tenant!r}: "
            + "; ".join(e.reasons)
        ) from None
    except ConfigError as e:
        raise CallRefused(f"pipeline {config.name!r}: {e}") from None

    restricted, contact = False, None
    if store is not None and record.caller:
        restricted, contact = await asyncio.to_thread(_caller_state, store, tenant, record.caller, policy)
    if restricted:
        # Restriction of processing: a short notice, no listening, no recording, nothing stored.
        record.flags["restricted"] = True
        session = CallSession(
            config, pool, transport, record=record, realtime=realtime, greet=False, listen=False, policy=None
        )
        await session.start()
        logger.info(f"call {session.call_id[:8]}: the caller has restricted processing; notice only, nothing stored")
        session._speak_soon(session.say_and_end(RESTRICTED_NOTICE, "restricted"))
        return session

    context = PolicyContext(policy, history_messages=2 * config.llm.history_turns, contact=contact)
    on_ended: CallEnded | None = None
    writer = LiveCallWriter(store, record, policy, worker_id) if store is not None and worker_id else None
    if store is not None:

        async def on_ended(finished: CallRecord) -> None:
            try:
                if writer is not None:
                    stored = await writer.finish(finished)
                else:
                    stored = await save_call(store, finished, policy)
            except Exception as e:  # the call is over either way; say so loudly (no content in the message)
                logger.error(f"call {finished.call_id[:8]}: the call record could not be stored ({type(e).__name__})")
                return
            if reports is not None and stored and any(t.role == "caller" and t.text.strip() for t in finished.turns):
                engine = pool.llm(config.models.llm)
                if getattr(engine, "remote", False):
                    # Reports constrain a local model with a JSON grammar; a remote one is not asked.
                    logger.info(f"call {finished.call_id[:8]}: no post-call report (the pipeline's LLM is remote)")
                    return
                # The report's job is in the database (any worker may make it if this one stops); this
                # worker starts it at once, on the LLM's thread, yielding to live turns.
                try:
                    job = await asyncio.to_thread(
                        store.report_jobs.enqueue, tenant, finished.call_id, finished.turns, policy=policy
                    )
                except Exception as e:
                    logger.error(f"call {finished.call_id[:8]}: the report job could not be stored ({type(e).__name__})")
                    return
                if job is not None:
                    reports.submit(store, engine, tenant, finished.call_id)

    session = CallSession(
        config,
        pool,
        transport,
        record=record,
        context_builder=context,
        realtime=realtime,
        on_ended=on_ended,
        on_prompt=on_prompt,
        greet=greet,
        policy=policy,
        store=store,
        on_changed=writer.changed if writer is not None else None,
    )
    await session.start()
    if writer is not None:
        writer.changed()  # the call is open: its row says which worker holds it
    return session
