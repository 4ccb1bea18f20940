"""One emulated caller per provider, written from the provider's protocol reference (see
:mod:`voicecore.testing.callers`)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import numpy as np

from voicecore.testing.callers.line import (
    ProviderClient,
    b64,
    b64_strict,
    pcm16le_decode,
    pcm16le_encode,
    ulaw_decode,
    ulaw_encode,
    with_query,
)


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


class TwilioClient(ProviderClient):
    """Twilio Media Streams, bidirectional (<Connect><Stream>): JSON text frames, μ-law 8 kHz.

    The tenant key goes in ``start.customParameters.token`` (a TwiML <Parameter>).
    """

    provider = "twilio"
    returns_marks_on_clear = True

    def __init__(self, ws_url: str, *, token: str | None = None, custom: dict[str, str] | None = None,
                 call_sid: str | None = None, **kw: Any):
        super().__init__(ws_url, token=token, **kw)
        self.account_sid = _sid("AC")
        self.stream_sid = _sid("MZ")
        self.call_sid = call_sid or _sid("CA")
        self.custom = custom
        self.seq = 0
        self.chunk = 0

    @property
    def ids(self) -> set[str]:
        return {self.stream_sid, self.call_sid}

    def next_seq(self) -> str:
        self.seq += 1
        return str(self.seq)

    def custom_parameters(self) -> dict[str, str]:
        if self.custom is not None:
            return dict(self.custom)
        params = {"from": self.caller, "to": self.callee}
        if self.token is not None:
            params["token"] = self.token
        return params

    def connected_message(self) -> str:
        return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start_message(self, **start_overrides: Any) -> str:
        start = {
            "accountSid": self.account_sid,
            "streamSid": self.stream_sid,
            "callSid": self.call_sid,
            "tracks": ["inbound"],
            "customParameters": self.custom_parameters(),
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        } | start_overrides
        return json.dumps({"event": "start", "sequenceNumber": self.next_seq(), "streamSid": self.stream_sid,
                           "start": start})

    def opening_messages(self) -> list[str | bytes]:
        return [self.connected_message(), self.start_message()]

    def media_message(self, payload: str, *, seq: str | None = None, stream_sid: str | None = None,
                      track: str = "inbound") -> str:
        self.chunk += 1
        return json.dumps({
            "event": "media",
            "sequenceNumber": seq if seq is not None else self.next_seq(),
            "streamSid": stream_sid or self.stream_sid,
            "media": {"track": track, "chunk": str(self.chunk), "timestamp": str((self.chunk - 1) * 20),
                      "payload": payload},
        })

    def media_messages(self, pcm: np.ndarray) -> list[str | bytes]:
        return [self.media_message(b64(ulaw_encode(pcm)))]

    def dtmf_message(self, digit: str) -> str:
        return json.dumps({"event": "dtmf", "sequenceNumber": self.next_seq(), "streamSid": self.stream_sid,
                           "dtmf": {"track": "inbound_track", "digit": digit}})

    def mark_message(self, name: str, stream_sid: str | None = None) -> str:
        return json.dumps({"event": "mark", "sequenceNumber": self.next_seq(),
                           "streamSid": stream_sid or self.stream_sid, "mark": {"name": name}})

    def stop_message(self) -> str:
        return json.dumps({"event": "stop", "sequenceNumber": self.next_seq(), "streamSid": self.stream_sid,
                           "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})

    async def hangup(self, timeout: float = 5.0) -> None:
        """``stop``, then the server should close; close ourselves if it does not."""
        await self.send_raw(self.stop_message())
        await self.wait_closed(timeout)
        await self.close()

    def on_text(self, text: str, t: float) -> None:
        msg = self._json(text)
        event = msg.get("event")
        if msg.get("streamSid") != self.stream_sid:
            self.violations.append(f"twilio: {event} with streamSid {msg.get('streamSid')!r} (expected ours)")
        if event == "media":
            media = msg.get("media")
            if set(msg) - {"event", "streamSid", "media"} or not isinstance(media, dict) or set(media) != {"payload"}:
                self.violations.append(f"twilio: media message with unknown fields: {text[:120]!r}")  # 31951
        self._json_event(msg, text, t, ulaw_decode)

    def on_binary(self, data: bytes, t: float) -> None:
        self.violations.append(f"twilio: binary frame of {len(data)} bytes (Twilio warning 31950)")


# --------------------------------------------------------------------------- Telnyx


class TelnyxClient(ProviderClient):
    """Telnyx media streaming, rtp bidirectional mode, PCMU 8 kHz.

    The key goes in the ``x-telnyx-streaming-auth-token`` header (``stream_auth_token``)
    and/or ``start.custom_parameters.token`` (``token_in``: "header", "custom" or "both").
    """

    provider = "telnyx"
    returns_marks_on_clear = True

    def __init__(self, ws_url: str, *, token: str | None = None, token_in: str = "header",
                 custom_token: str | None = None, **kw: Any):
        super().__init__(ws_url, token=token, **kw)
        self.token_in = token_in
        self.custom_token = custom_token
        self.stream_id = secrets.token_hex(8) + "-" + secrets.token_hex(4)
        self.call_control_id = "v3:" + secrets.token_urlsafe(24)
        self.seq = 0
        self.chunk = 0

    @property
    def ids(self) -> set[str]:
        return {self.stream_id, self.call_control_id}

    def connect_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.token is not None and self.token_in in ("header", "both"):
            headers["x-telnyx-streaming-auth-token"] = self.token
        return headers

    def next_seq(self) -> str:
        self.seq += 1
        return str(self.seq)

    def start_message(self, media_format: dict[str, Any] | None = None) -> str:
        custom: dict[str, str] = {}
        if self.custom_token is not None:
            custom["token"] = self.custom_token
        elif self.token is not None and self.token_in in ("custom", "both"):
            custom["token"] = self.token
        start = {
            "user_id": secrets.token_hex(8),
            "call_control_id": self.call_control_id,
            "call_session_id": secrets.token_hex(8),
            "from": self.caller,
            "to": self.callee,
            "client_state": "",
            "custom_parameters": custom,
            "media_format": media_format or {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
        }
        return json.dumps({"event": "start", "sequence_number": self.next_seq(), "stream_id": self.stream_id,
                           "start": start})

    def opening_messages(self) -> list[str | bytes]:
        return [json.dumps({"event": "connected", "version": "1.0.0"}), self.start_message()]

    def media_message(self, payload: str, *, seq: int | None = None, chunk: int | None = None,
                      stream_id: str | None = None) -> str:
        if chunk is None:
            self.chunk += 1
            chunk = self.chunk
        return json.dumps({
            "event": "media",
            "sequence_number": str(seq) if seq is not None else self.next_seq(),
            "stream_id": stream_id or self.stream_id,
            "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str((chunk - 1) * 20),
                      "payload": payload},
        })

    def media_messages(self, pcm: np.ndarray) -> list[str | bytes]:
        return [self.media_message(b64(ulaw_encode(pcm)))]

    def mark_message(self, name: str) -> str:
        return json.dumps({"event": "mark", "sequence_number": self.next_seq(), "stream_id": self.stream_id,
                           "mark": {"name": name}})

    def dtmf_message(self, digit: str) -> str:
        return json.dumps({"event": "dtmf", "sequence_number": self.next_seq(), "stream_id": self.stream_id,
                           "dtmf": {"digit": digit}})

    def stop_message(self) -> str:
        return json.dumps({"event": "stop", "sequence_number": self.next_seq(), "stream_id": self.stream_id,
                           "stop": {"call_control_id": self.call_control_id}})

    async def hangup(self, timeout: float = 5.0) -> None:
        await self.send_raw(self.stop_message())
        await self.wait_closed(timeout)
        await self.close()

    def on_text(self, text: str, t: float) -> None:
        self._json_event(self._json(text), text, t, ulaw_decode)

    def on_binary(self, data: bytes, t: float) -> None:
        self.violations.append(f"telnyx: binary frame of {len(data)} bytes")


# --------------------------------------------------------------------------- Vonage


class VonageClient(ProviderClient):
    """Vonage Voice API WebSocket: a first text ``websocket:connected``, then binary L16 20 ms frames.

    The key: ``token_in`` "top" (the NCCO headers echoed at the top level of
    ``websocket:connected``), "headers" (under a ``headers`` object) or "query" (``?token=``).
    """

    provider = "vonage"

    def __init__(self, ws_url: str, *, token: str | None = None, token_in: str = "top", rate: int = 16000,
                 **kw: Any):
        self.sample_rate = rate
        super().__init__(ws_url, token=token, **kw)
        self.token_in = token_in
        self.uuid = secrets.token_hex(16)
        self.conversation_uuid = "CON-" + secrets.token_hex(12)
        if token is not None and token_in == "query":
            self.ws_url = with_query(ws_url, token=token)

    @property
    def ids(self) -> set[str]:
        return {self.uuid, self.conversation_uuid}

    @property
    def frame_bytes(self) -> int:
        return self.sample_rate * 2 * self.frame_ms // 1000

    def connected_message(self, **extra: Any) -> str:
        msg: dict[str, Any] = {
            "event": "websocket:connected",
            "content-type": f"audio/l16;rate={self.sample_rate}",
            "uuid": self.uuid,
            "conversation_uuid": self.conversation_uuid,
            "from": self.caller,
            "to": self.callee,
        }
        if self.token is not None and self.token_in == "top":
            msg["token"] = self.token
        if self.token is not None and self.token_in == "headers":
            msg["headers"] = {"token": self.token}
        return json.dumps(msg | extra)

    def opening_messages(self) -> list[str | bytes]:
        return [self.connected_message()]

    def media_messages(self, pcm: np.ndarray) -> list[str | bytes]:
        return [pcm16le_encode(pcm)]

    def on_binary(self, data: bytes, t: float) -> None:
        if len(data) != self.frame_bytes:
            self.violations.append(f"vonage: binary frame of {len(data)} bytes, expected {self.frame_bytes}")
        self._play(pcm16le_decode(data[: len(data) // 2 * 2]), len(data), t)

    def on_text(self, text: str, t: float) -> None:
        msg = self._json(text)
        action = msg.get("action")
        if action == "clear":
            self._clear(t)
            self._spawn_send(lambda: [json.dumps({"event": "websocket:cleared"})], "(cleared)", cleared=True)
        elif action == "notify":
            payload = msg.get("payload")
            if not isinstance(payload, dict):
                self.violations.append(f"vonage: notify without an object payload: {text[:120]!r}")
                return
            name = str(payload.get("name", payload))
            self._schedule_mark(name, lambda: [json.dumps({"event": "websocket:notify", "payload": payload})], t)
        else:
            self.violations.append(f"vonage: unknown text command from server: {text[:120]!r}")

    def dtmf_message(self, digit: str) -> str:
        return json.dumps({"event": "websocket:dtmf", "digit": digit, "duration": 260})


# --------------------------------------------------------------------------- Plivo


class PlivoClient(ProviderClient):
    """Plivo bidirectional audio stream: ``start``, ``media`` (base64), ``playedStream``, ``clearedAudio``.

    ``content_type`` is the Stream's contentType: ``audio/x-l16;rate=8000`` (Plivo's default)
    or ``audio/x-mulaw;rate=8000``. The key: ``token_in`` "extra_headers" (``extraHeaders="token=…"``)
    or "query".
    """

    provider = "plivo"

    def __init__(self, ws_url: str, *, token: str | None = None, token_in: str = "extra_headers",
                 content_type: str = "audio/x-l16;rate=8000", **kw: Any):
        mime, _, rate = content_type.partition(";rate=")
        self.mime = mime
        self.sample_rate = int(rate or 8000)
        super().__init__(ws_url, token=token, **kw)
        self.token_in = token_in
        self.call_id = secrets.token_hex(4) + "-" + secrets.token_hex(8)
        self.stream_id = secrets.token_hex(4) + "-" + secrets.token_hex(8)
        self.account_id = "MA" + secrets.token_hex(9).upper()
        self.seq = 0
        self.chunk = 0
        if token is not None and token_in == "query":
            self.ws_url = with_query(ws_url, token=token)

    @property
    def ids(self) -> set[str]:
        return {self.stream_id, self.call_id}

    @property
    def mulaw(self) -> bool:
        return "mulaw" in self.mime

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def extra_headers(self) -> str:
        pairs = [f"from={self.caller}", f"to={self.callee}"]
        if self.token is not None and self.token_in == "extra_headers":
            pairs.insert(0, f"token={self.token}")
        return ",".join(pairs)

    def start_message(self, media_format: dict[str, Any] | None = None, extra_headers: Any = None) -> str:
        return json.dumps({
            "event": "start",
            "sequenceNumber": self.next_seq(),
            "start": {
                "callId": self.call_id,
                "streamId": self.stream_id,
                "accountId": self.account_id,
                "tracks": ["inbound"],
                "mediaFormat": media_format or {"encoding": self.mime, "sampleRate": self.sample_rate},
            },
            "extra_headers": self.extra_headers() if extra_headers is None else extra_headers,
        })

    def opening_messages(self) -> list[str | bytes]:
        return [self.start_message()]

    def encode(self, pcm: np.ndarray) -> bytes:
        return ulaw_encode(pcm) if self.mulaw else pcm16le_encode(pcm)

    def media_message(self, payload: str, *, seq: int | None = None, stream_id: str | None = None) -> str:
        self.chunk += 1
        return json.dumps({
            "event": "media",
            "sequenceNumber": seq if seq is not None else self.next_seq(),
            "streamId": stream_id or self.stream_id,
            "media": {"track": "inbound", "timestamp": str(int(time.time() * 1000)), "chunk": self.chunk,
                      "payload": payload},
        })

    def media_messages(self, pcm: np.ndarray) -> list[str | bytes]:
        return [self.media_message(b64(self.encode(pcm)))]

    def dtmf_message(self, digit: str) -> str:
        return json.dumps({"event": "dtmf", "sequenceNumber": self.next_seq(), "streamId": self.stream_id,
                           "dtmf": {"track": "inbound", "digit": digit}})

    def on_text(self, text: str, t: float) -> None:
        msg = self._json(text)
        event = msg.get("event")
        if event == "playAudio":
            media = msg.get("media", {})
            expected_type = "audio/x-mulaw" if self.mulaw else "audio/x-l16"
            if media.get("contentType") != expected_type or media.get("sampleRate") != self.sample_rate:
                self.violations.append(
                    f"plivo: playAudio {media.get('contentType')!r}/{media.get('sampleRate')!r}, "
                    f"stream is {expected_type}/{self.sample_rate}")
            wire = b64_strict(media.get("payload"))
            if not self.mulaw and len(wire) % 2:
                self.violations.append(f"plivo: odd-length l16 payload ({len(wire)} bytes)")
            pcm = ulaw_decode(wire) if self.mulaw else pcm16le_decode(wire[: len(wire) // 2 * 2])
            self._play(pcm, len(wire), t)
        elif event == "checkpoint":
            name = msg.get("name")
            if msg.get("streamId") != self.stream_id or not isinstance(name, str) or not name:
                self.violations.append(f"plivo: bad checkpoint {text[:120]!r}")
                return
            self._schedule_mark(name, lambda: [json.dumps({"event": "playedStream", "sequenceNumber": self.next_seq(),
                                                           "streamId": self.stream_id, "name": name})], t)
        elif event == "clearAudio":
            if msg.get("streamId") != self.stream_id:
                self.violations.append(f"plivo: clearAudio for another stream {text[:120]!r}")
            self._clear(t)
            self._spawn_send(lambda: [json.dumps({"event": "clearedAudio", "sequenceNumber": self.next_seq(),
                                                  "streamId": self.stream_id})], "(cleared)", cleared=True)
        else:
            self.violations.append(f"plivo: unknown event from server: {text[:120]!r}")

    def on_binary(self, data: bytes, t: float) -> None:
        self.violations.append(f"plivo: binary frame of {len(data)} bytes")


# --------------------------------------------------------------------------- Exotel


class ExotelClient(ProviderClient):
    """Exotel Voicebot stream: JSON text frames, PCM16LE (audio/x-raw) 8 kHz, media every ~100 ms.

    The key: ``token_in`` "basic" (credentials in the stream URL → ``Authorization: Basic``),
    "query" (``?token=``) or "custom" (``start.custom_parameters.token``).
    """

    provider = "exotel"
    frame_ms = 100
    MIN_CHUNK = 3200
    MAX_CHUNK = 100_000

    def __init__(self, ws_url: str, *, token: str | None = None, token_in: str = "basic", **kw: Any):
        super().__init__(ws_url, token=token, **kw)
        self.token_in = token_in
        self.stream_sid = secrets.token_hex(16)
        self.call_sid = secrets.token_hex(16)
        self.account_sid = "exotel" + secrets.token_hex(4)
        self.seq = 0
        self.chunk = 0
        if token is not None and token_in == "query":
            self.ws_url = with_query(ws_url, token=token)

    @property
    def ids(self) -> set[str]:
        return {self.stream_sid, self.call_sid}

    def connect_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.token is not None and self.token_in == "basic":
            headers["Authorization"] = "Basic " + b64(f"{self.account_sid}:{self.token}".encode())
        return headers

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def start_message(self, media_format: dict[str, Any] | None = None) -> str:
        custom = {"token": self.token} if self.token is not None and self.token_in == "custom" else {}
        return json.dumps({
            "event": "start",
            "sequence_number": self.next_seq(),
            "stream_sid": self.stream_sid,
            "start": {
                "stream_sid": self.stream_sid,
                "call_sid": self.call_sid,
                "account_sid": self.account_sid,
                "from": self.caller,
                "to": self.callee,
                "custom_parameters": custom,
                "media_format": media_format or {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"},
            },
        })

    def opening_messages(self) -> list[str | bytes]:
        return [json.dumps({"event": "connected"}), self.start_message()]

    def media_message(self, payload: str, *, seq: int | None = None, stream_sid: str | None = None) -> str:
        self.chunk += 1
        return json.dumps({
            "event": "media",
            "sequence_number": seq if seq is not None else self.next_seq(),
            "stream_sid": stream_sid or self.stream_sid,
            "media": {"chunk": self.chunk, "timestamp": str((self.chunk - 1) * self.frame_ms), "payload": payload},
        })

    def media_messages(self, pcm: np.ndarray) -> list[str | bytes]:
        return [self.media_message(b64(pcm16le_encode(pcm)))]

    def mark_message(self, name: str) -> str:
        return json.dumps({"event": "mark", "sequence_number": self.next_seq(), "stream_sid": self.stream_sid,
                           "mark": {"name": name}})

    def dtmf_message(self, digit: str) -> str:
        return json.dumps({"event": "dtmf", "sequence_number": self.next_seq(), "stream_sid": self.stream_sid,
                           "dtmf": {"digit": digit, "duration": "250"}})

    def stop_message(self) -> str:
        return json.dumps({"event": "stop", "sequence_number": self.next_seq(), "stream_sid": self.stream_sid,
                           "stop": {"call_sid": self.call_sid, "account_sid": self.account_sid,
                                    "reason": "callended"}})

    async def hangup(self, timeout: float = 5.0) -> None:
        await self.send_raw(self.stop_message())
        await self.wait_closed(timeout)
        await self.close()

    def on_text(self, text: str, t: float) -> None:
        msg = self._json(text)
        if msg.get("stream_sid") != self.stream_sid:
            self.violations.append(f"exotel: {msg.get('event')} with stream_sid {msg.get('stream_sid')!r} (expected ours)")

        def check(wire: bytes) -> None:
            n = len(wire)
            if n < self.MIN_CHUNK or n > self.MAX_CHUNK or n % 320:
                self.violations.append(f"exotel: media chunk of {n} bytes (needs >= 3200, <= 100000, multiple of 320)")

        # whether Exotel returns pending marks on clear is undocumented: it does not here
        self._json_event(msg, text, t, lambda wire: pcm16le_decode(wire[: len(wire) // 2 * 2]), check)

    def on_binary(self, data: bytes, t: float) -> None:
        self.violations.append(f"exotel: binary frame of {len(data)} bytes")


# --------------------------------------------------------------------------- Asterisk


class AsteriskClient(ProviderClient):
    """Asterisk chan_websocket: ``MEDIA_START …`` text, then binary ulaw 160-byte frames.

    The key is the ``token`` query parameter of the URL Asterisk connects to.
    """

    provider = "asterisk"
    OPTIMAL_FRAME = 160
    MAX_MESSAGE = 65500
    XOFF_FRAMES = 900
    XON_FRAMES = 800

    def __init__(self, ws_url: str, *, token: str | None = None, **kw: Any):
        super().__init__(ws_url, token=token, **kw)
        self.connection_id = secrets.token_hex(16)
        self.channel = f"WebSocket/voicecore-{secrets.token_hex(4)}"
        query = {"from": self.caller, "to": self.callee}
        if token is not None:
            query = {"token": token} | query
        sep = "&" if "?" in ws_url else "?"
        self.ws_url = f"{ws_url}{sep}{urlencode(query)}"
        self.drain_requested = False
        self.drained_sent: list[float] = []
        self.buffering = False
        self.xoff = False
        self.commands: list[tuple[float, str]] = []

    @property
    def ids(self) -> set[str]:
        return {self.connection_id, self.channel}

    def media_start(self, fmt: str = "ulaw", frame: int | None = None) -> str:
        return (f"MEDIA_START connection_id:{self.connection_id} channel:{self.channel} "
                f"format:{fmt} optimal_frame_size:{frame or self.OPTIMAL_FRAME}")

    def opening_messages(self) -> list[str | bytes]:
        return [self.media_start()]

    def dtmf_message(self, digit: str) -> str:
        return f"DTMF_END digit:{digit}"

    def media_messages(self, pcm: np.ndarray) -> list[str | bytes]:
        return [ulaw_encode(pcm)]

    def on_binary(self, data: bytes, t: float) -> None:
        if len(data) > self.MAX_MESSAGE:
            self.violations.append(f"asterisk: message of {len(data)} bytes (> 65500: Asterisk hangs up)")
        if not self.buffering and len(data) % self.OPTIMAL_FRAME:
            self.violations.append(f"asterisk: frame of {len(data)} bytes, not a multiple of {self.OPTIMAL_FRAME}")
        self._play(ulaw_decode(data), len(data), t)

    def on_text(self, text: str, t: float) -> None:
        words = text.split()
        command = words[0] if words else ""
        self.commands.append((t, text))
        if command == "FLUSH_MEDIA":
            self._clear(t)  # a pending drain report fires on the emptied queue (tick)
        elif command == "REPORT_QUEUE_DRAINED":
            self.drain_requested = True
            self.marks_received.append((t, "REPORT_QUEUE_DRAINED"))
        elif command == "HANGUP":
            self._tasks.append(asyncio.create_task(self.close()))
        elif command == "START_MEDIA_BUFFERING":
            self.buffering = True
        elif command == "STOP_MEDIA_BUFFERING":
            self.buffering = False
            self._spawn_send(lambda: [" ".join(["MEDIA_BUFFERING_COMPLETED", *words[1:2]])], "(buffering)",
                             cleared=False)
        elif command in ("ANSWER", "GET_STATUS", "PAUSE_MEDIA", "CONTINUE_MEDIA", "MARK_MEDIA"):
            pass
        else:
            self.violations.append(f"asterisk: unknown command from server: {text[:120]!r}")

    async def tick(self, now: float) -> None:
        queued = self.queued_seconds / (self.frame_ms / 1000)
        if not self.xoff and queued >= self.XOFF_FRAMES:
            self.xoff = True
            await self.send_raw("MEDIA_XOFF")
        elif self.xoff and queued < self.XON_FRAMES:
            self.xoff = False
            await self.send_raw("MEDIA_XON")
        if self.drain_requested and self.queued_seconds == 0.0:
            self.drain_requested = False
            if await self.send_raw("QUEUE_DRAINED"):
                self.drained_sent.append(time.monotonic())
                self.marks_echoed.append((time.monotonic(), "QUEUE_DRAINED", bool(self.clears)))


CLIENTS: dict[str, Callable[..., ProviderClient]] = {
    "twilio": TwilioClient,
    "telnyx": TelnyxClient,
    "vonage": VonageClient,
    "plivo": PlivoClient,
    "exotel": ExotelClient,
    "asterisk": AsteriskClient,
}
