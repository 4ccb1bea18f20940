"""The data-management verbs as an operator runs them: tenants, calls, subjects, optout, retention,
audit, policy — against a real SQLite data directory (CliRunner, and a real process for some)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
import suite_guards as guards
from click.testing import CliRunner, Result

from voicecore.cli import cli
from voicecore.records import CallRecord, Turn, TurnTimeline
from voicecore.storage import DB_FILENAME, MASTER_KEY_ENV, Store

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
CALLER = "+14155552671"
CALLER_NATIONAL = "(415) 555-2671"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Let the store generate its master key file in the data directory.
    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)
    monkeypatch.delenv("VOICECORE_DATA_DIR", raising=False)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def vc(data_dir: Path | None, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    """Run ``voicecore ARGS --data-dir DATA`` in-process; stdout and stderr kept apart."""
    extra = ["--data-dir", str(data_dir)] if data_dir is not None else []
    return CliRunner().invoke(cli, [*args, *extra], input=input, env=env, catch_exceptions=False)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def add_tenant(data: Path, name: str, *extra: str) -> str:
    out = ok(vc(data, "tenants", "add", name, "--json", *extra))
    doc = json.loads(out.stdout)
    assert doc["tenant"] == name
    return doc["api_key"]


def timeline(base: float, stt: float, llm: float, clause: float, audio: float) -> TurnTimeline:
    """A turn timeline with stages at the given ms after the end of caller speech (at ``base`` s)."""
    return TurnTimeline(speech_end=base, stt_final=base + stt / 1000, llm_first_token=base + llm / 1000,
                        first_clause=base + clause / 1000, first_audio_out=base + audio / 1000)  # fmt: skip


def make_call(tenant: str, caller: str = CALLER, *, started: float | None = None) -> CallRecord:
    """A call as CallSession builds it: the caller turn and the agent's reply share one timeline."""
    started = started if started is not None else datetime(2025, 3, 4, 9, 30, tzinfo=UTC).timestamp()
    t1 = timeline(100.0, 40, 180, 260, 420)
    t2 = timeline(200.0, 60, 220, 310, 555)
    rec = CallRecord(tenant=tenant, caller=caller, callee="+14155550000", pipeline="receptionist",
                     transport="twilio", started_at=started)  # fmt: skip
    rec.turns = [
        Turn("agent", "Thanks for calling Acme Dental.", kind="greeting"),
        Turn("caller", "Are you open on Saturday?", timeline=t1),
        Turn("agent", "Yes, from nine to one.", timeline=t1, kind="reply"),
        Turn("caller", "Can I book a cleaning?", timeline=t2),
        Turn("agent", "Of course, what day", timeline=t2, kind="reply", interrupted=True,
             generated_text="Of course, what day would suit you best?"),  # fmt: skip
        Turn("event", "5", kind="dtmf"),
    ]
    rec.ended_at = started + 63.25
    rec.end_reason = "caller_hangup"
    return rec


def save(data: Path, *records: CallRecord, report: dict | None = None) -> None:
    with Store(data) as store:
        for rec in records:
            assert store.calls.save(rec)
            if report is not None:
                store.calls.save_report(rec.tenant, rec.call_id, report)


def every_command(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out = []
    for name, command in group.commands.items():
        path = (*prefix, name)
        out.append((path, command))
        if isinstance(command, click.Group):
            out += every_command(command, path)
    return out


# --------------------------------------------------------------------------- help


DATA_VERBS = {
    ("tenants", "add"), ("tenants", "list"), ("tenants", "delete"), ("tenants", "policy"), ("tenants", "keys"),
    ("tenants", "key-add"), ("tenants", "key-revoke"), ("calls", "list"), ("calls", "show"),
    ("subjects", "export"), ("subjects", "erase"), ("subjects", "restrict"), ("optout", "add"),
    ("optout", "list"), ("optout", "remove"), ("retention", "sweep"), ("audit", "verify"), ("audit", "list"),
    ("policy", "check"),
}  # fmt: skip
NO_JSON = {("tenants", "delete"), ("tenants", "policy"), ("tenants", "key-revoke"), ("subjects", "restrict")}


def test_every_verb_has_help() -> None:
    commands = dict(every_command(cli))
    assert DATA_VERBS <= set(commands), f"missing: {DATA_VERBS - set(commands)}"
    for path, command in sorted(commands.items()):
        assert (command.help or "").strip(), f"{' '.join(path)} has no help text"
        result = ok(CliRunner().invoke(cli, [*path, "--help"]))
        assert result.stdout.startswith("Usage:") and command.help.strip().split()[0] in result.stdout
        if path in DATA_VERBS and path[0] != "policy":
            assert "--data-dir" in result.stdout, path
            assert ("--json" in result.stdout) == (path not in NO_JSON), path


# --------------------------------------------------------------------------- tenants


def test_tenants_add_prints_the_key_once_and_stores_only_a_hash(data: Path) -> None:
    out = ok(vc(data, "tenants", "add", "acme"))
    key = out.stdout.split()[-1]
    assert key.startswith("vck_") and "only this once" in out.stdout
    secret = key.split("_", 2)[2]
    with Store(data) as store:
        assert store.tenants.authenticate(key).tenant == "acme"
    raw = b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())
    assert secret.encode() not in raw and key.encode() not in raw

    # The key is never printed again: not by list, not by keys.
    listed = ok(vc(data, "tenants", "list"))
    assert "acme" in listed.stdout and "default" in listed.stdout and secret not in listed.stdout
    keys = ok(vc(data, "tenants", "keys", "acme"))
    assert key.split("_")[1] in keys.stdout and "admin" in keys.stdout and secret not in keys.stdout

    again = vc(data, "tenants", "add", "acme")
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_tenants_json_list_and_key_lifecycle(data: Path) -> None:
    add_tenant(data, "acme", "--role", "analyst")
    add_tenant(data, "beta")
    tenants = json.loads(ok(vc(data, "tenants", "list", "--json")).stdout)
    assert [(t["name"], t["active_keys"]) for t in tenants] == [("acme", 1), ("beta", 1)]

    added = json.loads(ok(vc(data, "tenants", "key-add", "acme", "--role", "viewer", "--json")).stdout)
    with Store(data) as store:
        info = store.tenants.authenticate(added["api_key"])
        assert info is not None and (info.tenant, info.role) == ("acme", "viewer")
    assert {k["role"] for k in json.loads(ok(vc(data, "tenants", "keys", "acme", "--json")).stdout)} == {
        "analyst", "viewer"}  # fmt: skip

    ok(vc(data, "tenants", "key-revoke", "acme", added["key_id"]))
    with Store(data) as store:
        assert store.tenants.authenticate(added["api_key"]) is None
    again = vc(data, "tenants", "key-revoke", "acme", added["key_id"])
    assert again.exit_code == 1 and added["key_id"] in again.stderr
    other = vc(data, "tenants", "key-revoke", "beta", added["key_id"])  # another tenant's key id
    assert other.exit_code == 1
    bad_role = vc(data, "tenants", "key-add", "acme", "--role", "root")
    assert bad_role.exit_code == 2 and "root" in bad_role.stderr


def test_tenants_add_with_an_invalid_policy_names_the_field(data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nretention:\n  transcripts: -3\n")
    result = vc(data, "tenants", "add", "acme", "--policy", str(bad))
    assert result.exit_code == 1
    assert "retention.transcripts" in result.stderr and "bad.yaml" in result.stderr
    ok(vc(data, "tenants", "add", "acme", "--policy", str(POLICIES / "no-storage.yaml")))
    assert "no-storage" in ok(vc(data, "tenants", "list")).stdout


def test_tenants_policy_show_and_replace(data: Path, tmp_path: Path) -> None:
    add_tenant(data, "acme")
    shown = ok(vc(data, "tenants", "policy", "acme")).stdout
    assert "name: default" in shown and "retention:" in shown

    bad = tmp_path / "typo.yaml"
    bad.write_text("name: typo\nrecording:\n  mdoe: on\n")
    rejected = vc(data, "tenants", "policy", "acme", "--set", str(bad))
    assert rejected.exit_code == 1 and "recording.mdoe" in rejected.stderr
    assert "name: default" in ok(vc(data, "tenants", "policy", "acme")).stdout

    ok(vc(data, "tenants", "policy", "acme", "--set", str(POLICIES / "no-storage.yaml")))
    assert "name: no-storage" in ok(vc(data, "tenants", "policy", "acme")).stdout
    actions = [e["action"] for e in json.loads(ok(vc(data, "audit", "list", "--json")).stdout)]
    assert actions.count("policy.changed") == 1

    missing = vc(data, "tenants", "policy", "nobody")
    assert missing.exit_code == 1 and "unknown tenant 'nobody'" in missing.stderr


def test_tenants_delete_asks_then_destroys_the_tenant_and_its_key(data: Path) -> None:
    key = add_tenant(data, "acme")
    save(data, make_call("acme"))
    refused = vc(data, "tenants", "delete", "acme", input="n\n")
    assert refused.exit_code == 1
    with Store(data) as store:
        assert store.tenants.authenticate(key).tenant == "acme"
    ok(vc(data, "tenants", "delete", "acme", "--yes"))
    with Store(data) as store:
        assert store.tenants.authenticate(key) is None and not store.tenants.exists("acme")
    assert "No tenants" in ok(vc(data, "tenants", "list")).stdout
    gone = vc(data, "calls", "list", "--tenant", "acme")
    assert gone.exit_code == 1 and "unknown tenant 'acme'" in gone.stderr


# --------------------------------------------------------------------------- calls


def test_calls_list_and_show_print_transcript_timelines_and_report(data: Path) -> None:
    add_tenant(data, "acme")
    rec = make_call("acme")
    save(data, rec, report={"purpose": "book a cleaning", "requested_slot": "2025-03-08T10:00:00"})

    listed = ok(vc(data, "calls", "list", "--tenant", "acme")).stdout
    assert rec.call_id in listed and "caller_hangup" in listed and "63.2 s" in listed and "twilio" in listed
    assert "Saturday" not in listed  # metadata only

    shown = ok(vc(data, "calls", "show", rec.call_id, "--tenant", "acme")).stdout
    lines = [line.strip() for line in shown.splitlines()]
    assert "caller: Are you open on Saturday?" in lines
    assert "agent : Yes, from nine to one." in lines
    assert "agent : Of course, what day [cut by barge-in]" in lines
    assert "[dtmf] 5" in lines
    assert "duration    63.2 s" in lines and "end reason  caller_hangup" in lines and "transport   twilio" in lines
    # One row per answered turn: STT final, LLM first token, first clause, first audio out (ms).
    assert lines[lines.index("Latency per turn") + 3].split() == ["1", "40", "180", "260", "420"]
    assert lines[lines.index("Latency per turn") + 4].split() == ["2", "60", "220", "310", "555"]
    assert "requested_slot: 2025-03-08T10:00:00" in lines and "status: ready" in lines

    doc = json.loads(ok(vc(data, "calls", "show", rec.call_id, "--tenant", "acme", "--json")).stdout)
    assert doc["call_id"] == rec.call_id and doc["end_reason"] == "caller_hangup" and doc["duration_s"] == 63.25
    assert [t["role"] for t in doc["turns"]] == ["agent", "caller", "agent", "caller", "agent", "event"]
    assert doc["turns"][4]["interrupted"] and doc["turns"][4]["text"] == "Of course, what day"
    assert doc["timelines"][1]["first_audio_out"] == 555.0 and doc["timelines"][0]["stt_final"] == 40.0
    assert doc["latency_ms"]["first_audio_out"]["n"] == 2
    assert doc["report"]["report"]["purpose"] == "book a cleaning"

    audit = json.loads(ok(vc(data, "audit", "list", "--tenant", "acme", "--json")).stdout)
    reads = [e for e in audit if e["action"] == "transcript.read"]
    assert len(reads) == 2 and {e["actor"] for e in reads} == {"cli"}
    assert reads[0]["object_id"] == f"call:{rec.call_id}"


def test_another_tenants_call_is_not_found(data: Path) -> None:
    add_tenant(data, "acme")
    add_tenant(data, "beta")
    rec = make_call("acme")
    save(data, rec)
    result = vc(data, "calls", "show", rec.call_id, "--tenant", "beta")
    assert result.exit_code == 1 and "not found" in result.stderr
    assert "Saturday" not in result.stdout + result.stderr
    assert "No calls" in ok(vc(data, "calls", "list", "--tenant", "beta")).stdout
    assert json.loads(ok(vc(data, "calls", "list", "--tenant", "beta", "--json")).stdout) == []
    # The failed lookup did not read (or audit) anything.
    audit = json.loads(ok(vc(data, "audit", "list", "--json")).stdout)
    assert not [e for e in audit if e["action"] == "transcript.read"]


def test_calls_default_tenant_and_data_dir_from_environment(data: Path) -> None:
    add_tenant(data, "default")
    rec = make_call("default")
    save(data, rec)
    env = {"VOICECORE_DATA_DIR": str(data)}
    listed = ok(vc(None, "calls", "list", "--json", env=env))
    assert [c["call_id"] for c in json.loads(listed.stdout)] == [rec.call_id]
    assert rec.call_id in ok(vc(None, "calls", "show", rec.call_id, env=env)).stdout


def test_calls_list_filters(data: Path) -> None:
    add_tenant(data, "acme")
    old = make_call("acme", started=datetime(2025, 1, 1, tzinfo=UTC).timestamp())
    new = make_call("acme", caller="+442071838750", started=datetime(2025, 6, 1, tzinfo=UTC).timestamp())
    save(data, old, new)

    def ids(*args: str) -> list[str]:
        out = ok(vc(data, "calls", "list", "--tenant", "acme", "--json", *args))
        return [c["call_id"] for c in json.loads(out.stdout)]

    assert ids() == [new.call_id, old.call_id]
    assert ids("--since", "2025-03-01") == [new.call_id]
    assert ids("--phone", CALLER_NATIONAL) == [old.call_id]
    assert ids("--limit", "1") == [new.call_id]
    bad = vc(data, "calls", "list", "--tenant", "acme", "--since", "last tuesday")
    assert bad.exit_code == 2 and "--since" in bad.stderr and "ISO 8601" in bad.stderr


def test_verbs_refuse_a_data_dir_without_a_database(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    result = vc(missing, "calls", "list")
    assert result.exit_code == 1 and "no voicecore database" in result.stderr and str(missing) in result.stderr
    assert not missing.exists()


# --------------------------------------------------------------------------- subjects


def test_subject_export_restrict_erase_round_trip(data: Path, tmp_path: Path) -> None:
    add_tenant(data, "acme")
    add_tenant(data, "beta")
    a_call, b_call = make_call("acme"), make_call("beta")
    other = make_call("acme", caller="+14155550199")
    save(data, a_call, b_call, other)

    exports = tmp_path / "exports"
    summary = json.loads(ok(vc(data, "subjects", "export", CALLER_NATIONAL, "--tenant", "acme", "--out",
                                str(exports), "--json")).stdout)  # fmt: skip
    assert summary["subject"] == CALLER and summary["calls"] == 1
    doc = json.loads((Path(summary["path"]) / "export.json").read_text())
    assert doc["call_ids"] == [a_call.call_id]
    assert doc["calls"][0]["turns"][1]["text"] == "Are you open on Saturday?"

    ok(vc(data, "subjects", "restrict", CALLER, "--tenant", "acme"))
    assert "already restricted" in ok(vc(data, "subjects", "restrict", CALLER, "--tenant", "acme")).stdout
    with Store(data) as store:
        assert store.subjects.is_restricted("acme", CALLER) and not store.subjects.is_restricted("beta", CALLER)
        assert store.calls.save(make_call("acme")) is False  # a restricted caller's call is not stored
    ok(vc(data, "subjects", "restrict", CALLER, "--tenant", "acme", "--undo"))
    with Store(data) as store:
        assert not store.subjects.is_restricted("acme", CALLER)

    refused = vc(data, "subjects", "erase", CALLER, "--tenant", "acme", input="n\n")
    assert refused.exit_code == 1
    erased = json.loads(ok(vc(data, "subjects", "erase", CALLER, "--tenant", "acme", "--yes", "--json")).stdout)
    assert erased["calls"] == 1 and erased["turns"] == 6

    after = json.loads(ok(vc(data, "subjects", "export", CALLER, "--tenant", "acme", "--out", str(exports),
                              "--json")).stdout)  # fmt: skip
    assert after["calls"] == 0
    remaining = [c["call_id"] for c in json.loads(ok(vc(data, "calls", "list", "--tenant", "acme", "--json")).stdout)]
    assert remaining == [other.call_id]
    b = json.loads(ok(vc(data, "calls", "list", "--tenant", "beta", "--json")).stdout)
    assert [c["call_id"] for c in b] == [b_call.call_id]  # the same number at another tenant is intact

    audit = [e["action"] for e in json.loads(ok(vc(data, "audit", "list", "--tenant", "acme", "--json")).stdout)]
    assert {"subject.exported", "subject.restricted", "subject.unrestricted", "subject.erased"} <= set(audit)


def test_subject_verbs_name_an_invalid_number_and_unknown_tenant(data: Path) -> None:
    add_tenant(data, "acme")
    bad = vc(data, "subjects", "erase", "call me maybe", "--tenant", "acme", "--yes")
    assert bad.exit_code == 1 and "invalid phone number 'call me maybe'" in bad.stderr
    unknown = vc(data, "subjects", "export", CALLER, "--tenant", "nobody")
    assert unknown.exit_code == 1 and "unknown tenant 'nobody'" in unknown.stderr
    no_tenant = vc(data, "subjects", "export", CALLER)
    assert no_tenant.exit_code == 2 and "--tenant" in no_tenant.stderr


# --------------------------------------------------------------------------- opt-out


def test_optout_add_list_remove(data: Path) -> None:
    add_tenant(data, "acme")
    add_tenant(data, "beta")
    added = json.loads(ok(vc(data, "optout", "add", CALLER_NATIONAL, "--tenant", "acme", "--json")).stdout)
    assert added == {"tenant": "acme", "phone": CALLER, "added": True}
    assert "already" in ok(vc(data, "optout", "add", CALLER, "--tenant", "acme")).stdout

    entries = json.loads(ok(vc(data, "optout", "list", "--tenant", "acme", "--json")).stdout)
    assert [e["phone"] for e in entries] == [CALLER]
    assert CALLER in ok(vc(data, "optout", "list", "--tenant", "acme")).stdout
    assert json.loads(ok(vc(data, "optout", "list", "--tenant", "beta", "--json")).stdout) == []

    # Survives erasure as a keyed hash.
    ok(vc(data, "subjects", "erase", CALLER, "--tenant", "acme", "--yes"))
    with Store(data) as store:
        assert store.subjects.is_opted_out("acme", CALLER)
    assert "[erased]" in ok(vc(data, "optout", "list", "--tenant", "acme")).stdout

    # Outbound calls to the number are refused (exit status 1), for this tenant only.
    refused = vc(data, "optout", "check", CALLER, "--tenant", "acme", "--json")
    assert refused.exit_code == 1, refused.stderr
    assert json.loads(refused.stdout)["allowed"] is False and "opt-out" in json.loads(refused.stdout)["reason"]
    assert json.loads(ok(vc(data, "optout", "check", CALLER, "--tenant", "beta", "--json")).stdout)["allowed"]

    ok(vc(data, "optout", "remove", CALLER, "--tenant", "acme"))
    assert "may call" in ok(vc(data, "optout", "check", CALLER, "--tenant", "acme")).stdout
    assert json.loads(ok(vc(data, "optout", "list", "--tenant", "acme", "--json")).stdout) == []
    again = vc(data, "optout", "remove", CALLER, "--tenant", "acme")
    assert again.exit_code == 1 and "not on the opt-out list" in again.stderr
    bad = vc(data, "optout", "add", "12", "--tenant", "acme")
    assert bad.exit_code == 1 and "invalid phone number '12'" in bad.stderr


# --------------------------------------------------------------------------- retention


def test_retention_sweep_with_now_in_the_future(data: Path) -> None:
    add_tenant(data, "acme")  # default policy: transcripts 30 days, metadata 365 days
    rec = make_call("acme")
    save(data, rec)
    now = datetime.now(UTC)

    early = json.loads(ok(vc(data, "retention", "sweep", "--now", (now + timedelta(days=1)).isoformat(),
                              "--json")).stdout)  # fmt: skip
    assert early["total"] == 0

    month = json.loads(ok(vc(data, "retention", "sweep", "--now", (now + timedelta(days=31)).isoformat(),
                              "--json")).stdout)  # fmt: skip
    assert month["transcripts_cleared"] == 6 and month["deleted"]["calls"] == 0
    shown = ok(vc(data, "calls", "show", rec.call_id, "--tenant", "acme")).stdout
    assert "Saturday" not in shown and "[text not stored]" in shown and "transcript  not stored" in shown
    assert "420" in shown  # timelines are metadata: kept

    later = ok(vc(data, "retention", "sweep", "--now", (now + timedelta(days=400)).strftime("%Y-%m-%dT%H:%M:%S")))
    assert "1 calls" in later.stdout and "6 turns" in later.stdout
    assert json.loads(ok(vc(data, "calls", "list", "--tenant", "acme", "--json")).stdout) == []
    gone = vc(data, "calls", "show", rec.call_id, "--tenant", "acme")
    assert gone.exit_code == 1 and "not found" in gone.stderr
    swept = [e for e in json.loads(ok(vc(data, "audit", "list", "--json")).stdout) if e["action"] == "retention.swept"]
    assert len(swept) == 3 and {e["actor"] for e in swept} == {"cli"}

    bad = vc(data, "retention", "sweep", "--now", "tomorrow")
    assert bad.exit_code == 2 and "--now" in bad.stderr


# --------------------------------------------------------------------------- real processes

ENV = {k: v for k, v in os.environ.items() if k not in (MASTER_KEY_ENV, "VOICECORE_DATA_DIR")}
ENV["VOICECORE_LOG_LEVEL"] = "INFO"  # the process's log lines (stderr) are checked for secrets
ENV["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])


def voicecore(*args: str) -> subprocess.CompletedProcess:
    """``python -m voicecore.cli ARGS`` in a real process. Its stderr (the log lines) must hold no
    key, token or secret (stdout is what the command prints on purpose: ``tenants add`` prints the
    new key, once)."""
    out = subprocess.run([sys.executable, "-m", "voicecore.cli", *args], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    leaks = guards.LOG_WATCH.findings(out.stderr)
    assert not leaks, "secrets in the CLI's log lines: " + ", ".join(f"{w} {guards.mask(s)}" for w, s in leaks)
    return out


def test_process_tenant_key_and_call_show(data: Path) -> None:
    out = voicecore("tenants", "add", "acme", "--json", "--data-dir", str(data))
    assert out.returncode == 0, out.stderr
    key = json.loads(out.stdout)["api_key"]
    assert key not in out.stderr
    guards.LOG_WATCH.add_secret(key)  # made in that process: looked for literally from now on
    rec = make_call("acme")
    with Store(data) as store:
        assert store.tenants.authenticate(key).tenant == "acme"
        store.calls.save(rec)
    shown = voicecore("calls", "show", rec.call_id, "--tenant", "acme", "--data-dir", str(data))
    assert shown.returncode == 0, shown.stderr
    assert "Of course, what day [cut by barge-in]" in shown.stdout
    assert "Saturday" not in shown.stderr  # no call content in the logs
    other = voicecore("calls", "show", rec.call_id, "--data-dir", str(data))  # tenant "default" does not exist
    assert other.returncode == 1 and "unknown tenant 'default'" in other.stderr


def test_process_audit_verify_detects_a_modified_entry(data: Path) -> None:
    add_tenant(data, "acme")
    add_tenant(data, "beta")
    good = voicecore("audit", "verify", "--data-dir", str(data))
    assert good.returncode == 0 and "OK" in good.stdout, good.stderr
    with Store(data) as store:
        second = sorted(e.id for e in store.audit.list())[1]
    conn = sqlite3.connect(data / DB_FILENAME)
    with conn:
        conn.execute("UPDATE audit_log SET actor = 'someone-else' WHERE id = ?", (second,))
    conn.close()
    bad = voicecore("audit", "verify", "--data-dir", str(data))
    assert bad.returncode == 1
    assert f"entry {second}" in bad.stderr and "modified" in bad.stderr
    as_json = voicecore("audit", "verify", "--json", "--data-dir", str(data))
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["first_bad_id"] == second


def test_process_policy_check_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nredaction:\n  categories: [phone, ssn]\n")
    good = voicecore("policy", "check", *(str(p) for p in sorted(POLICIES.glob("*.yaml"))))
    assert good.returncode == 0 and good.stdout.count(": OK") == len(list(POLICIES.glob("*.yaml"))), good.stderr
    out = voicecore("policy", "check", str(POLICIES / "default.yaml"), str(bad))
    assert out.returncode == 1
    assert f"{bad}: redaction.categories[1]" in out.stderr and "ssn" in out.stderr
    assert "default.yaml: OK" in out.stdout


def test_two_exports_in_the_same_second_get_their_own_folders(tmp_path: Path) -> None:
    # Store.export named its folder by the second: a second export used to crash (FileExistsError).
    with Store(tmp_path / "data", clock=lambda: 1_750_000_000.0) as store:
        store.tenants.create("acme", actor="test")
        first = store.subjects.export("acme", CALLER, tmp_path / "out", actor="test")
        second = store.subjects.export("acme", CALLER, tmp_path / "out", actor="test")
    assert first != second and (first / "export.json").exists() and (second / "export.json").exists()
