"""The TTS synthesises a reply's later clauses only as far ahead of playback as needed (issue 15,
load-aware TTS): with more than ``LEAD_S`` of unplayed audio in the output, the next clause waits,
and a barge-in during that wait means the rest is never synthesised. Real Piper voice."""

from __future__ import annotations

import time

import pytest
from pipecat.frames.frames import (
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
)
from pipecat.tests.utils import SleepFrame, run_test

from voicecore.config import Voice
from voicecore.services.tts import PiperTTSProcessor

pytestmark = pytest.mark.models

REPLY = "We are open from nine to five, Monday to Friday. On Saturday we open from nine until one in the afternoon."


class Playback:
    """An output that holds ``start_s`` of unplayed audio, played down in real time."""

    def __init__(self, start_s: float):
        self.start_s = start_s
        self.t0 = time.monotonic()

    def __call__(self) -> float:
        return max(0.0, self.start_s - (time.monotonic() - self.t0))


def counting(tts: PiperTTSProcessor, playback: Playback) -> list[float]:
    """What was left to play each time the TTS pushed a clause's audio."""
    left: list[float] = []
    push = tts._push_audio

    async def recorded(audio: bytes) -> None:
        left.append(playback())
        await push(audio)

    tts._push_audio = recorded  # type: ignore[method-assign]
    return left


async def test_later_clauses_wait_until_little_is_left_to_play(pool) -> None:
    tts = PiperTTSProcessor(pool.tts("default"), Voice())
    playback = Playback(tts.LEAD_S + 1.0)
    tts.unplayed_s = playback
    left = counting(tts, playback)
    frames = [LLMFullResponseStartFrame(), LLMTextFrame(text=REPLY), LLMFullResponseEndFrame(), SleepFrame(4.0)]
    down, _ = await run_test(tts, frames_to_send=frames, expected_down_frames=None)
    assert sum(isinstance(f, TTSAudioRawFrame) for f in down) >= 2
    assert left[0] > tts.LEAD_S  # the first clause: at once, a caller is waiting
    assert all(x <= tts.LEAD_S for x in left[1:])  # later ones: once playback caught up
    assert tts.waited_s > 0


async def test_a_barge_in_while_a_clause_waits_leaves_the_rest_unsynthesised(pool) -> None:
    tts = PiperTTSProcessor(pool.tts("default"), Voice())
    tts.unplayed_s = Playback(60.0)  # far ahead: the second clause waits
    frames = [LLMFullResponseStartFrame(), LLMTextFrame(text=REPLY), LLMFullResponseEndFrame(), SleepFrame(1.5),
              InterruptionFrame(), SleepFrame(0.3)]  # fmt: skip
    down, _ = await run_test(tts, frames_to_send=frames, expected_down_frames=None)
    assert sum(isinstance(f, TTSAudioRawFrame) for f in down) == 1  # only the first clause was spoken
