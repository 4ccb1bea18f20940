"""Text to speech on a server: Piper's HTTP server (``python -m piper.http_server``: ``POST /``
with ``{"text": ...}``, a WAV back) or an OpenAI-compatible ``POST /v1/audio/speech``.

:class:`RemoteTTSEngine` has the surface of :class:`voicecore.services.tts.PiperEngine` that a
call's :class:`~voicecore.services.tts.PiperTTSProcessor` uses (``sample_rate``,
``synthesize``), so clause-by-clause speech, pacing, marks and barge-in are the same. The WAV
that comes back is resampled to the preset's ``sample_rate`` when the server speaks at another.
The HTTP client is ``aiohttp`` (as Pipecat's ``PiperHttpTTSService`` uses it), one session per
event loop.
"""

from __future__ import annotations

import io
import os
import wave
from collections import OrderedDict

import numpy as np

from voicecore.config import TTSPreset
from voicecore.services.llm_remote import BackendError


def wav_to_pcm16(data: bytes) -> tuple[np.ndarray, int]:
    """int16 mono samples and the rate of a 16-bit PCM WAV file (stereo is mixed down)."""
    with wave.open(io.BytesIO(data), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"expected 16-bit PCM WAV, got {8 * w.getsampwidth()}-bit")
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return pcm.astype(np.int16), rate


class RemoteTTSEngine:
    """A voice behind Piper's HTTP server or an OpenAI-compatible speech endpoint."""

    remote = True
    CACHE_SIZE = 64

    def __init__(self, preset: TTSPreset):
        if not preset.endpoint:
            raise ValueError("a remote TTS needs an endpoint")
        self.preset = preset
        self.endpoint = preset.endpoint
        self.model_path = preset.endpoint
        self.sample_rate: int = preset.sample_rate
        api_key = os.environ.get(preset.api_key_env, "") if preset.api_key_env else ""
        if preset.api_key_env and not api_key:
            raise ValueError(f"models.tts: the environment variable {preset.api_key_env} (api_key_env) is not set")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._sessions: dict[int, object] = {}  # one aiohttp session per event loop (id of the loop)
        self._cache: OrderedDict[tuple[str, float, int | None], bytes] = OrderedDict()

    def _session(self):  # noqa: ANN202 - aiohttp.ClientSession
        import asyncio

        import aiohttp

        loop = asyncio.get_running_loop()
        session = self._sessions.get(id(loop))
        if session is None or session.closed:  # type: ignore[attr-defined]
            session = aiohttp.ClientSession(headers=self._headers,
                                            timeout=aiohttp.ClientTimeout(total=self.preset.timeout_s))  # fmt: skip
            self._sessions[id(loop)] = session
        return session

    def request(self, text: str, length_scale: float = 1.0, speaker_id: int | None = None) -> tuple[str, dict]:
        """The URL and JSON body of one clause's request."""
        if self.preset.kind == "openai":
            body: dict[str, object] = {"model": self.preset.model or "tts-1", "input": text,
                                       "voice": self.preset.voice or "alloy", "response_format": "wav",
                                       "speed": round(1.0 / length_scale, 3)}  # fmt: skip
            return self.endpoint.rstrip("/") + "/audio/speech", body
        body = {"text": text, "length_scale": length_scale}
        if self.preset.voice:
            body["voice"] = self.preset.voice
        if speaker_id is not None:
            body["speaker_id"] = speaker_id
        return self.endpoint, body

    def cached(self, text: str, length_scale: float = 1.0, speaker_id: int | None = None) -> bool:
        """This phrase's audio is in the cache (a greeting synthesised at start)."""
        return (text, length_scale, speaker_id) in self._cache

    async def synthesize(self, text: str, length_scale: float = 1.0, speaker_id: int | None = None, *,
                         cache: bool = False, urgent: bool = False) -> bytes:  # fmt: skip
        """int16 mono audio at ``sample_rate``; raises :class:`BackendError` when the server fails."""
        import aiohttp

        key = (text, length_scale, speaker_id)
        if cache and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        url, body = self.request(text, length_scale, speaker_id)
        try:
            async with self._session().post(url, json=body) as response:
                status, content = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise BackendError("tts", self.endpoint, type(e).__name__) from None
        if status != 200:
            raise BackendError("tts", self.endpoint, f"HTTP {status}")
        try:
            pcm, rate = wav_to_pcm16(content)
        except (wave.Error, ValueError, EOFError) as e:
            raise BackendError("tts", self.endpoint, f"not a WAV answer ({e})") from None
        if rate != self.sample_rate:
            import soxr

            pcm = soxr.resample(pcm, rate, self.sample_rate).astype(np.int16)
        audio = pcm.tobytes()
        if cache:
            self._cache[key] = audio
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return audio

    async def aclose(self) -> None:
        """Close this event loop's HTTP session (the server's shutdown)."""
        import asyncio

        session = self._sessions.pop(id(asyncio.get_running_loop()), None)
        if session is not None:
            await session.close()  # type: ignore[attr-defined]
