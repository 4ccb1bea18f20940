"""``voicecore bench outbound``: dial-to-greeting latency of campaign calls.

A campaign of N contacts on the real server app (in process, the embedded default models)
dials through a fake Twilio REST API on 127.0.0.1 (``voicecore.testing.provider_apis``, written
from Twilio's documentation): the dialer's create-call request, the provider "answering", the
media stream opened back to ``serve`` with the call's one-time token, and the agent's greeting
on the line. Per call:

- **answer → greeting** (``answer_to_greeting_ms``): from the moment the callee picked up to
  the first agent audio they hear — the figure a callee feels;
- **stream → greeting** (``stream_to_greeting_ms``): from the media stream's ``start`` to the
  first agent audio (voicecore's part of it);
- **dial → greeting** (``dial_to_greeting_ms``): from the create-call request to the first
  agent audio (includes the fake's ring time, ``ring_s``).

Calls go one after another (``--max-concurrent 1``) unless told otherwise, so the figures are
latency, not contention.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    envelope,
    output_dir,
    stats,
    stats_row,
    text_table,
    write_json,
)

TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "bench-twilio-auth-token"


def run(*, smoke: bool = False, out: str | Path | None = None, calls: int = 10, max_concurrent: int = 1,
        pipeline: str = "receptionist") -> tuple[dict[str, Any], Path]:
    return asyncio.run(_run(smoke=smoke, out=out, calls=calls, max_concurrent=max_concurrent, pipeline=pipeline))


async def _run(*, smoke: bool, out: str | Path | None, calls: int, max_concurrent: int,
               pipeline: str) -> tuple[dict[str, Any], Path]:  # fmt: skip
    import os

    from voicecore.server import create_app, running_server
    from voicecore.storage import Store
    from voicecore.testing.inference import free_port
    from voicecore.testing.provider_apis import FakeTwilioApi, Scenario

    started = time.time()
    folder = output_dir("outbound", out)
    n = 2 if smoke else max(1, calls)
    doc = envelope("outbound", smoke=smoke, started=started, config={
        "calls": n, "max_concurrent": max_concurrent, "pipeline": pipeline, "provider": "twilio (fake REST API)",
    })  # fmt: skip
    numbers = [f"+1415555{3000 + i:04d}" for i in range(n)]
    data_dir = folder / "voicecore-data"
    store = Store(data_dir, allow_insecure_webhooks=True)
    store.tenants.create("bench", actor="bench")
    store.providers.set("bench", "twilio", {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN}, actor="bench")
    store.contacts.import_file("bench", ("phone\n" + "\n".join(numbers) + "\n").encode(), segment="bench",
                               actor="bench")  # fmt: skip
    port = free_port()
    app = create_app(data_dir=data_dir, store=store, pipeline=pipeline, public_url=f"http://127.0.0.1:{port}",
                     dialer_poll_s=0.2)  # fmt: skip
    async with FakeTwilioApi(TWILIO_SID, TWILIO_TOKEN, scenario=Scenario(script=(), ring_s=0.3, hold_s=0.5)) as fake:
        os.environ["VOICECORE_TWILIO_API_BASE"] = fake.base_url
        try:
            async with running_server(app, port=port):
                store.campaigns.create("bench", "bench", pipeline=pipeline, segment="bench", from_number="+14155550100",
                                       provider="twilio", window="daily 00:00-24:00", max_concurrent=max_concurrent,
                                       max_attempts=1, actor="bench")  # fmt: skip
                store.campaigns.start("bench", "bench", actor="bench")
                app.state.vc.dialer.wake()
                deadline = time.monotonic() + 60 + 30 * n
                while store.campaigns.status("bench", "bench").by_status != {"done": n}:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the outbound benchmark's campaign did not finish in time")
                    await asyncio.sleep(0.2)
                outcome = store.campaigns.status("bench", "bench").by_outcome
        finally:
            os.environ.pop("VOICECORE_TWILIO_API_BASE", None)
    store.close()
    rows = []
    for c in fake.calls:
        rows.append({
            "to": c.to,
            "answer_to_greeting_ms": _ms(c.answered_at, c.first_agent_audio_at),
            "stream_to_greeting_ms": _ms(c.stream_started_at, c.first_agent_audio_at),
            "dial_to_greeting_ms": _ms(c.received_at, c.first_agent_audio_at),
            "stream_error": c.stream_error,
        })  # fmt: skip
    doc["summary"] = {
        "calls": len(rows),
        "outcomes": outcome,
        **{k: stats([r[k] for r in rows]) for k in ("answer_to_greeting_ms", "stream_to_greeting_ms",
                                                    "dial_to_greeting_ms")},
    }
    doc["calls"] = rows
    doc["duration_s"] = round(time.time() - started, 1)
    write_json(folder / "outbound.json", doc)
    return doc, folder


def _ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((b - a) * 1000, 1)


def report(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    rows = [stats_row("answer → first agent audio", s["answer_to_greeting_ms"]),
            stats_row("stream start → first agent audio", s["stream_to_greeting_ms"]),
            stats_row("create-call request → first agent audio", s["dial_to_greeting_ms"])]  # fmt: skip
    return (f"outbound: {s['calls']} campaign calls through the fake Twilio API, outcomes {s['outcomes']}\n"
            + text_table(["ms", "n", "p50", "p95", "max"], rows))
