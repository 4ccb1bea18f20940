"""Pure helpers the provider protocols share: strict JSON, base64 and auth-header parsing with
errors that name the field, and the small state machines (sequence numbers, reordering, marks)."""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import re
from collections import deque
from collections.abc import Mapping
from typing import Any, Final, Generic, TypeVar

from loguru import logger

from voicecore.telephony.events import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    DTMF_DIGITS,
    MAX_FRAME_BYTES,
    MarkPlayed,
    ProtocolError,
)

# --- small parsing helpers -------------------------------------------------------


def short_repr(value: object, limit: int = 48) -> str:
    """repr() of a value taken from input, shortened for log lines and reasons."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def check_frame_size(size: int) -> None:
    """Raise ``ProtocolError`` (1009) when a frame is larger than :data:`MAX_FRAME_BYTES`."""
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}", CLOSE_MESSAGE_TOO_BIG)


def _text_size(text: str) -> int:
    if len(text) * 4 <= MAX_FRAME_BYTES:  # cannot exceed the limit whatever the characters
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def parse_json_object(text: str) -> dict[str, Any]:
    """Parse a text frame that must hold one JSON object; ``ProtocolError`` (1007) otherwise."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", CLOSE_INVALID_PAYLOAD
        ) from None
    except RecursionError:
        raise ProtocolError("malformed JSON: nested too deeply", CLOSE_INVALID_PAYLOAD) from None
    if not isinstance(data, dict):
        raise ProtocolError(f"JSON message is {_json_type(data)}, expected an object", CLOSE_INVALID_PAYLOAD)
    return data


def decode_base64(value: str, path: str) -> bytes:
    """Strict base64 decoding; ``ProtocolError`` (1007) naming ``path`` on bad input."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"invalid base64 in {path}: {exc}", CLOSE_INVALID_PAYLOAD) from None


def encode_base64(data: bytes) -> str:
    """Standard base64 text for a JSON payload field."""
    return base64.b64encode(data).decode("ascii")


def dumps(message: Mapping[str, Any]) -> str:
    """Compact JSON for an outbound text frame."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def token_from_authorization(value: str) -> str:
    """The credential in an ``Authorization`` header: a Bearer token or a Basic password.

    Raises ``ProtocolError`` (1008) for malformed or unsupported credentials.
    """
    scheme, _, credentials = value.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        return credentials
    if scheme.lower() == "basic" and credentials:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise ProtocolError(
                "authorization header: Basic credentials are not valid base64 UTF-8", CLOSE_POLICY_VIOLATION
            ) from None
        _user, sep, password = decoded.partition(":")
        if not sep:
            raise ProtocolError(
                "authorization header: Basic credentials lack the ':' between user and password",
                CLOSE_POLICY_VIOLATION,
            )
        return password
    raise ProtocolError(
        f"authorization header: unsupported scheme {short_repr(scheme, 24)} (expected Bearer or Basic)",
        CLOSE_POLICY_VIOLATION,
    )


_INT_RE: Final = re.compile(r"-?\d{1,18}")


class JsonFields:
    """Typed access to one JSON object with error messages that name the field path.

    ``JsonFields(msg).get_obj("start").get_str("streamSid")`` raises
    ``ProtocolError("missing start.streamSid", 1007)`` when it is absent.
    JSON ``null`` counts as absent.
    """

    __slots__ = ("data", "path")

    def __init__(self, data: Mapping[str, Any], path: str = "") -> None:
        self.data = data
        self.path = path

    def field_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _get(self, key: str, required: bool) -> Any:
        value = self.data.get(key)
        if value is None and required:
            raise ProtocolError(f"missing {self.field_path(key)}", CLOSE_INVALID_PAYLOAD)
        return value

    def _wrong_type(self, key: str, expected: str, value: object) -> ProtocolError:
        return ProtocolError(
            f"{self.field_path(key)} must be {expected}, got {_json_type(value)}", CLOSE_INVALID_PAYLOAD
        )

    def get_str(self, key: str, *, required: bool = True, allow_empty: bool = False) -> str | None:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._wrong_type(key, "a string", value)
        if not value and not allow_empty:
            if required:
                raise ProtocolError(f"{self.field_path(key)} is empty", CLOSE_INVALID_PAYLOAD)
            return None
        return value

    def get_obj(self, key: str, *, required: bool = True) -> JsonFields | None:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._wrong_type(key, "an object", value)
        return JsonFields(value, self.field_path(key))

    def get_int(self, key: str, *, required: bool = False) -> int | None:
        """An integer given as a JSON number or a decimal string (Twilio sends strings)."""
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, bool):
            raise self._wrong_type(key, "an integer", value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
            return int(value)
        raise ProtocolError(
            f"{self.field_path(key)} must be an integer, got {short_repr(value)}", CLOSE_INVALID_PAYLOAD
        )

    def get_str_map(self, key: str) -> dict[str, str]:
        """An object whose values are strings (numbers are converted); absent → ``{}``."""
        obj = self.get_obj(key, required=False)
        if obj is None:
            return {}
        out: dict[str, str] = {}
        for name, value in obj.data.items():
            if isinstance(value, str):
                out[name] = value
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                out[name] = str(value)
            else:
                raise ProtocolError(
                    f"{obj.field_path(name)} must be a string, got {_json_type(value)}", CLOSE_INVALID_PAYLOAD
                )
        return out


def parse_dtmf_digit(value: str, path: str) -> str:
    digit = value.strip().upper()
    if digit not in DTMF_DIGITS:
        raise ProtocolError(f"{path} {short_repr(value)} is not a DTMF digit (0-9 * # A-D)", CLOSE_INVALID_PAYLOAD)
    return digit


# --- state helpers ---------------------------------------------------------------


class SequenceGuard:
    """Highest sequence number seen; tells whether a new one moves forward."""

    def __init__(self) -> None:
        self.last: int | None = None

    def advance(self, seq: int | None) -> bool:
        """True (and remember ``seq``) if it is greater than every number seen so far."""
        if seq is None:
            return True
        if self.last is not None and seq <= self.last:
            return False
        self.last = seq
        return True


T = TypeVar("T")


class ReorderBuffer(Generic[T]):
    """Puts items back in sequence order, holding at most ``window`` items for a gap.

    Items are released as soon as they are next in order, so in-order input is
    never delayed. When an item is missing, later ones wait until ``window``
    of them are held; then the gap is given up and the smallest is released.
    Items older than the last released one (late or duplicated) are refused.
    The first item seen sets the starting point.
    """

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._heap: list[tuple[int, int, T]] = []
        self._keys: set[int] = set()
        self._next: int | None = None
        self._counter = 0

    @property
    def held(self) -> int:
        return len(self._heap)

    def push(self, key: int, item: T) -> list[T] | None:
        """Items now releasable in order, or None when ``item`` is late or a duplicate."""
        if self._next is None:
            self._next = key
        if key < self._next or key in self._keys:
            return None
        heapq.heappush(self._heap, (key, self._counter, item))
        self._counter += 1
        self._keys.add(key)
        out: list[T] = []
        while self._heap:
            head = self._heap[0][0]
            if head == self._next or len(self._heap) > self.window:
                out.append(self._pop())
            else:
                break
        return out

    def drain(self) -> list[T]:
        """Release everything held, in order (end of stream)."""
        return [self._pop() for _ in range(len(self._heap))]

    def _pop(self) -> T:
        key, _, item = heapq.heappop(self._heap)
        self._keys.discard(key)
        self._next = key + 1
        return item


class MarkTracker:
    """Names of marks sent and not yet returned, and of those pending when we cleared."""

    def __init__(self, remember_cleared: int = 256) -> None:
        self.pending: deque[str] = deque()
        self.cleared: deque[str] = deque(maxlen=remember_cleared)

    def sent(self, name: str) -> None:
        self.pending.append(name)

    def on_clear(self) -> None:
        self.cleared.extend(self.pending)
        self.pending.clear()

    def played(self, name: str) -> MarkPlayed:
        if name in self.pending:
            self.pending.remove(name)
            return MarkPlayed(name)
        if name in self.cleared:
            self.cleared.remove(name)
            return MarkPlayed(name, cleared=True)
        logger.debug("mark {} returned but was not pending", short_repr(name))
        return MarkPlayed(name)

    def take_cleared(self) -> list[MarkPlayed]:
        out = [MarkPlayed(name, cleared=True) for name in self.cleared]
        self.cleared.clear()
        return out

    def take_pending(self) -> list[MarkPlayed]:
        out = [MarkPlayed(name) for name in self.pending]
        self.pending.clear()
        return out
