"""Outbound campaigns in storage (issue 14): created with every setting checked, started on a
segment, contacts claimed row by row within the campaign's concurrency, attempts written before
any dial and settled once, retries, outcomes, the ``campaign.contact_done`` event, status and
export; erasure and the opt-out list reach them. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from voicecore.storage import Store
from voicecore.storage.campaigns import CampaignError

pytestmark = pytest.mark.usefixtures("database")

LEADS = b"phone,first_name\n+14155552671,Ann\n+14155552672,Bob\n+14155552673,Cy\n"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def store_with_leads(tmp_path: Path, clock: Clock | None = None, name: str = "d") -> Store:
    s = Store(tmp_path / name, clock=clock or time.time, key_dir=tmp_path / "keys", allow_insecure_webhooks=True)
    if not s.tenants.exists("acme"):
        s.tenants.create("acme", actor="test")
        s.contacts.import_file("acme", LEADS, segment="leads", actor="test")
    return s


def create(s: Store, name: str = "spring", **kw) -> object:
    args = {"pipeline": "receptionist", "segment": "leads", "from_number": "+14155550000", "provider": "twilio",
            "window": "daily 00:00-24:00", "max_concurrent": 2, "max_attempts": 2, "retry_after_s": 3600.0}  # fmt: skip
    return s.campaigns.create("acme", name, **{**args, **kw}, actor="test")


@pytest.mark.parametrize(("change", "message"), [
    ({"provider": "skype"}, "provider 'skype': one of twilio"),
    ({"window": "mon-fri 10:00-25:00"}, "window: bad time '25:00'"),
    ({"max_concurrent": 0}, "max_concurrent must be between 1 and 1000"),
    ({"max_attempts": 0}, "max_attempts must be between 1 and 50"),
    ({"retry_after_s": 5}, "retry_after must be between 1 minute and 90 days"),
    ({"segment": "nobody"}, "segment 'nobody' of tenant 'acme' holds no contact"),
    ({"from_number": "not a number"}, "from number 'not a number'"),
    ({"machine_action": "voicemail"}, "needs the voicemail message"),
])  # fmt: skip
def test_every_setting_is_checked_naming_what_is_wrong(tmp_path: Path, change: dict, message: str) -> None:
    s = store_with_leads(tmp_path)
    with pytest.raises(CampaignError) as e:
        create(s, **change)
    assert message in str(e.value)
    assert s.campaigns.list("acme") == []
    s.close()


def test_a_campaign_runs_its_segment_within_its_concurrency_and_retries_as_told(tmp_path: Path) -> None:
    clock = Clock()
    s = store_with_leads(tmp_path, clock)
    c = create(s)
    with pytest.raises(CampaignError, match="already has a campaign"):
        create(s)
    assert s.campaigns.claim_due(c, "w1") == []  # a draft dials nobody
    assert s.campaigns.start("acme", "spring", actor="test") == 3
    c = s.campaigns.get("acme", "spring")
    first = s.campaigns.claim_due(c, "w1")
    assert len(first) == 2 and s.campaigns.claim_due(c, "w2") == []  # two places, both taken
    assert {d.phone for d in first} <= {"+14155552671", "+14155552672", "+14155552673"}
    a1 = s.campaigns.begin_attempt(first[0], "w1")
    a2 = s.campaigns.begin_attempt(first[1], "w1")
    s.campaigns.attempt_dialed(a1, "CA1")
    assert s.campaigns.attempt(provider="twilio", provider_call_id="CA1")["id"] == a1
    assert s.campaigns.settle_attempt(a1, "completed", call_id="call-1") == "done"
    assert s.campaigns.settle_attempt(a1, "completed") is None  # settled once
    assert s.campaigns.settle_attempt(a2, "busy") == "pending"  # tried again after retry_after
    third = s.campaigns.claim_due(c, "w2")
    assert [d.attempts for d in third] == [0]  # the one not dialed yet; the busy one waits an hour
    s.campaigns.settle_attempt(s.campaigns.begin_attempt(third[0], "w2"), "no_answer")
    clock.now += 3601
    again = s.campaigns.claim_due(c, "w1")
    assert sorted(d.attempts for d in again) == [1, 1]
    for d in again:
        assert s.campaigns.settle_attempt(s.campaigns.begin_attempt(d, "w1"), "no_answer") == "done"  # 2 = max
    st = s.campaigns.status("acme", "spring")
    assert st.by_status == {"done": 3} and st.by_outcome == {"completed": 1, "no_answer": 2} and st.attempts == 5
    assert s.campaigns.get("acme", "spring").status == "done"
    done = [e.payload["data"] for e in s.outbox.events("acme", actor="test") if e.type == "campaign.contact_done"]
    assert sorted(e["outcome"] for e in done) == ["completed", "no_answer", "no_answer"]
    assert {e["call_id"] for e in done if e["outcome"] == "completed"} == {"call-1"}
    lines = s.campaigns.export_csv("acme", "spring", actor="test").splitlines()
    assert lines[0] == "phone,name,status,attempts,outcome,reason,call_id,need,appointment"
    assert "+14155552671,Ann,done," in "\n".join(lines) and len(lines) == 4
    s.close()


def test_refusals_wait_or_end_and_say_why(tmp_path: Path) -> None:
    clock = Clock()
    s = store_with_leads(tmp_path, clock)
    c = create(s, max_concurrent=3)
    s.campaigns.start("acme", "spring", actor="test")
    d1, d2, d3 = s.campaigns.claim_due(s.campaigns.get("acme", "spring"), "w1", lease_s=3600)
    s.campaigns.defer(d1, until=clock.now + 600, reason="outside_window")
    s.campaigns.defer(d2, until=None, reason="attempt_cap")
    s.subjects.add_optout("acme", d3.phone, source="call", actor="test")
    assert s.campaigns.dial_facts(d3) == (True, False)
    st = s.campaigns.status("acme", "spring")
    assert st.waiting == {"outside_window": 1} and st.by_outcome == {"refused_by_policy": 1}
    assert st.by_status == {"pending": 1, "done": 1, "dialing": 1}
    assert s.campaigns.claim_due(c, "w2") == []  # deferred 10 minutes; the third still claimed
    clock.now += 601
    assert [d.contact_id for d in s.campaigns.claim_due(c, "w2")] == [d1.contact_id]
    s.close()


def test_the_opt_out_said_during_the_call_ends_the_contact_as_opted_out(tmp_path: Path) -> None:
    s = store_with_leads(tmp_path)
    c = create(s, max_concurrent=1)
    s.campaigns.start("acme", "spring", actor="test")
    (d,) = s.campaigns.claim_due(c, "w1")
    attempt = s.campaigns.begin_attempt(d, "w1")
    s.subjects.add_optout("acme", d.phone, source="call", actor="test")  # "don't call me again"
    assert s.campaigns.settle_attempt(attempt, "completed") == "done"
    assert s.campaigns.status("acme", "spring").by_outcome == {"opted_out": 1}
    s.close()


def test_a_claim_of_a_worker_that_died_before_dialing_goes_to_the_next_one(tmp_path: Path) -> None:
    clock = Clock()
    s = store_with_leads(tmp_path, clock)
    c = create(s, max_concurrent=1)
    s.campaigns.start("acme", "spring", actor="test")
    (d,) = s.campaigns.claim_due(c, "w1", lease_s=60)
    assert s.campaigns.claim_due(c, "w2") == []
    clock.now += 61  # w1 never began the attempt
    (again,) = s.campaigns.claim_due(c, "w2")
    assert again.contact_id == d.contact_id and again.attempts == 0
    attempt = s.campaigns.begin_attempt(again, "w2")
    clock.now += 3600  # begun, then nothing: an open attempt is never claimed again, it is settled
    assert s.campaigns.claim_due(c, "w3") == []
    assert [a["id"] for a in s.campaigns.stale_attempts(older_than_s=1800)] == [attempt]
    s.close()


def test_two_dialers_at_once_never_take_the_same_contact(tmp_path: Path, database) -> None:
    if database is None:
        pytest.skip("one SQLite file: the write lock serialises the claims (the PostgreSQL case is the real one)")
    a = store_with_leads(tmp_path, name="a")
    b = store_with_leads(tmp_path, name="b")
    extra = "phone\n" + "".join(f"+1415556{i:04d}\n" for i in range(40))
    a.contacts.import_file("acme", extra.encode(), segment="leads", actor="test")
    create(a, max_concurrent=1000)
    a.campaigns.start("acme", "spring", actor="test")
    c = a.campaigns.get("acme", "spring")
    got: list[list[str]] = [[], [], [], []]
    barrier = threading.Barrier(4)

    def dial(i: int) -> None:
        s = (a, b)[i % 2]
        barrier.wait()
        for _ in range(20):
            got[i] += [d.contact_id for d in s.campaigns.claim_due(c, f"w{i}")]

    threads = [threading.Thread(target=dial, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = [x for g in got for x in g]
    assert len(claimed) == 43 and len(set(claimed)) == 43
    a.close()
    b.close()


def test_erasure_takes_the_subject_out_of_campaigns_and_attempts(tmp_path: Path) -> None:
    s = store_with_leads(tmp_path)
    c = create(s, max_concurrent=3)
    s.campaigns.start("acme", "spring", actor="test")
    for d in s.campaigns.claim_due(c, "w1"):
        s.campaigns.settle_attempt(s.campaigns.begin_attempt(d, "w1"), "busy")
    s.subjects.erase("acme", "+14155552671", actor="test")
    assert s.campaigns.status("acme", "spring").contacts == 2
    h = s.subjects.hash("acme", "+14155552671")
    assert not s.db.exists("SELECT 1 AS x FROM call_attempts WHERE phone_hash = ?", (h,))
    assert "+14155552671" not in s.campaigns.export_csv("acme", "spring", actor="test")
    s.close()


@pytest.mark.databases("sqlite")
def test_the_cli_creates_starts_pauses_reports_and_exports(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from voicecore.cli import cli

    d = str(tmp_path / "d")
    run = CliRunner().invoke
    assert run(cli, ["tenants", "add", "acme", "--data-dir", d]).exit_code == 0
    leads = tmp_path / "leads.csv"
    leads.write_bytes(LEADS)
    assert run(cli, ["contacts", "import", str(leads), "--tenant", "acme", "--segment", "leads", "--data-dir", d]).exit_code == 0
    base = ["campaigns", "create", "spring", "--tenant", "acme", "--pipeline", "receptionist", "--segment", "leads",
            "--from", "+1 415 555 0000", "--provider", "twilio", "--data-dir", d]  # fmt: skip
    res = run(cli, [*base, "--window", "mon-fri 10:00-13:00,14:00-20:00", "--retry-after", "15m", "--max-concurrent",
                    "2"])  # fmt: skip
    assert res.exit_code == 0 and "created" in res.output, res.output
    res = run(cli, [*base[:2], "autumn", *base[3:], "--window", "mon-fri 10:00-25:00"])
    assert res.exit_code == 1 and "bad time '25:00'" in res.output
    res = run(cli, [*base[:2], "autumn", *base[3:], "--retry-after", "soon"])
    assert res.exit_code == 2 and "a duration like 90s" in res.output
    res = run(cli, ["campaigns", "start", "spring", "--tenant", "acme", "--data-dir", d])
    assert res.exit_code == 0 and "3 contact(s) joined" in res.output
    res = run(cli, ["campaigns", "status", "spring", "--tenant", "acme", "--json", "--data-dir", d])
    st = json.loads(res.output)
    assert st["campaign"]["status"] == "running" and st["by_status"] == {"pending": 3}
    assert st["campaign"]["retry_after_s"] == 900 and st["campaign"]["from_number"] == "+14155550000"
    assert run(cli, ["campaigns", "pause", "spring", "--tenant", "acme", "--data-dir", d]).exit_code == 0
    res = run(cli, ["campaigns", "status", "spring", "--tenant", "acme", "--data-dir", d])
    assert "Campaign spring: paused (paused by cli)" in res.output and "3 pending" in res.output
    res = run(cli, ["campaigns", "export", "spring", "--tenant", "acme", "--data-dir", d])
    assert res.output.count("\n") == 4 and "+14155552671,Ann,pending,0" in res.output
    res = run(cli, ["campaigns", "status", "nope", "--tenant", "acme", "--data-dir", d])
    assert res.exit_code == 1 and "tenant 'acme' has no campaign 'nope'" in res.output
