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
    ModelPresets,
    PipelineConfig,
    load_presets,
    resolve_llm,
    resolve_stt,
    resolve_tts,
)
from voicecore.policy import BackendInfo
from voicecore.services.cpu import CpuPriority
from voicecore.services.llm import LlamaEngine
from voicecore.services.stt import WhisperEngine
from voicecore.services.tts import PiperEngine
from voicecore.services.vad import SmartTurnEngine


@dataclass
class PipelineModels:
    stt: WhisperEngine
    llm: LlamaEngine
    tts: PiperEngine
    smart_turn: SmartTurnEngine | None


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
        """Where each model of a pipeline runs (for the policy's location check), loading nothing."""
        out: list[BackendInfo] = []
        for kind in ("stt", "llm", "tts"):
            preset = getattr(self.presets, kind).get(getattr(config.models, kind))
            endpoint = preset.endpoint if preset is not None else None
            out.append(BackendInfo.from_endpoint(kind, endpoint) if endpoint else BackendInfo(kind, True))
        if config.turn_taking.smart_turn:
            out.append(BackendInfo("turn", True))
        return out

    def stt(self, ref: str) -> WhisperEngine:
        preset, path = resolve_stt(ref, self.presets)
        key = ("stt", path, preset.compute_type, str(preset.cpu_threads), str(preset.beam_size),
               str(preset.encoder_window_s))
        return self._get(key, f"STT {path}", lambda: WhisperEngine(path, preset, self.cpu))

    def llm(self, ref: str) -> LlamaEngine:
        preset, path = resolve_llm(ref, self.presets)
        return self._get(("llm", path, str(preset.n_ctx)), f"LLM {path}", lambda: LlamaEngine(path, preset, self.cpu))

    def tts(self, ref: str) -> PiperEngine:
        preset, model, cfg = resolve_tts(ref, self.presets)
        return self._get(("tts", model), f"TTS {model}", lambda: PiperEngine(model, cfg, preset.threads, self.cpu))

    def smart_turn(self) -> SmartTurnEngine:
        return self._get(("turn", SmartTurnEngine.MODEL_FILE), "smart-turn v3", SmartTurnEngine)

    def for_pipeline(self, config: PipelineConfig) -> PipelineModels:
        """Every model ``config`` needs (loading those not loaded yet)."""
        return PipelineModels(
            stt=self.stt(config.models.stt),
            llm=self.llm(config.models.llm),
            tts=self.tts(config.models.tts),
            smart_turn=self.smart_turn() if config.turn_taking.smart_turn else None,
        )
