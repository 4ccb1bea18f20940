"""One-time call tokens shared by every worker (issue 12, item 3): the token a provider gets from
one worker's answer URL opens a media stream on another worker, once.

Two ``serve`` apps on one PostgreSQL database (a real cluster, tests/pg.py) stand for two
workers behind a load balancer: Twilio fetches the answer URL from worker A (signed with the
tenant's auth token), and its media stream lands on worker B.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_provider_answers import TWILIO_TOKEN, media_target, send, signed_request

from voicecore.server import create_app, running_server
from voicecore.server.guard import AuthThrottle
from voicecore.storage import Store
from voicecore.storage.call_tokens import is_call_token
from voicecore.testing.callers import TwilioClient, wait_stored_call


def worker(tmp_path: Path, name: str) -> Store:
    return Store(tmp_path / name, key_dir=tmp_path / f"{name}-keys")


# --------------------------------------------------------------------------- the repository, both databases


@pytest.mark.usefixtures("database")
def test_a_token_is_redeemed_once_and_only_for_its_call(store: Store) -> None:
    store.tenants.create("acme", actor="test", with_key=False)
    token = store.call_tokens.mint("acme", "receptionist", "CA1", provider="twilio", caller="+14155550100",
                                   callee="+14155550199")  # fmt: skip
    assert is_call_token(token) and store.call_tokens.unused() == 1
    peeked = store.call_tokens.peek(token)
    assert peeked is not None and peeked.tenant == "acme" and peeked.caller == "+14155550100"
    assert store.call_tokens.redeem(token, "CA2", "twilio") is None  # another call: refused, and used up
    assert store.call_tokens.redeem(token, "CA1", "twilio") is None
    token = store.call_tokens.mint("acme", None, "CA3", provider="twilio")
    assert store.call_tokens.redeem(token, "CA3", "plivo") is None  # another provider's stream
    token = store.call_tokens.mint("acme", "receptionist", "CA4", provider="twilio", caller="+14155550100")
    grant = store.call_tokens.redeem(token, "CA4", "twilio")
    assert grant is not None and (grant.tenant, grant.pipeline, grant.caller) == ("acme", "receptionist", "+14155550100")
    assert store.call_tokens.redeem(token, "CA4", "twilio") is None  # once
    assert store.call_tokens.announced_to_other_tenant("CA4", "globex")
    assert not store.call_tokens.announced_to_other_tenant("CA4", "acme")


@pytest.mark.usefixtures("database")
def test_the_database_holds_no_usable_token_and_no_number_in_clear(store: Store) -> None:
    store.tenants.create("acme", actor="test", with_key=False)
    token = store.call_tokens.mint("acme", None, "CA1", provider="twilio", caller="+14155550100")
    rows = store.db.rows("SELECT * FROM call_tokens")
    dump = repr(rows)
    assert token not in dump and token[2:] not in dump and "4155550100" not in dump


@pytest.mark.usefixtures("database")
def test_erasure_removes_the_subjects_pending_tokens(store: Store) -> None:
    store.tenants.create("acme", actor="test", with_key=False)
    theirs = store.call_tokens.mint("acme", None, "CA1", provider="twilio", caller="+14155550100")
    as_callee = store.call_tokens.mint("acme", None, "CA2", provider="plivo", caller="+14155550111",
                                       callee="14155550100")  # fmt: skip  (Plivo sends numbers without +)
    other = store.call_tokens.mint("acme", None, "CA3", provider="twilio", caller="+14155550122")
    store.subjects.erase("acme", "(415) 555-0100", actor="test")
    assert store.call_tokens.peek(theirs) is None and store.call_tokens.peek(as_callee) is None
    assert store.call_tokens.peek(other) is not None  # another caller's call is untouched


@pytest.mark.usefixtures("database")
def test_an_expired_token_is_refused(tmp_path: Path, store: Store) -> None:
    store.tenants.create("acme", actor="test", with_key=False)
    token = store.call_tokens.mint("acme", None, ttl_s=0.0)
    assert store.call_tokens.redeem(token) is None


def test_two_workers_racing_for_one_token_one_wins(tmp_path: Path, pg_url: str) -> None:
    stores = [worker(tmp_path, n) for n in ("a", "b", "c", "d")]
    stores[0].tenants.create("acme", actor="test", with_key=False)
    for _ in range(20):
        token = stores[0].call_tokens.mint("acme", None, "CA1", provider="twilio")
        wins: list[object] = []
        start = threading.Barrier(len(stores))

        def take(s: Store, token: str = token) -> None:
            start.wait()
            grant = s.call_tokens.redeem(token, "CA1", "twilio")
            if grant is not None:
                wins.append(grant)

        threads = [threading.Thread(target=take, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1, wins
    for s in stores:
        s.close()


# --------------------------------------------------------------------------- through two workers


@pytest.fixture
async def two_workers(tmp_path: Path, pg_url: str, receptionist: Any) -> AsyncIterator[list[tuple[str, Any]]]:
    bases = []
    async with contextlib_stack() as stack:
        for name in ("a", "b"):
            store = worker(tmp_path, name)
            if name == "a":
                store.tenants.create("acme", actor="test")
                store.providers.set("acme", "twilio", {"auth_token": TWILIO_TOKEN, "account_sid": "ACacme"},
                                    actor="test")  # fmt: skip
            app = create_app(data_dir=tmp_path / name, store=store, preload=False,
                             pipelines={receptionist.name: receptionist}, auth_throttle=AuthThrottle(burst=1000))  # fmt: skip
            base = await stack.enter_async_context(running_server(app))
            app.state.vc.public_url = base  # what each worker is reached at (signatures are for that URL)
            bases.append((base, app))
        yield bases


def contextlib_stack():  # noqa: ANN201
    import contextlib

    return contextlib.AsyncExitStack()


async def answer_on(base: str) -> tuple[str, str]:
    """Twilio fetching the answer URL of the worker at ``base``: (media URL, one-time token)."""
    import test_provider_answers as answers

    saved = answers.PUBLIC
    answers.PUBLIC = base  # signed for the URL Twilio really calls
    try:
        status, _, body = await send(base, signed_request("twilio", {}))
    finally:
        answers.PUBLIC = saved
    assert status == 200, body
    url, token, _ = media_target("twilio", body)
    return url, token


@pytest.mark.models
async def test_a_token_from_worker_a_opens_the_stream_on_worker_b_once(two_workers) -> None:
    (base_a, app_a), (base_b, app_b) = two_workers
    url, token = await answer_on(base_a)
    assert url.startswith(base_a.replace("http", "ws"))
    ws_b = f"{base_b.replace('http', 'ws')}/ws/twilio"
    first = TwilioClient(ws_b, token=token, call_sid="CA0001", label="on-b")
    try:
        assert await first.start(), f"upgrade refused: HTTP {first.handshake_status}"
        assert await first.wait_media_after(0.0, 30) is not None, (
            f"worker B did not take the stream ({first.close_code} {first.close_reason})")
        await asyncio.sleep(0.3)
        await first.hangup()
    finally:
        await first.close()
    again = TwilioClient(ws_b, token=token, call_sid="CA0001", label="again")
    try:
        assert await again.start(mic=False)
        assert await again.wait_closed(10), "the used token opened a second stream"
    finally:
        await again.close()
    assert again.close_code == 1008 and not again.media
    stored = await wait_stored_call(app_a.state.vc.store, "acme", first.ids)  # visible from worker A
    assert stored is not None and stored.transport == "twilio"
