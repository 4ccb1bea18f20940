"""Barge-in: caller speech while the agent speaks silences it at once and cancels the LLM."""

from __future__ import annotations

import asyncio
import time

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
}


async def test_caller_speech_stops_agent_audio_and_cancels_generation(pool, receptionist, say):
    config = receptionist.model_copy(
        update={**LONG_TALKER, "llm": receptionist.llm.model_copy(update={"max_tokens": 400, "temperature": 0.7})}
    )
    transport = FileTransport(16000, realtime=True)
    session = CallSession(config, pool, transport, realtime=True)
    await session.start()
    question = say("Please tell me about all the services you offer.")
    interruption = say("Stop please. I only need the address.", voice="en-us+m3")

    await stream_audio(session, question)
    # caller silence until the agent has been speaking for a moment
    silence = bytes(320 * 2)
    deadline = time.monotonic() + 20
    first_audio: float | None = None
    while time.monotonic() < deadline:
        await session.feed_audio(silence, 16000)
        await asyncio.sleep(0.02)
        if transport.write_times and first_audio is None:
            first_audio = time.monotonic()
        if first_audio is not None and time.monotonic() - first_audio > 0.6:
            break
    assert first_audio is not None, "the agent never started answering"
    llm = session.pipeline.llm
    assert llm._task is not None and not llm._task.done(), "generation finished before the barge-in"

    await stream_audio(session, interruption)
    # caller silence until the interruption itself is transcribed, then hang up
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        await session.feed_audio(silence, 16000)
        await asyncio.sleep(0.02)
        if sum(1 for t in session.record.turns if t.role == "caller") >= 2:
            break
    record = await session.end("hangup")

    vad, output = session.pipeline.vad, session.pipeline.output
    assert vad.barge_ins, "no barge-in detected"
    detected = vad.barge_ins[0]
    assert transport.clears >= 1
    cut = [t for t in record.turns if t.role == "agent" and t.interrupted]
    assert cut, "no agent turn was marked as cut by the barge-in"
    # agent audio of the interrupted reply stopped within 200 ms of detected speech
    first_reply_id = next(iter(output.last_write_at))
    assert output.last_write_at[first_reply_id] - detected <= 0.2
    # and the LLM generation was cancelled, not left running
    assert llm.generations_cancelled >= 1
    # the stored turn holds what was heard, shorter than what was generated
    assert len(cut[0].text) < len(cut[0].generated_text or "")
    # the caller's interruption was itself transcribed and answered
    assert any("address" in t.text.lower() for t in record.turns if t.role == "caller")
