"""SCHEDULE entries: parsing, one problem per bad entry, and when ticks fall (time zones, DST)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from conveyor.options import parse_options
from conveyor.schedule import ScheduleEntry, parse_schedule

GOOD = {"name": "nightly", "task": "tests.tasks.noop_task", "cron": "30 2 * * *"}


def ms(*parts: int) -> int:
    return int(datetime(*parts, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


def utc(moment_ms: int) -> str:
    return datetime.fromtimestamp(moment_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def ticks(entry: ScheduleEntry, start_ms: int, count: int) -> list[str]:
    out, moment = [], start_ms
    for _ in range(count):
        moment = entry.next_after(moment, moment)
        out.append(utc(moment))
    return out


def test_a_good_entry_parses_with_its_defaults() -> None:
    (entry,), problems = parse_schedule([GOOD])
    assert problems == []
    assert entry == ScheduleEntry(name="nightly", task="tests.tasks.noop_task", cron="30 2 * * *", kwargs={})
    assert (entry.timezone, entry.catch_up, entry.skip_if_pending, entry.queue, entry.priority) == (
        "UTC",
        "once",
        False,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"bogus": 1}, "unknown field(s) bogus"),
        ({"cron": "61 * * * *"}, "is not a cron expression"),
        ({"cron": None, "every": 0}, "every must be a whole number of seconds"),
        ({"every": 60}, "exactly one of cron"),
        ({"cron": None}, "exactly one of cron"),
        ({"timezone": "Mars/Olympus"}, "not an IANA time zone"),
        ({"catch_up": "all"}, "catch_up must be one of once, skip"),
        ({"skip_if_pending": "yes"}, "skip_if_pending must be True or False"),
        ({"task": "noop"}, "task must be the dotted path"),
        ({"name": "has space"}, "name must be"),
        ({"priority": "high"}, "priority must be a whole number"),
        ({"args": [object()]}, "args and kwargs must be JSON"),
    ],
)
def test_each_bad_entry_is_one_problem_naming_it(change: dict[str, object], says: str) -> None:
    bad = {**GOOD, "name": "bad", **change}
    entries, problems = parse_schedule([GOOD, bad])
    assert [e.name for e in entries] == ["nightly"]
    assert len(problems) == 1 and says in problems[0].message


def test_several_faults_of_one_entry_are_one_problem_and_names_must_be_unique() -> None:
    entries, problems = parse_schedule(
        [GOOD, {**GOOD, "cron": "x", "timezone": "Nowhere/At_All"}, "not a dict"]
    )
    assert [e.name for e in entries] == ["nightly"]  # the first of two with one name is kept
    assert [p.entry for p in problems] == ["nightly", "#2"]
    assert "cron" in problems[0].message and "timezone" in problems[0].message
    assert "another entry has this name" in problems[0].message


def test_options_report_schedule_problems_per_entry() -> None:
    options, problems = parse_options({"SCHEDULE": [GOOD, {**GOOD, "name": "x", "every": 5}]})
    assert [e.name for e in options.schedule] == ["nightly"]
    assert [p.option for p in problems] == ["SCHEDULE x"]
    assert parse_options({"SCHEDULE": "nightly"})[1][0].option == "SCHEDULE"


def test_an_interval_keeps_its_phase_and_catches_up_with_one_tick() -> None:
    entry = ScheduleEntry(name="e", task="tests.tasks.noop_task", every=60)
    assert entry.first_after(1_000) == 61_000
    assert entry.next_after(61_000, 61_500) == 121_000  # on time: the next one
    assert entry.next_after(61_000, 61_000 + 600_500) == 721_000  # ten missed: jump to the next future one


def test_cron_ticks_fall_in_the_entrys_time_zone() -> None:
    entry = ScheduleEntry(name="e", task="t.t", cron="0 9 * * *", timezone="America/New_York")
    assert ticks(entry, ms(2026, 1, 10, 0, 0), 1) == ["2026-01-10 14:00"]  # EST, UTC-5
    assert ticks(entry, ms(2026, 7, 10, 0, 0), 1) == ["2026-07-10 13:00"]  # EDT, UTC-4


def test_a_daily_tick_in_the_spring_forward_gap_runs_once_right_after_it() -> None:
    # Europe/Berlin skips 02:00-03:00 local on 2026-03-29: 02:30 does not exist that day.
    entry = ScheduleEntry(name="e", task="t.t", cron="30 2 * * *", timezone="Europe/Berlin")
    assert ticks(entry, ms(2026, 3, 28, 12, 0), 3) == [
        "2026-03-29 01:00",  # 03:00 CEST, the first minute after the gap
        "2026-03-30 00:30",  # 02:30 CEST
        "2026-03-31 00:30",
    ]


def test_a_daily_tick_in_the_fall_back_repeat_runs_once() -> None:
    # 02:00-03:00 local happens twice on 2026-10-25: 02:30 runs at its first occurrence only.
    entry = ScheduleEntry(name="e", task="t.t", cron="30 2 * * *", timezone="Europe/Berlin")
    assert ticks(entry, ms(2026, 10, 24, 12, 0), 3) == [
        "2026-10-25 00:30",  # 02:30 CEST
        "2026-10-26 01:30",  # 02:30 CET
        "2026-10-27 01:30",
    ]


def test_an_hourly_tick_follows_real_hours_through_both_transitions() -> None:
    entry = ScheduleEntry(name="e", task="t.t", cron="0 * * * *", timezone="Europe/Berlin")
    # Fall back: 02:00 CEST and 02:00 CET are two real hours, two ticks.
    assert ticks(entry, ms(2026, 10, 24, 23, 30), 3) == [
        "2026-10-25 00:00",
        "2026-10-25 01:00",
        "2026-10-25 02:00",
    ]
    # Spring forward: no 02:00 local; ticks stay one real hour apart.
    assert ticks(entry, ms(2026, 3, 28, 23, 30), 3) == [
        "2026-03-29 00:00",
        "2026-03-29 01:00",
        "2026-03-29 02:00",
    ]


def test_the_fingerprint_changes_with_timing_only() -> None:
    base = ScheduleEntry(name="e", task="t.t", cron="0 * * * *")
    assert (
        base.fingerprint == ScheduleEntry(name="e", task="t.other", cron="0 * * * *", args=(1,)).fingerprint
    )
    assert base.fingerprint != ScheduleEntry(name="e", task="t.t", cron="5 * * * *").fingerprint
    assert (
        base.fingerprint
        != ScheduleEntry(name="e", task="t.t", cron="0 * * * *", timezone="Asia/Tokyo").fingerprint
    )


def test_an_expression_that_never_fires_again_has_no_next_tick() -> None:
    entry = ScheduleEntry(name="e", task="t.t", cron="0 0 29 2 1")  # Feb 29 or a Monday in Feb: fires
    assert entry.next_or_none(None, ms(2026, 1, 1, 0, 0)) is not None
