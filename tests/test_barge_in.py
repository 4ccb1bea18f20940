"""Barge-in: caller speech while the agent speaks silences it at once and cancels the LLM.

What does not depend on the machine's speed is checked here, by events and their order: the
barge-in is detected while the agent speaks, the line is cleared after that, no audio of the cut
reply is written after the clear, the generation still running is cancelled, the stored turn
holds what was heard. The reply is *gated*: the real model generates it, but once it has
``GATE_WORDS`` words at a clause end it waits (in its token callback) until the barge-in is
detected, so the generation is still running at the barge-in on a fast machine as on a slow one.
How fast the line goes quiet (the old "within 200 ms") is a figure of
``python -m benchmarks.barge_in``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, Self

import pytest

from voicecore.session import CallSession
from voicecore.transports.file import FileTransport, stream_audio

pytestmark = pytest.mark.models

LONG_TALKER = {
    "system_prompt": (
        "You are a very talkative dental receptionist. You always answer with long, detailed "
        "explanations of at least ten sentences, describing every service in detail."
    ),
    "greeting": "",
    "facts": None,  # the model must talk (a question about the facts would be answered from the data)
}
GATE_WORDS = 12  # a few seconds of speech: the agent is still talking when the caller cuts in
GATE_TIMEOUT_S = 120.0  # a gate nobody releases lets go on its own (a failed test does not hang)
CLAUSE_ENDS = (".", ",", "!", "?", ";", ":")


class GenerationGate:
    """Holds one call's reply in the real engine's token loop, at the first clause end after
    ``words`` words, until :meth:`release` (the barge-in). Other calls' generations, and this
    call's after the release, run as usual."""

    def __init__(self, engine: Any, owner: Callable[[], str], words: int = GATE_WORDS):
        self.engine = engine
        self.owner = owner
        self.words = words
        self.holding = threading.Event()
        self.released = threading.Event()

    def release(self) -> None:
        self.released.set()

    def __enter__(self) -> Self:
        original = self.engine.generate_sync

        def gated(owner, prompt, params, cancel, on_text=None, **kwargs):
            if self.released.is_set() or owner != self.owner():
                return original(owner, prompt, params, cancel, on_text, **kwargs)
            text: list[str] = []

            def held(piece: str) -> None:
                if on_text is not None:
                    on_text(piece)
                text.append(piece)
                if (not self.released.is_set() and piece.rstrip().endswith(CLAUSE_ENDS)
                        and len("".join(text).split()) >= self.words):
                    self.holding.set()
                    self.released.wait(GATE_TIMEOUT_S)

            return original(owner, prompt, params, cancel, held, **kwargs)

        self.engine.generate_sync = gated  # this instance only, until __exit__
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        del self.engine.generate_sync  # the class's method again


async def test_caller_speech_stops_agent_audio_and_cancels_generation(pool, receptionist, say):
    config = receptionist.model_copy(
        update={**LONG_TALKER, "llm": receptionist.llm.model_copy(update={"max_tokens": 400, "temperature": 0.0})}
    )
    transport = FileTransport(16000, realtime=True)
    session = CallSession(config, pool, transport, realtime=True)
    await session.start()
    llm, vad, output = session.pipeline.llm, session.pipeline.vad, session.pipeline.output
    question = say("Please tell me about all the services you offer.")
    interruption = say("Stop please. I only need the address.", voice="en-us+m3")
    silence = bytes(320 * 2)

    try:
        with GenerationGate(pool.llm(config.models.llm), lambda: llm.conversation.key) as gate:
            await stream_audio(session, question)
            # caller silence until the agent speaks
            deadline = time.monotonic() + 60
            while not (transport.write_times and vad.bot_speaking) and time.monotonic() < deadline:
                await session.feed_audio(silence, 16000)
                await asyncio.sleep(0.02)
            assert transport.write_times and vad.bot_speaking, "the agent never started answering"
            assert llm.busy, "generation finished before the barge-in (the reply ended before the gate's clause)"

            # the caller cuts in; silence after it until the interruption is transcribed, then hang up
            await stream_audio(session, interruption)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if vad.barge_ins:
                    gate.release()  # the cancelled generation may now see its cancel flag
                if sum(1 for t in session.record.turns if t.role == "caller") >= 2:
                    break
                await session.feed_audio(silence, 16000)
                await asyncio.sleep(0.02)
            gate.release()  # (already, if the barge-in came) the engine's thread is free for the next call
            record = await session.end("hangup")
    finally:
        if not session.ended:  # a failed assertion above: the call still ends (its tasks would outlive the test)
            await session.end("hangup")

    assert vad.barge_ins, "no barge-in detected"
    # the turn detector heard every frame of agent audio the output sent (its echo floor)
    assert 0 < len(transport.write_times) - 1 <= vad.agent_frames <= len(transport.write_times)
    detected = vad.barge_ins[0]
    # the line was cleared after the barge-in was detected ...
    assert transport.clears >= 1
    clear = next((t for t in transport.clear_times if t >= detected), None)
    assert clear is not None, "the line was not cleared after the barge-in"
    # ... and no audio of the interrupted reply was written after that
    first_reply_id = next(iter(output.last_write_at))
    assert output.last_write_at[first_reply_id] <= clear, "audio of the cut reply was written after the clear"
    cut = [t for t in record.turns if t.role == "agent" and t.interrupted]
    assert cut, "no agent turn was marked as cut by the barge-in"
    # the LLM generation, still running at the barge-in (the gate held it), was cancelled
    assert llm.generations_cancelled >= 1
    # the stored turn holds what was heard, shorter than what was generated
    assert len(cut[0].text) < len(cut[0].generated_text or "")
    # the caller's interruption was itself transcribed and answered
    assert any("address" in t.text.lower() for t in record.turns if t.role == "caller")
