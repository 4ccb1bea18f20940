"""Calls from a browser: WebRTC through aiortc, on the same pipeline, policy and records as telephony.

- ``POST /webrtc/offer`` (Bearer tenant API key, or a short-lived call token
  from ``POST /webrtc/token``) takes an SDP offer and answers it; nothing —
  no peer connection, no model — is set up for an unauthenticated offer.
- Caller audio arrives as Opus decoded by aiortc (48 kHz); it goes through
  ``LiveCall.feed_audio`` (the stream resampler to 16 kHz) like any call.
- Agent audio leaves through :class:`AgentAudioTrack` at 48 kHz in 20 ms
  frames; a barge-in clears what is buffered in the track.
- A data channel (``events``) carries the transcript and per-turn latency to
  the page as JSON: ``{"type": "turn", "index", "role", "text", "interrupted",
  "timeline": {...}}`` and ``{"type": "call", "call_id", "state"}``.
  The page may send ``{"type": "hangup"}``.
- ICE uses host candidates only by default (no external STUN/TURN);
  ``ice_servers`` configures others.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from loguru import logger

from voicecore.records import CallRecord
from voicecore.transports.base import CallTransport, LiveCall

WEBRTC_RATE = 48000
FRAME_MS = 20
FRAME_SAMPLES = WEBRTC_RATE * FRAME_MS // 1000


def _media_stream_track_base():
    from aiortc import MediaStreamTrack

    return MediaStreamTrack


class AgentAudioTrack(_media_stream_track_base()):  # type: ignore[misc]
    """The agent's voice as an aiortc audio track: 20 ms frames at 48 kHz, silence when idle."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._buffer = bytearray()
        self._start: float | None = None
        self._pts = 0

    def push(self, pcm16: bytes) -> None:
        self._buffer += pcm16

    def clear(self) -> None:
        self._buffer.clear()

    @property
    def buffered_ms(self) -> float:
        return len(self._buffer) / 2 / WEBRTC_RATE * 1000

    async def recv(self):
        import av

        if self.readyState != "live":
            from aiortc.mediastreams import MediaStreamError

            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pts / WEBRTC_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        need = FRAME_SAMPLES * 2
        chunk = bytes(self._buffer[:need])
        del self._buffer[:need]
        if len(chunk) < need:
            chunk += bytes(need - len(chunk))
        frame = av.AudioFrame.from_ndarray(np.frombuffer(chunk, dtype=np.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = WEBRTC_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, WEBRTC_RATE)
        self._pts += FRAME_SAMPLES
        return frame


class WebRTCTransport(CallTransport):
    """Agent audio into the peer's audio track (no mark acknowledgements: the playback clock counts)."""

    name = "webrtc"
    acknowledges_marks = False

    def __init__(self, track: AgentAudioTrack):
        self.track = track
        self.clears = 0

    @property
    def output_sample_rate(self) -> int:
        return WEBRTC_RATE

    async def write_audio(self, frame: bytes) -> None:
        self.track.push(frame)

    async def clear(self) -> None:
        self.clears += 1
        self.track.clear()


def frame_to_mono_pcm(frame: Any) -> tuple[bytes, int]:
    """An aiortc/PyAV audio frame as int16 mono PCM and its rate."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if data.dtype != np.int16:
        data = (np.clip(data, -1.0, 1.0) * 32767).astype(np.int16) if data.dtype.kind == "f" else data.astype(np.int16)
    if frame.format.is_planar:
        mono = data.mean(axis=0) if data.shape[0] > 1 else data[0]
    else:
        interleaved = data.reshape(-1)
        mono = interleaved.reshape(-1, channels).mean(axis=1) if channels > 1 else interleaved
    return mono.astype(np.int16).tobytes(), int(frame.sample_rate)


def turn_events(record: CallRecord, sent: dict[int, tuple]) -> list[dict[str, Any]]:
    """Transcript events for turns that are new or changed since the last look (pure)."""
    events: list[dict[str, Any]] = []
    for i, turn in enumerate(record.turns):
        timeline = turn.timeline.relative_ms() if turn.timeline else None
        key = (turn.text, turn.interrupted, tuple(sorted((timeline or {}).items())))
        if not turn.text or sent.get(i) == key:
            continue
        sent[i] = key
        events.append({
            "type": "turn", "index": i, "role": turn.role, "kind": turn.kind, "text": turn.text,
            "interrupted": turn.interrupted, "timeline": timeline,
        })
    return events


OpenCall = Callable[[CallRecord, WebRTCTransport], Awaitable[LiveCall]]


@dataclass
class PeerCall:
    """One browser call: the peer connection, its session, and the transcript feed."""

    pc: Any
    track: AgentAudioTrack
    session: LiveCall | None = None
    channel: Any = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, event: dict[str, Any]) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(json.dumps(event))

    async def end(self, reason: str) -> None:
        if self.ended.is_set():
            return
        self.ended.set()
        if self.session is not None:
            await self.session.end(reason)
            self.send({"type": "call", "call_id": self.session.call_id, "state": "ended", "reason": reason})
        me = asyncio.current_task()
        for t in self.tasks:
            if t is not me:
                t.cancel()
        await self.pc.close()


async def answer_offer(
    sdp: str,
    sdp_type: str,
    *,
    open_call: OpenCall,
    record: CallRecord,
    ice_servers: list[dict[str, Any]] | None = None,
    on_end: Callable[[PeerCall], None] | None = None,
) -> tuple[dict[str, str], PeerCall]:
    """Answer a browser's offer and start its call; returns the SDP answer and the peer call."""
    from aiortc import (
        RTCConfiguration,
        RTCIceServer,
        RTCPeerConnection,
        RTCSessionDescription,
    )

    if sdp_type != "offer" or "m=audio" not in sdp:
        raise ValueError("expected an SDP offer with an audio section")
    config = RTCConfiguration(iceServers=[RTCIceServer(**s) for s in (ice_servers or [])])
    pc = RTCPeerConnection(configuration=config)
    track = AgentAudioTrack()
    call = PeerCall(pc=pc, track=track)
    pc.addTrack(track)

    @pc.on("datachannel")
    def on_datachannel(channel: Any) -> None:
        call.channel = channel

        @channel.on("message")
        def on_message(message: Any) -> None:
            try:
                data = json.loads(message) if isinstance(message, str) else {}
            except ValueError:
                return
            if data.get("type") == "hangup":
                asyncio.ensure_future(_finish(call, "hangup", on_end))
            elif data.get("type") == "dtmf" and call.session is not None and isinstance(data.get("digit"), str):
                asyncio.ensure_future(call.session.dtmf(data["digit"][:1]))

    @pc.on("track")
    def on_track(remote: Any) -> None:
        if remote.kind == "audio":
            call.tasks.append(asyncio.ensure_future(_pump_caller_audio(call, remote)))

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed", "disconnected"):
            await _finish(call, "hangup" if pc.connectionState != "failed" else "connection_failed", on_end)

    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        call.session = await open_call(record, WebRTCTransport(track))
    except Exception:
        await pc.close()
        raise
    call.tasks.append(asyncio.ensure_future(_feed_transcript(call)))
    call.tasks.append(asyncio.ensure_future(_end_with_session(call, on_end)))
    return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "call_id": call.session.call_id}, call


async def _finish(call: PeerCall, reason: str, on_end: Callable[[PeerCall], None] | None) -> None:
    await call.end(reason)
    if on_end is not None:
        on_end(call)


async def _end_with_session(call: PeerCall, on_end: Callable[[PeerCall], None] | None) -> None:
    """The agent ended the call (opt-out confirmed, restricted caller): close the peer too."""
    assert call.session is not None
    await call.session.closed.wait()
    await asyncio.sleep(0.3)  # let the transcript feed send the last turns
    await _finish(call, call.session.record.end_reason or "completed", on_end)


async def _pump_caller_audio(call: PeerCall, remote: Any) -> None:
    from aiortc.mediastreams import MediaStreamError

    while True:
        try:
            frame = await remote.recv()
        except MediaStreamError:
            return
        if call.session is None:
            continue
        pcm, rate = frame_to_mono_pcm(frame)
        await call.session.feed_audio(pcm, rate)


async def _feed_transcript(call: PeerCall) -> None:
    sent: dict[int, tuple] = {}
    assert call.session is not None
    announced = False
    while not call.ended.is_set():
        if not announced and call.channel is not None and call.channel.readyState == "open":
            call.send({"type": "call", "call_id": call.session.call_id, "state": "started"})
            announced = True
        if call.channel is not None:
            for event in turn_events(call.session.record, sent):
                call.send(event)
        await asyncio.sleep(0.1)
    logger.debug("webrtc transcript feed ended")
