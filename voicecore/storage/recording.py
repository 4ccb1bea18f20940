"""Encrypted call recordings: streamed in AES-GCM chunks as audio arrives, to a file or to the database.

File layout (``<data_dir>/recordings/<tenant_id>/<recording_id>.vcrec``, the SQLite mode)::

    b"VCREC1\\n"                      magic
    u32 header length, header JSON     {"v":1,"id":..,"rate":..,"channels":..,"width":..}  (no content)
    chunk*                             u32 length, nonce(12), AES-GCM ciphertext+tag

In the database (``recordings.location = 'database'``, the PostgreSQL mode, where every worker
reads every recording) each chunk is one ``recording_chunks`` row (``idx``, ``data`` = nonce +
ciphertext+tag: the same bytes as in a file, without the length); the header is not stored but
derived from the recording row's columns (:func:`recording_header`), so changing them breaks
every chunk. The rows are inserted by a :class:`~voicecore.storage.recording_spool.ChunkSpool`
thread, never by the caller of :meth:`RecordingWriter.write`.

Each chunk's associated data binds it to the tenant, the recording id, the header,
its index and whether it is the last chunk, so chunks cannot be reordered, moved
to another recording or dropped from the end without detection. At most
``chunk_bytes`` of plaintext (about one second) is held in memory; no plaintext
audio is ever written to disk. A recording cut short by a crash lacks the final
chunk: it reads back as ``complete=False`` with the audio up to the last chunk.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import secrets
import struct
import wave
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from loguru import logger

from voicecore.audio.resample import RateFollower
from voicecore.storage.crypto import CryptoError, TenantKeys

MAGIC = b"VCREC1\n"
_NONCE = 12
_MAX_CHUNK = 16 * 1024 * 1024


class RecordingError(CryptoError):
    """A recording file is malformed, tampered with, or was written under another key."""


def _chunk_aad(tenant_id: str, rec_id: str, header_digest: bytes, index: int, final: bool) -> bytes:
    return (
        b"vcrec1|"
        + tenant_id.encode()
        + b"|"
        + rec_id.encode()
        + b"|"
        + header_digest
        + struct.pack(">QB", index, 1 if final else 0)
    )


@dataclass(frozen=True)
class RecordingContents:
    pcm: bytes
    sample_rate: int
    channels: int
    sample_width: int
    complete: bool

    def to_wav(self) -> bytes:
        return pcm_to_wav(self.pcm, self.sample_rate, self.channels, self.sample_width)


def pcm_to_wav(pcm: bytes, sample_rate: int, channels: int = 1, sample_width: int = 2) -> bytes:
    """A WAV file (in memory) holding ``pcm``."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(sample_width)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return buf.getvalue()


def recording_header(recording_id: str, sample_rate: int, channels: int, sample_width: int) -> bytes:
    """The header a recording's chunks are bound to (no content): written at the top of a file,
    derived from the row's columns for a recording in the database."""
    return json.dumps(
        {"v": 1, "id": recording_id, "rate": sample_rate, "channels": channels, "width": sample_width},
        sort_keys=True,
    ).encode()


class ChunkSink(Protocol):
    """Where a database recording's chunks go (a :class:`~voicecore.storage.recording_spool.ChunkSpool`)."""

    def put(self, recording_id: str, idx: int, data: bytes) -> None: ...

    def finish(self, writer: RecordingWriter) -> bool: ...


class RecordingWriter:
    """Writes one recording's audio encrypted, to a file (``path``) or as database rows (``sink``).
    Create it with ``store.calls.open_recording``.

    ``write(pcm)`` is cheap and synchronous (about once a second a small ``os.write``, or a chunk
    handed to the spool thread that inserts it); call ``close()`` (or use it as a context manager)
    when the call ends.
    """

    def __init__(
        self,
        *,
        recording_id: str,
        keys: TenantKeys,
        sample_rate: int,
        path: Path | None = None,
        sink: ChunkSink | None = None,
        channels: int = 1,
        sample_width: int = 2,
        chunk_bytes: int | None = None,
        on_close: Callable[[RecordingWriter], None] | None = None,
    ):
        if sample_rate <= 0 or channels <= 0 or sample_width not in (1, 2, 3, 4):
            raise ValueError("invalid recording format")
        if (path is None) == (sink is None):
            raise ValueError("a recording goes to a file (path) or to the database (sink)")
        self.path = path
        self.sink = sink
        self.recording_id = recording_id
        self.sample_rate = sample_rate
        self.channels = channels
        self.sample_width = sample_width
        self.chunk_bytes = chunk_bytes or sample_rate * channels * sample_width  # ~1 s
        self.bytes_written = 0  # plaintext PCM bytes
        self.chunks = 0
        self.closed = False
        self.complete = False
        self._keys = keys
        self._aead = AESGCM(keys.enc_key)
        self._buffer = bytearray()
        self._on_close = on_close
        header = recording_header(recording_id, sample_rate, channels, sample_width)
        self._header_digest = hashlib.sha256(header).digest()
        self._fd = -1
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(self._fd, MAGIC + struct.pack(">I", len(header)) + header)

    @property
    def location(self) -> str:
        return "file" if self.path is not None else "database"

    def _emit(self, plaintext: bytes, final: bool) -> None:
        nonce = secrets.token_bytes(_NONCE)
        aad = _chunk_aad(self._keys.tenant_id, self.recording_id, self._header_digest, self.chunks, final)
        ct = self._aead.encrypt(nonce, plaintext, aad)
        if self.sink is not None:
            self.sink.put(self.recording_id, self.chunks, nonce + ct)
        else:
            os.write(self._fd, struct.pack(">I", len(ct)) + nonce + ct)
        self.chunks += 1

    def write(self, pcm: bytes) -> None:
        """Append PCM audio (signed little-endian, interleaved)."""
        if self.closed:
            raise ValueError("recording is closed")
        if not pcm:
            return
        self._buffer += pcm
        self.bytes_written += len(pcm)
        while len(self._buffer) >= self.chunk_bytes:
            chunk = bytes(self._buffer[: self.chunk_bytes])
            del self._buffer[: self.chunk_bytes]
            self._emit(chunk, final=False)

    def close(self) -> None:
        """Write the last (final-marked) chunk and finish: a file is synced and closed; a database
        recording waits (bounded) until the spool inserted every chunk and marked the row complete."""
        if self.closed:
            return
        if self.sink is not None:
            self._emit(bytes(self._buffer), final=True)
            self._buffer.clear()
            self.closed = True
            # the spool marks the row (bytes, complete) once the last chunk is in; False: still queued
            self.complete = self.sink.finish(self)
            return
        try:
            self._emit(bytes(self._buffer), final=True)
            self._buffer.clear()
            os.fsync(self._fd)
            self.complete = True
        finally:
            os.close(self._fd)
            self.closed = True
            if self._on_close is not None:
                self._on_close(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decrypt_chunks(
    label: str, chunks: Iterable[tuple[bytes, bytes]], keys: TenantKeys, recording_id: str, digest: bytes
) -> tuple[bytes, bool]:
    """The PCM of a recording's chunks (nonce, ciphertext) in stored order, and whether the final one was there."""
    aead = AESGCM(keys.enc_key)
    pcm = bytearray()
    complete = False
    for index, (nonce, ct) in enumerate(chunks):
        if complete:
            raise RecordingError(f"{label}: data after the final chunk")
        for final in (False, True):
            try:
                pcm += aead.decrypt(nonce, ct, _chunk_aad(keys.tenant_id, recording_id, digest, index, final))
                complete = final
                break
            except InvalidTag:
                continue
        else:
            raise RecordingError(f"{label}: chunk {index} does not authenticate (tampered, reordered or wrong key)")
    return bytes(pcm), complete


def read_recording_file(path: Path, keys: TenantKeys, recording_id: str) -> RecordingContents:
    """Decrypt a recording file into PCM. Raises :class:`RecordingError` on tampering or a wrong key."""
    data = path.read_bytes()
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise RecordingError(f"{path.name}: not a voicecore recording")
    pos = len(MAGIC)
    (hlen,) = struct.unpack_from(">I", data, pos)
    pos += 4
    header_bytes = data[pos : pos + hlen]
    pos += hlen
    try:
        header = json.loads(header_bytes)
    except ValueError:
        raise RecordingError(f"{path.name}: damaged header") from None
    if header.get("id") != recording_id:
        raise RecordingError(f"{path.name}: belongs to another recording")

    def chunks() -> Iterator[tuple[bytes, bytes]]:
        pos_ = pos
        while pos_ < len(data):
            if pos_ + 4 + _NONCE > len(data):
                return  # torn write at the end (crash): keep what authenticated
            (clen,) = struct.unpack_from(">I", data, pos_)
            if clen > _MAX_CHUNK or pos_ + 4 + _NONCE + clen > len(data):
                return
            yield data[pos_ + 4 : pos_ + 4 + _NONCE], data[pos_ + 4 + _NONCE : pos_ + 4 + _NONCE + clen]
            pos_ += 4 + _NONCE + clen

    pcm, complete = _decrypt_chunks(path.name, chunks(), keys, recording_id, hashlib.sha256(header_bytes).digest())
    return RecordingContents(pcm, int(header["rate"]), int(header["channels"]), int(header["width"]), complete)


def read_recording_rows(
    rows: Iterable[tuple[int, bytes]], keys: TenantKeys, recording_id: str, *, sample_rate: int, channels: int,
    sample_width: int,
) -> RecordingContents:  # fmt: skip
    """Decrypt a database recording (its ``recording_chunks`` rows as (idx, data), in idx order; the
    format from its row). Raises :class:`RecordingError` on tampering (a changed, swapped, moved or
    missing chunk, a changed format) or a wrong key; a missing final chunk reads as ``complete=False``."""
    label = f"recording {recording_id[:8]}"

    def chunks() -> Iterator[tuple[bytes, bytes]]:
        for position, (idx, data) in enumerate(rows):
            if idx != position:
                raise RecordingError(f"{label}: chunk {position} is missing")
            data = bytes(data)
            if len(data) < _NONCE + 16:
                raise RecordingError(f"{label}: chunk {idx} is damaged")
            yield data[:_NONCE], data[_NONCE:]

    header = recording_header(recording_id, sample_rate, channels, sample_width)
    pcm, complete = _decrypt_chunks(label, chunks(), keys, recording_id, hashlib.sha256(header).digest())
    return RecordingContents(pcm, sample_rate, channels, sample_width, complete)


class RecordingStream:
    """Streams one call's audio (both sides) into an encrypted recording while the call runs.

    Layout: one recording per call (track ``mixed``), **two channels** at the
    transport's output rate (8 kHz for telephony, 16 kHz for files): channel 0
    (left) is the caller, channel 1 (right) the agent, so a player mixes them and
    QA or transcription can still take each side alone.

    Alignment: the caller's audio is the clock (every transport streams caller
    audio continuously, silence included). Agent audio is queued as the output
    sends it (at most ``lead_ms`` ahead of playback) and paired with the caller
    audio that arrives next, so it lands where the caller heard it, within the
    output's lead (~100 ms). A barge-in's cleared audio that was already sent is
    kept (at most that lead). Agent audio more than ``MAX_AGENT_AHEAD_S`` ahead
    of the caller stream (a transport that stops sending caller audio, or fast
    simulated calls) is written against caller silence.

    Memory and I/O: plaintext is held for at most about one second (the agent
    queue is capped, interleaved frames are handed over in the writer's ~1 s
    chunks). Encryption and ``os.write`` (or the hand-over of a chunk to the
    database spool thread) run in a worker thread (``asyncio.to_thread``), one
    chunk at a time and in order, so a slow disk or database never stalls the
    event loop that carries every call's audio.
    """

    MAX_AGENT_AHEAD_S = 1.0

    def __init__(self, writer: RecordingWriter, sample_rate: int):
        if writer.channels != 2 or writer.sample_width != 2 or writer.sample_rate != sample_rate:
            raise ValueError("RecordingStream needs a 2-channel int16 writer at the recording rate")
        self.writer = writer
        self.sample_rate = sample_rate
        self.frames = 0  # stereo frames handed to the writer (duration = frames / sample_rate)
        self.failed = False
        self._closed = False
        self._caller_rate = RateFollower(sample_rate)
        self._agent_rate = RateFollower(sample_rate)
        self._agent = bytearray()  # agent samples (int16 mono) not yet paired with caller audio
        self._out = bytearray()  # interleaved frames not yet handed to the writer (< one chunk)
        self._max_ahead = int(self.MAX_AGENT_AHEAD_S * sample_rate)
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._drain(), name=f"rec-{writer.recording_id[:8]}")

    @property
    def recording_id(self) -> str:
        return self.writer.recording_id

    def caller_audio(self, pcm16: bytes, sample_rate: int) -> None:
        if self._closed or self.failed or not pcm16:
            return
        caller = self._caller_rate.process(np.frombuffer(pcm16, dtype=np.int16), sample_rate)
        n = caller.size
        if n == 0:
            return
        agent = np.zeros(n, dtype=np.int16)
        take = min(n, len(self._agent) // 2)
        if take:
            agent[:take] = np.frombuffer(bytes(self._agent[: take * 2]), dtype=np.int16)
            del self._agent[: take * 2]
        self._emit(caller, agent)

    def agent_audio(self, pcm16: bytes, sample_rate: int) -> None:
        if self._closed or self.failed or not pcm16:
            return
        self._agent += self._agent_rate.process(np.frombuffer(pcm16, dtype=np.int16), sample_rate).tobytes()
        excess = len(self._agent) // 2 - self._max_ahead
        if excess > 0:  # no caller audio to pair it with: write it against silence
            ahead = np.frombuffer(bytes(self._agent[: excess * 2]), dtype=np.int16)
            del self._agent[: excess * 2]
            self._emit(np.zeros(excess, dtype=np.int16), ahead)

    def _emit(self, caller: np.ndarray, agent: np.ndarray) -> None:
        frames = np.empty(caller.size * 2, dtype=np.int16)
        frames[0::2] = caller
        frames[1::2] = agent
        self._out += frames.tobytes()
        self.frames += caller.size
        chunk = self.writer.chunk_bytes
        while len(self._out) >= chunk:
            self._queue.put_nowait(bytes(self._out[:chunk]))
            del self._out[:chunk]

    async def _drain(self) -> None:
        while True:
            batch = await self._queue.get()
            if batch is None:
                return
            if self.failed:
                continue
            try:
                await asyncio.to_thread(self.writer.write, batch)
            except Exception as e:
                self.failed = True
                logger.error(f"recording {self.recording_id[:8]}: write failed ({type(e).__name__}); recording stopped")

    async def close(self) -> None:
        """Write what is left (the agent's last words against silence), finish and close the file."""
        if self._closed:
            return
        if self._agent:
            rest = np.frombuffer(bytes(self._agent), dtype=np.int16)
            self._agent.clear()
            self._emit(np.zeros(rest.size, dtype=np.int16), rest)
        self._closed = True
        if self._out:
            self._queue.put_nowait(bytes(self._out))
            self._out.clear()
        self._queue.put_nowait(None)
        await self._task
        try:
            await asyncio.to_thread(self.writer.close)
        except Exception as e:
            logger.error(f"recording {self.recording_id[:8]}: close failed ({type(e).__name__})")
