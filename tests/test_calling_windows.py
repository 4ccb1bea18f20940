"""Calling windows and the checks before every outbound dial (voicecore.outbound), with an injected clock.

Every instant is an aware datetime given to the functions; the expected local times were worked
out by hand from the IANA rules (Paris CET/CEST, New York EST/EDT, Nouméa UTC+11 all year).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from voicecore.outbound.checks import REFUSAL_REASONS, dial_decision
from voicecore.outbound.windows import (
    PRESETS,
    CallingWindowError,
    InvalidNumber,
    TimeRange,
    check_window,
    next_allowed_time,
    parse_window,
    resolve_callee,
)

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
NOUMEA = ZoneInfo("Pacific/Noumea")
BOISE = ZoneInfo("America/Boise")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")

PARIS_NUMBER = "+33142685300"  # a Paris landline (01)
NEW_YORK_NUMBER = "+12125550100"  # area code 212: America/New_York only
NOUMEA_NUMBER = "+687261234"  # New Caledonia: Pacific/Noumea
IDAHO_NUMBER = "+12085550100"  # area code 208: America/Boise and America/Los_Angeles (northern Idaho)
LOS_ANGELES_NUMBER = "+12135550100"  # area code 213: America/Los_Angeles only
TOLL_FREE_NUMBER = "+18005550100"  # NANP toll-free: every zone of the plan, Guam to Newfoundland
FREEPHONE_NUMBER = "+80012345678"  # international freephone: no zone (Etc/Unknown), no country

FR = PRESETS["fr-prospecting"]
TCPA = PRESETS["us-tcpa"]


def paris(*args: int) -> datetime:
    return datetime(*args, tzinfo=PARIS)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def decide(number: str, now: datetime, window=FR, **kw):
    return dial_decision(number, now=now, window=window, **kw)


# --------------------------------------------------------------------------- spec parsing


def test_spec_with_two_ranges_a_day():
    w = parse_window("mon-fri 10:00-13:00,14:00-20:00")
    ranges = (TimeRange(10 * 3600, 13 * 3600), TimeRange(14 * 3600, 20 * 3600))
    assert w.days == (ranges,) * 5 + ((), ())
    assert not w.skip_public_holidays
    assert w.spec == "mon-fri 10:00-13:00,14:00-20:00"


def test_spec_with_several_day_groups_single_days_daily_and_holidays_flag():
    w = parse_window("sat 10:00-12:00; mon-fri 09:00-18:00")
    assert w.days[5] == (TimeRange(36000, 43200),)
    assert w.days[0] == w.days[4] == (TimeRange(9 * 3600, 18 * 3600),)
    assert w.days[6] == ()
    assert w.spec == "mon-fri 09:00-18:00; sat 10:00-12:00"

    daily = parse_window("daily 08:00-21:00; no-holidays")
    assert all(day == (TimeRange(8 * 3600, 21 * 3600),) for day in daily.days)
    assert daily.skip_public_holidays
    assert daily.spec == "daily 08:00-21:00; no-holidays"

    single = parse_window("Wednesday 9:00 - 12:30, 13:30-17:00")  # case, spaces and full names are read
    assert [bool(d) for d in single.days] == [False, False, True, False, False, False, False]
    assert str(single.days[2][0]) == "09:00-12:30"

    wrapped = parse_window("fri-mon 10:00-24:00")  # wraps over the weekend; 24:00 ends the day
    assert [bool(d) for d in wrapped.days] == [True, False, False, False, True, True, True]
    assert wrapped.days[4] == (TimeRange(36000, 86400),)


def test_overlapping_clauses_merge_and_the_spec_reads_back_to_the_same_window():
    w = parse_window("mon-fri 09:00-12:00; mon 11:00-14:00, 16:00-17:00; weekends 10:00-11:00")
    assert w.days[0] == (TimeRange(9 * 3600, 14 * 3600), TimeRange(16 * 3600, 17 * 3600))
    assert w.days[1] == (TimeRange(9 * 3600, 12 * 3600),)
    assert parse_window(w.spec) == w


def test_presets_carry_their_rules_and_sources():
    assert parse_window("fr-prospecting") is FR
    assert FR.spec == "mon-fri 10:00-13:00,14:00-20:00; no-holidays"
    assert FR.max_attempts == 4 and FR.attempt_period == timedelta(days=30)
    assert "D223-9" in FR.source and "2022-1313" in FR.source
    assert TCPA.spec == "daily 08:00-21:00"
    assert not TCPA.skip_public_holidays and TCPA.max_attempts is None
    assert "64.1200(c)(1)" in TCPA.source
    # overriding a preset's holiday rule gives a plain window, no longer named after the law
    relaxed = parse_window("fr-prospecting", skip_public_holidays=False)
    assert relaxed.days == FR.days and not relaxed.skip_public_holidays and relaxed.name is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mon-fri 10:00-25:00", "bad time '25:00' in 'mon-fri 10:00-25:00'"),
        ("sat 10:00-12:00; mon-fri 09:60-18:00", "bad time '09:60' in 'mon-fri 09:60-18:00'"),
        ("mon 10-12", "bad time '10' in 'mon 10-12'"),
        ("mon-fry 10:00-12:00", "unknown day 'fry' in 'mon-fry 10:00-12:00'"),
        ("10:00-12:00", "no days before the times in '10:00-12:00'"),
        ("mon-fri", "no times after the days in 'mon-fri'"),
        ("mon 14:00-13:00", "time range '14:00-13:00' in 'mon 14:00-13:00' ends before it starts"),
        ("mon 10:00-10:00", "time range '10:00-10:00' in 'mon 10:00-10:00' ends before it starts"),
        ("mon 22:00-02:00", "cannot run past midnight"),
        ("mon 10:00", "bad time range '10:00' in 'mon 10:00'"),
        ("mon 10:00-11:00,", "empty time range in 'mon 10:00-11:00,'"),
        ("mon 24:00-24:00", "bad time '24:00' in 'mon 24:00-24:00' (a range cannot start at 24:00)"),
        ("  ", "empty calling window spec"),
        ("no-holidays", "names no days and times"),
        ("us-tcpa; no-holidays", "preset 'us-tcpa' cannot be combined"),
    ],
)
def test_bad_specs_name_the_bad_part(spec, message):
    with pytest.raises(CallingWindowError) as caught:
        parse_window(spec)
    assert message in str(caught.value)


# --------------------------------------------------------------------------- the callee's zones and holidays


def test_callee_zones_and_holiday_calendar_come_from_the_number():
    assert resolve_callee(PARIS_NUMBER).zones == ("Europe/Paris",)
    national = resolve_callee("01 42 68 53 00", default_region="FR")  # the tenant policy's phone_region
    assert national.e164 == PARIS_NUMBER and national.holiday_country == "FR"
    noumea = resolve_callee(NOUMEA_NUMBER)
    assert noumea.zones == ("Pacific/Noumea",) and noumea.holiday_country == "NC"
    assert resolve_callee(IDAHO_NUMBER).zones == ("America/Boise", "America/Los_Angeles")
    unknown = resolve_callee(FREEPHONE_NUMBER)
    assert unknown.zones == () and unknown.holiday_country is None
    with pytest.raises(InvalidNumber):
        resolve_callee("call me maybe")


# --------------------------------------------------------------------------- Paris, fr-prospecting


def test_paris_inside_and_outside_the_fr_prospecting_window_and_the_lunch_gap():
    thursday = (2026, 12, 3)
    for hm in [(10, 0, 0), (12, 59, 59), (14, 0, 0), (19, 59, 59)]:
        assert decide(PARIS_NUMBER, paris(*thursday, *hm)).allowed, hm
    for hm, next_at in [
        ((9, 59, 59), paris(*thursday, 10, 0)),
        ((13, 0, 0), paris(*thursday, 14, 0)),  # lunch gap
        ((13, 59, 0), paris(*thursday, 14, 0)),
        ((20, 0, 0), paris(2026, 12, 4, 10, 0)),
    ]:
        d = decide(PARIS_NUMBER, paris(*thursday, *hm))
        assert (d.allowed, d.reason, d.retry_at) == (False, "outside_window", next_at), hm
        assert "Europe/Paris" in d.message
    # the same instant as seen from another zone changes nothing: the callee's local time counts
    assert decide(PARIS_NUMBER, paris(*thursday, 11, 0).astimezone(NEW_YORK)).allowed


def test_friday_evening_in_paris_waits_for_monday_morning():
    got = next_allowed_time(FR, PARIS_NUMBER, paris(2026, 12, 4, 20, 30))
    assert got.at == paris(2026, 12, 7, 10, 0) and got.at.tzinfo is PARIS
    assert decide(PARIS_NUMBER, paris(2026, 12, 5, 11, 0)).reason == "outside_window"  # Saturday
    # a now in UTC gets its answer in UTC, the same instant
    assert next_allowed_time(FR, PARIS_NUMBER, utc(2026, 12, 4, 19, 30)).at == utc(2026, 12, 7, 9, 0)


@pytest.mark.parametrize(("day", "name"), [((2026, 7, 14), "National Day"), ((2026, 11, 11), "Armistice Day")])
def test_a_french_public_holiday_is_refused_by_fr_prospecting(day, name):
    d = decide(PARIS_NUMBER, paris(*day, 11, 0))
    assert (d.allowed, d.reason, d.holiday) == (False, "public_holiday", name)
    assert name in d.message and "FR" in d.message
    # the same weekday and hour a week later is fine, and a window without the flag calls on the holiday
    assert decide(PARIS_NUMBER, paris(*day, 11, 0) + timedelta(days=7)).allowed
    relaxed = parse_window("fr-prospecting", skip_public_holidays=False)
    assert decide(PARIS_NUMBER, paris(*day, 11, 0), window=relaxed).allowed


def test_the_day_before_a_holiday_the_next_slot_is_the_day_after():
    # Monday 13 July 2026 after 20:00 → Tuesday 14 July is the national day → Wednesday 10:00
    assert next_allowed_time(FR, PARIS_NUMBER, paris(2026, 7, 13, 20, 15)).at == paris(2026, 7, 15, 10, 0)
    # Tuesday 10 November 2026 at 20:15 → Wednesday 11 is Armistice Day → Thursday 12 at 10:00
    d = decide(PARIS_NUMBER, paris(2026, 11, 10, 20, 15))
    assert d.reason == "outside_window" and d.retry_at == paris(2026, 11, 12, 10, 0)
    # on the holiday itself the refusal names it and points at the next day
    d = decide(PARIS_NUMBER, paris(2026, 11, 11, 9, 0))
    assert d.reason == "public_holiday" and d.retry_at == paris(2026, 11, 12, 10, 0)


# --------------------------------------------------------------------------- New York, us-tcpa


def test_new_york_us_tcpa_2059_is_allowed_2100_is_not():
    ny = lambda *a: datetime(*a, tzinfo=NEW_YORK)  # noqa: E731
    assert decide(NEW_YORK_NUMBER, ny(2026, 6, 10, 20, 59), TCPA).allowed
    assert decide(NEW_YORK_NUMBER, ny(2026, 6, 10, 20, 59, 59), TCPA).allowed
    d = decide(NEW_YORK_NUMBER, ny(2026, 6, 10, 21, 0), TCPA)
    assert (d.allowed, d.reason, d.retry_at) == (False, "outside_window", ny(2026, 6, 11, 8, 0))
    assert decide(NEW_YORK_NUMBER, ny(2026, 6, 11, 7, 59), TCPA).reason == "outside_window"
    assert decide(NEW_YORK_NUMBER, ny(2026, 6, 11, 8, 0), TCPA).allowed
    # us-tcpa calls every day, public holidays included (4 July 2026 is a Saturday and a holiday)
    assert decide(NEW_YORK_NUMBER, ny(2026, 7, 4, 12, 0), TCPA).allowed
    # the same instant from Paris (03:00 the next day) is judged in New York
    assert decide(NEW_YORK_NUMBER, ny(2026, 6, 10, 20, 59).astimezone(PARIS), TCPA).allowed


# --------------------------------------------------------------------------- Nouméa


def test_noumea_is_judged_in_pacific_noumea_with_new_caledonia_holidays():
    # Friday 4 December 2026, 08:30 UTC = 19:30 in Nouméa (UTC+11), 09:30 in Paris
    at = utc(2026, 12, 4, 8, 30)
    assert decide(NOUMEA_NUMBER, at).allowed
    assert not decide(PARIS_NUMBER, at).allowed
    # 09:30 UTC = 20:30 in Nouméa (closed) but 10:30 in Paris (open)
    d = decide(NOUMEA_NUMBER, utc(2026, 12, 4, 9, 30))
    assert d.reason == "outside_window" and "Pacific/Noumea" in d.message
    assert d.retry_at == datetime(2026, 12, 7, 10, 0, tzinfo=NOUMEA)  # Monday in Nouméa = Sunday 23:00 UTC
    assert decide(PARIS_NUMBER, utc(2026, 12, 4, 9, 30)).allowed
    # Citizenship Day (24 September, New Caledonia only): refused in Nouméa, an ordinary Thursday in Paris
    d = decide(NOUMEA_NUMBER, datetime(2026, 9, 24, 11, 0, tzinfo=NOUMEA))
    assert (d.reason, d.holiday) == ("public_holiday", "Citizenship Day")
    assert decide(PARIS_NUMBER, paris(2026, 9, 24, 11, 0)).allowed


# --------------------------------------------------------------------------- several zones


def test_a_number_with_two_zones_must_be_inside_the_window_in_both():
    # 21:30 in Boise is 20:30 in Los Angeles: inside us-tcpa for LA, outside for Boise → refused
    at = datetime(2026, 6, 10, 21, 30, tzinfo=BOISE)
    assert decide(LOS_ANGELES_NUMBER, at, TCPA).allowed
    d = decide(IDAHO_NUMBER, at, TCPA)
    assert (d.allowed, d.reason) == (False, "outside_window") and "America/Boise" in d.message
    assert d.zones == ("America/Boise", "America/Los_Angeles")
    # next morning the later zone opens last: 08:00 in Los Angeles (09:00 in Boise)
    assert d.retry_at == datetime(2026, 6, 11, 8, 0, tzinfo=LOS_ANGELES)
    early = decide(IDAHO_NUMBER, datetime(2026, 6, 11, 7, 30, tzinfo=LOS_ANGELES), TCPA)
    assert early.reason == "outside_window" and "America/Los_Angeles" in early.message
    assert decide(IDAHO_NUMBER, datetime(2026, 6, 11, 8, 0, tzinfo=LOS_ANGELES), TCPA).allowed


def test_a_toll_free_number_in_every_zone_of_the_plan_is_called_only_when_all_are_open():
    callee = resolve_callee(TOLL_FREE_NUMBER)
    assert len(callee.zones) > 30 and "Pacific/Guam" in callee.zones and "America/St_Johns" in callee.zones
    now = utc(2026, 6, 10, 12, 0)
    got = next_allowed_time(TCPA, callee, now)
    assert got.at is not None and got.at > now
    for zone in callee.zones:  # at that instant every zone is between 08:00 and 21:00
        assert 8 <= got.at.astimezone(ZoneInfo(zone)).hour < 21, zone
    assert not check_window(TCPA, callee, got.at - timedelta(seconds=1)).allowed  # and a second earlier, not yet
    # a one-hour window cannot be open in Guam and Honolulu at once: never, said plainly
    never = next_allowed_time(parse_window("daily 10:00-11:00"), callee, now)
    assert never.at is None and never.reason == "outside_window" and "next 14 days" in never.message
    d = decide(TOLL_FREE_NUMBER, now, "daily 10:00-11:00")
    assert d.reason == "outside_window" and d.retry_at is None and "never" in d.message


def test_an_unknown_zone_is_refused_unless_a_fallback_zone_is_given():
    now = paris(2026, 12, 3, 11, 0)
    d = decide(FREEPHONE_NUMBER, now, TCPA)
    assert (d.allowed, d.reason, d.retry_at) == (False, "unknown_time_zone", None)
    assert "fallback zone" in d.message
    assert next_allowed_time(TCPA, FREEPHONE_NUMBER, now).reason == "unknown_time_zone"
    fallback = decide(FREEPHONE_NUMBER, now, TCPA, fallback_zone="Europe/Paris")
    assert fallback.allowed and fallback.zones == ("Europe/Paris",) and "fallback" in fallback.notes[0]
    assert decide(FREEPHONE_NUMBER, paris(2026, 12, 3, 22, 0), TCPA, fallback_zone="Europe/Paris").reason == (
        "outside_window"
    )
    # no country, no holiday calendar: a window that skips holidays cannot be judged
    d = decide(FREEPHONE_NUMBER, now, FR, fallback_zone="Europe/Paris")
    assert d.reason == "unknown_holidays"
    with pytest.raises(CallingWindowError, match="unknown time zone 'Europe/Pariss'"):
        resolve_callee(FREEPHONE_NUMBER, fallback_zone="Europe/Pariss")


# --------------------------------------------------------------------------- clock changes


def test_paris_spring_forward_2026_03_29():
    # 02:00 CET → 03:00 CEST at 01:00 UTC. Saturday 21:00 CET → Sunday 10:00 CEST is 08:00 UTC, not 09:00
    daily = parse_window("daily 10:00-20:00")
    assert next_allowed_time(daily, PARIS_NUMBER, paris(2026, 3, 28, 21, 0)).at == utc(2026, 3, 29, 8, 0)
    assert not decide(PARIS_NUMBER, utc(2026, 3, 29, 7, 59, 59), daily).allowed
    assert decide(PARIS_NUMBER, utc(2026, 3, 29, 8, 0), daily).allowed
    # a window that starts inside the skipped hour opens when the clock jumps (03:00 CEST)
    gap = parse_window("daily 02:30-04:00")
    assert next_allowed_time(gap, PARIS_NUMBER, utc(2026, 3, 28, 23, 0)).at == utc(2026, 3, 29, 1, 0)
    # fr-prospecting: Friday 27 March 20:30 CET → Monday 30 March 10:00 CEST = 08:00 UTC
    assert next_allowed_time(FR, PARIS_NUMBER, paris(2026, 3, 27, 20, 30)).at == utc(2026, 3, 30, 8, 0)


def test_paris_fall_back_2026_10_25():
    # 03:00 CEST → 02:00 CET at 01:00 UTC: 02:00-02:59 happens twice
    gap = parse_window("daily 02:30-04:00")
    assert decide(PARIS_NUMBER, utc(2026, 10, 25, 0, 45), gap).allowed  # 02:45 CEST
    d = decide(PARIS_NUMBER, utc(2026, 10, 25, 1, 10), gap)  # 02:10 CET, the second time round
    assert d.reason == "outside_window" and d.retry_at == utc(2026, 10, 25, 1, 30)  # 02:30 CET
    # Sunday 10:00 CET is 09:00 UTC; fr-prospecting from Friday 23 October 20:30 CEST → Monday 10:00 CET
    assert next_allowed_time(parse_window("daily 10:00-20:00"), PARIS_NUMBER, paris(2026, 10, 24, 21, 0)).at == utc(
        2026, 10, 25, 9, 0
    )
    assert next_allowed_time(FR, PARIS_NUMBER, paris(2026, 10, 23, 20, 30)).at == utc(2026, 10, 26, 9, 0)


def test_new_york_spring_forward_2026_03_08():
    # 02:00 EST → 03:00 EDT at 07:00 UTC. Saturday 21:00 EST (02:00 UTC) → Sunday 08:00 EDT = 12:00 UTC
    assert next_allowed_time(TCPA, NEW_YORK_NUMBER, utc(2026, 3, 8, 2, 0)).at == utc(2026, 3, 8, 12, 0)
    assert not decide(NEW_YORK_NUMBER, utc(2026, 3, 8, 11, 59), TCPA).allowed  # 07:59 EDT
    assert decide(NEW_YORK_NUMBER, utc(2026, 3, 8, 12, 0), TCPA).allowed
    assert decide(NEW_YORK_NUMBER, utc(2026, 3, 9, 0, 59), TCPA).allowed  # 20:59 EDT
    d = decide(NEW_YORK_NUMBER, utc(2026, 3, 9, 1, 0), TCPA)  # 21:00 EDT
    assert d.reason == "outside_window" and d.retry_at == utc(2026, 3, 9, 12, 0)


# --------------------------------------------------------------------------- the other checks and their order


def test_opt_out_and_restriction_refuse_whatever_the_time():
    inside = paris(2026, 12, 3, 11, 0)
    d = decide(PARIS_NUMBER, inside, opted_out=True)
    assert (d.allowed, d.reason, d.retry_at) == (False, "opted_out", None) and "opt-out" in d.message
    assert decide(PARIS_NUMBER, inside, restricted=True).reason == "opted_out"
    # opt-out comes before the window, the attempt cap and concurrency
    d = decide(PARIS_NUMBER, paris(2026, 7, 14, 22, 0), opted_out=True, attempts=9, active_calls=9, max_concurrent=1)
    assert d.reason == "opted_out"


def test_invalid_numbers_are_refused_first():
    inside = paris(2026, 12, 3, 11, 0)
    for bad in ["", "hello", "+33 1"]:
        d = decide(bad, inside, opted_out=True)
        assert (d.allowed, d.reason, d.e164) == (False, "invalid_number", None), bad
    assert decide("01 42 68 53 00", inside, default_region="FR").e164 == PARIS_NUMBER
    d = decide("01 42 68 53 00", inside)  # read as a US number: ten digits, but no US number starts with 0
    assert d.reason == "invalid_number" and "numbering plan" in d.message


def test_attempt_cap_of_fr_prospecting_counts_the_last_30_days():
    now = paris(2026, 12, 4, 11, 0)  # Friday, inside the window
    old = paris(2026, 11, 4, 10, 59)  # just over 30 days ago: does not count
    recent = [paris(2026, 11, d, 10, 30) for d in (5, 10, 15)]
    assert decide(PARIS_NUMBER, now, attempts=[old, *recent]).allowed
    four = [*recent, paris(2026, 11, 20, 10, 30)]
    d = decide(PARIS_NUMBER, now, attempts=[old, *four])
    assert (d.allowed, d.reason) == (False, "attempt_cap") and "4 attempts" in d.message
    # the 5 November attempt leaves the period on Saturday 5 December 10:30; the window opens Monday
    assert d.retry_at == paris(2026, 12, 7, 10, 0)
    assert decide(PARIS_NUMBER, now, attempts=4).reason == "attempt_cap"
    assert decide(PARIS_NUMBER, now, attempts=3).allowed
    # a campaign may lower the legal cap, not raise it
    assert decide(PARIS_NUMBER, now, attempts=2, max_attempts=2).reason == "attempt_cap"
    assert decide(PARIS_NUMBER, now, attempts=4, max_attempts=10).reason == "attempt_cap"
    # the cap comes before the window: a capped contact is not rescheduled to the next slot
    assert decide(PARIS_NUMBER, paris(2026, 12, 5, 11, 0), attempts=4).reason == "attempt_cap"
    # no window: the campaign's own cap still applies, over 30 days
    d = decide(PARIS_NUMBER, now, window=None, attempts=[paris(2026, 11, 10, 9, 0)], max_attempts=1)
    assert d.reason == "attempt_cap" and d.retry_at == paris(2026, 12, 10, 9, 0)
    assert decide(PARIS_NUMBER, now, window=None, attempts=50).allowed  # no cap anywhere


def test_concurrency_is_checked_last():
    inside = paris(2026, 12, 3, 11, 0)
    d = decide(PARIS_NUMBER, inside, active_calls=5, max_concurrent=5)
    assert (d.allowed, d.reason) == (False, "concurrency") and "5 calls in progress" in d.message
    assert decide(PARIS_NUMBER, inside, active_calls=4, max_concurrent=5).allowed
    assert decide(PARIS_NUMBER, paris(2026, 12, 3, 13, 30), active_calls=5, max_concurrent=5).reason == "outside_window"


def test_an_allowed_dial_says_so_and_every_reason_is_known():
    d = decide(PARIS_NUMBER, paris(2026, 12, 3, 11, 0), attempts=3, active_calls=1, max_concurrent=2)
    assert (d.allowed, d.reason, d.message, d.e164, d.zones) == (True, None, "allowed", PARIS_NUMBER, ("Europe/Paris",))
    assert set(REFUSAL_REASONS) == {
        "invalid_number",
        "opted_out",
        "attempt_cap",
        "unknown_time_zone",
        "unknown_holidays",
        "public_holiday",
        "outside_window",
        "concurrency",
    }


def test_the_clock_must_be_aware():
    with pytest.raises(ValueError, match="aware"):
        dial_decision(PARIS_NUMBER, now=datetime(2026, 12, 3, 11, 0), window=FR)
    with pytest.raises(ValueError, match="aware"):
        next_allowed_time(FR, PARIS_NUMBER, datetime(2026, 12, 3, 11, 0))
    with pytest.raises(ValueError, match="aware"):
        dial_decision(PARIS_NUMBER, now=paris(2026, 12, 3, 11, 0), window=FR, attempts=[datetime(2026, 12, 1)])
