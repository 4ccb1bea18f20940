"""Erasure at the byte level while the subject's rows are still only in SQLite's ``-wal`` frames.

``test_storage_subjects.py`` erases right after a retention sweep (everything compacted into the
main file); here nothing is checkpointed: the subject's calls, turns, recording, report, contact,
opt-out, outbox events and stored export — and mentions of the number in another caller's call,
contact and report — are written, the ``-wal`` file is shown to hold their stored bytes (and the
main file not yet), then the subject is erased three ways:

* through the store (``store.subjects.erase``), the writer's connection open;
* through the CLI in a real process (``python -m voicecore subjects erase ... --yes``), while the
  writer is still open (a running server) and after a writer died without closing (a crash);
* through the HTTP API of a real server on 127.0.0.1 (``POST /v1/subjects/erase``).

Then every file under the data directory (the database, ``-wal``, ``-shm``, recordings,
exports, anything else) is read back and must hold none of: the number in any form, the
caller's name and sentence, the calls' clear provider ids, and every ciphertext that held the
subject's data (their own rows, and the old versions of rows whose mentions were scrubbed) — a
copy of the data directory plus the tenant's key must not give any of it back. Another
tenant's data about the same number stays, and is still found by the same search.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from voicecore.records import CallRecord, Turn
from voicecore.storage import DB_FILENAME, Store
from voicecore.storage.crypto import field_aad

ROOT = Path(__file__).resolve().parent.parent
SUBJECT = "+14155550142"
FORMS = [SUBJECT, "(415) 555-0142", "415-555-0142", "415 555 0142", "4155550142",
         "four one five five five five zero one four two"]  # fmt: skip
NAME = "Philippa Quenneville"
SENTENCE = f"My name is {NAME} and you can reach me on 415 555 0142."
OTHER = "+14155550199"  # another caller, who mentions the subject's number
POLICY = """
recording: {mode: on}
retention: {recordings: 30, transcripts: 90, reports: 90, metadata: 365, contacts: 90}
transcripts: {store_redacted: false}
"""
CLEAR_MARKERS = ["CA-ERASE-ME-0", "CA-ERASE-ME-1"]  # provider call ids: stored in clear
CONTROL_MARKER = "CA-KEEP-ME-B"  # the same number at tenant b: not erased


def tone(seconds: float = 1.0, rate: int = 8000) -> bytes:
    import math
    import struct

    n = int(seconds * rate)
    return struct.pack(f"<{n}h", *(int(9000 * math.sin(2 * math.pi * 613.0 * i / rate)) for i in range(n)))


def subject_call(tenant: str, marker: str, caller: str = SUBJECT) -> CallRecord:
    rec = CallRecord(tenant=tenant, caller=caller, callee="+14155550000", pipeline="receptionist",
                     transport="twilio", provider_ids={"callSid": marker})  # fmt: skip
    rec.turns = [
        Turn("agent", "Thanks for calling, who am I speaking to?", kind="greeting"),
        Turn("caller", SENTENCE),
        Turn("agent", f"Thank you {NAME}, so that's {FORMS[1]}?", kind="reply"),
        Turn("caller", f"Yes, {FORMS[5]}."),
        Turn("agent", "Lovely, I will", kind="reply", interrupted=True,
             generated_text=f"Lovely, I will call you back, {NAME}."),  # cut by a barge-in
    ]
    rec.ended_at = rec.started_at + 20
    rec.end_reason = "hangup"
    return rec


def plant(store: Store) -> None:
    """The subject's data at tenant a (and the same number at tenant b), all through the store's
    own methods, nothing checkpointed."""
    for tenant in ("a", "b"):
        store.tenants.create(tenant, policy_yaml=POLICY, actor="test")
        store.outbox.create_webhook(tenant, "http://127.0.0.1:9/hook", actor="test")  # deliveries are queued
    for n, marker in enumerate(CLEAR_MARKERS):
        rec = subject_call("a", marker)
        assert store.calls.save(rec)
        with store.calls.open_recording("a", rec.call_id, 8000, caller=rec.caller) as w:
            w.write(tone())
        store.calls.save_report("a", rec.call_id, {"caller_name": NAME, "phone": FORMS[n + 2],
                                                   "summary": f"{NAME} wants a call back on {SUBJECT}."})  # fmt: skip
    store.subjects.upsert_contact("a", SUBJECT, {"name": NAME, "note": SENTENCE})
    store.subjects.add_optout("a", SUBJECT, source="call", actor="test")
    store.subjects.store_export("a", SUBJECT, actor="test")
    other = subject_call("a", "CA-OTHER-CALLER", caller=OTHER)
    other.turns = [Turn("agent", "Hello, how can I help?", kind="greeting"),
                   Turn("caller", f"Please call my colleague on {FORMS[3]} about the invoice.")]  # fmt: skip
    assert store.calls.save(other)
    store.calls.save_report("a", other.call_id, {"summary": f"Colleague to be called on {FORMS[1]}."})
    store.subjects.upsert_contact("a", OTHER, {"name": "Bob", "note": f"colleague of {SUBJECT}"})
    control = subject_call("b", CONTROL_MARKER)
    assert store.calls.save(control)
    store.outbox.dispatch()


# --------------------------------------------------------------------------- what must be gone


@dataclass
class Needles:
    """Byte strings to look for in the data directory's files."""

    gone: dict[str, bytes] = field(default_factory=dict)  # label -> bytes that must not remain
    kept: dict[str, bytes] = field(default_factory=dict)  # tenant b's: must remain (the search works)
    files: list[str] = field(default_factory=list)  # recording and export files of the subject (relative)

    def to_json(self) -> str:
        return json.dumps({"gone": {k: v.hex() for k, v in self.gone.items()},
                           "kept": {k: v.hex() for k, v in self.kept.items()}, "files": self.files})  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> Needles:
        d = json.loads(text)
        return cls({k: bytes.fromhex(v) for k, v in d["gone"].items()},
                   {k: bytes.fromhex(v) for k, v in d["kept"].items()}, d["files"])  # fmt: skip


def _mentions_subject(text: str) -> bool:
    return any(f in text for f in FORMS) or NAME in text


class _Rows(list):
    def fetchone(self) -> Any:
        return self[0] if self else None

    def fetchall(self) -> list[Any]:
        return list(self)


def _query(store: Store) -> Any:
    """``sqlite3``-style ``execute(sql, params).fetchone()/fetchall()`` on either database."""
    return lambda sql, params=(): _Rows(store.db.fetchall(sql, params))


def needles(store: Store) -> Needles:
    """Everything of the subject the files hold before erasure: the clear forms, and the stored
    bytes — every ciphertext of the subject's rows, and every ciphertext at tenant a whose
    plaintext mentions the number or the name (the erasure deletes or rewrites each of them).
    A ciphertext is identified by its version byte, nonce and first bytes."""
    q = _query(store)
    out = Needles()
    for text in [*FORMS, NAME, SENTENCE]:
        out.gone[f"plaintext {text!r}"] = text.encode()
    for marker in CLEAR_MARKERS:
        out.gone[f"clear provider id {marker}"] = marker.encode()
    out.kept[f"clear provider id {CONTROL_MARKER}"] = CONTROL_MARKER.encode()

    def cipher(label: str, blob: bytes | None, into: dict[str, bytes]) -> None:
        if blob:
            into[f"{label} ciphertext {bytes(blob)[1:9].hex()}"] = bytes(blob)[:33]

    tenant_ids = {name: q("SELECT id FROM tenants WHERE name = ?", [name]).fetchone()[0] for name in ("a", "b")}
    a = tenant_ids["a"]
    h = store.subjects.hash("a", SUBJECT)
    keys = store.tenants.data_keys(store.tenants.row("a"))
    subject_calls = [r[0] for r in q("SELECT call_id FROM calls WHERE tenant_id = ? AND caller_hash = ?", [a, h])]
    assert len(subject_calls) == len(CLEAR_MARKERS)
    for call_id, caller, callee in q("SELECT call_id, caller_enc, callee_enc FROM calls WHERE tenant_id = ? "
                                     "AND caller_hash = ?", [a, h]).fetchall():  # fmt: skip
        cipher(f"calls.caller {call_id[:8]}", caller, out.gone)
        cipher(f"calls.callee {call_id[:8]}", callee, out.gone)
    (phone_enc,) = q("SELECT phone_enc FROM opt_outs WHERE tenant_id = ? AND phone_hash = ?", [a, h]).fetchone()
    cipher("opt_outs.phone", phone_enc, out.gone)
    for call_id, idx, text_enc, gen_enc in q("SELECT call_id, idx, text_enc, generated_enc FROM turns "
                                             "WHERE tenant_id = ?", [a]).fetchall():  # fmt: skip
        for column, blob in (("text", text_enc), ("generated", gen_enc)):
            if blob is None:
                continue
            plain = keys.decrypt_text(blob, field_aad("turns", a, f"{call_id}/{idx}", column)) or ""
            if call_id in subject_calls or _mentions_subject(plain):
                cipher(f"turns.{column} {call_id[:8]}/{idx}", blob, out.gone)
    for table, column, key_col in (("reports", "body", "id"), ("contacts", "fields", "id"),
                                   ("outbox", "payload", "event_id")):  # fmt: skip
        for row_key, call_id, blob in q(f"SELECT {key_col}, {'call_id' if table != 'contacts' else 'NULL'}, "
                                        f"{column}_enc FROM {table} WHERE tenant_id = ?", [a]).fetchall():  # fmt: skip
            if blob is None:
                continue
            plain = json.dumps(keys.decrypt_json(blob, field_aad(table, a, row_key, column)))
            if call_id in subject_calls or _mentions_subject(plain):
                cipher(f"{table}.{column} {row_key[:8]}", blob, out.gone)
    b = tenant_ids["b"]
    for (blob,) in q("SELECT text_enc FROM turns WHERE tenant_id = ? AND text_enc IS NOT NULL", [b]).fetchall():
        cipher("tenant b turns.text", blob, out.kept)
    for (path,) in q("SELECT path FROM recordings WHERE tenant_id = ? AND location = 'file' UNION ALL "
                     "SELECT path FROM exports WHERE tenant_id = ?", [a, a]).fetchall():  # fmt: skip
        out.files.append(path)
        out.gone[f"content of {path}"] = (store.data_dir / path).read_bytes()[64:128]
    store.calls.flush_recordings(30)
    for rec_id, idx, data in q("SELECT c.recording_id, c.idx, c.data FROM recording_chunks c JOIN recordings r "
                               "ON r.id = c.recording_id WHERE r.tenant_id = ?", [a]).fetchall():  # fmt: skip
        out.gone[f"recording_chunks.data {rec_id[:8]}/{idx}"] = bytes(data)[:33]  # PostgreSQL: the audio is rows
    in_db = q("SELECT count(*) FROM recordings WHERE tenant_id = ? AND location = 'database'", [a]).fetchone()[0]
    kinds = {label.split()[0] for label in out.gone}
    # every kind of stored data is there to be found (so the test can fail)
    assert {"calls.caller", "opt_outs.phone", "turns.text", "turns.generated", "reports.body", "contacts.fields",
            "outbox.payload"} <= kinds, kinds  # fmt: skip
    assert len(out.files) + in_db == len(CLEAR_MARKERS) + 1  # two recordings (files or rows), one stored export
    assert in_db in (0, len(CLEAR_MARKERS)) and (not in_db or "recording_chunks.data" in kinds)
    return out


def every_file(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.rglob("*") if p.is_file())


def where(data_dir: Path, needle: bytes) -> list[str]:
    return [p.name for p in every_file(data_dir) if needle in p.read_bytes()]


def assert_in_wal_only(data_dir: Path, n: Needles) -> None:
    """Before erasure: the -wal file exists and holds every stored byte of the subject; the main
    file does not yet (nothing was checkpointed)."""
    wal = data_dir / f"{DB_FILENAME}-wal"
    assert wal.exists() and wal.stat().st_size > 0, "no -wal file: the data was checkpointed already"
    wal_bytes, db_bytes = wal.read_bytes(), (data_dir / DB_FILENAME).read_bytes()
    stored = {k: v for k, v in n.gone.items() if not k.startswith(("plaintext", "content of"))}
    assert len(stored) >= 15, sorted(stored)
    for label, needle in stored.items():
        assert needle in wal_bytes, f"{label} is not in the -wal file before erasure"
        assert needle not in db_bytes, f"{label} is already in the main file: the WAL was checkpointed"
    for label, needle in n.kept.items():
        assert needle in wal_bytes, f"{label} is not in the -wal file"
    for rel in n.files:
        assert (data_dir / rel).exists()
    # encryption at rest: the plaintext was never on disk in the first place
    for label, needle in n.gone.items():
        if label.startswith("plaintext"):
            assert not where(data_dir, needle), f"{label} on disk before erasure: {where(data_dir, needle)}"


def assert_erased(data_dir: Path, n: Needles) -> None:
    """After erasure: none of the subject's bytes in any file of the data directory."""
    left = {label: where(data_dir, needle) for label, needle in n.gone.items()}
    left = {label: files for label, files in left.items() if files}
    assert not left, "the subject's bytes are still on disk after erasure:\n" + "\n".join(
        f"  {label} in {files}" for label, files in sorted(left.items()))
    for rel in n.files:
        assert not (data_dir / rel).exists(), f"{rel} still exists"
    for label, needle in n.kept.items():  # the search works: tenant b's copy is found
        assert where(data_dir, needle), f"{label} (tenant b, not erased) is nowhere: the search cannot find data"
    assert {p.name for p in every_file(data_dir)} >= {DB_FILENAME}


def assert_erased_in_store(store: Store) -> None:
    assert store.calls.list("a", phone=SUBJECT, actor="test") == []
    assert store.subjects.contact("a", SUBJECT, actor="test") is None
    assert store.subjects.exports("a") == []
    assert store.subjects.is_opted_out("a", SUBJECT)  # the keyed hash survives
    assert len(store.calls.list("b", phone=SUBJECT, actor="test")) == 1


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


# --------------------------------------------------------------------------- 1. the store


def test_store_erasure_leaves_no_byte_in_the_wal_or_anywhere(data_dir: Path) -> None:
    store = Store(data_dir, allow_insecure_webhooks=True)
    try:
        plant(store)
        n = needles(store)
        assert_in_wal_only(data_dir, n)
        result = store.subjects.erase("a", FORMS[1], actor="dpo")
        assert (result.calls, result.recordings, result.contacts, result.exports) == (2, 2, 1, 1)
        assert result.mentions_scrubbed >= 3 and result.wal_truncated
        assert_erased(data_dir, n)  # the writer's connection still open
        assert_erased_in_store(store)
    finally:
        store.close()
    assert_erased(data_dir, n)


# --------------------------------------------------------------------------- 2. the CLI, a real process


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VOICECORE_MASTER_KEY", "VOICECORE_DATA_DIR")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["VOICECORE_LOG_LEVEL"] = "INFO"  # its log lines are checked too
    return env


def cli_erase(data_dir: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "voicecore", "subjects", "erase", FORMS[1], "--tenant", "a",
                          "--yes", "--json", "--data-dir", str(data_dir)],
                         cwd=ROOT, env=cli_env(), capture_output=True, text=True, check=False, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["calls"] == 2 and result["recordings"] == 2 and result["exports"] == 1, result
    for text in [*FORMS, NAME]:  # the command says what it erased, never the subject's data
        assert text not in out.stdout and text not in out.stderr
    return out


def test_cli_erasure_while_the_writer_is_open_leaves_no_byte(data_dir: Path) -> None:
    store = Store(data_dir, allow_insecure_webhooks=True)  # a running server, say: its connection stays open
    try:
        plant(store)
        n = needles(store)
        assert_in_wal_only(data_dir, n)
        cli_erase(data_dir)
        assert_erased(data_dir, n)
        assert_erased_in_store(store)
    finally:
        store.close()
    assert_erased(data_dir, n)


CRASHING_WRITER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[2])
    from pathlib import Path
    from voicecore.storage import Store
    import test_erasure_bytes as t
    store = Store(Path(sys.argv[1]), allow_insecure_webhooks=True)
    t.plant(store)
    print(t.needles(store).to_json(), flush=True)
    os._exit(0)  # no close: the WAL is left as a crash leaves it
""")


def test_cli_erasure_after_a_writer_crashed_leaves_no_byte(data_dir: Path) -> None:
    out = subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(data_dir), str(ROOT / "tests")],
                         cwd=ROOT, env=cli_env(), capture_output=True, text=True, check=False, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    n = Needles.from_json(out.stdout.strip().splitlines()[-1])
    assert_in_wal_only(data_dir, n)
    cli_erase(data_dir)
    assert_erased(data_dir, n)
    with Store(data_dir) as store:
        assert_erased_in_store(store)
    assert_erased(data_dir, n)


# --------------------------------------------------------------------------- 3. the HTTP API, a real server


def post_json(url: str, body: dict[str, Any], key: str) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


async def wait_for_first_sweep(store: Store, timeout: float = 30.0) -> None:
    """The server sweeps (and compacts) once at start-up: the subject's data is written after it,
    so that it stays in the WAL."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not any(e.action == "retention.swept" for e in store.audit.list(limit=20)):
        assert loop.time() < deadline, "the server's first retention sweep did not run"
        await asyncio.sleep(0.05)
    with store.db.lock:  # the sweep holds the lock until its compaction is done
        pass


async def test_api_erasure_leaves_no_byte_in_the_wal_or_anywhere(data_dir: Path, receptionist: Any) -> None:
    from voicecore.server import create_app, running_server

    store = Store(data_dir, allow_insecure_webhooks=True)
    app = create_app(data_dir=data_dir, store=store, preload=False, pipelines={receptionist.name: receptionist},
                     pipeline=receptionist.name)  # fmt: skip
    try:
        async with running_server(app, log_level="info") as base_url:
            await wait_for_first_sweep(store)
            await asyncio.to_thread(plant, store)
            n = await asyncio.to_thread(needles, store)
            assert_in_wal_only(data_dir, n)
            admin = store.tenants.create_api_key("a", role="admin", actor="test")
            viewer = store.tenants.create_api_key("a", role="viewer", actor="test")
            url = f"{base_url}/v1/subjects/erase"
            status, _ = await asyncio.to_thread(post_json, url, {"phone": FORMS[1]}, viewer)
            assert status == 403
            assert_in_wal_only(data_dir, n)  # a refused request erased nothing
            status, body = await asyncio.to_thread(post_json, url, {"phone": FORMS[1]}, admin)
            assert status == 200, body
            assert body["calls"] == 2 and body["recordings"] == 2, body
            assert_erased(data_dir, n)  # the server and its connection still running
            assert_erased_in_store(store)
        assert_erased(data_dir, n)
    finally:
        store.close()
    assert_erased(data_dir, n)


def test_needles_find_a_subject_that_was_not_erased(data_dir: Path) -> None:
    """The check can fail: without erasure, ``assert_erased`` names what is left and where."""
    with Store(data_dir, allow_insecure_webhooks=True) as store:
        plant(store)
        n = needles(store)
        with pytest.raises(AssertionError, match=r"(?s)still on disk.*turns\.text.*voicecore\.db-wal"):
            assert_erased(data_dir, n)


@pytest.fixture(autouse=True)
def _no_master_key_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("VOICECORE_DATA_DIR", raising=False)
    yield
