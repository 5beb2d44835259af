"""Leader election rules (`operator/leaselock.py`), with client-go's semantics."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from voicevault.operator.leaselock import (
    Action,
    LeaseRecord,
    LeaseTiming,
    Observed,
    decide,
    must_stop,
    next_record,
    observe,
    released,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TIMING = LeaseTiming(lease_duration=10, renew_deadline=7, retry_period=2)


def held_by(holder: str | None, renewed: datetime = T0, transitions: int = 0) -> LeaseRecord:
    return LeaseRecord(holder, 10, T0, renewed, transitions)


def test_no_lease_means_create_and_our_own_means_renew() -> None:
    assert decide(None, "a", 0.0) is Action.CREATE
    assert decide(Observed(held_by("a"), 0.0), "a", 100.0) is Action.RENEW


def test_someone_elses_lease_is_taken_only_after_it_stayed_unchanged_a_lease_duration() -> None:
    seen = observe(None, held_by("b"), now=100.0)
    assert decide(seen, "a", 105.0) is Action.WAIT
    assert decide(seen, "a", 110.0) is Action.WAIT  # exactly the duration: not yet
    assert decide(seen, "a", 110.5) is Action.TAKE


def test_expiry_is_measured_on_our_clock_from_the_last_change_we_saw() -> None:
    # the holder renews (renewTime moves): our clock restarts, whatever renewTime says
    first = observe(None, held_by("b", renewed=T0), now=100.0)
    again = observe(first, held_by("b", renewed=T0), now=108.0)
    assert again is first  # unchanged: the clock keeps running from 100
    renewed = observe(again, held_by("b", renewed=datetime(2020, 1, 1, tzinfo=UTC)), now=109.0)
    assert renewed.changed_at == 109.0  # changed (even to a skewed time): restart
    assert decide(renewed, "a", 115.0) is Action.WAIT
    assert decide(renewed, "a", 119.5) is Action.TAKE


def test_a_released_lease_is_taken_at_once() -> None:
    free = observe(None, released(held_by("b"), T0), now=100.0)
    assert free.record.holder is None
    assert decide(free, "a", 100.0) is Action.TAKE


def test_records_written_for_each_action() -> None:
    taken = next_record(held_by("b", transitions=3), Action.TAKE, "a", TIMING, T0)
    assert (taken.holder, taken.transitions, taken.acquire_time, taken.renew_time) == (
        "a",
        4,
        T0,
        T0,
    )
    later = datetime(2026, 12, 1, 12, 0, 2, tzinfo=UTC)
    renewed = next_record(taken, Action.RENEW, "a", TIMING, later)
    assert (renewed.acquire_time, renewed.renew_time, renewed.transitions) == (T0, later, 4)
    created = next_record(None, Action.CREATE, "a", TIMING, T0)
    assert (created.holder, created.transitions, created.duration_seconds) == ("a", 0, 10)


def test_a_leader_stops_once_the_renew_deadline_passed_without_a_renewal() -> None:
    assert not must_stop(None, 1000.0, TIMING)  # never led
    assert not must_stop(100.0, 107.0, TIMING)
    assert must_stop(100.0, 107.1, TIMING)


@pytest.mark.parametrize(
    ("duration", "deadline", "retry"), [(10, 10, 2), (10, 7, 7), (10, 12, 2), (10, 7, 0)]
)
def test_timings_that_could_let_two_leaders_overlap_are_refused(
    duration: float, deadline: float, retry: float
) -> None:
    assert LeaseTiming(duration, deadline, retry).problems()


def test_the_default_timing_is_sound() -> None:
    assert LeaseTiming().problems() == []
