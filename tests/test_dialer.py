"""ProviderDialer against a small provider API served on 127.0.0.1 by the test.

The server answers as the providers document (Twilio 201 with the call's sid, 401 with error
20003; Telnyx ``data.call_control_id``; Vonage ``uuid``) or misbehaves (500, a body that is not
JSON, no answer at all); the dialer turns each into the DialResult the campaign acts on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from aiohttp import web
from test_dialing import CREDENTIALS, TOKEN, VONAGE_PUBLIC, request

from voicecore.transports.dialer import ProviderDialer


class FakeApi:
    """One provider API endpoint; ``mode`` says how it answers the next request."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.base = ""

    async def handle(self, http: web.Request) -> web.StreamResponse:
        body = await http.read()
        self.requests.append({"path": http.path, "headers": dict(http.headers), "body": body})
        if self.mode == "hang":
            await self.release.wait()  # never answers while the test runs
        if self.mode == "500":
            return web.Response(status=500, text="<html>Internal Server Error</html>", content_type="text/html")
        if self.mode == "malformed":
            return web.Response(status=201, text='{"sid": "CA', content_type="application/json")
        if http.path.startswith("/2010-04-01/"):
            sid = http.match_info.get("sid", "")
            user, _, password = base64.b64decode(http.headers.get("Authorization", "Basic ").split()[1]).decode().partition(":")
            if (user, password) != (sid, CREDENTIALS["twilio"]["auth_token"]) or self.mode == "401":
                # an API that echoes what it was given: the dialer must not pass it on
                return web.json_response({"code": 20003, "message": f"Authenticate ({password})", "status": 401},
                                         status=401)  # fmt: skip
            return web.json_response({"sid": "CA" + "d" * 32, "status": "queued"}, status=201)
        if http.path == "/v2/calls":
            if http.headers.get("Authorization") != f"Bearer {CREDENTIALS['telnyx']['api_key']}":
                return web.json_response({"errors": [{"code": "10009", "title": "Authentication failed"}]}, status=401)
            return web.json_response({"data": {"call_control_id": "v3:fake-1", "record_type": "call"}})
        if http.path == "/v1/calls":
            try:
                jwt.decode(http.headers.get("Authorization", "").removeprefix("Bearer "), VONAGE_PUBLIC,
                           algorithms=["RS256"])  # fmt: skip
            except jwt.PyJWTError:
                return web.json_response({"type": "https://developer.nexmo.com/api-errors#unauthorized",
                                          "title": "Unauthorized"}, status=401)  # fmt: skip
            return web.json_response({"uuid": "63f61863-fake", "status": "started"}, status=201)
        if http.path.startswith("/v1/Account/"):
            expected = f"{CREDENTIALS['plivo']['auth_id']}:{CREDENTIALS['plivo']['auth_token']}"
            if http.headers.get("Authorization") != "Basic " + base64.b64encode(expected.encode()).decode():
                return web.Response(status=401, text="Could not verify your access level for that URL.")
            return web.json_response({"message": "call fired", "request_uuid": "9834029e-fake", "api_id": "97ce"},
                                     status=201)  # fmt: skip
        return web.Response(status=404)


@pytest.fixture
async def api() -> AsyncIterator[FakeApi]:
    fake = FakeApi()
    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{sid}/Calls.json", fake.handle)
    app.router.add_post("/v2/calls", fake.handle)
    app.router.add_post("/v1/calls", fake.handle)
    app.router.add_post("/v1/Account/{auth_id}/Call/", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.base = f"http://127.0.0.1:{port}"
    yield fake
    fake.release.set()
    await runner.cleanup()


def dialer_for(api: FakeApi, timeout_s: float = 5.0) -> ProviderDialer:
    return ProviderDialer(api_bases={p: api.base for p in ("twilio", "telnyx", "vonage", "plivo")}, timeout_s=timeout_s)


async def test_a_placed_call_through_each_provider(api: FakeApi) -> None:
    async with dialer_for(api) as dialer:
        twilio = await dialer.dial(request("twilio"), CREDENTIALS["twilio"])
        telnyx = await dialer.dial(request("telnyx"), CREDENTIALS["telnyx"])
        vonage = await dialer.dial(request("vonage"), CREDENTIALS["vonage"])
        plivo = await dialer.dial(request("plivo"), CREDENTIALS["plivo"])
        plivo_wrong = await dialer.dial(request("plivo"), CREDENTIALS["plivo"] | {"auth_token": "wrong-token-123"})
    assert (plivo.ok, plivo.provider_call_id) == (True, "9834029e-fake")
    assert (plivo_wrong.auth_failed, plivo_wrong.error_code) == (True, "http_401")
    assert (twilio.ok, twilio.provider_call_id) == (True, "CA" + "d" * 32)
    assert (telnyx.ok, telnyx.provider_call_id) == (True, "v3:fake-1")
    assert (vonage.ok, vonage.provider_call_id) == (True, "63f61863-fake")
    assert [r["path"] for r in api.requests] == [
        f"/2010-04-01/Accounts/{CREDENTIALS['twilio']['account_sid']}/Calls.json", "/v2/calls", "/v1/calls",
        f"/v1/Account/{CREDENTIALS['plivo']['auth_id']}/Call/", f"/v1/Account/{CREDENTIALS['plivo']['auth_id']}/Call/"]
    assert b"To=%2B14155550199" in api.requests[0]["body"]
    assert json.loads(api.requests[1]["body"])["stream_auth_token"] == TOKEN


async def test_wrong_credentials_fail_auth_and_are_not_echoed(api: FakeApi) -> None:
    wrong = CREDENTIALS["twilio"] | {"auth_token": "a-wrong-auth-token-987"}
    async with dialer_for(api) as dialer:
        result = await dialer.dial(request("twilio"), wrong)
        telnyx = await dialer.dial(request("telnyx"), CREDENTIALS["telnyx"] | {"api_key": "KEYwrong"})
    assert not result.ok and result.auth_failed and not result.retryable and result.error_code == "20003"
    assert result.error_message and "a-wrong-auth-token-987" not in result.error_message and "***" in result.error_message
    assert telnyx.auth_failed and telnyx.error_code == "10009"


async def test_server_errors_and_malformed_answers(api: FakeApi) -> None:
    async with dialer_for(api) as dialer:
        api.mode = "500"
        failed = await dialer.dial(request("twilio"), CREDENTIALS["twilio"])
        api.mode = "malformed"
        malformed = await dialer.dial(request("twilio"), CREDENTIALS["twilio"])
    assert (failed.ok, failed.error_code, failed.retryable, failed.auth_failed) == (False, "http_500", True, False)
    assert (malformed.ok, malformed.error_code, malformed.retryable) == (False, "malformed", False)


async def test_an_api_that_never_answers_times_out(api: FakeApi) -> None:
    api.mode = "hang"
    started = time.monotonic()
    async with dialer_for(api, timeout_s=0.5) as dialer:
        result = await dialer.dial(request("twilio"), CREDENTIALS["twilio"])
    elapsed = time.monotonic() - started
    assert (result.ok, result.error_code, result.retryable) == (False, "timeout", True)
    assert len(api.requests) == 1  # it did reach the server, which kept quiet
    assert elapsed < 10  # 0.5 s configured; generous for a busy machine


async def test_an_unreachable_api_is_a_retryable_failure() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with ProviderDialer(api_bases={"twilio": f"http://127.0.0.1:{port}"}, timeout_s=5) as dialer:
        result = await dialer.dial(request("twilio"), CREDENTIALS["twilio"])
    assert (result.ok, result.error_code, result.retryable, result.auth_failed) == (False, "connection_failed", True, False)


async def test_missing_credentials_send_nothing(api: FakeApi) -> None:
    async with dialer_for(api) as dialer:
        result = await dialer.dial(request("telnyx"), {"api_key": "KEYonly"})
    assert not result.ok and result.auth_failed and not result.retryable and result.error_code == "credentials"
    assert result.error_message and "connection_id" in result.error_message
    assert api.requests == []


async def test_the_api_host_comes_from_the_environment(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICECORE_TELNYX_API_BASE", api.base)
    dialer = ProviderDialer()
    assert dialer.api_base("telnyx") == api.base and dialer.api_base("twilio") is None
    try:
        result = await dialer.dial(request("telnyx"), CREDENTIALS["telnyx"])
    finally:
        await dialer.close()
    assert result.ok and api.requests[0]["path"] == "/v2/calls"
