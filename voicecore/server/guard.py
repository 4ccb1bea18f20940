"""What stands in front of every route: tokens out of URLs, body caps, auth first, a throttle.

:class:`Guard` is the outermost ASGI layer of ``serve``:

* **tokens out of URLs** — a ``token`` query parameter (how Vonage, Plivo, Exotel and
  Asterisk may carry a key) is taken out of the request's query string before any
  route, middleware or logger sees it, and kept in the scope for the route that
  authenticates with it (:func:`query_token`);
* **bodies capped** — a request body over :attr:`Guard.max_body` is refused with 413
  before it is read (``Content-Length``) or as soon as it grows past the cap (chunked);
* **auth before the body** — a ``/v1`` request is authenticated from its
  ``Authorization`` header before its body is read or parsed; the key it carried is
  handed to the route (:func:`api_key_of`);
* **failed authentication throttled per source address** — every key check that
  fails spends one of a small per-address budget (scrypt costs tens of
  milliseconds); an address with no budget left is refused at once, without a key
  check: 429 with ``Retry-After`` over HTTP, close 1008 on a media stream
  (:class:`AuthThrottle`).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

from loguru import logger

from voicecore.storage import ApiKeyInfo, Store

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]

QUERY_TOKEN_KEY = "voicecore.query_token"
API_KEY_STATE = "api_key"
#: Largest request body any route reads (the policy route has a smaller cap of its own).
MAX_BODY_BYTES = 1 << 20


class Throttled(Exception):
    """Too many failed key checks from one address; ``retry_after`` seconds until the next is allowed."""

    def __init__(self, retry_after: float):
        self.retry_after = retry_after
        super().__init__(f"too many failed authentications; retry in {retry_after:.0f} s")


class AuthThrottle:
    """A token bucket per source address for key checks that fail.

    Each address may fail ``burst`` checks in a row, then one more every
    ``1 / refill_per_s`` seconds. Valid keys spend nothing, so a caller with a valid
    key is never slowed by its own past; an attacker's key guesses cost one scrypt
    each only while its budget lasts. At most ``max_addresses`` addresses are
    remembered (the least recently seen are forgotten first)."""

    def __init__(self, *, burst: int = 10, refill_per_s: float = 1.0, max_addresses: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.burst = burst
        self.refill_per_s = refill_per_s
        self.max_addresses = max_addresses
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens, at)
        self.refused = 0

    def _tokens(self, address: str) -> float:
        tokens, at = self._buckets.get(address, (float(self.burst), self._clock()))
        return min(float(self.burst), tokens + (self._clock() - at) * self.refill_per_s)

    def check(self, address: str) -> None:
        """Raise :class:`Throttled` when ``address`` has no budget left for a key check."""
        tokens = self._tokens(address)
        if tokens < 1.0:
            self.refused += 1
            raise Throttled(math.ceil((1.0 - tokens) / self.refill_per_s))

    def failed(self, address: str) -> None:
        """A key check from ``address`` failed: it spends one of the address's budget."""
        self._buckets[address] = (self._tokens(address) - 1.0, self._clock())
        self._buckets.move_to_end(address)
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)


async def check_key(store: Store, throttle: AuthThrottle, key: str | None, address: str) -> ApiKeyInfo | None:
    """The key's tenant and role, or None (a failure counted against ``address``); raises
    :class:`Throttled` without checking when the address has failed too often."""
    throttle.check(address)
    info = await asyncio.to_thread(store.tenants.authenticate, key) if key else None
    if info is None:
        throttle.failed(address)
    return info


def client_address(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def query_token(scope: dict[str, Any]) -> str | None:
    """The ``token`` query parameter the request came with (taken out of its URL by the guard)."""
    value = scope.get(QUERY_TOKEN_KEY)
    return str(value) if value else None


def api_key_of(scope: dict[str, Any]) -> ApiKeyInfo | None:
    """The API key a ``/v1`` request was authenticated with (by the guard, before its body was read)."""
    state = scope.get("state") or {}
    value = state.get(API_KEY_STATE)
    return value if isinstance(value, ApiKeyInfo) else None


def _strip_query_token(scope: dict[str, Any]) -> None:
    raw = scope.get("query_string") or b""
    if b"token" not in raw:
        return
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    tokens = [v for k, v in pairs if k == "token"]
    if not tokens:
        return
    scope[QUERY_TOKEN_KEY] = tokens[0]
    # The scope is the server's own: uvicorn's log line for this request reads it after this.
    scope["query_string"] = urlencode([(k, v) for k, v in pairs if k != "token"]).encode("latin-1")


async def _send_json(send: Callable[[dict[str, Any]], Awaitable[None]], status: int, detail: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:  # fmt: skip
    body = json.dumps({"detail": detail}).encode("ascii")
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    *(headers or [])],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that gives the app the body read already, then waits on the real one."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class Guard:
    """The ASGI layer described in the module docstring, around ``app``."""

    def __init__(self, app: ASGIApp, store: Store, *, throttle: AuthThrottle | None = None,
                 max_body: int = MAX_BODY_BYTES, api_prefix: str = "/v1/"):  # fmt: skip
        self.app = app
        self.store = store
        self.throttle = throttle or AuthThrottle()
        self.max_body = max_body
        self.api_prefix = api_prefix

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope.get("type")
        if kind == "websocket":
            _strip_query_token(scope)
        elif kind == "http":
            _strip_query_token(scope)
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                await _send_json(send, 413, f"request body larger than {self.max_body} bytes")
                return
            if scope.get("path", "").startswith(self.api_prefix) and not await self._authenticate(scope, send):
                return
            body = await self._read_body(receive)
            if body is None:
                await _send_json(send, 413, f"request body larger than {self.max_body} bytes")
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    async def _read_body(self, receive: Any) -> bytes | None:
        """The whole request body, or None once it grows past the cap (nothing more is read)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message.get("type") != "http.request":
                break  # the client went away: the app sees an empty body, then the disconnect
            chunk = message.get("body") or b""
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        return b"".join(chunks)

    async def _authenticate(self, scope: dict[str, Any], send: Any) -> bool:
        """A ``/v1`` request's key, checked before its body is read; False when the answer was sent."""
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, credentials = header.partition(" ")
        challenge = [(b"www-authenticate", b"Bearer")]
        if scheme.lower() != "bearer" or not credentials.strip():
            await _send_json(send, 401, "missing API key (Authorization: Bearer vck_...)", challenge)
            return False
        address = client_address(scope)
        try:
            info = await check_key(self.store, self.throttle, credentials.strip(), address)
        except Throttled as e:
            logger.warning("too many failed API key checks from one address; refusing for {:.0f} s", e.retry_after)
            await _send_json(send, 429, str(e), [(b"retry-after", str(int(e.retry_after)).encode())])
            return False
        if info is None:
            await _send_json(send, 401, "invalid or revoked API key", challenge)
            return False
        scope.setdefault("state", {})[API_KEY_STATE] = info
        return True
