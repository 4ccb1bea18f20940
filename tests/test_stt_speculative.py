"""The speculative STT logic: work starts at a pause, is reused at the end of the turn, and is
thrown away when the caller goes on speaking. The transcribe function here is a recorder of
what audio each job was given (the logic under test is the scheduling, not Whisper)."""

from __future__ import annotations

import asyncio

import numpy as np

from voicecore.services.stt import SpeculativeTranscriber


class Recorder:
    def __init__(self, delay: float = 0.05):
        self.calls: list[int] = []  # samples given to each job
        self.finished: list[int] = []
        self.delay = delay

    async def __call__(self, audio: np.ndarray) -> str:
        self.calls.append(audio.size)
        await asyncio.sleep(self.delay)
        self.finished.append(audio.size)
        return f"text of {audio.size} samples"


def chunk(n: int = 320) -> np.ndarray:
    return np.ones(n, dtype=np.int16)


async def test_pause_job_is_reused_at_end_of_turn():
    rec = Recorder()
    st = SpeculativeTranscriber(rec)
    for _ in range(10):
        st.append(chunk())
    st.pause()  # transcription starts now, before the turn ends
    for _ in range(5):
        st.append(np.zeros(320, dtype=np.int16))  # trailing silence
    text = await st.final()
    assert rec.calls == [3200]  # one job only, started at the pause
    assert text == "text of 3200 samples"
    assert st.jobs_started == 1 and st.jobs_discarded == 0


async def test_speech_after_pause_invalidates_the_job():
    rec = Recorder()
    st = SpeculativeTranscriber(rec)
    st.append(chunk())
    st.pause()
    st.resume()  # the caller goes on
    st.append(chunk())
    st.pause()
    text = await st.final()
    assert text == "text of 640 samples"
    assert st.jobs_discarded == 1
    assert rec.finished[-1] == 640


async def test_final_without_pause_transcribes_everything():
    rec = Recorder(delay=0)
    st = SpeculativeTranscriber(rec)
    st.append(chunk(1000))
    assert await st.final() == "text of 1000 samples"
    assert rec.calls == [1000]


async def test_stale_queued_job_is_cancelled_not_awaited():
    started = asyncio.Event()
    release = asyncio.Event()
    seen: list[int] = []

    async def slow(audio: np.ndarray) -> str:
        seen.append(audio.size)
        started.set()
        await release.wait()
        return "stale"

    st = SpeculativeTranscriber(slow)
    st.append(chunk())
    st.pause()
    await started.wait()
    first_job = st._job
    st.resume()
    assert first_job is not None and first_job.task.cancelled() or first_job.task.cancelling()
    release.set()
    st.append(chunk())

    async def fast(audio: np.ndarray) -> str:
        return f"fresh {audio.size}"

    st._transcribe = fast
    assert await st.final() == "fresh 640"


async def test_reset_clears_audio():
    st = SpeculativeTranscriber(Recorder(delay=0))
    st.append(chunk())
    st.reset()
    assert st.samples == 0


async def test_a_job_started_when_speech_trailed_off_serves_the_pause_and_the_end_of_turn():
    rec = Recorder()
    st = SpeculativeTranscriber(rec)
    for _ in range(10):
        st.append(chunk())
    st.pause()  # speech trailed off (early_transcript_ms): the job starts
    st.append(np.zeros(320, dtype=np.int16))  # more silence, then the pause is declared
    st.pause()  # the job covers every voiced sample: no second job
    st.append(np.zeros(320, dtype=np.int16))
    assert await st.final() == "text of 3200 samples"
    assert rec.calls == [3200] and st.jobs_started == 1


async def test_a_failed_job_that_speech_made_stale_is_transcribed_again():
    """A backend failure on a pause's job is not the turn's failure when the caller went on: the
    final transcribes the whole turn again, and the stale job's error is not left unretrieved."""
    calls = []

    async def flaky(audio: np.ndarray) -> str:
        calls.append(audio.size)
        if len(calls) == 1:
            raise RuntimeError("backend went away")
        return f"text of {audio.size} samples"

    st = SpeculativeTranscriber(flaky)
    st.append(chunk())
    job = st.pause()
    await asyncio.sleep(0)
    assert job.done() and isinstance(job.exception(), RuntimeError)
    st.resume()  # the caller goes on
    st.append(chunk())
    assert await st.final() == "text of 640 samples"
    assert calls == [320, 640]


async def test_a_failed_job_with_no_speech_after_it_fails_the_turn():
    async def broken(audio: np.ndarray) -> str:
        raise RuntimeError("backend went away")

    st = SpeculativeTranscriber(broken)
    st.append(chunk())
    st.pause()
    st.append(np.zeros(320, dtype=np.int16))  # silence only
    try:
        await st.final()
    except RuntimeError as e:
        assert "went away" in str(e)
    else:
        raise AssertionError("the turn's failure was swallowed")
