"""Reading a contact file (CSV) into contacts, and saying what was wrong with every line it rejects.

Pure: bytes in, :class:`ContactFile` out, nothing stored. What it accepts:

- UTF-8 with or without a byte-order mark (Latin-1 when the file is not UTF-8, as spreadsheets
  on Windows write it); ``,``, ``;`` or tab as separator (found from the header line); quoted
  fields may hold separators and line breaks; line numbers in messages are the file's own.
- A header line. Columns are known by their names (case, spaces, ``-`` and ``_`` ignored):
  ``phone`` (required: also ``phone_number``, ``number``, ``mobile``, ``tel``, ``telephone``),
  ``name``, ``first_name``, ``last_name``, ``email``, ``company``; ``--map column=field`` names
  the field of any other column; every other column is kept as a variable under its header
  (``{{plan}}`` in a prompt, if the policy allow-lists it).
- Phone numbers in any common form, normalised to E.164; numbers without a country code are
  read in the tenant policy's region.

Each rejected line is named with its number and why: no phone number, a phone that is not a
number, more or fewer columns than the header, an e-mail address that is not one. Lines with a
number already seen are merged into the first (later non-empty values win), not rejected.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

from voicecore.policy.phone import InvalidPhoneNumber, normalize_phone

FIELDS: tuple[str, ...] = ("phone", "name", "first_name", "last_name", "email", "company")
ALIASES: dict[str, str] = {
    "phone": "phone", "phonenumber": "phone", "number": "phone", "mobile": "phone", "mobilephone": "phone",
    "tel": "phone", "telephone": "phone", "cell": "phone", "msisdn": "phone",
    "name": "name", "fullname": "name",
    "firstname": "first_name", "givenname": "first_name", "prenom": "first_name", "prénom": "first_name",
    "lastname": "last_name", "surname": "last_name", "familyname": "last_name", "nom": "last_name",
    "email": "email", "emailaddress": "email", "mail": "email",
    "company": "company", "organisation": "company", "organization": "company", "société": "company",
}  # fmt: skip
MAX_LINES = 1_000_000
MAX_FIELD_CHARS = 2000
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_VARIABLE = re.compile(r"[^a-z0-9_]+")


class ContactFileError(ValueError):
    """The file as a whole cannot be read (no header, no phone column, a bad ``--map``)."""


@dataclass
class ContactRow:
    """One contact from the file: E.164 phone, known fields, variables, and the lines it came from."""

    phone: str
    fields: dict[str, str] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    lines: list[int] = field(default_factory=list)

    def merge(self, other: ContactRow) -> None:
        """A later line for the same number: its non-empty values win."""
        self.fields.update({k: v for k, v in other.fields.items() if v})
        self.variables.update({k: v for k, v in other.variables.items() if v})
        self.lines += other.lines

    def to_fields(self) -> dict[str, str]:
        """What the contact store keeps (encrypted), one flat mapping as the prompt's allow-list
        sees it: the variables, the known fields, the phone."""
        return {**self.variables, **{k: v for k, v in self.fields.items() if v}, "phone": self.phone}


@dataclass(frozen=True)
class RejectedLine:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class ContactFile:
    contacts: list[ContactRow]
    rejected: list[RejectedLine]
    merged_lines: int  # lines folded into an earlier line with the same number
    columns: dict[str, str]  # header -> field (or "var:<name>")
    data_lines: int  # lines read after the header (blank lines not counted)


def _key(header: str) -> str:
    return re.sub(r"[\s_\-.]+", "", header.strip().lower())


def variable_name(header: str) -> str:
    """A column header as a prompt variable name: ``Plan Type`` → ``plan_type``."""
    name = _VARIABLE.sub("_", header.strip().lower()).strip("_")
    return name or "column"


def parse_mapping(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["Tel. mobile=phone", "Plan=var:plan"]`` → ``{"telmobile": "phone", "plan": "var:plan"}``
    (keys as :func:`_key` reads headers). A field is one of :data:`FIELDS` or ``var:<name>``."""
    out: dict[str, str] = {}
    for pair in pairs:
        column, sep, target = pair.partition("=")
        if not sep or not column.strip() or not target.strip():
            raise ContactFileError(f"--map {pair!r}: write it as column=field")
        target = target.strip()
        if target.startswith("var:"):
            target = "var:" + variable_name(target[4:])
        elif target not in FIELDS:
            raise ContactFileError(f"--map {pair!r}: unknown field {target!r} (one of {', '.join(FIELDS)}, or var:NAME)")
        out[_key(column)] = target
    return out


def _decode(data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # every byte is a character: nothing is lost, names may look odd


def _separator(header_line: str) -> str:
    counts = {sep: header_line.count(sep) for sep in (",", ";", "\t")}
    best = max(counts, key=lambda s: counts[s])
    return best if counts[best] else ","


def parse_contacts(data: bytes, *, region: str = "US", mapping: dict[str, str] | None = None) -> ContactFile:
    """Read a contact file (see the module). Raises :class:`ContactFileError` when the file as a
    whole is unusable; bad lines are in ``rejected``, never raised."""
    text = _decode(data)
    first = text.split("\n", 1)[0]
    if not first.strip():
        raise ContactFileError("the file is empty or its first line is blank: the first line must name the columns")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_separator(first), strict=False)
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as e:
        raise ContactFileError(f"the header line cannot be read ({e})") from None
    mapping = mapping or {}
    columns: dict[str, str] = {}
    targets: list[str] = []
    for raw in header:
        k = _key(raw)
        target = mapping.get(k) or ALIASES.get(k) or "var:" + variable_name(raw)
        if target in targets and not target.startswith("var:"):
            raise ContactFileError(f"two columns are {target!r}: {raw!r} and an earlier one (use --map to say which)")
        columns[raw] = target
        targets.append(target)
    unused = set(mapping) - {_key(h) for h in header}
    if unused:
        raise ContactFileError(f"--map names column(s) the header does not have: {', '.join(sorted(unused))}")
    if "phone" not in targets:
        raise ContactFileError(
            f"no phone column among {', '.join(repr(h) for h in header)}: name one phone (or --map COLUMN=phone)"
        )
    by_phone: dict[str, ContactRow] = {}
    rejected: list[RejectedLine] = []
    merged = data_lines = 0
    line = 1
    while True:
        start = reader.line_num + 1  # the file line this record starts on
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            rejected.append(RejectedLine(start, f"cannot be read as CSV ({e})"))
            continue
        line = start
        if not values or all(not v.strip() for v in values):
            continue  # blank line
        data_lines += 1
        if data_lines > MAX_LINES:
            raise ContactFileError(f"more than {MAX_LINES} lines: split the file")
        if len(values) != len(header):
            rejected.append(RejectedLine(line, f"{len(values)} columns, the header has {len(header)}"))
            continue
        row = ContactRow(phone="", lines=[line])
        problem = None
        for target, value in zip(targets, values):
            value = value.strip()
            if len(value) > MAX_FIELD_CHARS:
                problem = f"a value is longer than {MAX_FIELD_CHARS} characters"
                break
            if target == "phone":
                if not value:
                    problem = "no phone number"
                    break
                try:
                    row.phone = normalize_phone(value, region)
                except InvalidPhoneNumber as e:
                    problem = f"phone {value[:40]!r} is {e}"
                    break
            elif target.startswith("var:"):
                if value:
                    row.variables[target[4:]] = value
            elif target == "email" and value and not _EMAIL.match(value):
                problem = f"email {value[:60]!r} is not an e-mail address"
                break
            elif value:
                row.fields[target] = value
        if problem:
            rejected.append(RejectedLine(line, problem))
            continue
        seen = by_phone.get(row.phone)
        if seen is None:
            by_phone[row.phone] = row
        else:
            seen.merge(row)
            merged += 1
    return ContactFile(list(by_phone.values()), rejected, merged, columns, data_lines)
