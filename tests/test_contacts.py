"""Contacts for outbound calls (issue 14, item 1): contact files as spreadsheets write them, every
bad line named, every good line stored once, nothing half-imported; list, show, export, delete,
segments; contacts are data subjects (encrypted, erased with the subject).

The file tests are pure (:mod:`voicecore.outbound.contacts_csv`); the store tests run on SQLite
and PostgreSQL.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from voicecore.cli import cli
from voicecore.outbound.contacts_csv import (
    ContactFileError,
    parse_contacts,
    parse_mapping,
)
from voicecore.storage import StorageError, Store
from voicecore.storage.contacts import ContactsNotKept

FR_POLICY = """version: 1
name: fr
phone_region: FR
retention:
  recordings: 0
  transcripts: 30
  reports: 30
  metadata: 90
  contacts: 365
"""
NO_CONTACTS = FR_POLICY.replace("contacts: 365", "contacts: 0").replace("name: fr", "name: no-contacts")


# --------------------------------------------------------------------------- the file


def test_a_spreadsheet_file_with_a_bom_and_semicolons_is_read_and_every_bad_line_named() -> None:
    data = (
        "\ufeffTéléphone;Prénom;Nom;E-mail;Plan\r\n"
        "06 12 34 56 78;Marie;Curie;marie@example.fr;gold\r\n"
        "+33 6 12 34 56 79;Jean;;;\r\n"
        "abc;Paul;;;\r\n"
        ";Luc;;;\r\n"
        "0612345680;Ann;Lee\r\n"
        "0033612345678;;;;platinum\r\n"
        '"06 12 34 56 81";"Zoé\r\nsecond line";;;x\r\n'
        "0612345682;Bob;;bob-at-example;\r\n"
        "\r\n"
        "0612345683;Eve;;;\r\n"
    ).encode("utf-8")
    got = parse_contacts(data, region="FR", mapping=parse_mapping(["Téléphone=phone"]))
    assert [(c.phone, c.lines) for c in got.contacts] == [
        ("+33612345678", [2, 7]), ("+33612345679", [3]), ("+33612345681", [8]), ("+33612345683", [12]),
    ]  # fmt: skip
    marie = got.contacts[0]
    assert marie.to_fields() == {"plan": "platinum", "first_name": "Marie", "last_name": "Curie",
                                 "email": "marie@example.fr", "phone": "+33612345678"}  # fmt: skip
    assert got.contacts[2].fields["first_name"] == "Zoé\r\nsecond line"
    assert [str(r) for r in got.rejected] == [
        "line 4: phone 'abc' is not a phone number (The string supplied did not seem to be a phone number.)",
        "line 5: no phone number",
        "line 6: 3 columns, the header has 5",
        "line 10: email 'bob-at-example' is not an e-mail address",
    ]
    assert (got.merged_lines, got.data_lines) == (1, 9)
    assert got.columns == {"Téléphone": "phone", "Prénom": "first_name", "Nom": "last_name", "E-mail": "email",
                           "Plan": "var:plan"}  # fmt: skip


def test_latin1_tabs_and_column_names_without_a_map() -> None:
    data = "Mobile\tFirst name\tCompany\n+1 (415) 555-2671\tJosé\tAcme\n".encode("latin-1")
    (c,) = parse_contacts(data).contacts
    assert c.to_fields() == {"first_name": "José", "company": "Acme", "phone": "+14155552671"}


@pytest.mark.parametrize(
    ("data", "mapping", "message"),
    [
        (b"", [], "the first line must name the columns"),
        (b"name,email\nAnn,a@b.co\n", [], "no phone column among 'name', 'email'"),
        (b"phone,tel\n1,2\n", [], "two columns are 'phone'"),
        (b"phone\n+14155552671\n", ["cell=phone"], "--map names column(s) the header does not have: cell"),
    ],
)
def test_a_file_that_cannot_be_used_at_all_says_why(data: bytes, mapping: list[str], message: str) -> None:
    with pytest.raises(ContactFileError) as e:
        parse_contacts(data, mapping=parse_mapping(mapping))
    assert message in str(e.value)


def test_a_bad_map_names_the_field() -> None:
    with pytest.raises(ContactFileError, match="unknown field 'fone'"):
        parse_mapping(["Tel=fone"])
    with pytest.raises(ContactFileError, match="column=field"):
        parse_mapping(["Tel"])
    assert parse_mapping(["Tel. mobile=phone", "Plan Type=var:Plan Type"]) == {"telmobile": "phone",
                                                                               "plantype": "var:plan_type"}  # fmt: skip


# --------------------------------------------------------------------------- the store


def ten_thousand_lines(seed: int = 7) -> tuple[bytes, dict[int, str], set[str]]:
    """A 10,000-line contact file as a spreadsheet exports it (a byte-order mark, ``;`` between
    fields) with bad lines mixed in: the bytes, the bad lines' reasons by line number, and the
    numbers of the good lines."""
    rng = random.Random(seed)
    lines = ["phone,first_name,company,plan"]
    bad: dict[int, str] = {}
    good: set[str] = set()
    for i in range(10_000):
        line_no = len(lines) + 1
        kind = rng.random()
        number = f"+1415{2000000 + i:07d}"
        if kind < 0.01:
            lines.append(f",Name{i},Co,basic")
            bad[line_no] = "no phone number"
        elif kind < 0.02:
            lines.append(f"call-me-{i},Name{i},Co,basic")
            bad[line_no] = f"phone 'call-me-{i}' is not a"
        elif kind < 0.03:
            lines.append(f"{number},Name{i},Co")
            bad[line_no] = "3 columns, the header has 4"
        elif kind < 0.05 and good:
            lines.append(f"{sorted(good)[0]},Again{i},Co,basic")  # a duplicate: merged
        else:
            lines.append(f"{number},Name{i},Co {i % 7},plan{i % 3}")
            good.add(number)
    return ("\ufeff" + "\n".join(lines).replace(",", ";") + "\n").encode(), bad, good


@pytest.mark.usefixtures("database")
def test_ten_thousand_lines_with_bad_ones_every_good_line_stored_once_and_every_bad_one_named(tmp_path: Path) -> None:
    data, bad, good = ten_thousand_lines()
    s = Store(tmp_path / "d")
    s.tenants.create("acme", actor="test")
    t0 = time.monotonic()
    result = s.contacts.import_file("acme", data, segment="spring", actor="test")
    seconds = time.monotonic() - t0
    print(f"\n10,000-line import ({'SQLite' if s.db.is_sqlite else 'PostgreSQL'}): {seconds:.2f} s")
    assert {r.line for r in result.rejected} == set(bad)
    for r in result.rejected:
        assert bad[r.line] in r.reason, (r, bad[r.line])
    assert result.created == len(good) and result.updated == 0
    assert result.merged_lines == result.data_lines - len(good) - len(bad)
    listed = s.contacts.list("acme", segment="spring", limit=20_000, actor="test")
    assert sorted(c.phone for c in listed) == sorted(good)  # each once
    assert s.contacts.segments("acme") == {"spring": len(good)}
    again = s.contacts.import_file("acme", data, segment="spring", actor="test")  # running it again is harmless
    assert (again.created, again.updated) == (0, len(good))
    assert len(s.contacts.list("acme", limit=20_000, actor="test")) == len(good)
    assert s.contacts.segments("acme") == {"spring": len(good)}
    s.close()


@pytest.mark.usefixtures("database")
def test_an_import_that_fails_half_way_stores_nothing(tmp_path: Path, monkeypatch) -> None:
    s = Store(tmp_path / "d")
    s.tenants.create("acme", actor="test")
    data = b"phone,name\n+14155552671,Ann\n+14155552672,Bob\n"

    def crash(*_a, **_k):
        raise OSError("disk gone")  # after the contacts were inserted, inside the same transaction

    monkeypatch.setattr(s.audit, "append_in_tx", crash)
    with pytest.raises(OSError):
        s.contacts.import_file("acme", data, segment="x", actor="test")
    monkeypatch.undo()
    assert s.contacts.list("acme", actor="test") == [] and s.contacts.segments("acme") == {}
    s.close()


@pytest.mark.usefixtures("database")
def test_contacts_are_encrypted_merged_exported_deleted_and_erased_with_the_subject(tmp_path: Path) -> None:
    s = Store(tmp_path / "d")
    s.tenants.create("acme", actor="test")
    s.tenants.set_policy("acme", FR_POLICY, actor="test")
    s.tenants.create("globex", actor="test")
    first = s.contacts.import_file("acme", "phone;first_name;plan\n06 12 34 56 78;Marie;gold\n06 12 34 56 79;Jean;\n"
                                   .encode(), segment="vip", actor="test")  # fmt: skip
    assert (first.created, first.rejected) == (2, [])
    second = s.contacts.import_file("acme", b"phone,email\n+33612345678,marie@example.fr\n", segment="newsletter",
                                    actor="test")  # fmt: skip
    assert (second.created, second.updated) == (0, 1)
    marie = s.contacts.get("acme", "0612345678", actor="test")
    assert marie.fields == {"first_name": "Marie", "plan": "gold", "email": "marie@example.fr"}
    assert marie.segments == ("newsletter", "vip")
    assert s.contacts.get("globex", "+33612345678", actor="test") is None  # another tenant's contact
    raw = b"".join(r["fields_enc"] for r in s.db.rows("SELECT fields_enc FROM contacts"))
    assert b"Marie" not in raw and b"612345678" not in raw  # encrypted
    exported = s.contacts.export_csv("acme", segment="vip", actor="test").splitlines()
    assert exported[0] == "phone,name,first_name,last_name,email,company,plan,segments"
    assert sorted(exported[1:]) == ["+33612345678,,Marie,,marie@example.fr,,gold,newsletter vip",
                                    "+33612345679,,Jean,,,,,vip"]  # fmt: skip
    assert s.subjects.export_data("acme", "+33612345678", actor="test").document["contacts"]  # in the subject export
    s.subjects.erase("acme", "+33612345678", actor="test")
    assert s.contacts.get("acme", "+33612345678", actor="test") is None
    assert s.contacts.segments("acme") == {"vip": 1}  # Jean's stays
    assert s.contacts.delete("acme", "06 12 34 56 79", actor="test")
    assert not s.contacts.delete("acme", "06 12 34 56 79", actor="test")
    assert s.contacts.segments("acme") == {}
    actions = [e.action for e in s.audit.list("acme", limit=100)]
    assert {"contacts.imported", "contact.read", "contacts.exported", "contact.deleted"} <= set(actions)
    s.close()


def test_a_policy_that_keeps_no_contacts_refuses_the_import_and_restricted_people_are_not_stored(
    tmp_path: Path,
) -> None:  # fmt: skip
    s = Store(tmp_path / "d")
    s.tenants.create("acme", actor="test")
    s.tenants.set_policy("acme", NO_CONTACTS, actor="test")
    with pytest.raises(ContactsNotKept, match="keeps no contacts .retention.contacts is 0."):
        s.contacts.import_file("acme", b"phone\n+14155552671\n", actor="test")
    s.tenants.set_policy("acme", FR_POLICY, actor="test")
    s.subjects.restrict("acme", "+33612345678", actor="test")
    got = s.contacts.import_file("acme", b"phone\n+33612345678\n+33612345679\n", actor="test")
    assert got.created == 1 and [r.line for r in got.rejected] == [2]
    assert "restricted" in got.rejected[0].reason
    with pytest.raises(StorageError, match="segment name"):
        s.contacts.import_file("acme", b"phone\n+33612345679\n", segment="no spaces", actor="test")
    s.close()


# --------------------------------------------------------------------------- the command line


def test_the_cli_imports_lists_shows_exports_and_deletes(tmp_path: Path) -> None:
    d = tmp_path / "d"
    runner = CliRunner()
    assert runner.invoke(cli, ["tenants", "add", "acme", "--data-dir", str(d)]).exit_code == 0
    f = tmp_path / "leads.csv"
    f.write_text("Tel,Full name,Plan\n+1 415 555 2671,Ann Lee,gold\nnope,Bob,\n+1 415 555 2672,Cy,\n")
    res = runner.invoke(cli, ["contacts", "import", str(f), "--tenant", "acme", "--map", "Tel=phone",
                              "--segment", "leads", "--data-dir", str(d)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "2 contact(s) created" in res.output and "1 rejected" in res.output
    assert "line 3: phone 'nope' is not a phone number" in res.output
    res = runner.invoke(cli, ["contacts", "list", "--tenant", "acme", "--segment", "leads", "--data-dir", str(d)])
    assert "+14155552671" in res.output and "Ann Lee" in res.output
    res = runner.invoke(cli, ["contacts", "show", "415-555-2671", "--tenant", "acme", "--json", "--data-dir", str(d)])
    assert json.loads(res.output)["fields"] == {"name": "Ann Lee", "plan": "gold"}
    out = tmp_path / "out.csv"
    res = runner.invoke(cli, ["contacts", "export", "--tenant", "acme", "-o", str(out), "--data-dir", str(d)])
    assert res.exit_code == 0 and out.read_text().count("\n") == 3
    res = runner.invoke(cli, ["contacts", "delete", "+14155552672", "--tenant", "acme", "--yes", "--data-dir", str(d)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["contacts", "segments", "--tenant", "acme", "--json", "--data-dir", str(d)])
    assert json.loads(res.output) == {"leads": 1}
    f.write_text("name\nAnn\n")
    res = runner.invoke(cli, ["contacts", "import", str(f), "--tenant", "acme", "--data-dir", str(d)])
    assert res.exit_code == 1 and "no phone column" in res.output and "nothing was imported" in res.output
    res = runner.invoke(cli, ["contacts", "import", str(f), "--tenant", "acme", "--map", "x", "--data-dir", str(d)])
    assert res.exit_code == 2 and "column=field" in res.output
