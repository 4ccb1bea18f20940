"""The tenant policy in live calls: what reaches the model, what reaches the disk, opt-outs,
consent, location, restricted callers, a crashing backend.

The call tests run the real default models (spoken caller audio from espeak-ng, Whisper,
SmolLM2, Piper) through ``open_call`` with a Store in a temporary directory.
"""

from __future__ import annotations

import io
import re
import tempfile
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

from voicecore.config import LLMPreset, ModelRefs, load_presets
from voicecore.model_pool import ModelPool
from voicecore.policy import (
    DEFAULT_POLICY,
    RedactedText,
    load_policy,
    policy_from_data,
    policy_to_yaml,
)
from voicecore.records import CallRecord, Turn
from voicecore.services.conversation import ChatMessage, Conversation, PolicyContext
from voicecore.session import (
    CONSENT_GIVEN_REPLY,
    CONSENT_REFUSED_REPLY,
    RESTRICTED_NOTICE,
    CallRefused,
    CallSession,
    RecordingStream,
    open_call,
)
from voicecore.simulate import run_call
from voicecore.storage import Store
from voicecore.transports.file import (
    Audio,
    FileTransport,
    stream_audio,
    stream_silence_until_idle,
)

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
RATE = 16000  # caller audio is fed at the pipeline rate, so the recording's caller side is bit-exact
TONE_HZ = 1237.0  # planted in the caller audio (not a multiple of 7.8125 Hz: SQLite's 4 KiB pages)
OTHER_TONE_HZ = 2111.0
CALLER = "+14155550132"

models = pytest.mark.models


# --------------------------------------------------------------------------- helpers


def tenant(store: Store, name: str = "acme", policy: str | Path | None = None, **sections) -> str:
    """A tenant with a policy file, or the default policy with ``sections`` replaced."""
    if policy is not None:
        store.tenants.create(name, policy, with_key=False, actor="test")
    else:
        data = DEFAULT_POLICY.model_dump(mode="json")
        for section, values in sections.items():
            data[section] = {**data[section], **values}
        store.tenants.create(name, policy_yaml=policy_to_yaml(policy_from_data(data)), with_key=False, actor="test")
    return name


def at_16k(audio: Audio) -> Audio:
    if audio.sample_rate == RATE:
        return audio
    samples = soxr.resample(audio.samples.astype(np.float32), audio.sample_rate, RATE)
    return Audio(np.clip(samples, -32768, 32767).astype(np.int16), RATE)


def sine(n: int, freq: float = TONE_HZ, amplitude: float = 2500.0, rate: int = RATE) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(n) / rate)


def with_tone(audio: Audio, freq: float = TONE_HZ) -> Audio:
    """The utterance with a steady sine mixed in (the planted tone)."""
    a = at_16k(audio)
    mixed = a.samples.astype(np.float64) + sine(a.samples.size, freq)
    return Audio(np.clip(mixed, -32768, 32767).astype(np.int16), RATE)


def tone_strength(samples: np.ndarray, normalized_freq: float, n: int = 8192) -> float:
    """Power at ``normalized_freq`` (cycles/sample) over the median power around it (Welch average)."""
    x = samples.astype(np.float64)
    if x.size < 1024:
        return 0.0
    n = min(n, 1 << (x.size.bit_length() - 1))
    window = np.hanning(n)
    starts = range(0, x.size - n + 1, n // 2)
    frames = [x[i : i + n] for i in starts]
    frames = [f for f in frames if f.any()] or frames[:1]  # silence says nothing either way
    if len(frames) > 600:  # long files: an even sample of the frames
        frames = [frames[i] for i in np.linspace(0, len(frames) - 1, 600).astype(int)]
    power = np.mean([np.abs(np.fft.rfft((f - f.mean()) * window)) ** 2 for f in frames], axis=0)
    k = int(round(normalized_freq * n))
    if k < 45 or k > power.size - 45:
        return 0.0
    peak = power[k - 2 : k + 3].max()
    around = np.concatenate([power[k - 40 : k - 4], power[k + 5 : k + 41]])
    return float(peak / (np.median(around) + 1e-9))


# Ways audio of the tone could sit in a file: 16 or 8 kHz, mono or interleaved with another channel,
# or at a common file rate (the caller side of a file stays 16 kHz here; others for a resampled copy).
_LAYOUTS = [(16000, 1), (16000, 2), (8000, 1), (8000, 2), (22050, 1), (24000, 1), (44100, 1), (48000, 1)]


def has_tone(data: bytes, freq: float = TONE_HZ, threshold: float = 60.0) -> bool:
    """Whether raw bytes, read as int16 PCM in any plausible layout, carry a steady ``freq`` tone."""
    for offset in (0, 1):
        raw = data[offset : offset + (len(data) - offset) // 2 * 2]
        samples = np.frombuffer(raw, dtype="<i2")
        for rate, channels in _LAYOUTS:
            if tone_strength(samples, freq / (rate * channels)) > threshold:
                return True
    return False


def pcm_windows(samples: np.ndarray, every: int = 800, size: int = 32) -> list[bytes]:
    """Byte windows of voiced stretches of the fed caller audio, to search files for."""
    out = []
    for i in range(0, samples.size - size, every):
        w = samples[i : i + size]
        if np.abs(w).max() > 500:
            out.append(w.tobytes())
    return out


_SQLITE_MAGICS = (b"SQLite format 3\x00", b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")  # database, WAL


def _structured(path: Path, data: bytes) -> bool:
    """SQLite files: their page and index structure is periodic and can mimic a spectral line,
    so they are searched for exact bytes here and their values through SQL (``db_leaks``)."""
    return data.startswith(_SQLITE_MAGICS) or path.name.endswith("-shm")


def wav_has_tone(data: bytes, freq: float = TONE_HZ) -> bool:
    try:
        frames, rate, channels = read_wav(data)
    except Exception:  # not a readable PCM WAV: the raw-bytes checks still apply
        return has_tone(data, freq)
    return any(tone_strength(frames[:, c], freq / rate) > 60 for c in range(channels))


def audio_leaks(path: Path, windows: list[bytes], *, any_riff: bool = True, spectrum: bool = True) -> list[str]:
    """What of the call's audio one file holds: RIFF/WAVE headers, caller PCM bytes, the planted
    tone (in a WAV as declared; in any other file read as raw PCM in any plausible layout)."""
    try:
        data = path.read_bytes()[: 64 << 20]
    except OSError:
        return []
    found = []
    if any_riff and (b"RIFF" in data or b"WAVE" in data):
        found.append("RIFF/WAVE header")
    if any(w in data for w in windows):
        found.append("caller PCM bytes")
    if data.startswith(b"RIFF"):
        tone = wav_has_tone(data)
    else:
        tone = spectrum and not _structured(path, data) and has_tone(data)
    if tone:
        found.append(f"{TONE_HZ:.0f} Hz tone")
    return found


def db_leaks(store: Store, windows: list[bytes]) -> list[str]:
    """Every value in every table of the store's database (through SQL, WAL included):
    no caller PCM, no WAV, no tone in any blob."""
    found = []
    from sqlalchemy import inspect

    with store.db.engine.connect() as conn:
        tables = inspect(conn).get_table_names()
    for table in tables:
        for row in store.db.fetchall(f'SELECT * FROM "{table}"'):
            for value in row:
                data = value.encode() if isinstance(value, str) else value
                if not isinstance(data, bytes) or len(data) < 64:
                    continue
                if b"RIFF" in data or any(w in data for w in windows):
                    found.append(f"{table}: audio bytes")
                elif len(data) >= 4096 and has_tone(data):
                    found.append(f"{table}: {TONE_HZ:.0f} Hz tone")
    return found


def files_under(root: Path, since: float | None = None) -> list[Path]:
    out = []
    for p in root.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink() and (since is None or p.stat().st_mtime >= since):
                out.append(p)
        except OSError:
            continue
    return out


def read_wav(data: bytes) -> tuple[np.ndarray, int, int]:
    with wave.open(io.BytesIO(data)) as w:
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return frames.reshape(-1, w.getnchannels()), w.getframerate(), w.getnchannels()


class FedAudio:
    """Captures every chunk of caller audio the test feeds into a session."""

    def __init__(self, session: CallSession):
        self.chunks: list[np.ndarray] = []
        original = session.feed_audio

        async def feed(pcm16: bytes, sample_rate: int, channels: int = 1) -> None:
            assert sample_rate == RATE
            if not session.ended:
                self.chunks.append(np.frombuffer(pcm16, dtype=np.int16).copy())
            await original(pcm16, sample_rate, channels)

        session.feed_audio = feed  # type: ignore[method-assign]

    def samples(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


async def converse(session: CallSession, utterances: list[Audio], *, realtime: bool) -> None:
    await stream_silence_until_idle(session, RATE, realtime=realtime, timeout=60)
    for utt in utterances:
        await stream_audio(session, utt, realtime=realtime)
        await stream_silence_until_idle(session, RATE, realtime=realtime, timeout=90)


def turns(record: CallRecord, role: str, kind: str | None = None) -> list:
    return [t for t in record.turns if t.role == role and (kind is None or t.kind == kind)]


# --------------------------------------------------------------------------- no models


async def test_remote_backend_under_local_only_policy_is_refused_before_models_load(store, receptionist):
    presets = load_presets()
    cloud = LLMPreset(endpoint="https://llm.example.com/v1")
    pool = ModelPool(presets=presets.model_copy(update={"llm": {**presets.llm, "cloud": cloud}}))
    config = receptionist.model_copy(update={"models": ModelRefs(llm="cloud")})
    tenant(store, "acme", POLICIES / "default.yaml")

    with pytest.raises(CallRefused) as refused:
        await open_call(pool=pool, store=store, tenant="acme", config=config, transport=FileTransport())
    reason = refused.value.reason
    assert "llm backend (https://llm.example.com/v1) is remote" in reason and "local processing only" in reason
    # store-less calls get the privacy-first default policy: local only as well
    with pytest.raises(CallRefused, match="llm.example.com"):
        await open_call(pool=pool, store=None, tenant="dev", config=config, transport=FileTransport())
    # a policy allowing EU/UK processing still refuses a backend that declares no region
    tenant(store, "eu", POLICIES / "recorded-consent.yaml")
    with pytest.raises(CallRefused, match="declares no region; the policy allows only eu, uk"):
        await open_call(pool=pool, store=store, tenant="eu", config=config, transport=FileTransport())
    assert pool._models == {}, "a model was loaded for a call that was refused"
    assert store.calls.list("acme", actor="test") == [] and store.calls.list("eu", actor="test") == []


async def test_unknown_tenant_is_refused(store, receptionist):
    pool = ModelPool()
    with pytest.raises(CallRefused, match="unknown tenant 'nobody'"):
        await open_call(pool=pool, store=store, tenant="nobody", config=receptionist, transport=FileTransport())
    assert pool._models == {}


def test_policy_context_redacts_once_bounds_history_and_keeps_reply_ids(monkeypatch):
    import voicecore.policy.context as context_module

    policy = policy_from_data({"context": {"max_history_turns": 4, "contact_fields": ["name"]}})
    context = PolicyContext(policy, contact={"name": "Ada Lovelace", "email": "ada@example.com", "plan": "gold"})
    conv = Conversation(system_prompt="You are a receptionist.", context=context)
    calls = []
    real_redact = context_module.redact
    monkeypatch.setattr(context_module, "redact", lambda *a, **k: calls.append(a[0]) or real_redact(*a, **k))

    conv.add_agent("Hello, how can I help?")
    conv.add_caller("my number is 415 555 2671")
    conv.add_agent("Thanks.", reply_id="r1")
    # a number the caller reads out over two transcripts before the agent answers is one number
    conv.add_caller("and my other one is 415 55")
    conv.add_caller("5 2672")
    assert len(calls) == 3
    messages = conv.prompt_messages()
    assert len(calls) == 3, "build() redacted caller text again"
    system, *history = messages
    assert system.role == "system" and "name: Ada Lovelace" in system.content
    assert "ada@example.com" not in system.content and "gold" not in system.content
    assert [m.role for m in history] == ["assistant", "user", "assistant", "user"]  # bounded to 4
    assert history[1].content == "my number is [phone number]"
    assert all(isinstance(m.content, RedactedText) for m in conv.messages if m.role == "user")
    assert history[3].content == "and my other one is [phone number]"
    assert history[2] == ChatMessage("assistant", "Thanks.", "r1")
    assert "2672" not in "".join(m.content for m in messages)
    # barge-in truncation still finds the reply by its id
    conv.agent_heard("r1", "")
    assert [m.content for m in conv.prompt_messages()[1:]][-1] == "and my other one is [phone number]"


async def test_call_recorder_pairs_agent_audio_with_the_caller_clock_and_holds_little():
    class Writer:
        recording_id = "0" * 32
        sample_rate, channels, sample_width = RATE, 2, 2
        chunk_bytes = RATE * 2 * 2  # 1 s, as RecordingWriter

        def __init__(self):
            self.writes: list[bytes] = []
            self.closed = False

        def write(self, data: bytes) -> None:
            self.writes.append(data)

        def close(self) -> None:
            self.closed = True

    writer = Writer()
    rec = RecordingStream(writer, RATE)  # type: ignore[arg-type]
    caller = (np.arange(RATE * 3) % 1000 + 1).astype(np.int16)  # 3 s, never zero
    agent = np.full(RATE // 2, 7, dtype=np.int16)  # 0.5 s reply
    for i in range(0, RATE, 320):  # 1 s of caller audio
        rec.caller_audio(caller[i : i + 320].tobytes(), RATE)
    rec.agent_audio(agent.tobytes(), RATE)  # the reply starts now: lands at 1.0 s on the caller clock
    for i in range(RATE, RATE * 3, 320):
        rec.caller_audio(caller[i : i + 320].tobytes(), RATE)
        assert len(rec._out) < writer.chunk_bytes and len(rec._agent) <= RATE * 2  # ≤ ~1 s held
    await rec.close()
    assert writer.closed
    frames = np.frombuffer(b"".join(writer.writes), dtype=np.int16).reshape(-1, 2)
    assert frames.shape[0] == RATE * 3
    assert np.array_equal(frames[:, 0], caller)
    assert np.all(frames[:RATE, 1] == 0) and np.all(frames[RATE : RATE + RATE // 2, 1] == 7)
    assert np.all(frames[RATE + RATE // 2 :, 1] == 0)
    assert all(len(w) == writer.chunk_bytes for w in writer.writes[:-1])
    # no caller audio coming in: the agent side is written on its own once ~1 s ahead
    writer2 = Writer()
    rec2 = RecordingStream(writer2, RATE)  # type: ignore[arg-type]
    rec2.agent_audio(np.full(RATE * 3, 5, dtype=np.int16).tobytes(), RATE)
    assert len(rec2._agent) == RATE * 2
    await rec2.close()
    frames2 = np.frombuffer(b"".join(writer2.writes), dtype=np.int16).reshape(-1, 2)
    assert frames2.shape[0] == RATE * 3 and np.all(frames2[:, 1] == 5) and np.all(frames2[:, 0] == 0)


@pytest.mark.usefixtures("database")  # on SQLite and on PostgreSQL
def test_the_leak_scan_finds_call_audio_in_any_form_and_not_in_ciphertext(store, tmp_path):
    """The scan used by the recording tests can fail: it finds the planted tone and caller PCM as a
    WAV, as raw 8 kHz stereo, inside a larger file; it finds nothing in encrypted recordings or
    in a database holding encrypted transcripts."""
    rng = np.random.default_rng(7)
    speechlike = rng.normal(0, 3000, RATE * 4)
    caller = np.clip(speechlike + sine(RATE * 4), -32768, 32767).astype(np.int16)
    windows = pcm_windows(caller)
    wav = tmp_path / "a.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(RATE), w.writeframes(caller.tobytes())
    assert audio_leaks(wav, windows) == ["RIFF/WAVE header", "caller PCM bytes", f"{TONE_HZ:.0f} Hz tone"]
    at_8k = soxr.resample(caller.astype(np.float32), RATE, 8000).astype(np.int16)
    stereo = np.stack([at_8k, rng.normal(0, 2000, at_8k.size).astype(np.int16)], axis=1)
    dump = tmp_path / "dump.bin"
    dump.write_bytes(b"x" * 1001 + stereo.tobytes() + bytes(5000))
    assert audio_leaks(dump, windows) == [f"{TONE_HZ:.0f} Hz tone"]

    tenant(store, "acme", recording={"mode": "on"}, retention={"recordings": 30})
    writer = store.calls.open_recording("acme", "call-1", RATE)
    for i in range(0, caller.size, 320):
        writer.write(caller[i : i + 320].tobytes())
    writer.close()
    record = CallRecord(tenant="acme", caller=CALLER, ended_at=time.time())
    record.turns = [Turn(role="caller", text="What are your opening hours on Saturday? " * 20)] * 30
    store.calls.save(record)
    for path in files_under(store.data_dir):
        assert audio_leaks(path, windows) == [], path
    assert db_leaks(store, windows) == []
    assert store.calls.read_recording("acme", "call-1", actor="test") is not None
    # audio that did get into the database (in clear, resampled) would be found
    store.db.execute(f"CREATE TABLE leak (b {'BYTEA' if store.db.is_postgresql else 'BLOB'})")
    store.db.execute("INSERT INTO leak VALUES (?)", (at_8k.tobytes(),))
    assert db_leaks(store, windows) == [f"leak: {TONE_HZ:.0f} Hz tone"]
    # a WAV at another rate, stereo, found by decoding its header, also where raw scans are off
    other = tmp_path / "b.wav"
    with wave.open(str(other), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(8000), w.writeframes(stereo.tobytes())
    assert audio_leaks(other, windows, any_riff=False, spectrum=False) == [f"{TONE_HZ:.0f} Hz tone"]


# --------------------------------------------------------------------------- real calls

_NUMBER_WORDS = r"(?:zero|oh|one|two|three|four|five|six|seven|eight|nine)"


@models
async def test_prompts_never_hold_the_card_number_email_or_phone_number(pool, receptionist, say, store):
    """Minimisation: every prompt the model gets in a call where the caller reads out a card number,
    an e-mail address and a phone number."""
    tenant(store, "acme", POLICIES / "default.yaml")
    card = say("My card number is 4 5 3 9, 1 4 8 8, 0 3 4 3, 6 4 6 7.", speed=110)  # Luhn-valid test Visa
    email = say("My email is john dot smith at example dot com.", voice="en", speed=120)
    phone = say("You can reach me at 4 1 5, 5 5 5, 0 1 3 2.", voice="en", speed=125)
    prompts: list[str] = []
    record, _transport, _session = await run_call(
        receptionist, pool, [card, email, phone], realtime=False, tenant="acme", store=store,
        on_prompt=prompts.append,
    )  # fmt: skip

    heard = " ".join(t.text for t in turns(record, "caller"))
    # the call really carried the data (Whisper heard digits and an address), so the test can fail
    assert len(re.findall(r"\d", heard)) >= 15, heard
    assert re.search(r"example|smith|\.com", heard, re.IGNORECASE), heard
    assert len(prompts) >= 3
    for prompt in prompts:
        lower = prompt.lower()
        for form in ("4539", "1488", "0343", "6467", "0132", "555", "smith", "example", "john", "@"):
            assert form not in lower, f"{form!r} reached the model:\n{prompt}"
        for user in re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", prompt, re.DOTALL):
            assert not re.search(r"\d", user), f"digits reached the model: {user!r}"
            assert not re.search(rf"\b{_NUMBER_WORDS}(?:[\s,.-]+{_NUMBER_WORDS}\b){{2,}}", user, re.I), user
            assert "[" in user, f"a caller turn without a placeholder: {user!r}"
    last = prompts[-1]
    assert "[email address]" in last and ("[card number]" in last or "[number]" in last)
    # the phone number as a phone number, or (heard as one run of digits under load) as a number
    assert "[phone number]" in last or "me at [number]" in last or last.count("[number]") >= 2, last
    # stored transcripts are redacted too (default policy: transcripts.store_redacted)
    stored = store.calls.get("acme", record.call_id, actor="test")
    assert stored is not None
    for t in stored.turns:
        if t.role == "caller":
            assert t.text and not re.search(r"\d", t.text), t.text


@models
async def test_recording_off_leaves_no_audio_on_disk(pool, receptionist, say, store, tmp_path, monkeypatch):
    """Policy recording off: a whole call with a planted tone, then the data directory and the temp
    directories are searched for RIFF headers, the caller's PCM bytes and the tone: nothing."""
    tenant(store, "acme", POLICIES / "default.yaml")
    utterances = [
        with_tone(say("What are your opening hours on Saturday?")),
        with_tone(say("I would like to book a cleaning appointment.", voice="en-us+m3")),
    ]
    system_tmp = Path(tempfile.gettempdir())
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    started = time.time() - 1

    transport = FileTransport(RATE, realtime=False)
    session = await open_call(
        pool=pool, store=store, tenant="acme", config=receptionist, transport=transport,
        record=CallRecord(caller=CALLER), realtime=False,
    )  # fmt: skip
    fed = FedAudio(session)
    await converse(session, utterances, realtime=False)
    record = await session.end("completed")

    assert record.flags["recording"] == "off" and session.recorder is None
    caller_audio = fed.samples()
    windows = pcm_windows(caller_audio)
    assert len(windows) > 50 and has_tone(caller_audio.tobytes()), "the planted tone is not detectable"
    assert len(turns(record, "caller")) == 2 and store.calls.get("acme", record.call_id, actor="t") is not None

    assert not store.recordings_dir.exists() or files_under(store.recordings_dir) == []
    leaks = {str(p): audio_leaks(p, windows) for p in files_under(store.data_dir) + files_under(private_tmp)}
    assert not any(leaks.values()), {p: what for p, what in leaks.items() if what}
    assert db_leaks(store, windows) == []
    # The system temp directory is shared with other processes (their WAVs, their databases):
    # no file changed during the call may hold this call's PCM bytes, and no WAV there the tone.
    # (other tests of this session write their own fixtures, tones included, under pytest's basetemp)
    session_tmp = tmp_path.parent
    shared = [p for p in files_under(system_tmp, since=started) if session_tmp not in p.parents]
    leaks = {str(p): audio_leaks(p, windows, any_riff=False, spectrum=False) for p in shared}
    assert not any(leaks.values()), {p: what for p, what in leaks.items() if what}


@models
async def test_recording_on_streams_encrypted_and_decrypts_to_the_call_audio(pool, receptionist, say, store):
    tenant(store, "acme", recording={"mode": "on"}, retention={"recordings": 30})
    utterances = [
        with_tone(say("What are your opening hours on Saturday?")),
        with_tone(say("Thank you, that is all.", voice="en-us+m3")),
    ]
    transport = FileTransport(RATE, realtime=True)
    session = await open_call(
        pool=pool, store=store, tenant="acme", config=receptionist, transport=transport,
        record=CallRecord(caller=CALLER), realtime=True,
    )  # fmt: skip
    fed = FedAudio(session)
    await converse(session, utterances[:1], realtime=True)
    # streamed while the call runs: encrypted chunks are on disk before it ends
    (path,) = files_under(store.recordings_dir)
    assert path.stat().st_size > RATE * 2 * 2, "nothing of the running call reached the recording file"
    await converse(session, utterances[1:], realtime=True)
    record = await session.end("completed")
    assert record.flags["recording"] == "on"

    raw = path.read_bytes()
    caller_audio = fed.samples()
    assert not raw.startswith(b"RIFF") and b"WAVE" not in raw
    assert audio_leaks(path, pcm_windows(caller_audio)) == []

    wav = store.calls.read_recording("acme", record.call_id, actor="test")
    assert wav is not None and wav.startswith(b"RIFF")
    frames, rate, channels = read_wav(wav)
    assert (rate, channels) == (RATE, 2)
    left, right = frames[:, 0], frames[:, 1]
    assert tone_strength(left, TONE_HZ / RATE) > 60  # the planted tone, in the caller channel
    # the caller side is the caller's audio as fed, sample for sample, from the first chunk on
    assert np.array_equal(left[: caller_audio.size], caller_audio)
    # the agent side is every sample the agent sent, in order
    agent = transport.audio()
    assert np.array_equal(right[right != 0], agent[agent != 0])
    assert abs(frames.shape[0] - caller_audio.size) < RATE * 1.5  # one clock: the caller's
    # aligned on one clock: greeting, then the question, then the answer, as the caller heard them
    q_start = int(np.flatnonzero(left)[0])  # the caller is silent until the greeting has played
    q_end = q_start + utterances[0].samples.size
    assert np.abs(right[:q_start]).max() > 1000, "the greeting is not before the question"
    assert np.abs(right[q_start:q_end]).max() < 300, "agent audio overlaps the question"
    reply_start = q_end + int(np.flatnonzero(np.abs(right[q_end:]) > 300)[0])
    reply = turns(record, "agent", "reply")[0]
    v2v = reply.timeline.voice_to_voice_ms() / 1000
    # where the answer sits in the recording matches the measured voice-to-voice latency
    print(f"recorded gap {(reply_start - q_end) / RATE:.2f} s, voice-to-voice {v2v:.2f} s")
    assert abs((reply_start - q_end) / RATE - v2v) < 0.6


@models
@pytest.mark.parametrize("answer", ["yes", "no"])
async def test_consent_policy_records_only_after_a_spoken_yes(pool, receptionist, say, store, answer):
    tenant(store, "acme", POLICIES / "recorded-consent.yaml")
    announcement = load_policy(POLICIES / "recorded-consent.yaml").recording.announcement
    spoken = say("Yes." if answer == "yes" else "No, thank you.")
    utterances = [with_tone(spoken, OTHER_TONE_HZ), with_tone(say("What are your opening hours on Saturday?"))]
    record, _transport, _session = await run_call(
        receptionist, pool, utterances, realtime=False, tenant="acme", store=store,
        record=CallRecord(caller="+442079460958"),
    )  # fmt: skip

    agent = [t.text for t in turns(record, "agent")]
    assert agent[0] == announcement  # asked before anything else, and before any recording
    assert turns(record, "agent", "reply"), "the question after the answer was not answered"
    wav = store.calls.read_recording("acme", record.call_id, actor="test")
    if answer == "yes":
        assert record.flags["recording"] == "consent_given"
        assert CONSENT_GIVEN_REPLY in agent and receptionist.greeting in agent
        assert wav is not None
        frames, _rate, _channels = read_wav(wav)
        assert tone_strength(frames[:, 0], TONE_HZ / RATE) > 60  # the question is recorded
        assert tone_strength(frames[:, 0], OTHER_TONE_HZ / RATE) < 10  # the "yes" before it is not
        # the consent answer was for the session, not the model
        assert not any("yes" in m.content.lower() for m in _session.conversation.messages if m.role == "user")
    else:
        assert record.flags["recording"] == "consent_refused"
        assert CONSENT_REFUSED_REPLY in agent and receptionist.greeting in agent
        assert wav is None
        assert not store.recordings_dir.exists() or files_under(store.recordings_dir) == []


@models
async def test_consent_by_keypad_1_starts_the_recording(pool, receptionist, say, store):
    tenant(store, "acme", POLICIES / "recorded-consent.yaml")
    transport = FileTransport(RATE, realtime=False)
    session = await open_call(
        pool=pool, store=store, tenant="acme", config=receptionist, transport=transport, realtime=False
    )
    await stream_silence_until_idle(session, RATE, realtime=False, timeout=60)
    assert session.record.flags["recording"] == "asked" and session.recorder is None
    await session.dtmf("1")
    await converse(session, [with_tone(say("What are your opening hours on Saturday?"))], realtime=False)
    record = await session.end("completed")
    assert record.flags["recording"] == "consent_given" and session.consent is True
    assert "transfer" not in str(record.flags.get("dtmf_actions"))
    wav = store.calls.read_recording("acme", record.call_id, actor="test")
    assert wav is not None and tone_strength(read_wav(wav)[0][:, 0], TONE_HZ / RATE) > 60


@models
async def test_spoken_opt_out_goes_on_the_list_with_an_outbox_event(pool, receptionist, say, store):
    tenant(store, "acme", POLICIES / "default.yaml")
    record, transport, session = await run_call(
        receptionist, pool, [say("Please do not call me again.")], realtime=False, tenant="acme", store=store,
        record=CallRecord(caller="(415) 555-0132"),
    )  # fmt: skip

    assert any("do not call" in t.text.lower() for t in turns(record, "caller"))
    assert record.flags["opt_out"] is True and record.end_reason == "optout"
    (confirmation,) = turns(record, "agent", "optout")
    assert confirmation.text == DEFAULT_POLICY.optout.confirmation and not confirmation.interrupted
    assert not turns(record, "agent", "reply"), "the model answered the opt-out request"
    assert store.subjects.is_opted_out("acme", CALLER)
    (entry,) = store.subjects.optouts("acme", actor="test")
    assert entry.source == "call"
    events = [e for e in store.outbox.events("acme", actor="test") if e.type == "optout.requested"]
    assert len(events) == 1 and events[0].status == "pending"  # the tenant is told at once (outbox)
    assert events[0].payload["data"]["call_id"] == record.call_id and events[0].payload["data"]["phone"] == CALLER
    stored = store.calls.get("acme", record.call_id, actor="test")
    assert stored is not None and stored.optout and stored.end_reason == "optout"
    assert session.closed.is_set() and transport.audio().size > RATE


@models
async def test_no_storage_policy_keeps_only_call_metadata(pool, receptionist, say, store):
    tenant(store, "acme", POLICIES / "no-storage.yaml")
    record, _transport, _session = await run_call(
        receptionist, pool, [say("My phone number is 415 555 0132.")], realtime=False, tenant="acme", store=store,
        record=CallRecord(caller=CALLER),
    )  # fmt: skip
    assert turns(record, "caller") and turns(record, "agent", "reply")

    (call,) = store.calls.list("acme", actor="test")
    assert call.call_id == record.call_id and call.end_reason == "completed" and call.duration_s
    stored = store.calls.get("acme", record.call_id, actor="test")
    assert stored is not None and len(stored.turns) == len(record.turns)
    assert all(t.text is None and t.generated_text is None for t in stored.turns)
    assert any(t.timeline for t in stored.turns)  # per-turn latency is metadata
    assert not stored.has_recording
    (event,) = [e for e in store.outbox.events("acme", actor="test") if e.type == "call.ended"]
    assert event.payload["data"]["transcript_stored"] is False
    db = b"".join(p.read_bytes() for p in files_under(store.data_dir))
    for word in (b"phone number", b"Bright Smile", b"0132"):
        assert word not in db


@models
async def test_a_crashing_llm_turn_speaks_the_fallback_and_the_call_goes_on(pool, receptionist, say, monkeypatch):
    engine = pool.llm(receptionist.models.llm)
    real = engine.generate_sync
    crashes = []

    def crash_once(*args, **kwargs):
        if not crashes:
            crashes.append(1)
            raise RuntimeError("llama_decode returned -3")  # what a broken backend raises
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "generate_sync", crash_once)
    no_facts = receptionist.model_copy(update={"facts": None})  # the model must be asked both questions
    record, transport, _session = await run_call(
        no_facts, pool,
        [say("What are your opening hours on Saturday?"), say("Where is your office?", voice="en-us+m3")],
        realtime=False, tenant="dev", store=None,
    )  # fmt: skip

    replies = turns(record, "agent", "reply")
    assert crashes and len(replies) == 2
    assert replies[0].text == receptionist.fallback_reply  # spoken (heard), not a silent line
    assert replies[0].timeline is not None and replies[0].timeline.first_audio_out is not None
    assert replies[1].text and replies[1].text != receptionist.fallback_reply
    assert record.end_reason == "completed"


@models
async def test_a_crashing_stt_turn_speaks_the_fallback_and_the_call_goes_on(pool, receptionist, say, monkeypatch):
    """Bad input: a speech-recognition crash is a spoken fallback ("please say that again"), not silence."""
    from voicecore.services.stt import WhisperSTTProcessor

    engine = pool.stt(receptionist.models.stt)
    real = engine.transcribe_batch_sync  # every transcription goes through it (batched or alone)
    crashes = []
    first_turn = threading.Event()  # set while the first caller turn is being transcribed
    first_turn.set()

    def crash_in_the_first_turn(*args, **kwargs):
        # every transcription of the first turn fails: the early and pause ones as well as its final
        # (a failed early job that speech made stale is simply transcribed again)
        if first_turn.is_set():
            crashes.append(1)
            raise RuntimeError("CUDA-less CTranslate2 went away")  # any backend error
        return real(*args, **kwargs)

    finish_turn = WhisperSTTProcessor._finish_turn

    async def finish_first_turn(self, *args, **kwargs):
        try:
            return await finish_turn(self, *args, **kwargs)
        finally:
            first_turn.clear()  # the next utterance comes after the agent's answer to this one

    monkeypatch.setattr(engine, "transcribe_batch_sync", crash_in_the_first_turn)
    monkeypatch.setattr(WhisperSTTProcessor, "_finish_turn", finish_first_turn)
    record, transport, _session = await run_call(
        receptionist, pool,
        [say("Can I come in on Friday afternoon at three?"), say("Where is your office?", voice="en-us+m3")],
        realtime=False, tenant="dev", store=None,
    )  # fmt: skip

    agent = [t for t in record.turns if t.role == "agent" and t.kind != "greeting"]
    assert crashes
    assert agent and agent[0].text == receptionist.fallback_reply, [(t.kind, t.text) for t in agent]
    assert any(t.kind == "reply" and t.text and t.text != receptionist.fallback_reply for t in agent[1:])
    assert record.end_reason == "completed"


@models
async def test_a_restricted_caller_hears_a_notice_and_nothing_is_stored(pool, receptionist, say, store):
    tenant(store, "acme", POLICIES / "default.yaml")
    store.subjects.restrict("acme", CALLER, actor="test")
    audit_before = len(store.audit.list("acme"))
    record, transport, session = await run_call(
        receptionist, pool, [say("My card number is 4 5 3 9, 1 4 8 8.")], realtime=False, tenant="acme",
        store=store, record=CallRecord(caller="+1 415-555-0132"),
    )  # fmt: skip

    assert record.end_reason == "restricted" and session.closed.is_set()
    assert [t.text for t in record.turns if t.role == "agent"] == [RESTRICTED_NOTICE]
    assert not turns(record, "caller"), "a restricted caller's speech was processed"
    assert transport.audio().size > RATE  # the notice was spoken
    assert len(store.audit.list("acme")) == audit_before  # the call itself read and wrote nothing
    assert store.calls.list("acme", actor="test") == [] and store.outbox.events("acme", actor="test") == []
    assert not store.recordings_dir.exists() or files_under(store.recordings_dir) == []


@models
async def test_policy_context_keeps_the_kv_cache_prefix(pool):
    """With the policy's context builder the second turn still evaluates only the new tokens."""
    import threading

    from voicecore.config import LLMParams

    engine = pool.llm("default")
    conv = Conversation(system_prompt="You are a helpful receptionist.", context=PolicyContext(DEFAULT_POLICY))
    params = LLMParams(max_tokens=16, temperature=0.0)
    stats = []
    for text in ("What are your opening hours? My number is 415 555 2671.", "And on Saturday?"):
        conv.add_caller(text)
        prompt = engine.prompt_tokens(conv.prompt_messages(), conv.generated)
        result = await engine.generate(conv.key, prompt, params, threading.Event())
        conv.add_agent(result.text, result.tokens, reply_id=f"r{len(stats)}")
        stats.append(result.stats)
    engine.forget(conv.key)
    assert stats[1].evaluated_prompt_tokens < 30 < stats[1].prompt_tokens


@models
async def test_only_the_callers_allow_listed_contact_fields_reach_the_model(pool, receptionist, say, store):
    """Minimisation (rule 3): with three contacts on file, the prompts of a call hold the caller's
    name (allow-listed by the default policy) and nothing else from the tenant's contact base."""
    tenant(store, "acme", POLICIES / "default.yaml")
    store.subjects.upsert_contact("acme", CALLER, {"name": "Zelda Quist", "notes": "owes 740 dollars", "email": "zq@example.org"})
    store.subjects.upsert_contact("acme", "+14155550188", {"name": "Orwell Brandt"})
    store.subjects.upsert_contact("acme", "+14155550199", {"name": "Priya Vantongeren"})
    prompts: list[str] = []
    record, _transport, _session = await run_call(
        receptionist, pool, [say("Hello, can you help me?")], realtime=False, tenant="acme", store=store,
        record=CallRecord(caller=CALLER), on_prompt=prompts.append,
    )  # fmt: skip
    assert prompts, "the caller's turn never reached the model"
    text = "\n".join(prompts)
    assert "Zelda Quist" in text  # the allow-listed field of the caller's own contact, so the test can fail
    for leaked in ("owes 740", "zq@example.org", "Orwell", "Brandt", "Priya", "Vantongeren"):
        assert leaked not in text, f"{leaked!r} reached the model"


@models
async def test_a_failing_synthesis_is_retried_so_the_reply_is_still_heard(pool, receptionist, say, monkeypatch):
    """Bad input: a TTS backend error on a clause does not leave a silent line."""
    engine = pool.tts(receptionist.models.tts)
    real = engine.synthesize_sync
    failures = []

    def fail_once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise RuntimeError("onnxruntime: Non-zero status code returned")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "synthesize_sync", fail_once)
    record, transport, _session = await run_call(
        receptionist, pool, [say("Can I come in on Friday afternoon at three?")], realtime=False, tenant="dev",
        store=None, greet=False,
    )  # fmt: skip
    replies = turns(record, "agent", "reply")
    assert failures and replies and replies[0].text
    assert replies[0].timeline is not None and replies[0].timeline.first_audio_out is not None
    assert transport.audio().size > transport.output_sample_rate // 2  # the reply was heard
