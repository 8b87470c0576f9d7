"""Password guesses per (user, source): locked after ten in five minutes, for longer each
time, without ever locking out the same user elsewhere or other users."""

from __future__ import annotations

import logging

import pytest

from appliance.auth.throttle import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def throttle(clock: Clock) -> LoginThrottle:
    return LoginThrottle(clock)


def fail(throttle: LoginThrottle, times: int, user: str = "admin",
         source: str = "192.0.2.9") -> list[int | None]:
    return [throttle.failed(user, source) for _ in range(times)]


def test_the_tenth_failure_locks_the_pair_for_thirty_seconds(throttle: LoginThrottle,
                                                             clock: Clock) -> None:
    assert fail(throttle, 9) == [None] * 9
    assert throttle.retry_after("admin", "192.0.2.9") is None
    assert throttle.failed("admin", "192.0.2.9") == 30
    assert throttle.retry_after("admin", "192.0.2.9") == 30
    clock.now += 29.5
    assert throttle.retry_after("admin", "192.0.2.9") == 1
    clock.now += 0.5
    assert throttle.retry_after("admin", "192.0.2.9") is None


def test_only_that_user_from_that_source_is_locked(throttle: LoginThrottle) -> None:
    fail(throttle, 10)
    assert throttle.retry_after("admin", "192.0.2.9") == 30
    assert throttle.retry_after("admin", "192.0.2.10") is None
    assert throttle.retry_after("alice", "192.0.2.9") is None


def test_a_guesser_who_keeps_trying_is_locked_for_longer_each_time_up_to_fifteen_minutes(
        throttle: LoginThrottle, clock: Clock) -> None:
    locks, tries = [], 0
    while len(locks) < 7:
        if throttle.retry_after("admin", "192.0.2.9") is None:
            tries += 1
            lock = throttle.failed("admin", "192.0.2.9")
            if lock is not None:
                locks.append(lock)
        clock.now += 1
    assert locks == [30, 60, 120, 240, 480, 900, 900]
    assert tries < 60  # in about an hour of trying


def test_failures_older_than_the_window_are_forgotten(throttle: LoginThrottle,
                                                     clock: Clock) -> None:
    fail(throttle, 9)
    clock.now += 301
    assert fail(throttle, 9) == [None] * 9
    assert throttle.failed("admin", "192.0.2.9") == 30


def test_a_quiet_window_after_a_lock_starts_the_lengths_again(throttle: LoginThrottle,
                                                              clock: Clock) -> None:
    fail(throttle, 10)
    clock.now += 30
    assert throttle.failed("admin", "192.0.2.9") == 60
    clock.now += 60 + 301
    assert fail(throttle, 10)[-1] == 30


def test_a_success_forgets_the_failures(throttle: LoginThrottle) -> None:
    fail(throttle, 9)
    throttle.succeeded("admin", "192.0.2.9")
    assert fail(throttle, 9) == [None] * 9


def test_the_pairs_remembered_are_bounded(clock: Clock) -> None:
    throttle = LoginThrottle(clock, max_pairs=3)
    for source in ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"):
        fail(throttle, 10, source=source)
    assert throttle.retry_after("admin", "192.0.2.1") is None  # the oldest went first
    assert throttle.retry_after("admin", "192.0.2.4") == 30


def test_a_very_long_user_name_counts_by_its_first_64_characters(
        throttle: LoginThrottle) -> None:
    fail(throttle, 10, user="x" * 64 + "a")
    assert throttle.retry_after("x" * 64 + "b", "192.0.2.9") == 30


def test_a_lock_is_logged_with_the_user_and_the_source(throttle: LoginThrottle,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="appliance.auth.throttle"):
        fail(throttle, 10)
    assert "login for 'admin' from 192.0.2.9 locked for 30 s after 10 failures" in caplog.text
