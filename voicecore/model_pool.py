"""The shared model pool: every model loads once per process and serves every call.

Models are keyed by what they were loaded from (path and settings), so two
pipelines naming the same model share it. Loading prints progress (to stderr
through loguru at INFO: model names and timings only, never call content).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from loguru import logger

from voicecore.config import (
    ConfigError,
    LLMPreset,
    ModelPresets,
    PipelineConfig,
    STTPreset,
    TTSPreset,
    load_presets,
    resolve_llm,
    resolve_preset,
    resolve_stt,
    resolve_tts,
)
from voicecore.policy import BackendInfo
from voicecore.services.cpu import CpuPriority
from voicecore.services.llm import LlamaEngine
from voicecore.services.llm_remote import RemoteLLMEngine
from voicecore.services.stt import WhisperEngine
from voicecore.services.stt_remote import RemoteSTTEngine
from voicecore.services.tts import PiperEngine
from voicecore.services.tts_remote import RemoteTTSEngine
from voicecore.services.vad import SmartTurnEngine
from voicecore.services.vad_analyzers import SileroVADEngine


@dataclass
class PipelineModels:
    stt: WhisperEngine | RemoteSTTEngine
    llm: LlamaEngine | RemoteLLMEngine
    tts: PiperEngine | RemoteTTSEngine
    smart_turn: SmartTurnEngine | None
    silero_vad: SileroVADEngine | None = None


class ModelPool:
    """Loads each model once and hands the same instance to every call."""

    def __init__(self, presets: ModelPresets | None = None):
        self._presets = presets
        self._models: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()
        self.cpu = CpuPriority()  # one arbiter for every model of the process

    @property
    def presets(self) -> ModelPresets:
        if self._presets is None:
            self._presets = load_presets()
        return self._presets

    def _get(self, key: tuple[str, ...], label: str, factory) -> Any:
        with self._lock:
            model = self._models.get(key)
            if model is None:
                logger.info(f"loading {label} ...")
                t0 = time.monotonic()
                model = factory()
                logger.info(f"loaded {label} in {time.monotonic() - t0:.2f} s")
                self._models[key] = model
            return model

    def backends(self, config: PipelineConfig) -> list[BackendInfo]:
        """Where each model of a pipeline runs (for the policy's location check), loading nothing.
        Raises ``ConfigError`` for a reference that names no preset or path."""
        out: list[BackendInfo] = []
        for kind in ("stt", "llm", "tts"):
            out.append(backend_info(kind, resolve_preset(kind, getattr(config.models, kind), self.presets)))
        if config.turn_taking.smart_turn:
            out.append(BackendInfo("turn", True))
        return out

    def stt(self, ref: str | STTPreset) -> WhisperEngine | RemoteSTTEngine:
        preset, path = resolve_stt(ref, self.presets)
        if preset.endpoint:
            key = ("stt-remote", preset.endpoint, preset.model or "", preset.language, preset.api_key_env or "")
            return self._get(key, f"remote STT client {preset.endpoint}", lambda: RemoteSTTEngine(preset))
        key = ("stt", path, preset.compute_type, str(preset.cpu_threads), str(preset.beam_size),
               str(preset.encoder_window_s), str(preset.repetition_penalty), str(preset.max_batch))
        return self._get(key, f"STT {path}", lambda: WhisperEngine(path, preset, self.cpu))

    def llm(self, ref: str | LLMPreset) -> LlamaEngine | RemoteLLMEngine:
        preset, path = resolve_llm(ref, self.presets)
        if preset.endpoint:  # a client, made once; the model runs on the server
            key = ("llm-remote", preset.endpoint, preset.model or "", str(preset.slots), preset.api_key_env or "")
            return self._get(key, f"remote LLM client {preset.endpoint}", lambda: RemoteLLMEngine(preset))
        key = ("llm", path, str(preset.n_ctx), str(preset.parallel_sequences))
        return self._get(key, f"LLM {path}", lambda: LlamaEngine(path, preset, self.cpu))

    def tts(self, ref: str | TTSPreset) -> PiperEngine | RemoteTTSEngine:
        preset, model, cfg = resolve_tts(ref, self.presets)
        if preset.endpoint:
            key = ("tts-remote", preset.endpoint, preset.kind, preset.voice or "", str(preset.sample_rate),
                   preset.model or "", preset.api_key_env or "")
            return self._get(key, f"remote TTS client {preset.endpoint}", lambda: RemoteTTSEngine(preset))
        return self._get(("tts", model), f"TTS {model}", lambda: PiperEngine(model, cfg, preset.threads, self.cpu))

    def smart_turn(self) -> SmartTurnEngine:
        return self._get(("turn", SmartTurnEngine.MODEL_FILE), "smart-turn v3", SmartTurnEngine)

    def silero_vad(self) -> SileroVADEngine:
        """Silero VAD's ONNX session, shared by every call (each call keeps its own model state)."""
        return self._get(("vad", SileroVADEngine.MODEL_FILE), "Silero VAD", SileroVADEngine)

    async def aclose(self) -> None:
        """Close the remote backends' clients of the running event loop (a server's shutdown);
        a later call opens them again."""
        with self._lock:
            models = list(self._models.values())
        for model in models:
            close = getattr(model, "aclose", None)
            if close is not None and getattr(model, "remote", False):
                try:
                    await close()
                except Exception as e:  # closing is best effort
                    logger.debug(f"closing a remote backend client: {e!r}")

    def for_pipeline(self, config: PipelineConfig) -> PipelineModels:
        """Every model ``config`` needs (loading those not loaded yet)."""
        return PipelineModels(
            stt=self.stt(config.models.stt),
            llm=self.llm(config.models.llm),
            tts=self.tts(config.models.tts),
            smart_turn=self.smart_turn() if config.turn_taking.smart_turn else None,
            silero_vad=self.silero_vad() if config.turn_taking.vad == "silero" else None,
        )


def backend_info(kind: str, preset: object) -> BackendInfo:
    """Where one stage's model runs, as the tenant's processing-location rule sees it: in process
    (no endpoint); at an endpoint that declares ``location: local`` (it must then be on this
    machine: loopback or a unix socket) or a region (``eu``, ``us``...); or, declaring nothing, local
    when the endpoint is on this machine and remote with no region otherwise."""
    endpoint = getattr(preset, "endpoint", None)
    location = getattr(preset, "location", None)
    if not endpoint:
        return BackendInfo(kind, True)
    seen = BackendInfo.from_endpoint(kind, endpoint)
    if location is None:
        return seen
    if location == "local":
        if not seen.is_local:
            raise ConfigError(f"models.{kind}: location local, but {endpoint} is not on this machine "
                              "(local means a loopback address or a unix socket; declare its region instead)")  # fmt: skip
        return seen
    return BackendInfo(kind, False, location, endpoint)
