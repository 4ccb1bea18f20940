"""Recordings stream to disk encrypted, decrypt to the same PCM, and are refused when the policy says so."""

from __future__ import annotations

import io
import math
import struct
import wave
from pathlib import Path

import pytest

from voicecore.storage import RecordingError, RecordingNotAllowed, StorageError, Store
from voicecore.storage.recording import read_recording_file

pytestmark = pytest.mark.usefixtures("database")

ON = "recording: {mode: on}\nretention: {recordings: 30}\n"
CONSENT = "recording: {mode: consent, announcement: 'May we record?'}\nretention: {recordings: 30}\n"



TENANTS = {"on": ON, "consent": CONSENT, "off": None}


def tone(freq: float = 1234.0, seconds: float = 3.0, rate: int = 16000) -> bytes:
    n = int(seconds * rate)
    return struct.pack(f"<{n}h", *(int(12000 * math.sin(2 * math.pi * freq * i / rate)) for i in range(n)))


def recording_files(store: Store) -> list[Path]:
    return sorted(store.recordings_dir.rglob("*.vcrec")) if store.recordings_dir.exists() else []


def stored_recordings(store: Store) -> list[bytes]:
    """What each recording holds where it is stored: its file (SQLite), or its chunk rows in
    idx order (PostgreSQL: nothing under the data directory)."""
    if store.db.is_sqlite:
        return [p.read_bytes() for p in recording_files(store)]
    assert recording_files(store) == [], "a recording file on PostgreSQL"
    store.calls.flush_recordings(30)
    return [
        b"".join(bytes(d) for (d,) in store.db.fetchall(
            "SELECT data FROM recording_chunks WHERE recording_id = ? ORDER BY idx", (rid,)))
        for (rid,) in store.db.fetchall("SELECT id FROM recordings ORDER BY created_at")
    ]  # fmt: skip


def test_recording_is_encrypted_on_disk_and_decrypts_to_the_same_pcm(store: Store) -> None:
    pcm = tone()
    w = store.calls.open_recording("on", "call-1", 16000)
    for i in range(0, len(pcm), 640):  # 20 ms frames, as the pipeline delivers them
        w.write(pcm[i : i + 640])
        if i == 32000 * 2:
            # streamed while the call is running, not buffered for the end
            assert len(stored_recordings(store)[0]) > 32000
    w.close()
    (raw,) = stored_recordings(store)
    assert not raw.startswith(b"RIFF") and b"RIFF" not in raw and b"WAVE" not in raw
    for offset in range(0, len(pcm) - 64, 16000):
        assert pcm[offset : offset + 64] not in raw  # no window of the tone is on disk
    assert len(raw) > len(pcm)
    wav = store.calls.read_recording("on", "call-1", actor="analyst")
    assert wav is not None and wav.startswith(b"RIFF")
    with wave.open(io.BytesIO(wav)) as r:
        assert (r.getframerate(), r.getnchannels(), r.getsampwidth()) == (16000, 1, 2)
        assert r.readframes(r.getnframes()) == pcm
    (entry,) = [e for e in store.audit.list("on") if e.action == "recording.read"]
    assert entry.actor == "analyst" and entry.object_id == "recording:call-1/mixed"
    call_bytes = store.db.fetchone("SELECT bytes, complete FROM recordings")
    assert tuple(call_bytes) == (len(pcm), 1)


def test_recording_off_is_refused_and_writes_nothing(store: Store) -> None:
    with pytest.raises(RecordingNotAllowed, match="mode='off'"):
        store.calls.open_recording("off", "call-1", 8000)
    with pytest.raises(RecordingNotAllowed):
        store.calls.open_recording("off", "call-1", 8000, consent=True)
    assert stored_recordings(store) == []


def test_consent_policy_records_only_after_yes(store: Store) -> None:
    for answer in (None, False):
        with pytest.raises(RecordingNotAllowed):
            store.calls.open_recording("consent", "call-1", 8000, consent=answer)
    assert stored_recordings(store) == []
    with store.calls.open_recording("consent", "call-1", 8000, consent=True) as w:
        w.write(b"\0\1" * 800)
    (raw,) = stored_recordings(store)
    assert len(raw) > 1600


def test_restricted_caller_is_not_recorded(store: Store) -> None:
    store.subjects.restrict("on", "+14155552671", actor="test")
    with pytest.raises(RecordingNotAllowed, match="restricted"):
        store.calls.open_recording("on", "call-1", 8000, caller="(415) 555-2671")


def test_one_recording_per_call_and_track(store: Store) -> None:
    store.calls.open_recording("on", "call-1", 8000).close()
    store.calls.open_recording("on", "call-1", 8000, track="caller").close()
    with pytest.raises(StorageError, match="already has"):
        store.calls.open_recording("on", "call-1", 8000)


@pytest.mark.databases("sqlite")  # the file; chunk rows: test_storage_recording_database.py
def test_tampered_or_moved_recording_does_not_decrypt(store: Store) -> None:
    with store.calls.open_recording("on", "call-1", 8000, chunk_bytes=1600) as w:
        w.write(tone(seconds=1.0, rate=8000))
    (path,) = recording_files(store)
    row = store.db.fetchone("SELECT id, tenant_id FROM recordings")
    keys = store.keystore.get(row[1])
    assert read_recording_file(path, keys, row[0]).complete
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RecordingError, match="authenticate"):
        read_recording_file(path, keys, row[0])
    # another tenant's key cannot read it either
    other = store.db.fetchone("SELECT id FROM tenants WHERE name = 'consent'")[0]
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RecordingError):
        read_recording_file(path, store.keystore.get(other), row[0])


@pytest.mark.databases("sqlite")  # the file; chunk rows: test_storage_recording_database.py
def test_recording_cut_short_keeps_audio_up_to_the_last_chunk(store: Store) -> None:
    pcm = tone(seconds=1.0, rate=8000)
    with store.calls.open_recording("on", "call-1", 8000, chunk_bytes=1600) as w:
        w.write(pcm)
    (path,) = recording_files(store)
    row = store.db.fetchone("SELECT id, tenant_id FROM recordings")
    keys = store.keystore.get(row[1])
    data = path.read_bytes()
    # drop the final chunk (a crash before close): 28 bytes of framing + an empty final chunk
    path.write_bytes(data[: len(data) - (4 + 12 + 16)])
    got = read_recording_file(path, keys, row[0])
    assert not got.complete and got.pcm == pcm


@pytest.mark.databases("sqlite")  # a copy of the data and key directories; PostgreSQL: test_postgresql.py
def test_a_copied_recording_cannot_be_decrypted_once_the_tenant_key_is_destroyed(tmp_path: Path) -> None:
    """Privacy rule 9: destroying the tenant's key makes every copy of its recordings unreadable."""
    import shutil

    data = tmp_path / "data"
    s = Store(data)
    s.tenants.create("gone", policy_yaml=ON, actor="test")
    pcm = tone()
    with s.calls.open_recording("gone", "call-1", 16000) as w:
        w.write(pcm)
    backup = tmp_path / "backup"
    shutil.copytree(data, backup)  # the database and the .vcrec files (the keys live in data-keys/)
    b = Store(backup, key_dir=tmp_path / "data-keys")
    assert b.calls.read_recording("gone", "call-1", actor="t")  # readable with the keys (so the test can fail)
    b.close()

    s.tenants.delete("gone", actor="ops")
    b = Store(backup, key_dir=tmp_path / "data-keys")  # the copy meets what remains of the keys
    from voicecore.storage import TenantKeyMissing

    with pytest.raises(TenantKeyMissing):
        b.calls.read_recording("gone", "call-1", actor="t")
    raw = b"".join(p.read_bytes() for p in (backup / "recordings").rglob("*.vcrec"))
    assert raw and pcm[1000:1064] not in raw  # the copied file is there, and only ciphertext
    b.close()
    s.close()
