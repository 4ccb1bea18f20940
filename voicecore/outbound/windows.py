"""Calling windows: when a callee may be dialed, in the callee's own local time.

Pure decisions (no clock, no storage, no I/O): every function takes the instant it judges
(``now``, an aware datetime) from its caller.

* :func:`parse_window` reads a window spec — ``"mon-fri 10:00-13:00,14:00-20:00"``,
  ``"sat 10:00-12:00; mon-fri 09:00-18:00"``, ``"daily 08:00-21:00; no-holidays"`` — or the
  name of a built-in preset (:data:`PRESETS`: ``fr-prospecting``, ``us-tcpa``).
* :func:`resolve_callee` finds a number's time zones (``phonenumbers.timezone``) and the
  country whose public holidays apply (the ``holidays`` package).
* :func:`check_window` judges one instant; a number with several zones must be inside the
  window in all of them.
* :func:`next_allowed_time` gives the earliest instant ≥ now when a dial is allowed, so a
  dialer can schedule instead of polling.

Times of day are half-open: ``10:00-13:00`` allows 10:00:00 up to 12:59:59, and
``08:00-21:00`` refuses 21:00 sharp (47 CFR 64.1200(c)(1): "after 9 p.m.").
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
import phonenumbers
from phonenumbers import timezone as phone_timezone

from voicecore.policy.phone import InvalidPhoneNumber, parse_phone


class CallingWindowError(ValueError):
    """A calling window spec that cannot be read; the message names the bad part."""


class InvalidNumber(ValueError):
    """The callee's number cannot be read as a possible phone number."""


DAY_NAMES: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_ALIASES: dict[str, tuple[int, ...]] = {
    "daily": tuple(range(7)),
    "everyday": tuple(range(7)),
    "weekdays": (0, 1, 2, 3, 4),
    "weekends": (5, 6),
}
_NO_HOLIDAYS = ("no-holidays", "skip-holidays")
_HOLIDAYS_ALLOWED = ("holidays",)
_DAY_SECONDS = 86400
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")
UNKNOWN_ZONE = "Etc/Unknown"  # what phonenumbers answers for a number it cannot place
DEFAULT_HORIZON = timedelta(days=14)
ATTEMPT_PERIOD = timedelta(days=30)


@dataclass(frozen=True, order=True)
class TimeRange:
    """Seconds of the local day, half-open: ``start <= t < end`` (end may be 86400, i.e. 24:00)."""

    start: int
    end: int

    def __contains__(self, seconds: object) -> bool:
        return isinstance(seconds, int) and self.start <= seconds < self.end

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"


@dataclass(frozen=True)
class CallingWindow:
    """When calls are allowed, per local weekday (Monday first), plus the rules that come with it."""

    days: tuple[tuple[TimeRange, ...], ...]  # 7 entries, Monday..Sunday; () means closed all day
    skip_public_holidays: bool = False
    max_attempts: int | None = None  # per callee within attempt_period (None: the window sets no cap)
    attempt_period: timedelta = ATTEMPT_PERIOD
    name: str | None = None  # preset name
    source: str | None = None  # the rule a preset implements

    def __post_init__(self) -> None:
        if len(self.days) != 7:
            raise CallingWindowError("a calling window needs an entry for each of the 7 weekdays")
        if not any(self.days):
            raise CallingWindowError("the calling window allows no time at all")

    def ranges_on(self, weekday: int) -> tuple[TimeRange, ...]:
        return self.days[weekday]

    def open_at(self, local: datetime) -> bool:
        """Whether the local wall time (weekday and time of day) is inside the window."""
        seconds = local.hour * 3600 + local.minute * 60 + local.second
        return any(seconds in r for r in self.days[local.weekday()])

    @property
    def spec(self) -> str:
        """The window as spec text, consecutive days with the same hours grouped (parses back to itself)."""
        clauses: list[str] = []
        day = 0
        while day < 7:
            ranges = self.days[day]
            last = day
            while last + 1 < 7 and self.days[last + 1] == ranges:
                last += 1
            if ranges:
                days = DAY_NAMES[day] if last == day else f"{DAY_NAMES[day]}-{DAY_NAMES[last]}"
                if day == 0 and last == 6:
                    days = "daily"
                clauses.append(f"{days} {','.join(str(r) for r in ranges)}")
            day = last + 1
        if self.skip_public_holidays:
            clauses.append(_NO_HOLIDAYS[0])
        return "; ".join(clauses)

    def __str__(self) -> str:
        return self.name or self.spec


# --------------------------------------------------------------------------- parsing


def _hhmm(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def _parse_time(text: str, clause: str) -> int:
    match = _TIME.match(text)
    if match is None:
        raise CallingWindowError(f"bad time '{text}' in '{clause}' (use HH:MM, e.g. 09:30)")
    hours, minutes = int(match.group(1)), int(match.group(2))
    if hours > 24 or minutes > 59 or (hours == 24 and minutes != 0):
        raise CallingWindowError(f"bad time '{text}' in '{clause}'")
    return hours * 3600 + minutes * 60


def _parse_ranges(text: str, clause: str) -> list[TimeRange]:
    ranges: list[TimeRange] = []
    for part in text.split(","):
        if not part:
            raise CallingWindowError(f"empty time range in '{clause}'")
        pieces = part.split("-")
        if len(pieces) != 2:
            raise CallingWindowError(f"bad time range '{part}' in '{clause}' (use HH:MM-HH:MM)")
        start, end = _parse_time(pieces[0], clause), _parse_time(pieces[1], clause)
        if start == _DAY_SECONDS:
            raise CallingWindowError(f"bad time '{pieces[0]}' in '{clause}' (a range cannot start at 24:00)")
        if end <= start:
            raise CallingWindowError(
                f"time range '{part}' in '{clause}' ends before it starts "
                "(a window cannot run past midnight: split it into two days)"
            )
        ranges.append(TimeRange(start, end))
    return ranges


def _day_index(name: str, clause: str) -> int:
    if name in DAY_NAMES:
        return DAY_NAMES.index(name)
    if name in _FULL_DAY_NAMES:
        return _FULL_DAY_NAMES.index(name)
    raise CallingWindowError(f"unknown day '{name}' in '{clause}' (use mon, tue, wed, thu, fri, sat, sun)")


def _parse_days(text: str, clause: str) -> list[int]:
    days: list[int] = []
    for part in text.split(","):
        if part in _DAY_ALIASES:
            days.extend(_DAY_ALIASES[part])
        elif "-" in part:
            first, _, last = part.partition("-")
            a, b = _day_index(first, clause), _day_index(last, clause)
            # "fri-mon" wraps over the weekend: fri, sat, sun, mon
            days.extend((a + i) % 7 for i in range((b - a) % 7 + 1))
        elif part:
            days.append(_day_index(part, clause))
        else:
            raise CallingWindowError(f"empty day in '{clause}'")
    return days


def _merge(ranges: Iterable[TimeRange]) -> tuple[TimeRange, ...]:
    merged: list[TimeRange] = []
    for r in sorted(ranges):
        if merged and r.start <= merged[-1].end:
            merged[-1] = TimeRange(merged[-1].start, max(merged[-1].end, r.end))
        else:
            merged.append(r)
    return tuple(merged)


def parse_window(spec: str, *, skip_public_holidays: bool | None = None) -> CallingWindow:
    """A :class:`CallingWindow` from spec text or a preset name (see :data:`PRESETS`).

    Clauses are separated by ``;``. A clause is days then comma-separated ``HH:MM-HH:MM``
    ranges: days are ``mon``..``sun`` (or full names), ranges ``mon-fri`` (``fri-mon`` wraps),
    comma lists ``mon,wed``, or ``daily``/``weekdays``/``weekends``. A day named in several
    clauses gets the union of their ranges. The clause ``no-holidays`` forbids calls on the
    callee's public holidays (``holidays`` says they are allowed, the default).
    ``skip_public_holidays`` overrides what the spec (or preset) says.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise CallingWindowError("empty calling window spec")
    text = " ".join(spec.split()).lower()
    if text in PRESETS:
        window = PRESETS[text]
    else:
        per_day: list[list[TimeRange]] = [[] for _ in range(7)]
        skip = False
        for raw_clause in text.split(";"):
            clause = raw_clause.strip()
            if not clause:
                continue
            if clause in _NO_HOLIDAYS:
                skip = True
                continue
            if clause in _HOLIDAYS_ALLOWED:
                skip = False
                continue
            first_digit = re.search(r"\d", clause)
            split = first_digit.start() if first_digit else len(clause)
            days_text, times_text = clause[:split].replace(" ", ""), clause[split:].replace(" ", "")
            if not days_text:
                raise CallingWindowError(f"no days before the times in '{clause}' (e.g. 'mon-fri {clause}')")
            if not times_text:
                if days_text in PRESETS:
                    raise CallingWindowError(f"preset '{days_text}' cannot be combined with other clauses in '{spec}'")
                raise CallingWindowError(f"no times after the days in '{clause}' (e.g. '{clause} 09:00-18:00')")
            ranges = _parse_ranges(times_text, clause)
            for day in _parse_days(days_text, clause):
                per_day[day].extend(ranges)
        if not any(per_day):
            raise CallingWindowError(f"the calling window '{spec}' names no days and times")
        window = CallingWindow(days=tuple(_merge(r) for r in per_day), skip_public_holidays=skip)
    if skip_public_holidays is not None and skip_public_holidays != window.skip_public_holidays:
        window = CallingWindow(
            days=window.days,
            skip_public_holidays=skip_public_holidays,
            max_attempts=window.max_attempts,
            attempt_period=window.attempt_period,
        )  # no longer the preset: name and source dropped
    return window


def _preset(name: str, spec: str, source: str, *, max_attempts: int | None = None) -> CallingWindow:
    base = parse_window(spec)
    return CallingWindow(
        days=base.days,
        skip_public_holidays=base.skip_public_holidays,
        max_attempts=max_attempts,
        name=name,
        source=source,
    )


PRESETS: dict[str, CallingWindow] = {}

# France, commercial prospecting by telephone: Code de la consommation art. D223-9 (created by
# décret n° 2022-1313 du 13 octobre 2022, in force since 1 March 2023): Monday to Friday, except
# public holidays under art. L3133-1 of the Code du travail, 10:00-13:00 and 14:00-20:00 in the
# consumer's time zone; the same professional may not call or try to call the same consumer more
# than four times in 30 calendar days (and not again for 60 days after a refusal: that is the
# do-not-call list's business, see voicecore.policy.optout). Calls outside these hours need the
# consumer's prior express consent, which is not this preset's case.
PRESETS["fr-prospecting"] = _preset(
    "fr-prospecting",
    "mon-fri 10:00-13:00,14:00-20:00; no-holidays",
    "Code de la consommation art. D223-9 (décret n° 2022-1313 du 13 octobre 2022)",
    max_attempts=4,
)

# United States, telephone solicitation: 47 CFR § 64.1200(c)(1) (TCPA rules): not before 8 a.m. or
# after 9 p.m., local time at the called party's location, every day. Several states are stricter
# (e.g. Florida's Telephone Solicitation Act: 8 a.m. to 8 p.m.): give such campaigns their own window.
PRESETS["us-tcpa"] = _preset(
    "us-tcpa",
    "daily 08:00-21:00",
    "47 CFR 64.1200(c)(1) (TCPA): no solicitation before 8 a.m. or after 9 p.m. at the called party's location",
)


# --------------------------------------------------------------------------- the callee


@dataclass(frozen=True)
class Callee:
    """What the window checks need to know about a number: its zones and its public holidays."""

    e164: str
    region: str  # libphonenumber region ("FR", "NC", "US"; "001" for non-geographic numbers)
    zones: tuple[str, ...]  # IANA zones the number may be in; () when unknown and no fallback
    holiday_country: str | None  # a country code of the holidays package, None when it has none
    holiday_subdiv: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)  # what was assumed (fallback zone, ...)


@functools.lru_cache(maxsize=1024)
def _holiday_calendar(region: str) -> tuple[str | None, str | None]:
    supported = holidays.list_supported_countries()
    if region in supported:
        # French overseas collectivities and departments (NC New Caledonia, PF, RE, GP, MQ, ...) have
        # their own libphonenumber region, and the holidays package offers each as a country of its
        # own, with the local days (e.g. NC's Citizenship Day, 24 September) on top of France's.
        return region, None
    if region in supported.get("FR", ()):  # a French subdivision the package has only under FR
        return "FR", region
    return None, None


def resolve_callee(number: str, *, default_region: str = "US", fallback_zone: str | None = None) -> Callee:
    """The callee's time zones and holiday calendar from the number.

    ``default_region`` (the tenant policy's ``phone_region``) reads numbers written without a
    country code. A number phonenumbers cannot place (``Etc/Unknown``: e.g. +800 international
    freephone) gets ``fallback_zone`` if one is given, else no zone (every window check refuses
    it). Raises :class:`InvalidNumber` when the text is not a valid phone number (a dialer does
    not dial a number outside its country's numbering plan).
    """
    try:
        parsed = parse_phone(number, default_region)
    except InvalidPhoneNumber as e:
        raise InvalidNumber(str(e)) from None
    if not phonenumbers.is_valid_number(parsed):  # possible length, but no number range of the plan
        raise InvalidNumber("not a number in use in its country's numbering plan")
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    region = phonenumbers.region_code_for_number(parsed) or "ZZ"
    zones = tuple(z for z in phone_timezone.time_zones_for_number(parsed) if z != UNKNOWN_ZONE)
    notes: list[str] = []
    if not zones and fallback_zone is not None:
        _zone(fallback_zone)  # a typo fails here, not at the first dial
        zones = (fallback_zone,)
        notes.append(f"time zone of {e164} unknown, using the fallback zone {fallback_zone}")
    country, subdiv = _holiday_calendar(region)
    return Callee(e164, region, zones, country, subdiv, tuple(notes))


@functools.lru_cache(maxsize=None)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CallingWindowError(f"unknown time zone '{name}'") from None


@functools.lru_cache(maxsize=256)
def _holidays_for(country: str, subdiv: str | None, year: int) -> dict[date, str]:
    calendar = holidays.country_holidays(country, subdiv=subdiv, years=year)
    language = "en_US" if "en_US" in getattr(calendar, "supported_languages", ()) else None
    if language is not None:
        calendar = holidays.country_holidays(country, subdiv=subdiv, years=year, language=language)
    return dict(calendar.items())  # a plain copy: the package's object grows on lookups of other years


def public_holiday(callee: Callee, day: date) -> str | None:
    """The name of the callee's public holiday on that local date, or ``None``."""
    if callee.holiday_country is None:
        return None
    return _holidays_for(callee.holiday_country, callee.holiday_subdiv, day.year).get(day)


# --------------------------------------------------------------------------- judging an instant


@dataclass(frozen=True)
class WindowVerdict:
    """Whether the window allows a dial at one instant; when not, a reason code and a sentence."""

    allowed: bool
    reason: str | None = None  # unknown_time_zone | unknown_holidays | public_holiday | outside_window
    message: str = ""
    zone: str | None = None  # the zone that refused
    holiday: str | None = None


def _require_aware(moment: datetime, name: str = "now") -> None:
    if not isinstance(moment, datetime) or moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime (with a time zone)")


def check_window(window: CallingWindow, callee: Callee, at: datetime) -> WindowVerdict:
    """Judge one instant: public holidays first (when the window skips them), then the hours, in every zone."""
    _require_aware(at, "at")
    if not callee.zones:
        return WindowVerdict(
            False,
            "unknown_time_zone",
            f"the time zone of {callee.e164} is unknown (region {callee.region}); "
            "give the campaign a fallback zone to call such numbers",
        )
    locals_ = [(zone, at.astimezone(_zone(zone))) for zone in callee.zones]
    if window.skip_public_holidays:
        if callee.holiday_country is None:
            return WindowVerdict(
                False,
                "unknown_holidays",
                f"the window skips public holidays, but no holiday calendar is known for region {callee.region}",
            )
        for zone, local in locals_:
            name = public_holiday(callee, local.date())
            if name is not None:
                return WindowVerdict(
                    False,
                    "public_holiday",
                    f"{local.date().isoformat()} is a public holiday in {callee.holiday_country} ({name}) "
                    f"in {zone}, and the window {window} skips public holidays",
                    zone=zone,
                    holiday=name,
                )
    for zone, local in locals_:
        if not window.open_at(local):
            return WindowVerdict(
                False,
                "outside_window",
                f"{local.strftime('%A %H:%M')} in {zone} is outside the calling window {window.spec}",
                zone=zone,
            )
    return WindowVerdict(True)


# --------------------------------------------------------------------------- the next allowed instant


@dataclass(frozen=True)
class NextAllowed:
    """The earliest instant a dial is allowed (``at``, in ``now``'s time zone), or ``None`` with why not."""

    at: datetime | None
    reason: str | None = None  # set when at is None: the code of what blocks every candidate
    message: str = ""


def _transition(zone: ZoneInfo, lo: datetime, hi: datetime) -> datetime:
    """The first UTC second in (lo, hi] whose UTC offset in ``zone`` differs from lo's (one is known to exist)."""
    before = lo.astimezone(zone).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        mid = mid.replace(microsecond=0)
        if mid <= lo:
            mid = lo + timedelta(seconds=1)
        if mid.astimezone(zone).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return hi


def _candidates(window: CallingWindow, zones: Iterable[str], now: datetime, end: datetime) -> list[datetime]:
    """Every instant in [now, end] at which the allowed time of some zone can begin.

    The allowed set of one zone begins where a window range starts in local time (both readings
    of a repeated hour), or where a clock change jumps into a range (a start inside a
    spring-forward gap). The intersection over zones begins at one of these instants, so checking
    them in order finds the earliest allowed one without scanning minute by minute.
    """
    found = {now}
    for name in zones:
        zone = _zone(name)
        day = now.astimezone(zone).date() - timedelta(days=1)
        last = end.astimezone(zone).date() + timedelta(days=1)
        while day <= last:
            for r in window.ranges_on(day.weekday()):
                naive = datetime.combine(day, time(r.start // 3600, r.start % 3600 // 60))
                for fold in (0, 1):
                    found.add(naive.replace(tzinfo=zone, fold=fold).astimezone(UTC))
            midnight = datetime.combine(day, time()).replace(tzinfo=zone).astimezone(UTC)
            next_midnight = datetime.combine(day + timedelta(days=1), time()).replace(tzinfo=zone).astimezone(UTC)
            if midnight.astimezone(zone).utcoffset() != next_midnight.astimezone(zone).utcoffset():
                found.add(_transition(zone, midnight, next_midnight))
            day += timedelta(days=1)
    return sorted(c for c in found if now <= c <= end)


def next_allowed_time(
    window: CallingWindow,
    number: str | Callee,
    now: datetime,
    *,
    default_region: str = "US",
    fallback_zone: str | None = None,
    horizon: timedelta = DEFAULT_HORIZON,
) -> NextAllowed:
    """The earliest instant ≥ ``now`` at which ``window`` allows dialing ``number`` in all its zones.

    Searches up to ``horizon`` ahead (14 days by default); when nothing in it is allowed (the
    zones never share an open hour, every day is a holiday, the zone or holiday calendar is
    unknown, the number is invalid) ``at`` is ``None`` and ``reason``/``message`` say why.
    """
    _require_aware(now)
    if isinstance(number, Callee):
        callee = number
    else:
        try:
            callee = resolve_callee(number, default_region=default_region, fallback_zone=fallback_zone)
        except InvalidNumber as exc:
            return NextAllowed(None, "invalid_number", f"{number!r} cannot be dialed: {exc}")
    first = check_window(window, callee, now)
    if first.allowed:
        return NextAllowed(now)
    if first.reason in ("unknown_time_zone", "unknown_holidays"):
        return NextAllowed(None, first.reason, first.message)
    start = now.astimezone(UTC)
    end = start + horizon
    for candidate in _candidates(window, callee.zones, start, end):
        if check_window(window, callee, candidate).allowed:
            return NextAllowed(candidate.astimezone(now.tzinfo))
    return NextAllowed(
        None,
        "outside_window",
        f"no instant in the next {horizon.days} days is inside the window {window.spec} "
        f"in all of {', '.join(callee.zones)}" + (" outside public holidays" if window.skip_public_holidays else ""),
    )


__all__ = [
    "ATTEMPT_PERIOD",
    "DAY_NAMES",
    "DEFAULT_HORIZON",
    "PRESETS",
    "CallingWindow",
    "CallingWindowError",
    "Callee",
    "InvalidNumber",
    "NextAllowed",
    "TimeRange",
    "WindowVerdict",
    "check_window",
    "next_allowed_time",
    "parse_window",
    "public_holiday",
    "resolve_callee",
]
