"""The asyncio shell around a provider protocol: one telephony media WebSocket = one call.

``MediaStreamCall.run()`` owns the socket for the call's whole life:

1. the upgrade request's headers and query go to ``protocol.handshake``;
2. frames go through the protocol; the first ``CallStart`` is authenticated
   (one-time call token, provider stream secret, agent API key or the provider's
   own signed JWT) *before* any pipeline starts — a missing or wrong one closes the
   socket with 1008 and nothing else happens;
3. caller audio, DTMF and mark acknowledgements go to the running call
   (:class:`~voicecore.transports.base.LiveCall`); agent frames, marks and
   clears come back through :class:`MediaStreamTransport`;
4. an event the protocol does not know is logged at DEBUG, counted
   (``on_unknown_event``) and ignored;
5. a ``ProtocolError`` (or a message flood) closes this call with the protocol's
   close code and a logged reason; the record of what was said is kept; the
   server and every other call go on;
6. ``stop``, hang-up, socket close or server shutdown end the call and close
   its record, with the reason.

Sockets are reached through the small :class:`MediaSocket` protocol
(:class:`StarletteMediaSocket` adapts Starlette's WebSocket), so the same shell
serves anything that can send and receive frames.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from loguru import logger

from voicecore.records import CallRecord
from voicecore.telephony.base import (
    CLOSE_POLICY_VIOLATION,
    CallStart,
    CallStop,
    Dtmf,
    MarkPlayed,
    MediaIn,
    Message,
    ProtocolError,
    ProviderProtocol,
    UnknownEvent,
)
from voicecore.transports.base import CallRefused, CallTransport, LiveCall

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013
#: The WebSocket layer's hard cap on a frame; protocols refuse frames over 64 KiB themselves.
WS_MAX_FRAME = 1 << 20

_TRANSPORT_ERROR_CODES = {
    1002: "WebSocket protocol error",
    1003: "unsupported frame type",
    1007: "invalid frame payload (e.g. text that is not UTF-8)",
    1009: f"frame larger than {WS_MAX_FRAME} bytes",
}


class SocketClosed(Exception):
    """The peer closed the socket (or it broke)."""


class MediaSocket(Protocol):
    """What the shell needs from a WebSocket."""

    async def receive(self) -> str | bytes:
        """The next frame; raises SocketClosed when the peer is gone."""
        ...

    async def send(self, message: Message) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class StarletteMediaSocket:
    """A Starlette WebSocket as a :class:`MediaSocket`."""

    def __init__(self, ws: Any):
        self.ws = ws

    async def receive(self) -> str | bytes:
        from starlette.websockets import WebSocketDisconnect

        try:
            message = await self.ws.receive()
        except (WebSocketDisconnect, RuntimeError) as e:
            raise SocketClosed(str(e)) from e
        if message["type"] == "websocket.disconnect":
            code = message.get("code")
            if code in _TRANSPORT_ERROR_CODES:
                # The WebSocket layer refused a frame (too big, invalid UTF-8, ...): a protocol error.
                raise ProtocolError(f"{_TRANSPORT_ERROR_CODES[code]} (WebSocket close code {code})", code)
            raise SocketClosed(f"closed by peer ({code})")
        if message.get("text") is not None:
            return message["text"]
        if message.get("bytes") is not None:
            return message["bytes"]
        raise SocketClosed("empty frame")

    async def send(self, message: Message) -> None:
        if isinstance(message, str):
            await self.ws.send_text(message)
        else:
            await self.ws.send_bytes(message)

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, reason=reason)


class FloodGuard:
    """Counts messages per second; a sustained rate over ``limit`` is a flood."""

    def __init__(self, limit_per_s: int = 400, window_s: float = 1.0):
        self.limit = limit_per_s
        self.window = window_s
        self._start = time.monotonic()
        self._count = 0

    def hit(self) -> None:
        now = time.monotonic()
        if now - self._start >= self.window:
            self._start = now
            self._count = 0
        self._count += 1
        if self._count > self.limit * self.window:
            raise ProtocolError(
                f"message flood: more than {self.limit} messages per second", CLOSE_POLICY_VIOLATION
            )


class MediaStreamTransport(CallTransport):
    """Agent frames, marks and clears through a provider protocol onto the socket."""

    acknowledges_marks = True

    def __init__(self, protocol: ProviderProtocol, send: Callable[[list[Message]], Awaitable[None]]):
        self.protocol = protocol
        self.name = protocol.name
        self._send_raw = send
        self.clears = 0

    async def _send(self, messages: list[Message]) -> None:
        try:
            await self._send_raw(messages)
        except SocketClosed:
            pass  # the receive loop sees the close and ends the call

    @property
    def output_sample_rate(self) -> int:
        return self.protocol.output_sample_rate

    @property
    def frame_bytes(self) -> int:
        return self.protocol.frame_bytes

    async def write_audio(self, frame: bytes) -> None:
        await self._send(self.protocol.encode_media(frame))

    async def send_mark(self, name: str) -> None:
        await self._send(self.protocol.encode_mark(name))

    async def clear(self) -> None:
        self.clears += 1
        await self._send(self.protocol.encode_clear())


@dataclass
class CallAuth:
    """Who a call belongs to, once its key or token was accepted."""

    tenant: str
    pipeline: str | None = None
    #: Caller and callee from the answer request, for providers whose stream does not say (Plivo).
    caller: str | None = field(default=None, repr=False)
    callee: str | None = field(default=None, repr=False)


Authenticate = Callable[[CallStart], Awaitable[CallAuth | None]]
OpenCall = Callable[[CallAuth, CallRecord, MediaStreamTransport], Awaitable[LiveCall]]


class _Unauthenticated(Exception):
    pass


class MediaStreamCall:
    """One provider media stream, from the upgrade to the stored record."""

    def __init__(
        self,
        protocol: ProviderProtocol,
        socket: MediaSocket,
        *,
        authenticate: Authenticate,
        open_call: OpenCall,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        flood_limit_per_s: int = 400,
        on_unknown_event: Callable[[str], None] | None = None,
    ):
        self.protocol = protocol
        self.socket = socket
        self._authenticate = authenticate
        self._open_call = open_call
        self._headers = headers
        self._query = query
        self._flood = FloodGuard(flood_limit_per_s)
        self._on_unknown_event = on_unknown_event
        self.call: LiveCall | None = None
        self._watcher: asyncio.Future | None = None
        self.end_reason: str | None = None
        self._send_lock = asyncio.Lock()
        self._closed = False

    @property
    def provider(self) -> str:
        return self.protocol.name

    async def _send(self, messages: list[Message]) -> None:
        if not messages or self._closed:
            return
        async with self._send_lock:
            for m in messages:
                try:
                    await self.socket.send(m)
                except Exception as e:  # the peer went away mid-send: the call is over
                    self._closed = True
                    raise SocketClosed(str(e)) from e

    async def _close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.socket.close(code, reason[:120])
        except Exception:
            pass

    async def run(self, shutting_down: Callable[[], bool] = lambda: False) -> str:
        """Serve the call until it ends; returns the end reason."""
        reason = "socket_closed"
        close_code = CLOSE_NORMAL
        try:
            self.protocol.handshake(self._headers, self._query)
            while True:
                frame = await self.socket.receive()
                self._flood.hit()
                if isinstance(frame, str):
                    events = self.protocol.receive_text(frame)
                else:
                    events = self.protocol.receive_bytes(frame)
                stop = False
                for event in events:
                    if await self._handle(event):
                        stop = True
                if stop:
                    reason = "stop"
                    break
        except SocketClosed:
            reason = "server_shutdown" if shutting_down() else "hangup"
            for event in self._safe_receive_close():
                await self._handle_quietly(event)
        except ProtocolError as e:
            logger.warning(f"{self.provider} call closed: protocol error: {e.reason} (close code {e.close_code})")
            reason = f"protocol_error: {e.reason}"
            close_code = e.close_code
        except CallRefused as e:
            logger.warning(f"{self.provider} call refused: {e.reason}")
            reason = f"refused: {e.reason}"
            # a full or draining worker: 1013 (try again later), the provider may place the call elsewhere
            close_code = CLOSE_TRY_AGAIN_LATER if e.try_again else CLOSE_POLICY_VIOLATION
        except _Unauthenticated as e:
            logger.warning(f"{self.provider} stream rejected: {e}")
            reason = f"unauthenticated: {e}"
            close_code = CLOSE_POLICY_VIOLATION
        except asyncio.CancelledError:
            reason = "server_shutdown"
            close_code = CLOSE_GOING_AWAY
            await self._finish(reason, close_code)
            raise
        except Exception as e:  # a bug must end this call only, with its record kept
            logger.exception(f"{self.provider} call failed: {e!r}")
            reason = f"internal_error: {type(e).__name__}"
            close_code = CLOSE_INTERNAL_ERROR
        await self._finish(reason, close_code)
        return reason

    def _safe_receive_close(self) -> list:
        try:
            return self.protocol.receive_close()
        except Exception:
            return []

    async def _handle_quietly(self, event: object) -> None:
        try:
            await self._handle(event)
        except Exception:
            pass

    async def _finish(self, reason: str, close_code: int) -> None:
        if self.call is not None and self.call.record.end_reason:
            reason = self.call.record.end_reason  # the agent ended the call first
        self.end_reason = reason
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
        if self.call is not None:
            try:
                await self.call.end(reason)
            except Exception as e:
                logger.exception(f"{self.provider} call: closing the record failed: {e!r}")
        if close_code == CLOSE_NORMAL and reason == "stop":
            hangup = self.protocol.encode_hangup() if self.protocol.started else []
            try:
                await self._send(hangup)
            except SocketClosed:
                pass
        await self._close(close_code, reason)

    async def _handle(self, event: object) -> bool:
        """Act on one protocol event; True when the provider stopped the call."""
        if isinstance(event, MediaIn):
            if self.call is not None:
                await self.call.feed_audio(event.pcm16, self.protocol.sample_rate)
        elif isinstance(event, MarkPlayed):
            if self.call is not None and not event.cleared:
                self.call.mark_played(event.name)
        elif isinstance(event, CallStart):
            await self._start(event)
        elif isinstance(event, Dtmf):
            if self.call is not None:
                await self.call.dtmf(event.digit)
        elif isinstance(event, CallStop):
            return True
        elif isinstance(event, UnknownEvent):
            # Providers add events over time: a new one must not end calls.
            logger.debug(f"{self.provider} stream: ignored unknown event {event.name!r}")
            if self._on_unknown_event is not None:
                self._on_unknown_event(self.provider)
        return False

    async def _start(self, start: CallStart) -> None:
        auth = await self._authenticate(start)
        if auth is None:
            raise _Unauthenticated("missing or invalid API key")
        record = CallRecord(
            tenant=auth.tenant,
            transport=self.provider,
            caller=start.caller or auth.caller,
            callee=start.callee or auth.callee,
            provider_ids={k: v for k, v in (("stream_id", start.stream_id), ("call_id", start.call_id)) if v},
        )
        transport = MediaStreamTransport(self.protocol, self._send)
        self.call = await self._open_call(auth, record, transport)
        self._watcher = asyncio.ensure_future(self._hang_up_when_call_ends(self.call))

    async def _hang_up_when_call_ends(self, call: LiveCall) -> None:
        """The agent ended the call (opt-out confirmed, restricted caller): hang up the stream."""
        await call.closed.wait()
        if self._closed:
            return
        try:
            await self._send(self.protocol.encode_hangup())
        except SocketClosed:
            pass
        await self._close(CLOSE_NORMAL, call.record.end_reason or "completed")
