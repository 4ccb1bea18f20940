"""Caller lines through a ``LlamaLLMProcessor`` with Pipecat's test runner: the replies, one per turn."""

from __future__ import annotations

from pipecat.frames.frames import (
    LLMFullResponseEndFrame,
    LLMTextFrame,
    TranscriptionFrame,
)
from pipecat.tests.utils import SleepFrame, run_test


async def processor_replies(proc, lines: list[str]) -> list[str]:  # noqa: ANN001
    frames: list = []
    for line in lines:
        frames += [TranscriptionFrame(text=line, user_id="caller", timestamp="now", finalized=True), SleepFrame(0.5)]
    down, _ = await run_test(proc, frames_to_send=frames, expected_down_frames=None, send_end_frame=True)
    replies, current = [], ""
    for f in down:
        if isinstance(f, LLMTextFrame):
            current += f.text
        elif isinstance(f, LLMFullResponseEndFrame):
            replies.append(current)
            current = ""
    return replies
