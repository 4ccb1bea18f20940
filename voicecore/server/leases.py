"""A worker's lease (see :mod:`voicecore.storage.workers`): held while ``serve`` runs.

:func:`hold_lease` runs beside the server: it registers the worker, renews the lease every
third of ``lease_s``, marks it ``draining`` on SIGTERM, and reaps: a worker whose lease ran out
is declared lost and its open calls are closed as ``worker_lost``. A worker reaps only after its
own heartbeats have gone through for a whole lease time, so after a database outage (when no
worker could renew) nobody closes the calls of workers that are merely catching up.
"""

from __future__ import annotations

import asyncio
import random
import time

from loguru import logger

from voicecore.server.state import ServerState
from voicecore.storage.live_calls import database_unreachable


async def hold_lease(state: ServerState) -> None:
    """Run until cancelled (the lifespan's end, after which :func:`release_lease` says ``stopped``)."""
    workers, me, lease_s = state.store.workers, state.worker_id, state.lease_s
    registered = False
    healthy_since: float | None = None
    draining_said = False
    beats = 0
    while True:
        try:
            if not registered:
                await asyncio.to_thread(workers.register, me, lease_s=lease_s)
                registered = True
                logger.info(f"worker {me} holds a {lease_s:g} s lease")
            elif not await asyncio.to_thread(workers.heartbeat, me, lease_s=lease_s):
                # Declared lost (a pause longer than the lease): its calls were closed elsewhere.
                logger.error(f"worker {me} had lost its lease; its open calls were closed by another worker")
                registered = False
                healthy_since = None
                continue
            if state.draining and not draining_said:
                await asyncio.to_thread(workers.set_state, me, "draining")
                draining_said = True
            now = time.monotonic()
            healthy_since = healthy_since if healthy_since is not None else now
            if now - healthy_since >= lease_s:
                for lost in await asyncio.to_thread(workers.reap, me):
                    state.metrics.workers_reaped += 1
                    state.metrics.calls_lost += len(lost.calls)
            beats += 1
            if beats % 1000 == 0:  # rows of workers gone for a week
                await asyncio.to_thread(workers.forget_gone)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            healthy_since = None
            if database_unreachable(e):
                logger.warning(f"worker {me}: lease not renewed, the database is unreachable ({type(e).__name__})")
            else:
                logger.error(f"worker {me}: lease not renewed ({e!r})")
        await asyncio.sleep(lease_s / 3 * random.uniform(0.8, 1.0))


async def release_lease(state: ServerState) -> None:
    """The worker stops cleanly: its lease is given up (its calls were ended and stored)."""
    try:
        await asyncio.to_thread(state.store.workers.set_state, state.worker_id, "stopped")
    except Exception as e:
        logger.warning(f"worker {state.worker_id}: lease not released ({type(e).__name__}); it runs out by itself")
