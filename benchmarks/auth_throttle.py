"""``python -m benchmarks.auth_throttle``: what a key-guessing flood costs the server, and a good caller.

A real ``serve`` app on 127.0.0.1 (no models: nothing here opens a call). For
``--seconds`` an attacker on 127.0.0.1 sends ``--attackers`` concurrent streams of
``GET /v1/me`` with well-formed but wrong API keys, while a tenant's client on
127.0.0.2 (another source address) sends ``GET /v1/me`` with its valid key every
``--interval-ms``. Figures:

- **attacker** (``attacker``): requests sent per second, how many got 401 (a scrypt key
  check ran) and how many 429 (refused by the throttle without a check);
- **scrypt checks per second** the flood could make the server run — the budget is
  ``burst`` (10) and then ``refill_per_s`` (1/s) per address;
- **good caller** (``valid_ms``): latency of the valid requests from the other address
  during the flood, p50/p95/max, and how many failed. Target: p95 < 100 ms.

Prints a table; writes ``auth_throttle.json`` (``voicecore.bench/1`` envelope) to ``--out``
(default ``benchmarks/results/auth_throttle-<timestamp>/``).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import (
    envelope,
    output_dir,
    stats,
    stats_row,
    text_table,
    write_json,
)
from voicecore.config import PROJECT_ROOT, load_pipeline
from voicecore.server import create_app, running_server
from voicecore.storage import Store

TARGETS = {"valid_p95_ms": 100.0}
WRONG_KEY = "vck_0123456789ab_" + "x" * 43


async def _flood(base: str, stop_at: float, counts: dict[str, int]) -> None:
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < stop_at:
            async with http.get(f"{base}/v1/me", headers={"Authorization": f"Bearer {WRONG_KEY}"}) as r:
                counts[str(r.status)] = counts.get(str(r.status), 0) + 1
                await r.read()


async def _good_caller(base: str, key: str, stop_at: float, interval: float, times: list[float],
                       failures: list[int]) -> None:  # fmt: skip
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            async with http.get(f"{base}/v1/me", headers={"Authorization": f"Bearer {key}"}) as r:
                await r.read()
                if r.status != 200:
                    failures.append(r.status)
            times.append((time.monotonic() - t0) * 1000)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))


async def run(seconds: float, attackers: int, interval_ms: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "data", key_dir=Path(tmp) / "keys")
        store.tenants.create("acme", actor="bench")
        key = store.tenants.create_api_key("acme", role="viewer", actor="bench")
        receptionist = load_pipeline(PROJECT_ROOT / "pipelines" / "receptionist.yaml")
        app = create_app(data_dir=Path(tmp) / "data", store=store, preload=False,
                         pipelines={receptionist.name: receptionist})  # fmt: skip
        counts: dict[str, int] = {}
        times: list[float] = []
        failures: list[int] = []
        async with running_server(app) as base:
            stop_at = time.monotonic() + seconds
            await asyncio.gather(
                *(_flood(base, stop_at, counts) for _ in range(attackers)),
                _good_caller(base, key, stop_at, interval_ms / 1000, times, failures),
            )
        store.close()
    sent = sum(counts.values())
    valid = stats(times)
    return {
        "attacker": {
            "requests": sent,
            "requests_per_s": round(sent / seconds, 1),
            "checked_401": counts.get("401", 0),
            "throttled_429": counts.get("429", 0),
            "scrypt_checks_per_s": round(counts.get("401", 0) / seconds, 2),
        },
        "valid_ms": valid,
        "valid_failures": len(failures),
        "targets": TARGETS,
        "meets_targets": bool(valid.get("p95") is not None and valid["p95"] < TARGETS["valid_p95_ms"] and not failures),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--attackers", type=int, default=8, help="Concurrent attacker connections.")
    parser.add_argument("--interval-ms", type=float, default=200.0, help="Between the good caller's requests.")
    parser.add_argument("--smoke", action="store_true", help="3 seconds, 2 attackers.")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    seconds, attackers = (3.0, 2) if args.smoke else (args.seconds, args.attackers)
    started = time.time()
    figures = asyncio.run(run(seconds, attackers, args.interval_ms))
    doc = envelope("auth_throttle", smoke=args.smoke, started=started,
                   config={"seconds": seconds, "attackers": attackers, "interval_ms": args.interval_ms})  # fmt: skip
    doc["results"] = figures
    a = figures["attacker"]
    print(text_table(["attacker", "requests/s", "401 (checked)", "429 (throttled)", "scrypt checks/s"],
                     [["127.0.0.1", a["requests_per_s"], a["checked_401"], a["throttled_429"],
                       a["scrypt_checks_per_s"]]]))  # fmt: skip
    print(text_table(["good caller (127.0.0.2)", "n", "p50", "p95", "max"],
                     [stats_row("valid /v1/me ms", figures["valid_ms"])]))  # fmt: skip
    print(f"failures of the good caller: {figures['valid_failures']}; meets targets: {figures['meets_targets']}")
    path = write_json(output_dir("auth_throttle", args.out) / "auth_throttle.json", doc)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
