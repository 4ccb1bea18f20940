"""The tenant policy: what is recorded, how long each data class lives, what reaches the model.

A policy is a YAML file (``policies/*.yaml``) parsed into the pydantic model
:class:`Policy`. Every section forbids unknown keys and every number is bounded,
so a typo or an absurd value is rejected when the file is loaded, with the field
named::

    >>> load_policy("policies/typo.yaml")
    PolicyError: policies/typo.yaml: retention.transcript: unknown key; allowed keys: recordings, transcripts, ...

The defaults of :class:`Policy` are the privacy-first policy shipped as
``policies/default.yaml``: recording off, transcripts 30 days, metadata 365 days,
redaction on, local processing only.

YAML note: the loader here follows YAML 1.2 for booleans, so ``mode: off`` is the
string ``"off"`` and only ``true``/``false`` are booleans; duplicate keys are an
error instead of silently keeping the last one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import phonenumbers
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# Longest lifetime a policy may give any data class (about ten years).
RETENTION_MAX_DAYS = 3650
# Largest policy file accepted, in bytes.
POLICY_MAX_BYTES = 64 * 1024

DataClass = Literal["recordings", "transcripts", "reports", "metadata", "contacts"]
DATA_CLASSES: tuple[str, ...] = get_args(DataClass)

RecordingMode = Literal["off", "on", "consent"]

# ``name``: a name the agent knows is one (a tool's name argument; "my name is …", "this is …"
# in what is said). Not in the default list: the model may use the caller's name.
RedactionCategory = Literal["phone", "email", "card", "iban", "spoken_digits", "name"]
REDACTION_CATEGORIES: tuple[str, ...] = get_args(RedactionCategory)

# Processing regions a remote backend may declare. Coarse, jurisdiction-level
# names: a backend's operator states where it processes data.
Region = Literal["eu", "eea", "uk", "ch", "us", "ca", "au", "nz", "jp", "kr", "in", "sg", "br"]
KNOWN_REGIONS: tuple[str, ...] = get_args(Region)

Days = Annotated[int, Field(ge=0, le=RETENTION_MAX_DAYS, strict=True)]
FieldName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class PolicyError(ValueError):
    """A policy file or text was rejected. ``field`` is the dotted path of the first bad field."""

    def __init__(self, source: str, field: str, message: str, problems: list[tuple[str, str]] | None = None):
        self.source = source
        self.field = field
        self.message = message
        self.problems: list[tuple[str, str]] = problems or [(field, message)]
        text = f"{source}: {field}: {message}"
        if len(self.problems) > 1:
            more = "; ".join(f"{f}: {m}" for f, m in self.problems[1:])
            text += f" (and {len(self.problems) - 1} more: {more})"
        super().__init__(text)


class _FieldProblem(ValueError):
    """Raised by cross-field validators so the error names the field, not the section."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RecordingSettings(_Section):
    """Whether call audio is written to disk (always encrypted, only while allowed)."""

    # off: no audio byte of the call ever reaches disk.
    # on: recorded from the start (announcement, if set, is played as a notice).
    # consent: announcement is played; recording starts only after the caller
    #   agrees (spoken yes or ``consent_dtmf``); a refusal or no answer keeps it off.
    mode: RecordingMode = "off"
    announcement: str | None = Field(default=None, min_length=1, max_length=500)
    consent_dtmf: str = Field(default="1", pattern=r"^[0-9*#]$")

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml11_booleans(cls, value: Any) -> Any:
        # A policy built from a YAML 1.1 loader (plain yaml.safe_load) gives booleans.
        if value is True:
            return "on"
        if value is False:
            return "off"
        return value

    @model_validator(mode="after")
    def _consent_needs_announcement(self) -> RecordingSettings:
        if self.mode == "consent" and not self.announcement:
            raise _FieldProblem(
                "recording.announcement", "required when recording.mode is 'consent' (the caller must be asked)"
            )
        return self


class RetentionSettings(_Section):
    """Lifetime of each data class in days; 0 means the data is never stored."""

    recordings: Days = 0
    transcripts: Days = 30
    reports: Days = 30
    metadata: Days = 365
    contacts: Days = 30


def _all_categories() -> list[RedactionCategory]:
    return ["phone", "email", "card", "iban", "spoken_digits"]


class RedactionSettings(_Section):
    """Redaction of caller text before it enters the LLM context."""

    enabled: bool = True
    categories: list[RedactionCategory] = Field(default_factory=_all_categories, max_length=16)

    @field_validator("categories")
    @classmethod
    def _no_duplicates(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for item in value:
            if item in seen:
                raise ValueError(f"category {item!r} is listed twice")
            seen.add(item)
        return value


class TranscriptSettings(_Section):
    """How transcript text is stored (when ``retention.transcripts`` > 0)."""

    # true: stored text is redacted with the redaction categories (even if
    # redaction for the model is disabled); false: stored verbatim.
    store_redacted: bool = True


class ContextSettings(_Section):
    """What may reach the model besides the system prompt and the conversation."""

    contact_fields: list[FieldName] = Field(default_factory=lambda: ["name"], max_length=32)
    max_history_turns: int = Field(default=12, ge=1, le=200)

    @field_validator("contact_fields")
    @classmethod
    def _no_duplicates(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a contact field is listed twice")
        return value


class ProcessingSettings(_Section):
    """Where model backends may run."""

    local_only: bool = True
    # Only with local_only: false. Empty means any region; otherwise a remote
    # backend must declare one of these regions.
    allowed_regions: list[Region] = Field(default_factory=list, max_length=len(KNOWN_REGIONS))

    @model_validator(mode="after")
    def _regions_need_remote(self) -> ProcessingSettings:
        if self.local_only and self.allowed_regions:
            raise _FieldProblem(
                "processing.allowed_regions",
                "has no effect while processing.local_only is true; set local_only: false to allow remote backends",
            )
        if len(set(self.allowed_regions)) != len(self.allowed_regions):
            raise _FieldProblem("processing.allowed_regions", "a region is listed twice")
        return self


class OptOutSettings(_Section):
    """Do-not-call handling: the phrase matcher and what the agent answers."""

    enabled: bool = True
    extra_phrases: list[Annotated[str, Field(min_length=3, max_length=100)]] = Field(
        default_factory=list, max_length=50
    )
    confirmation: str = Field(default="Understood. We will not call you again. Goodbye.", min_length=1, max_length=300)


class Policy(_Section):
    """One tenant's policy. The defaults are the privacy-first ``policies/default.yaml``."""

    version: Literal[1] = 1
    name: str = Field(default="default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    description: str = Field(default="", max_length=2000)
    # Region used to read phone numbers written without a country code (ISO 3166 alpha-2).
    phone_region: str = "US"
    recording: RecordingSettings = Field(default_factory=RecordingSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    redaction: RedactionSettings = Field(default_factory=RedactionSettings)
    transcripts: TranscriptSettings = Field(default_factory=TranscriptSettings)
    context: ContextSettings = Field(default_factory=ContextSettings)
    processing: ProcessingSettings = Field(default_factory=ProcessingSettings)
    optout: OptOutSettings = Field(default_factory=OptOutSettings)

    @field_validator("phone_region")
    @classmethod
    def _known_phone_region(cls, value: str) -> str:
        if value not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(
                f"{value!r} is not a region known to libphonenumber (use ISO 3166 alpha-2, e.g. US, GB, DE)"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        r = self.retention
        if self.recording.mode != "off" and r.recordings == 0:
            raise _FieldProblem(
                "retention.recordings",
                f"is 0 (never stored) but recording.mode is {self.recording.mode!r}; give recordings a lifetime "
                "or set recording.mode: off",
            )
        longest_call_data = max(r.recordings, r.transcripts, r.reports)
        if r.metadata < longest_call_data:
            raise _FieldProblem(
                "retention.metadata",
                f"is {r.metadata} days but call data lives up to {longest_call_data} days; metadata (the call "
                "record the other data hangs off) must live at least as long",
            )
        return self

    # Convenience accessors used by the decisions.
    def retention_days(self, data_class: str) -> int:
        if data_class not in DATA_CLASSES:
            raise ValueError(f"unknown data class {data_class!r}; known: {', '.join(DATA_CLASSES)}")
        return int(getattr(self.retention, data_class))


DEFAULT_POLICY = Policy()


# --------------------------------------------------------------------------- YAML


class _PolicyLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (only true/false) and duplicate keys rejected."""


_PolicyLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_PolicyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, line: int):
        self.key = key
        self.line = line
        super().__init__(f"duplicate key {key!r} (line {line})")


def _construct_mapping_no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (dict, list)):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value, not a mapping or a list", key_node.start_mark
            )
        if key in result:
            raise _DuplicateKey(str(key), key_node.start_mark.line + 1)
        result[key] = loader.construct_object(value_node, deep=deep)
    return result


_PolicyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_no_duplicates)


def _loc_to_field(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<policy>"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section model that a location points into (for listing allowed keys)."""
    model: type[BaseModel] = Policy
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return model
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return model
    return model


def _describe(error: Any) -> tuple[str, str]:
    loc = tuple(error.get("loc", ()))
    ctx = error.get("ctx") or {}
    original = ctx.get("error")
    if isinstance(original, _FieldProblem):
        return original.field, original.message
    field = _loc_to_field(loc)
    kind = error.get("type", "")
    value = error.get("input")
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = ", ".join(model.model_fields) if model else ""
        return field, f"unknown key; allowed keys: {allowed}"
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    if kind != "missing" and not isinstance(value, (dict, list)) and repr(value) not in message:
        message += f" (got {value!r})"
    return field, message


def policy_from_data(data: Any, source: str = "<policy>") -> Policy:
    """Validate already-parsed data (a mapping) into a :class:`Policy`, or raise :class:`PolicyError`."""
    if data is None:
        raise PolicyError(source, "<policy>", "the policy is empty; expected a mapping of sections")
    if not isinstance(data, dict):
        raise PolicyError(
            source, "<policy>", f"expected a mapping of sections at the top level, got {type(data).__name__}"
        )
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        field, message = problems[0]
        raise PolicyError(source, field, message, problems) from None


#: Deepest nesting of brackets a policy document may have (a policy needs 3 or 4).
POLICY_MAX_NESTING = 32


def check_document_nesting(text: str, source: str, limit: int = POLICY_MAX_NESTING) -> None:
    """Refuse a policy document nested deeper than ``limit`` brackets (``[``/``{``), before
    any parser recurses into it (``PolicyError``). Brackets inside quotes do not count."""
    depth = 0
    quote: str | None = None
    escaped = False
    for ch in text:
        if quote is not None:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
            if depth > limit:
                raise PolicyError(source, "<policy>", f"the document is nested deeper than {limit} levels")
        elif ch in "]}":
            depth = max(0, depth - 1)


def load_policy_text(text: str, source: str = "<string>") -> Policy:
    """Parse and validate policy YAML text. ``source`` names it in errors."""
    if len(text.encode("utf-8", errors="replace")) > POLICY_MAX_BYTES:
        raise PolicyError(source, "<policy>", f"policy text is larger than {POLICY_MAX_BYTES} bytes")
    check_document_nesting(text, source)
    try:
        data = yaml.load(text, Loader=_PolicyLoader)  # _PolicyLoader is a SafeLoader subclass
    except _DuplicateKey as exc:
        raise PolicyError(source, exc.key, f"duplicate key (line {exc.line}); each key may appear once") from None
    except RecursionError:
        raise PolicyError(source, "<yaml>", "the document is nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(source, "<yaml>", f"not valid YAML at {where}: {problem}") from None
    return policy_from_data(data, source)


def load_policy(path: str | Path) -> Policy:
    """Load a policy file, raising :class:`PolicyError` that names the file and the field."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise PolicyError(str(p), "<file>", f"cannot read policy file: {exc.strerror or exc}") from None
    if len(raw) > POLICY_MAX_BYTES:
        raise PolicyError(str(p), "<file>", f"policy file is larger than {POLICY_MAX_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(str(p), "<file>", "policy file is not UTF-8 text") from None
    return load_policy_text(text, source=str(p))


def policy_to_yaml(policy: Policy) -> str:
    """Serialise a policy to YAML that :func:`load_policy_text` reads back to an equal policy."""
    return yaml.safe_dump(policy.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
