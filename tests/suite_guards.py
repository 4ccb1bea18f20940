"""Guards the whole test suite runs under (installed by ``tests/conftest.py``; checked by
``tests/test_suite_guards.py``).

``MODEL_GUARD``: a test that is not marked ``models`` must not load or use a model. The model
engines' constructors (Whisper, llama.cpp, Piper, smart-turn, Silero VAD) and the shared ``ModelPool``'s
accessors are wrapped: outside a ``models`` test they raise :class:`UnmarkedModelLoad` (before
anything loads) and note the violation, so the test fails even when the server caught the error
in one of its threads. A pool that already holds a model counts too: the check does not depend
on which test happened to load it first.

``LOG_WATCH``: every log record at INFO or above — loguru's (through a sink that survives
``logger.remove()``) and stdlib ``logging``'s (every logger's, propagating or not: uvicorn,
websockets, aiohttp, ...) — is kept until the next check, which looks for API keys, one-time
call tokens and webhook secrets (by their formats, and literally for every key, token and secret
this process created) and for sentences callers said (the ``say`` fixture's texts, caller turns
of saved calls). A failure names the logger and level and shows secrets masked, never in full.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------- models

#: (module, class) of every model engine: constructing one loads a model.
ENGINES = (
    ("voicecore.services.stt", "WhisperEngine"),
    ("voicecore.services.llm", "LlamaEngine"),
    ("voicecore.services.tts", "PiperEngine"),
    ("voicecore.services.vad", "SmartTurnEngine"),
    ("voicecore.services.vad_analyzers", "SileroVADEngine"),
)
#: ``ModelPool`` methods that hand out (loading if needed) a model.
POOL_METHODS = ("stt", "llm", "tts", "smart_turn", "silero_vad", "for_pipeline")


class UnmarkedModelLoad(RuntimeError):
    """A test that is not marked ``models`` loaded (or used) a model."""


class ModelGuard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.nodeid = "<collection>"
        self.allowed = False
        self._violations: list[str] = []

    def enter(self, item: Any) -> None:
        """The test ``item`` starts its set-up: models are allowed only if it is marked ``models``."""
        with self._lock:
            self.nodeid = item.nodeid
            self.allowed = item.get_closest_marker("models") is not None

    def check(self, what: str) -> None:
        with self._lock:
            if self.allowed:
                return
            message = (
                f"{self.nodeid} loads a model ({what}) but is not marked `models`: mark it "
                "@pytest.mark.models, or make it not need the model (`pytest -m \"not models\"` runs no model)"
            )
            self._violations.append(message)
        raise UnmarkedModelLoad(message)

    def take_violations(self) -> list[str]:
        with self._lock:
            out, self._violations = self._violations, []
        return list(dict.fromkeys(out))


MODEL_GUARD = ModelGuard()
#: Each test's reports so far (set-up, call), kept by conftest's ``pytest_runtest_makereport``.
REPORTS: Any = None  # a pytest.StashKey, made when pytest is there


def _stash_key() -> Any:
    import pytest

    return pytest.StashKey[list]()


REPORTS = _stash_key()


def _guard_method(cls: type, name: str, describe) -> None:
    original = cls.__dict__.get(name)
    if original is None or getattr(original, "_model_guard", False):
        return

    @functools.wraps(original)
    def guarded(self, *args, **kwargs):
        MODEL_GUARD.check(describe(self, args, kwargs))
        return original(self, *args, **kwargs)

    guarded._model_guard = True  # type: ignore[attr-defined]
    setattr(cls, name, guarded)


def install_model_guard() -> None:
    """Wrap the engines' constructors and the pool's accessors (idempotent)."""
    import importlib

    for module, name in ENGINES:
        cls = getattr(importlib.import_module(module), name)
        _guard_method(cls, "__init__", lambda self, a, kw: f"{type(self).__name__}({', '.join(map(str, a[:1]))})")
    from voicecore.model_pool import ModelPool

    for method in POOL_METHODS:
        _guard_method(ModelPool, method,
                      lambda self, a, kw, m=method: f"ModelPool.{m}({', '.join(str(getattr(x, 'name', x)) for x in a)})")


# --------------------------------------------------------------------------- logs

#: The formats of secrets (the call token's old ``ct_…`` form and its new letters-and-digits one).
SECRET_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an API key", re.compile(r"vck_[0-9a-f]{12}_[A-Za-z0-9_-]+")),
    ("a call token", re.compile(r"\bct_[A-Za-z0-9_-]{16,}")),
    ("a call token", re.compile(r"\bct[A-Za-z0-9]{32,}\b")),
    ("a webhook secret", re.compile(r"whsec_[A-Za-z0-9_-]+")),
    ("a stream secret", re.compile(r"\bvcs[0-9a-f]{60}\b")),  # a provider stream's secret (Telnyx, Exotel, ...)
)
MIN_SENTENCE_CHARS = 12  # shorter caller turns ("yes", "5") are not distinctive enough to search for
_SECRET_PREFIXES = (("vck_", 2), ("whsec_", 1), ("ct_", 1))


def mask(secret: str) -> str:
    """What a failure message shows of a secret: its first characters and its length."""
    return f"{secret[:4]}…({len(secret)} chars)"


def secret_parts(secret: str) -> list[str]:
    """A secret and its random part (what a log line could hold without the prefix)."""
    parts = [secret]
    for prefix, splits in _SECRET_PREFIXES:
        if secret.startswith(prefix):
            parts.append(secret.split("_", splits)[-1])
            break
    else:
        if secret.startswith("vcs") and len(secret) == 63:
            parts.append(secret[15:])  # vcs + key id (12 hex) + the secret (48 hex)
        elif secret.startswith("ct"):
            parts.append(secret[2:])
    return [p for p in parts if len(p) >= 16]


def _normalise(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .,!?;:")


@dataclass(frozen=True)
class LogRecord:
    source: str  # "loguru" | "logging"
    logger: str
    level: str
    levelno: int
    text: str


class LogWatch:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = False
        self._records: list[LogRecord] = []
        self._secrets: set[str] = set()
        self._sentences: set[str] = set()
        self._sink_id: int | None = None
        self._root_level: int | None = None

    # -- what to look for -----------------------------------------------------------

    def add_secret(self, secret: str | None) -> None:
        if secret:
            with self._lock:
                self._secrets.update(secret_parts(secret))

    def add_sentence(self, text: str | None) -> None:
        norm = _normalise(text or "")
        if len(norm) >= MIN_SENTENCE_CHARS and " " in norm:
            with self._lock:
                self._sentences.add(norm)

    # -- collecting -----------------------------------------------------------------

    def _keep(self, record: LogRecord) -> None:
        if self.active and record.levelno >= logging.INFO:
            with self._lock:
                self._records.append(record)

    def _loguru_sink(self, message: Any) -> None:
        r = message.record
        self._keep(LogRecord("loguru", r["name"] or "?", r["level"].name, r["level"].no, str(message)))

    def _stdlib(self, record: logging.LogRecord) -> None:
        if not self.active or record.levelno < logging.INFO:
            return
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a record whose arguments do not format: its parts
            text = f"{record.msg} {record.args}"
        if record.exc_text:
            text += "\n" + record.exc_text
        elif record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + record.stack_info
        self._keep(LogRecord("logging", record.name, record.levelname, record.levelno, text))

    def _add_sink(self) -> None:
        from loguru import logger

        self._sink_id = logger.add(self._loguru_sink, level="INFO", format="{message}", catch=True)

    def start(self) -> None:
        self._add_sink()
        root = logging.getLogger()
        self._root_level = root.level
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)  # libraries' INFO records are made, so they are checked
        self.active = True

    def stop(self) -> None:
        from loguru import logger

        self.active = False
        if self._sink_id is not None:
            sink, self._sink_id = self._sink_id, None
            try:
                _ORIGINAL_REMOVE(logger, sink)
            except ValueError:
                pass
        if self._root_level is not None:
            logging.getLogger().setLevel(self._root_level)

    # -- checking -------------------------------------------------------------------

    def findings(self, text: str) -> list[tuple[str, str]]:
        """(what, the secret or sentence) for each one found in ``text``."""
        found: list[tuple[str, str]] = []
        with self._lock:
            secrets, sentences = set(self._secrets), set(self._sentences)
        for what, pattern in SECRET_PATTERNS:
            found += [(what, m.group(0)) for m in pattern.finditer(text)]
        found += [("a secret created in this test run", s) for s in secrets if s in text]
        lowered = " ".join(text.lower().split())
        found += [("a caller sentence", s) for s in sentences if s in lowered]
        first: dict[str, str] = {}
        for what, s in found:  # one finding per secret: the first name for it, none for a part of another
            first.setdefault(s, what)
        return [(what, s) for s, what in first.items() if not any(s != o and s in o for o in first)]

    def masked(self, text: str, found: list[tuple[str, str]] | None = None) -> str:
        """``text`` with every secret and caller sentence in it masked (what the suite may print)."""
        found = self.findings(text) if found is None else found
        for _what, secret in sorted(found, key=lambda f: -len(f[1])):
            text = re.sub(re.escape(secret).replace("\\ ", r"\s+"), mask(secret), text, flags=re.IGNORECASE)
        for _what, pattern in SECRET_PATTERNS:
            text = pattern.sub(lambda m: mask(m.group(0)), text)
        return text

    def check(self) -> str:
        """A failure message for every record since the last check that holds a secret or a
        caller sentence ("" when none does); the records are dropped either way."""
        with self._lock:
            records, self._records = self._records, []
        problems: list[str] = []
        for rec in records:
            found = self.findings(rec.text)
            if not found:
                continue
            shown = self.masked(rec.text, found)
            what = ", ".join(dict.fromkeys(f"{w} {mask(s)}" for w, s in found))
            problems.append(f"{rec.source} logger {rec.logger!r} at {rec.level} logged {what}: {shown[:300]!r}")
        if not problems:
            return ""
        return "secrets or caller speech reached the logs:\n  " + "\n  ".join(problems)


LOG_WATCH = LogWatch()
_ORIGINAL_REMOVE: Any = None


def install_log_watch() -> None:
    """Intercept stdlib records, keep the loguru sink through ``logger.remove()``, and note every
    secret the product creates (idempotent)."""
    global _ORIGINAL_REMOVE
    if _ORIGINAL_REMOVE is not None:
        return
    from loguru._logger import Logger

    _ORIGINAL_REMOVE = Logger.remove

    def remove(self, handler_id=None):
        _ORIGINAL_REMOVE(self, handler_id)
        if LOG_WATCH._sink_id is not None and handler_id in (None, LOG_WATCH._sink_id):
            LOG_WATCH._add_sink()  # a test (or the CLI's setup_logging) removed every sink: ours comes back

    Logger.remove = remove  # type: ignore[method-assign]

    call_handlers = logging.Logger.callHandlers

    def watched_call_handlers(self, record):
        LOG_WATCH._stdlib(record)
        if LOG_WATCH.active:  # pytest's captured-log sections, stderr: never the secret itself
            try:
                text = record.getMessage()
            except Exception:  # noqa: BLE001 - left to the handlers as it is
                text = None
            if text is not None and LOG_WATCH.findings(text):
                record.msg, record.args = LOG_WATCH.masked(text), ()
        return call_handlers(self, record)

    logging.Logger.callHandlers = watched_call_handlers  # type: ignore[method-assign]

    from voicecore.storage.calls import CallRepository
    from voicecore.storage.outbox import Outbox
    from voicecore.storage.tenants import TenantRepository

    def spy(cls: type, name: str, note=None, *, before=None) -> None:
        """``note`` sees what the method returns, ``before`` its arguments (the method runs as ever)."""
        original = cls.__dict__.get(name)
        if original is None:
            return

        @functools.wraps(original)
        def spied(self, *args, **kwargs):
            if before is not None:
                before(*args, **kwargs)
            result = original(self, *args, **kwargs)
            if note is not None:
                note(result)
            return result

        setattr(cls, name, spied)

    def webhook_secret(result: Any) -> None:
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], str):
            LOG_WATCH.add_secret(result[1])

    def caller_turns(record: Any) -> None:
        for turn in getattr(record, "turns", None) or []:
            if getattr(turn, "role", None) == "caller":
                LOG_WATCH.add_sentence(getattr(turn, "text", None))

    spy(TenantRepository, "create_api_key", LOG_WATCH.add_secret)
    spy(Outbox, "create_webhook", webhook_secret)
    spy(Outbox, "update_webhook", webhook_secret)
    spy(CallRepository, "save", before=lambda record, *a, **kw: caller_turns(record))
    try:
        from voicecore.server.state import ServerState

        spy(ServerState, "mint_call_token", LOG_WATCH.add_secret)
    except ImportError:  # pragma: no cover
        pass
    try:  # a tenant's provider credentials (auth tokens, signature secrets) and stream secrets
        from voicecore.storage.providers import ProviderAccounts
        from voicecore.telephony.signatures import CREDENTIAL_FIELDS
    except ImportError:  # pragma: no cover
        return

    def provider_secrets(tenant: str, provider: str, fields: dict[str, str], *a: Any, **kw: Any) -> None:
        secret_names = {f.name for f in CREDENTIAL_FIELDS.get(provider, ()) if f.secret}
        for name, value in (fields or {}).items():
            if name in secret_names and isinstance(value, str):
                LOG_WATCH.add_secret(value.strip())

    spy(ProviderAccounts, "set", before=provider_secrets)
    spy(ProviderAccounts, "create_stream_secret", LOG_WATCH.add_secret)
