"""Fuzz the admin API from its own OpenAPI document (schemathesis), in a bounded run.

Schemathesis reads ``/openapi.json`` from the app (``create_app`` with the API router) and
sends generated requests to every operation, with an admin key (every route reachable) and
with a viewer key (the 403 paths). Checks: no 5xx answer, every status code and content type
is one the document declares, and every JSON answer matches its declared schema. Bounded:
``MAX_EXAMPLES`` generated cases per operation and key, no deadline per case (scrypt on every
request), the schema loaded once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_api_permissions import build_app, make_tenant

from voicecore.server import api
from voicecore.storage import MASTER_KEY_ENV, Store

MAX_EXAMPLES = int(os.environ.get("VOICECORE_FUZZ_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory: pytest.TempPathFactory, receptionist: Any) -> dict[str, Any]:
    saved = os.environ.pop(MASTER_KEY_ENV, None)
    data_dir: Path = tmp_path_factory.mktemp("fuzz-data")
    store = Store(data_dir, allow_insecure_webhooks=True)  # no DNS lookups for generated hosts
    tenant = make_tenant(store, "acme", 1)
    make_tenant(store, "globex", 2)
    app = build_app(store, data_dir, receptionist)
    yield {"app": app, "store": store, "keys": tenant.keys}
    store.close()
    if saved is not None:
        os.environ[MASTER_KEY_ENV] = saved


def without_lifespan(app: Any) -> Any:
    """``app`` with its lifespan answered but not run: no background workers (the retention sweeper,
    the webhook worker) start, so no generated webhook URL is ever called."""

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        else:
            await app(scope, receive, send)

    return asgi


@pytest.fixture(scope="module")
def api_schema(fuzz_world: dict[str, Any]) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", without_lifespan(fuzz_world["app"]))


def test_the_document_covers_every_route(api_schema: Any) -> None:
    documented = {
        (op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations() if op.ok().path.startswith("/v1/")
    }
    assert documented == {(m, p) for m, p, _ in api.ROUTES}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
@pytest.mark.parametrize("role", ["admin", "viewer"])
@pytest.mark.parametrize("route", api.ROUTES, ids=[f"{m} {p}" for m, p, _ in api.ROUTES])
def test_fuzz(api_schema: Any, fuzz_world: dict[str, Any], route: tuple[str, str, str], role: str, mode: Any) -> None:
    method, path, _ = route
    operation = api_schema[path][method]
    headers = {"Authorization": f"Bearer {fuzz_world['keys'][role]}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    run()


# --------------------------------------------------------------------------- hostile bodies (issue 11.6)

BODY_ROUTES = [(m, p) for m, p, _ in api.ROUTES if m in ("POST", "PUT", "PATCH")]


def _hostile_bodies() -> Any:
    """JSON bodies a client may send that the schema-driven run does not generate: lone
    surrogates in any field, nesting far deeper than any parser's recursion, odd numbers."""
    from hypothesis import strategies as st

    surrogate = st.sampled_from(["\ud800", "\udfff", "a\ud83d", "\udc00b"])
    scalar = st.one_of(surrogate, st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                       st.none(), st.text(max_size=20))  # fmt: skip
    fields = st.sampled_from(["phone", "url", "events", "description", "format", "restricted", "rotate_secret",
                              "version", "name", "retention", "x"])  # fmt: skip
    flat = st.dictionaries(fields, st.one_of(scalar, st.lists(scalar, max_size=3)), min_size=1, max_size=4).map(
        lambda d: json.dumps(d).encode()
    )
    deep = st.tuples(st.integers(2_000, 40_000), st.sampled_from(["[", "{\"a\":"])).map(
        lambda t: (t[1] * t[0] + ("1" if t[1] == "[" else "1") + ("]" if t[1] == "[" else "}") * t[0]).encode()
    )
    raw = st.sampled_from([b'{"phone": "\\ud800"}', b'{"url": "\\udfff"}', b"\xff\xfe", b'{"phone": 1e999999}'])
    return st.one_of(flat, deep, raw)


@pytest.mark.parametrize("route", BODY_ROUTES, ids=[f"{m} {p}" for m, p in BODY_ROUTES])
def test_fuzz_hostile_bodies_never_get_a_server_error(fuzz_world: dict[str, Any], route: tuple[str, str]) -> None:
    import asyncio

    from hypothesis import strategies as st
    from test_api_permissions import AsgiClient

    method, path = route
    path = path.replace("{endpoint_id}", "wh_0000").replace("{delivery_id}", "dl_0000")
    client = AsgiClient(without_lifespan(fuzz_world["app"]))
    key = fuzz_world["keys"]["admin"]

    @given(body=_hostile_bodies(), ctype=st.sampled_from(["application/json", "application/yaml"]))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)  # fmt: skip
    def run(body: bytes, ctype: str) -> None:
        reply = asyncio.run(client.request(method, path, key=key, content=body, content_type=ctype))
        assert reply.status < 500, (method, path, body[:80], reply.status, reply.text[:200])
        json.loads(reply.body)  # the answer is JSON whatever was sent

    run()
