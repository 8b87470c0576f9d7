"""Durations against apimachinery's duration_test.go; RFC 3339 timestamps."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from appliance.util.timefmt import (
    human_duration,
    now_rfc3339,
    parse_rfc3339,
    rfc3339,
    rfc3339_micro,
    short_human_duration,
)

NS = 1e-9
MS = 1e-3
S = 1
M = 60
H = 3600
D = 24 * H
Y = 365 * D

# TestHumanDuration and TestHumanDurationBoundaries
HUMAN = [
    (S, "1s"), (70 * S, "70s"), (190 * S, "3m10s"), (70 * M, "70m"), (47 * H, "47h"),
    (49 * H, "2d1h"), ((8 * 24 + 2) * H, "8d"), (367 * 24 * H, "367d"),
    ((365 * 2 * 24 + 25) * H, "2y1d"), ((365 * 8 * 24 + 2) * H, "8y"),
    (-2 * S, "<invalid>"), (-2 * S + NS, "0s"), (0, "0s"), (S - MS, "0s"),
    (2 * M - MS, "119s"), (2 * M, "2m"), (2 * M + S, "2m1s"), (10 * M - MS, "9m59s"),
    (10 * M, "10m"), (10 * M + S, "10m"), (3 * H - MS, "179m"), (3 * H, "3h"),
    (3 * H + M, "3h1m"), (8 * H - MS, "7h59m"), (8 * H, "8h"), (8 * H + 59 * M, "8h"),
    (2 * D - MS, "47h"), (2 * D, "2d"), (2 * D + H, "2d1h"), (8 * D - MS, "7d23h"),
    (8 * D, "8d"), (8 * D + 23 * H, "8d"), (2 * Y - MS, "729d"), (2 * Y, "2y"),
    (2 * Y + 23 * H, "2y"), (2 * Y + 23 * H + 59 * M, "2y"), (2 * Y + 24 * H - MS, "2y"),
    (2 * Y + 24 * H, "2y1d"), (3 * Y, "3y"), (4 * Y, "4y"), (5 * Y, "5y"), (6 * Y, "6y"),
    (7 * Y, "7y"), (8 * Y - MS, "7y364d"), (8 * Y, "8y"), (8 * Y + 364 * D, "8y"),
    (9 * Y, "9y"),
]

# TestShortHumanDurationBoundaries
SHORT = [
    (-2 * S, "<invalid>"), (-2 * S + NS, "0s"), (0, "0s"), (S - MS, "0s"), (S, "1s"),
    (2 * S - MS, "1s"), (M - MS, "59s"), (M, "1m"), (2 * M - MS, "1m"), (H - MS, "59m"),
    (H, "1h"), (2 * H - MS, "1h"), (D - MS, "23h"), (D, "1d"), (2 * D - MS, "1d"),
    (Y - MS, "364d"), (Y, "1y"), (2 * Y - MS, "1y"), (2 * Y, "2y"),
]


@pytest.mark.parametrize(("seconds", "want"), HUMAN)
def test_human_duration(seconds: float, want: str) -> None:
    assert human_duration(seconds) == want


@pytest.mark.parametrize(("seconds", "want"), SHORT)
def test_short_human_duration(seconds: float, want: str) -> None:
    assert short_human_duration(seconds) == want


def test_timedelta_and_bad_input() -> None:
    assert human_duration(timedelta(minutes=3, seconds=10)) == "3m10s"
    assert human_duration(timedelta(days=2, hours=1)) == "2d1h"
    assert short_human_duration(timedelta(seconds=-1)) == "0s"
    with pytest.raises(ValueError):
        human_duration(float("nan"))
    with pytest.raises(ValueError):
        human_duration(float("inf"))


def test_rfc3339() -> None:
    dt = datetime(2026, 11, 21, 10, 0, 0, 999999, tzinfo=UTC)
    assert rfc3339(dt) == "2026-11-21T10:00:00Z"  # whole seconds, truncated
    assert rfc3339_micro(dt) == "2026-11-21T10:00:00.999999Z"
    cet = datetime(2026, 11, 21, 11, 30, 5, tzinfo=timezone(timedelta(hours=1)))
    assert rfc3339(cet) == "2026-11-21T10:30:05Z"
    with pytest.raises(ValueError, match="naive"):
        rfc3339(datetime(2026, 11, 21, 10, 0, 0))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", now_rfc3339())
    now = datetime.now(UTC)
    assert abs(parse_rfc3339(now_rfc3339()) - now) < timedelta(seconds=5)


@pytest.mark.parametrize(("text", "want"), [
    ("2026-11-21T10:00:00Z", datetime(2026, 11, 21, 10, 0, 0, tzinfo=UTC)),
    ("2026-11-21T10:00:00.5Z", datetime(2026, 11, 21, 10, 0, 0, 500000, tzinfo=UTC)),
    ("2026-11-21T10:00:00.123456789Z", datetime(2026, 11, 21, 10, 0, 0, 123456, tzinfo=UTC)),
    ("2026-11-21T12:00:00+02:00", datetime(2026, 11, 21, 10, 0, 0, tzinfo=UTC)),
    ("2026-11-21T05:30:00-04:30", datetime(2026, 11, 21, 10, 0, 0, tzinfo=UTC)),
    ("2026-01-01T00:30:00+01:00", datetime(2025, 12, 31, 23, 30, 0, tzinfo=UTC)),
])
def test_parse_rfc3339(text: str, want: datetime) -> None:
    got = parse_rfc3339(text)
    assert got == want
    assert got.tzinfo is UTC


@pytest.mark.parametrize("text", [
    "", "2026-11-21", "2026-11-21 10:00:00Z", "2026-11-21t10:00:00Z", "2026-11-21T10:00:00z",
    "2026-11-21T10:00:00", "2026-11-21T10:00Z", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z",
    "2026-11-21T24:00:00Z", "2026-11-21T10:00:60Z", "2026-11-21T10:00:00+24:00",
    "2026-11-21T10:00:00+0100", "26-11-21T10:00:00Z", "2026-11-21T10:00:00.Z",
    "2026-11-21T10:00:00Z\n", "２026-11-21T10:00:00Z",
])
def test_parse_rfc3339_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)


def test_round_trip() -> None:
    text = "2026-11-21T10:00:00Z"
    assert rfc3339(parse_rfc3339(text)) == text
    micro = "2026-11-21T10:00:00.000001Z"
    assert rfc3339_micro(parse_rfc3339(micro)) == micro
