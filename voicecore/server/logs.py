"""Logs that never hold a key: API keys, call tokens, stream secrets, provider JWTs and webhook
secrets are cut out of every line.

Two layers, so a secret in a URL or a header never reaches a log at any level:

* the server takes ``?token=`` out of the query string before anything handles (or
  logs) the request (:mod:`voicecore.server.guard`), so uvicorn's own lines
  (``"WebSocket /ws/plivo" [accepted]``) show the path without it;
* every log line — voicecore's (loguru) and the libraries' (stdlib ``logging``:
  uvicorn, websockets, aiohttp; the websockets library logs request lines and
  headers at DEBUG) — goes through :func:`redact_secrets`, which replaces anything
  that looks like a key, a token or a credential header with ``[redacted]``.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from loguru import logger

REDACTED = "[redacted]"

_SECRET_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"vck_[0-9a-f]{12}_[A-Za-z0-9_-]+"),  # tenant API keys
    re.compile(r"\bct_[A-Za-z0-9_-]{16,}"),  # one-time call tokens (older form)
    re.compile(r"\bct[0-9a-f]{40}\b"),  # one-time call tokens
    re.compile(r"\bvcs[0-9a-f]{60}\b"),  # provider stream secrets
    re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"),  # JWTs (Vonage's signed requests)
    re.compile(r"whsec_[A-Za-z0-9_-]+"),  # webhook signing secrets
    # values of credential-like query parameters and headers, whatever their form
    re.compile(r"(?i)((?:^|[?&\s\"'])(?:token|auth_token|api_key|key|secret|password)=)[^&\s\"']+"),
    re.compile(r"(?i)((?:authorization|x-[a-z-]*(?:token|auth|signature)[a-z-]*|proxy-authorization)\s*[:=]\s*)[^\r\n]+"),
)


def redact_secrets(text: str) -> str:
    """``text`` with keys, tokens, secrets and credential headers replaced by ``[redacted]``."""
    for pattern in _SECRET_PATTERNS:
        if pattern.groups:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


class RedactSecrets(logging.Filter):
    """A stdlib ``logging`` filter that redacts each record's formatted message (see the module)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not format: leave it to the handler
            return True
        cleaned = redact_secrets(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_secrets(logging.Formatter().formatException(record.exc_info))
        return True


_FILTER = RedactSecrets()


def _patch_loguru_record(record: Any) -> None:
    record["message"] = redact_secrets(record["message"])


def install_log_redaction() -> None:
    """Redact every log line of this process: loguru's, and every stdlib handler's (the root
    logger's and uvicorn's, which uvicorn sets up when it starts). Idempotent."""
    logger.configure(patcher=_patch_loguru_record)
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access", "websockets", "aiohttp"):
        log = logging.getLogger(name)
        if _FILTER not in log.filters:
            log.addFilter(_FILTER)
        for handler in log.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)


def setup_logging(level: str = "INFO") -> None:
    """voicecore's log lines to stderr at ``level`` (INFO: model loading, call start/end — never
    call content), secrets redacted everywhere."""
    logger.remove()
    logger.add(sys.stderr, level=level, format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> {message}")
    install_log_redaction()
