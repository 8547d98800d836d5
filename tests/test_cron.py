"""The schedules' cron parser and clocks (corral/supervisor/schedule.py): five fields,
ranges, steps, lists, the day fields' either-or, every refusal's exact message, and the
fire times a downtime missed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from corral.supervisor.schedule import (
    Cron,
    ScheduleError,
    ScheduleSpec,
    compile_schedule,
    parse_every,
)


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


def nexts(cron: str, start: float, n: int) -> list[str]:
    c, out, t = Cron(cron), [], start
    for _ in range(n):
        t = c.next_after(t)
        out.append(datetime.fromtimestamp(t, UTC).strftime("%a %Y-%m-%d %H:%M"))
    return out


def test_every_five_minutes() -> None:
    assert nexts("*/5 * * * *", ts(2026, 11, 23, 17, 3, 20), 3) == [
        "Mon 2026-11-23 17:05", "Mon 2026-11-23 17:10", "Mon 2026-11-23 17:15"]


def test_a_time_exactly_on_a_fire_fires_next_time() -> None:
    assert nexts("0 * * * *", ts(2026, 11, 23, 17, 0), 2) == [
        "Mon 2026-11-23 18:00", "Mon 2026-11-23 19:00"]


def test_ranges_lists_and_steps() -> None:
    assert nexts("15,45 9-10 * * *", ts(2026, 11, 23, 9, 20), 4) == [
        "Mon 2026-11-23 09:45", "Mon 2026-11-23 10:15", "Mon 2026-11-23 10:45",
        "Tue 2026-11-24 09:15"]
    assert nexts("0 8-18/4 * * *", ts(2026, 11, 23, 0, 0), 4) == [
        "Mon 2026-11-23 08:00", "Mon 2026-11-23 12:00", "Mon 2026-11-23 16:00",
        "Tue 2026-11-24 08:00"]
    assert nexts("30 6 * * 1-5", ts(2026, 11, 27, 7, 0), 2) == [  # Friday after 6:30
        "Mon 2026-11-30 06:30", "Tue 2026-12-01 06:30"]


def test_month_ends_years_and_sunday_as_7() -> None:
    assert nexts("0 0 31 * *", ts(2026, 11, 1), 2) == [
        "Thu 2026-12-31 00:00", "Sun 2027-01-31 00:00"]
    assert nexts("0 0 29 2 *", ts(2026, 1, 1), 1) == ["Tue 2028-02-29 00:00"]
    assert nexts("0 12 * * 7", ts(2026, 11, 23), 1) == nexts("0 12 * * 0", ts(2026, 11, 23), 1)


def test_both_day_fields_restricted_match_either() -> None:
    # the 1st of the month or any Friday
    assert nexts("0 0 1 * 5", ts(2026, 11, 23), 3) == [
        "Fri 2026-11-27 00:00", "Tue 2026-12-01 00:00", "Fri 2026-12-04 00:00"]


@pytest.mark.parametrize(("cron", "said"), [
    ("*/5 * * *", 'cron "*/5 * * *": expected 5 fields (minute hour day month weekday), '
                  "got 4"),
    ("61 * * * *", 'cron "61 * * * *": minute 61 is out of range 0-59'),
    ("* 24 * * *", 'cron "* 24 * * *": hour 24 is out of range 0-23'),
    ("* * 0 * *", 'cron "* * 0 * *": day 0 is out of range 1-31'),
    ("* * * 13 *", 'cron "* * * 13 *": month 13 is out of range 1-12'),
    ("* * * * 8", 'cron "* * * * 8": weekday 8 is out of range 0-7'),
    ("*/0 * * * *", 'cron "*/0 * * * *": minute step "0" must be a whole number of at '
                    "least 1"),
    ("*/ * * * *", 'cron "*/ * * * *": minute step "" must be a whole number of at least 1'),
    ("a * * * *", 'cron "a * * * *": minute "a" is not a number'),
    ("30-10 * * * *", 'cron "30-10 * * * *": minute range 30-10 is reversed'),
    ("0 0 30 2 *", 'cron "0 0 30 2 *": no day matches it'),
])
def test_a_bad_cron_is_refused_with_its_reason(cron: str, said: str) -> None:
    with pytest.raises(ScheduleError) as err:
        Cron(cron)
    assert str(err.value) == said


def test_every() -> None:
    assert (parse_every("30s"), parse_every("5m"), parse_every("1.5h"),
            parse_every("1d")) == (30, 300, 5400, 86400)
    with pytest.raises(ScheduleError, match=r'^every "30" is not a duration \(examples: '
                                            r'30s, 5m, 1h, 1d\)$'):
        parse_every("30")
    with pytest.raises(ScheduleError, match=r'^every "0.5s" is shorter than 1 s$'):
        parse_every("0.5s")


def test_a_schedule_is_checked_whole() -> None:
    def bad(spec: ScheduleSpec) -> str:
        with pytest.raises(ScheduleError) as err:
            compile_schedule("nightly", spec, {"a"}, {"w"})
        return str(err.value)

    assert bad(ScheduleSpec(every="1m")) == "schedules.nightly: give one of agent or workflow"
    assert bad(ScheduleSpec(agent="a", workflow="w", every="1m")) == \
        "schedules.nightly: give one of agent or workflow"
    assert bad(ScheduleSpec(agent="a")) == "schedules.nightly: give one of every or cron"
    assert bad(ScheduleSpec(agent="b", every="1m")) == "schedules.nightly: no agent named b"
    assert bad(ScheduleSpec(workflow="v", cron="* * * * *")) == \
        "schedules.nightly: no workflow named v"
    assert bad(ScheduleSpec(agent="a", cron="* * *")) == (
        'schedules.nightly: cron "* * *": expected 5 fields (minute hour day month '
        "weekday), got 3")


def test_the_fires_a_downtime_missed() -> None:
    s = compile_schedule("s", ScheduleSpec(agent="a", every="10s"))
    assert s.due(100, 135, 10) == ([110, 120, 130], 3)
    assert s.due(100, 109, 10) == ([], 0)
    # a long downtime: the latest `most`, and the count of all, without a long loop
    assert s.due(0, 1_000_000, 3) == ([999_980, 999_990, 1_000_000], 100_000)
    c = compile_schedule("c", ScheduleSpec(agent="a", cron="0 * * * *"))
    assert c.due(ts(2026, 1, 1, 0, 30), ts(2026, 1, 1, 3, 30), 2) == (
        [ts(2026, 1, 1, 2), ts(2026, 1, 1, 3)], 3)
