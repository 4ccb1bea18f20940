"""An LLM on an OpenAI-compatible chat endpoint: llama.cpp's ``llama-server``, vLLM,
llama-cpp-python's server (``python -m llama_cpp.server``).

:class:`RemoteLLMEngine` has the surface of :class:`voicecore.services.llm.LlamaEngine` that a
call's :class:`~voicecore.services.llm.LlamaLLMProcessor` uses (``prompt_tokens``, ``generate``,
``prefill``, ``forget``), so the pipeline, the turn timeline, barge-in and the spoken fallback
are the same whichever side of the network the model runs on. The "prompt" it hands back is
the chat messages themselves; the server does the templating and keeps the prefix cached:

* ``cache_prompt: true`` (llama-server, llama-cpp-python): the server reuses the longest
  cached prefix, so a turn evaluates only the new messages;
* ``slots: N`` in the preset pins each conversation to one of llama-server's N slots
  (``id_slot``), so another call's turn does not evict this call's prefix.

The client is the ``openai`` package's ``AsyncOpenAI`` (the one Pipecat's OpenAI-compatible
services use), streamed; no blocking call runs in the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

from voicecore.config import LLMParams, LLMPreset
from voicecore.services.conversation import ChatMessage
from voicecore.services.llm import Generation, GenerationStats, LlamaEngine

ChatPrompt = list[dict[str, str]]


class BackendError(RuntimeError):
    """A remote model backend failed (unreachable, an HTTP error, a broken stream). The message
    names the backend (its endpoint) and what happened, never the prompt."""

    def __init__(self, kind: str, endpoint: str, what: str):
        self.kind = kind
        self.endpoint = endpoint
        self.what = what
        super().__init__(f"{kind} backend {endpoint}: {what}")


class OpenAIClients:
    """One ``AsyncOpenAI`` client per event loop for an endpoint (a client is bound to the loop that
    first used it); a closed one is made again on next use. No retries: a turn cannot wait for
    them, the spoken fallback answers instead."""

    def __init__(self, endpoint: str, api_key: str, timeout_s: float):
        self.endpoint = endpoint
        self._api_key = api_key or "none"
        self._timeout_s = timeout_s
        self._clients: dict[int, Any] = {}

    def get(self) -> Any:
        from openai import AsyncOpenAI

        loop = id(asyncio.get_running_loop())
        client = self._clients.get(loop)
        if client is None or client.is_closed():
            client = AsyncOpenAI(base_url=self.endpoint, api_key=self._api_key, timeout=self._timeout_s, max_retries=0)
            self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        client = self._clients.pop(id(asyncio.get_running_loop()), None)
        if client is not None:
            await client.close()


class RemoteLLMEngine:
    """A chat model behind an OpenAI-compatible endpoint, shared by every call of the process."""

    remote = True

    def __init__(self, preset: LLMPreset):
        if not preset.endpoint:
            raise ValueError("a remote LLM needs an endpoint")
        self.preset = preset
        self.endpoint = preset.endpoint
        self.path = preset.endpoint  # what reports and logs name the model by
        self.model = preset.model or "default"
        self.n_ctx = preset.n_ctx
        api_key = os.environ.get(preset.api_key_env, "") if preset.api_key_env else ""
        if preset.api_key_env and not api_key:
            raise ValueError(f"models.llm: the environment variable {preset.api_key_env} (api_key_env) is not set")
        self._clients = OpenAIClients(preset.endpoint, api_key, preset.timeout_s)

    # -- the surface a call's LLM processor uses ----------------------------------------

    render = staticmethod(LlamaEngine.render)

    def prompt_tokens(
        self, messages: list[ChatMessage], generated: dict[str, list[int]] | None = None, *,
        generation_header: bool = True,
    ) -> ChatPrompt:  # fmt: skip
        """The chat messages as the endpoint takes them (the server applies the chat template)."""
        return [{"role": m.role, "content": m.content} for m in messages]

    async def prefill(self, owner: str, prompt: ChatPrompt) -> int:
        """Nothing to do ahead of the first turn: the server caches the prefix on the first request."""
        return 0

    def forget(self, owner: str) -> None:
        """The call is over (the server's cache ages out on its own)."""

    def slot_for(self, owner: str) -> int | None:
        """The llama-server slot a conversation keeps to (``slots`` in the preset), else None."""
        if not self.preset.slots:
            return None
        return int.from_bytes(hashlib.sha256(owner.encode()).digest()[:4], "big") % self.preset.slots

    def request(self, owner: str, prompt: ChatPrompt, params: LLMParams) -> dict[str, Any]:
        """The chat-completion request of one turn (what goes over the wire, less the client's headers)."""
        extra: dict[str, Any] = {"cache_prompt": True, "repeat_penalty": params.repeat_penalty}
        slot = self.slot_for(owner)
        if slot is not None:
            extra["id_slot"] = slot
        body: dict[str, Any] = {
            "model": self.model,
            "messages": prompt,
            "stream": True,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "extra_body": extra,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    async def generate(
        self,
        owner: str,
        prompt: ChatPrompt,
        params: LLMParams,
        cancel: threading.Event,
        on_text: Callable[[str], None] | None = None,
        *,
        said: list[int] | None = None,
        yield_after: int | None = None,
    ) -> Generation:
        """Stream one reply; ``on_text`` gets each piece as it arrives. Raises :class:`BackendError`
        when the endpoint cannot be reached or fails (the processor then speaks the fallback)."""
        from openai import APIError, APIStatusError

        stats = GenerationStats()
        t0 = time.monotonic()
        pieces: list[str] = []
        try:
            stream = await self._clients.get().chat.completions.create(**self.request(owner, prompt, params))
            try:
                async for chunk in stream:
                    if chunk.usage is not None:
                        stats.prompt_tokens = chunk.usage.prompt_tokens or 0
                        stats.evaluated_prompt_tokens = stats.prompt_tokens
                        stats.generated_tokens = chunk.usage.completion_tokens or 0
                    for choice in chunk.choices:
                        piece = choice.delta.content if choice.delta is not None else None
                        if not piece:
                            continue
                        if stats.first_token_s is None:
                            stats.first_token_s = time.monotonic() - t0
                        pieces.append(piece)
                        if on_text is not None:
                            on_text(piece)
                    if cancel.is_set():
                        stats.cancelled = True
                        break
            finally:
                await stream.close()
        except asyncio.CancelledError:
            raise
        except APIStatusError as e:
            raise BackendError("llm", self.endpoint, f"HTTP {e.status_code}") from None
        except APIError as e:  # connection refused, timeout, a broken stream
            raise BackendError("llm", self.endpoint, type(e).__name__) from None
        except OSError as e:
            raise BackendError("llm", self.endpoint, type(e).__name__) from None
        if not stats.generated_tokens:
            stats.generated_tokens = len(pieces)  # the server sent no usage: pieces are about tokens
        stats.total_s = time.monotonic() - t0
        logger.debug(f"remote LLM {self.endpoint}: {stats.generated_tokens} tokens, first after "
                     f"{(stats.first_token_s or 0) * 1000:.0f} ms")  # fmt: skip
        return Generation(text="".join(pieces), tokens=[], stats=stats)

    async def wait_until_no_live_turn(self, *args: Any, **kwargs: Any) -> None:
        """The server schedules its own work; nothing here waits for live turns."""

    async def aclose(self) -> None:
        await self._clients.aclose()
