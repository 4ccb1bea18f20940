"""Speech to text on an OpenAI-compatible transcription endpoint (``POST /v1/audio/transcriptions``:
speaches, faster-whisper-server, vLLM's Whisper, OpenAI itself).

:class:`RemoteSTTEngine` has the surface of :class:`voicecore.services.stt.WhisperEngine` that a
call's :class:`~voicecore.services.stt.WhisperSTTProcessor` uses (``transcribe``), so the turn
detection, the speculative transcription during pauses, the timeline and the spoken fallback
when it fails are the same. Each request carries one utterance as a 16 kHz WAV file; the client
is the ``openai`` package's ``AsyncOpenAI`` (as Pipecat's OpenAI STT service uses it).
"""

from __future__ import annotations

import io
import os
import wave

import numpy as np

from voicecore.config import STTPreset
from voicecore.services.llm_remote import BackendError, OpenAIClients

SAMPLE_RATE = 16000


def wav_bytes(audio: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """float32 mono samples in [-1, 1] as a 16-bit PCM WAV file."""
    pcm = np.clip(audio, -1.0, 1.0)
    pcm16 = (pcm * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16.tobytes())
    return buf.getvalue()


class RemoteSTTEngine:
    """A transcription model behind an OpenAI-compatible endpoint, shared by every call."""

    remote = True

    def __init__(self, preset: STTPreset):
        if not preset.endpoint:
            raise ValueError("a remote STT needs an endpoint")
        self.preset = preset
        self.endpoint = preset.endpoint
        self.model = preset.model or "whisper-1"
        api_key = os.environ.get(preset.api_key_env, "") if preset.api_key_env else ""
        if preset.api_key_env and not api_key:
            raise ValueError(f"models.stt: the environment variable {preset.api_key_env} (api_key_env) is not set")
        self._clients = OpenAIClients(preset.endpoint, api_key, preset.timeout_s)
        self.jobs_run = 0

    async def transcribe(self, audio: np.ndarray, prompt: str | None = None) -> str:
        """The text of one utterance (16 kHz float32 mono); raises :class:`BackendError`."""
        from openai import APIError, APIStatusError

        kwargs: dict[str, object] = {"model": self.model, "response_format": "json"}
        if self.preset.language:
            kwargs["language"] = self.preset.language
        if prompt:
            kwargs["prompt"] = prompt
        try:
            result = await self._clients.get().audio.transcriptions.create(
                file=("utterance.wav", wav_bytes(audio), "audio/wav"), **kwargs  # type: ignore[arg-type]
            )
        except APIStatusError as e:
            raise BackendError("stt", self.endpoint, f"HTTP {e.status_code}") from None
        except APIError as e:
            raise BackendError("stt", self.endpoint, type(e).__name__) from None
        except OSError as e:
            raise BackendError("stt", self.endpoint, type(e).__name__) from None
        self.jobs_run += 1
        text = (getattr(result, "text", None) or "").strip()
        return text if any(c.isalnum() for c in text) else ""

    async def aclose(self) -> None:
        await self._clients.aclose()
