"""Schedule times: croniter in the schedule's own time zone, DST-correct; missed runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from nexus.core.errors import ValidationFailed
from nexus.core.settings import Settings
from nexus.manager.features.schedules.service import check_cron, due_times, next_after, zone
from nexus.manager.features.ttl.policy import expiry


def test_daily_local_time_across_the_spring_dst_change() -> None:
    """01:30 Europe/Berlin every day: 00:30Z in winter (CET, +1), 23:30Z the day before in
    summer (CEST, +2); the change is 2026-03-29 02:00 local."""
    t = datetime(2026, 3, 27, 12, 0, tzinfo=UTC)
    seen = []
    for _ in range(4):
        t = next_after("30 1 * * *", "Europe/Berlin", t)
        seen.append(t)
    assert seen == [
        datetime(2026, 3, 28, 0, 30, tzinfo=UTC),
        datetime(2026, 3, 29, 0, 30, tzinfo=UTC),  # still CET at 01:30 that night
        datetime(2026, 3, 29, 23, 30, tzinfo=UTC),  # 01:30 CEST on the 30th
        datetime(2026, 3, 30, 23, 30, tzinfo=UTC),
    ]
    for when in seen:
        local = when.astimezone(zone("Europe/Berlin"))
        assert (local.hour, local.minute) == (1, 30)


def test_autumn_dst_change_in_new_york_keeps_local_time() -> None:
    """09:00 America/New_York: 13:00Z in summer (EDT), 14:00Z after 2026-11-01 (EST)."""
    t = datetime(2026, 10, 31, 0, 0, tzinfo=UTC)
    a = next_after("0 9 * * *", "America/New_York", t)
    b = next_after("0 9 * * *", "America/New_York", a)
    assert a == datetime(2026, 10, 31, 13, 0, tzinfo=UTC)
    assert b == datetime(2026, 11, 1, 14, 0, tzinfo=UTC)
    assert b - a == timedelta(hours=25)


def test_a_time_that_does_not_exist_locally_runs_once_that_day() -> None:
    """02:30 does not exist in Berlin on 2026-03-29 (02:00 -> 03:00): it runs once that
    day, then at 02:30 again."""
    t = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    first = next_after("30 2 * * *", "Europe/Berlin", t)
    second = next_after("30 2 * * *", "Europe/Berlin", first)
    assert first.date().isoformat() == "2026-03-29"
    assert second == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)


def test_due_times_counts_missed_runs_and_finds_the_next() -> None:
    first = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    now = datetime(2026, 1, 1, 10, 9, 30, tzinfo=UTC)
    count, nxt = due_times("* * * * *", "UTC", first, now)
    assert count == 10  # 10:00 ... 10:09
    assert nxt == datetime(2026, 1, 1, 10, 10, tzinfo=UTC)
    count, nxt = due_times("0 0 * * *", "UTC", datetime(2025, 12, 22, tzinfo=UTC), now)
    assert count == 11 and nxt == datetime(2026, 1, 2, tzinfo=UTC)  # Dec 22 ... Jan 1


@pytest.mark.parametrize("bad", ["", "* * * *", "61 * * * *", "@reboot", "* * * * * *", "x"])
def test_bad_cron_is_422(bad: str) -> None:
    with pytest.raises(ValidationFailed):
        check_cron(bad)


def test_bad_time_zone_is_422() -> None:
    with pytest.raises(ValidationFailed):
        zone("Nowhere/Special")


def test_ttl_expiry_bounds() -> None:
    s = Settings(max_ttl_s=3600)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert expiry(s, now=now) is None
    assert expiry(s, ttl_s=60, now=now) == now + timedelta(seconds=60)
    with pytest.raises(ValidationFailed, match="max_ttl_s"):
        expiry(s, ttl_s=7200, now=now)
    with pytest.raises(ValidationFailed, match="past"):
        expiry(s, expires_at=now - timedelta(seconds=1), now=now)
    with pytest.raises(ValidationFailed, match="not both"):
        expiry(s, ttl_s=60, expires_at=now + timedelta(seconds=60), now=now)
