"""The paced agent audio output: agent audio is cut into the transport's frames in one place, a
reply's last frame is padded with silence, and each clause's mark follows its last audio."""

from __future__ import annotations

import asyncio
from typing import Any

from pipecat.frames.frames import EndFrame, OutputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.workers.runner import WorkerRunner

from voicecore.frames import AgentClauseFrame, AgentReplyDoneFrame, AgentReplyStartFrame
from voicecore.transports.base import AgentAudioOutput, CallTransport

RATE = 8000


class VirtualClock:
    """Time that moves only when the pacer sleeps: the schedule it keeps, free of machine speed."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


class ScriptTransport(CallTransport):
    """Writes down, in order, every frame and mark the output hands over."""

    name = "script"
    acknowledges_marks = True

    def __init__(self, frame_bytes: int, clock: VirtualClock | None = None):
        self._frame_bytes = frame_bytes
        self.sent: list[tuple[str, object]] = []
        self.clock = clock
        self.written_at: list[float] = []  # virtual time of each audio frame

    @property
    def output_sample_rate(self) -> int:
        return RATE

    @property
    def frame_bytes(self) -> int:
        return self._frame_bytes

    async def write_audio(self, frame: bytes) -> None:
        self.sent.append(("audio", frame))
        self.written_at.append(self.clock.now if self.clock else 0.0)

    async def send_mark(self, name: str) -> None:
        self.sent.append(("mark", name))


async def play(transport: ScriptTransport, items: list[object], **options: Any) -> list[tuple[str, str, str, bool]]:
    finished: list[tuple[str, str, str, bool]] = []
    output = AgentAudioOutput(
        transport, realtime=options.pop("realtime", False),
        on_reply_finished=lambda rid, kind, generated, heard, cut: finished.append((rid, generated, heard, cut)),
        **options,
    )  # fmt: skip
    worker = PipelineWorker(
        Pipeline([output]),
        params=PipelineParams(audio_in_sample_rate=16000, audio_out_sample_rate=RATE),
        enable_rtvi=False, enable_turn_tracking=False, idle_timeout_secs=None, cancel_on_idle_timeout=False,
        check_dangling_tasks=False,
    )  # fmt: skip
    runner = WorkerRunner(handle_sigint=False, handle_sigterm=False, check_dangling_tasks=False)
    await runner.add_workers(worker)
    task = asyncio.create_task(runner.run())
    for item in items:
        await worker.queue_frame(item)  # type: ignore[arg-type]
    clauses = sum(isinstance(i, AgentClauseFrame) for i in items)
    deadline = asyncio.get_running_loop().time() + 5
    while (output.busy or sum(k == "mark" for k, _ in transport.sent) < clauses) and (
        asyncio.get_running_loop().time() < deadline
    ):
        await asyncio.sleep(0.01)
    for name in [v for kind, v in transport.sent if kind == "mark"]:
        output.mark_played(str(name))  # the far end played everything
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(task, 10)
    return finished


def audio(n_bytes: int, value: int = 1) -> OutputAudioRawFrame:
    return OutputAudioRawFrame(audio=bytes([value, 0]) * (n_bytes // 2), sample_rate=RATE, num_channels=1)


async def test_agent_audio_is_cut_into_whole_frames_once_and_marks_follow_each_clause():
    transport = ScriptTransport(frame_bytes=320)  # 20 ms at 8 kHz
    finished = await play(transport, [
        AgentReplyStartFrame(reply_id="r1"),
        AgentClauseFrame(reply_id="r1", index=0, text="Hello there,"),
        audio(500),  # ends inside the second frame
        AgentClauseFrame(reply_id="r1", index=1, text="how can I help?"),
        audio(300),
        AgentReplyDoneFrame(reply_id="r1", generated_text="Hello there, how can I help?"),
    ])  # fmt: skip
    kinds = [k for k, _ in transport.sent]
    # the first clause's mark goes out only after the frame that holds its last sample
    assert kinds == ["audio", "audio", "mark", "audio", "mark"]
    frames = [v for k, v in transport.sent if k == "audio"]
    assert all(isinstance(f, bytes) and len(f) == 320 for f in frames)
    wire = b"".join(frames)  # type: ignore[arg-type]
    assert wire[:800] == bytes([1, 0]) * 400 and wire[800:] == bytes(160)  # the last frame padded with silence
    assert [v for k, v in transport.sent if k == "mark"] == ["r1:0", "r1:1"]
    assert finished == [("r1", "Hello there, how can I help?", "Hello there, how can I help?", False)]


async def test_a_clause_ending_on_a_frame_boundary_is_marked_at_once():
    transport = ScriptTransport(frame_bytes=320)
    await play(transport, [
        AgentReplyStartFrame(reply_id="r1"),
        AgentClauseFrame(reply_id="r1", index=0, text="One."),
        audio(640),
        AgentClauseFrame(reply_id="r1", index=1, text="Two."),
        audio(320),
        AgentReplyDoneFrame(reply_id="r1", generated_text="One. Two."),
    ])  # fmt: skip
    assert [k for k, _ in transport.sent] == ["audio", "audio", "mark", "audio", "mark"]
    assert all(len(v) == 320 for k, v in transport.sent if k == "audio")  # type: ignore[arg-type]


async def test_frames_follow_the_transport_frame_size():
    transport = ScriptTransport(frame_bytes=3200)  # e.g. Exotel's 200 ms messages
    await play(transport, [
        AgentReplyStartFrame(reply_id="r1"),
        AgentClauseFrame(reply_id="r1", index=0, text="Fine."),
        audio(7000),
        AgentReplyDoneFrame(reply_id="r1", generated_text="Fine."),
    ])  # fmt: skip
    frames = [v for k, v in transport.sent if k == "audio"]
    assert [len(f) for f in frames] == [3200, 3200, 3200]  # type: ignore[arg-type]


async def test_long_messages_are_sent_one_whole_message_plus_the_lead_ahead():
    """Exotel's 8 kHz messages are 200 ms (3200 B): each must reach the far end before the one
    ahead of it starts playing, with ``lead_ms`` to spare — not just ``lead_ms`` before its own turn."""
    clock = VirtualClock()
    transport = ScriptTransport(frame_bytes=3200, clock=clock)  # 200 ms per message at 8 kHz
    await play(transport, [
        AgentReplyStartFrame(reply_id="r1"),
        AgentClauseFrame(reply_id="r1", index=0, text="A long answer."),
        audio(3200 * 6),
        AgentReplyDoneFrame(reply_id="r1", generated_text="A long answer."),
    ], realtime=True, lead_ms=100, clock=clock, sleep=clock.sleep)  # fmt: skip
    sent = transport.written_at
    assert len(sent) == 6
    start = sent[0]  # the first message starts playing as it is sent
    for k in range(1, len(sent)):
        plays_at = start + 0.2 * k
        previous_starts = start + 0.2 * (k - 1)
        # sent one whole message plus 100 ms before it plays: 100 ms before the one ahead starts
        assert sent[k] <= previous_starts - 0.1 + 1e-6 or k == 1, (k, sent[k] - start)
        assert plays_at - sent[k] >= 0.2 + 0.1 - 1e-6 or k == 1, (k, plays_at - sent[k])
    assert abs((sent[-1] - start) - (0.2 * 5 - 0.3)) < 1e-6  # and not earlier than that: still paced


def test_the_lead_is_one_frame_plus_lead_ms():
    assert abs(AgentAudioOutput(ScriptTransport(frame_bytes=3200), lead_ms=100).lead_s - 0.3) < 1e-9
    assert abs(AgentAudioOutput(ScriptTransport(frame_bytes=320), lead_ms=100).lead_s - 0.12) < 1e-9


async def test_unplayed_audio_is_what_is_queued_and_sent_ahead_of_playback():
    """What the TTS paces its later clauses on: 1.2 s of audio handed over at once is all unplayed
    at first, and runs down as the messages play (virtual time, read whenever the pacer waits)."""
    clock = VirtualClock()
    outputs: list[AgentAudioOutput] = []
    left: list[float] = []
    original = AgentAudioOutput.__init__

    def keep(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN001
        original(self, *args, **kwargs)
        outputs.append(self)

    async def sleep(seconds: float) -> None:
        left.append(outputs[0].unplayed_s())
        await clock.sleep(seconds)

    AgentAudioOutput.__init__ = keep  # type: ignore[method-assign]
    try:
        await play(ScriptTransport(frame_bytes=3200, clock=clock), [
            AgentReplyStartFrame(reply_id="r1"),
            AgentClauseFrame(reply_id="r1", index=0, text="A long answer."),
            audio(3200 * 6),
            AgentReplyDoneFrame(reply_id="r1", generated_text="A long answer."),
        ], realtime=True, lead_ms=100, clock=clock, sleep=sleep)  # fmt: skip
    finally:
        AgentAudioOutput.__init__ = original  # type: ignore[method-assign]
    assert left and abs(left[0] - 1.2) < 1e-6, left  # nothing played when the pacer first waits
    assert all(a >= b for a, b in zip(left, left[1:])) and left[-1] < left[0]  # playing down
    assert outputs[0].unplayed_s() == 0.0  # all played
    assert AgentAudioOutput(ScriptTransport(frame_bytes=320), realtime=False).unplayed_s() == 0.0
