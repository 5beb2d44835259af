"""Retry schedule: fixed clocks and deterministic jitter make every instant checkable."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicevault.operator.retrypolicy import RetryDecision, RetryPolicy, next_retry

T0 = datetime(2024, 5, 9, 12, 0, tzinfo=UTC)
DEFAULT = RetryPolicy()


def fixed(value: float) -> Callable[[], float]:
    return lambda: value


def schedule(policy: RetryPolicy, jitter: float) -> tuple[list[datetime], RetryDecision]:
    """Attempt times when every retry fails the moment it starts; plus the final decision."""
    attempts: list[datetime] = []
    now, failures = T0, 1
    while True:
        decision = next_retry(
            policy, first_failure_at=T0, failures=failures, now=now, jitter=fixed(jitter)
        )
        if decision.give_up:
            return attempts, decision
        assert decision.next_attempt_at is not None
        now = decision.next_attempt_at
        attempts.append(now)
        failures += 1


def test_defaults_follow_the_seed() -> None:
    assert DEFAULT.window == timedelta(hours=2)
    assert DEFAULT.initial_backoff == timedelta(seconds=30)
    assert DEFAULT.max_backoff == timedelta(minutes=10)
    assert DEFAULT.multiplier == 2.0


def test_first_retry_after_the_first_failure() -> None:
    decision = next_retry(DEFAULT, first_failure_at=T0, failures=1, now=T0, jitter=fixed(0.0))
    assert decision == RetryDecision(
        give_up=False,
        next_attempt_at=T0 + timedelta(seconds=15),
        window_ends_at=T0 + timedelta(hours=2),
    )


@pytest.mark.parametrize(
    ("failures", "jitter", "wait_s"),
    [
        (1, 0.0, 15),
        (1, 0.5, 22.5),
        (2, 0.0, 30),
        (3, 0.0, 60),
        (5, 0.0, 240),
        (6, 0.0, 300),  # 960 s capped at 600 s
        (6, 0.5, 450),
        (500, 0.0, 300),  # far past any float range, still capped
    ],
)
def test_backoff_with_equal_jitter(failures: int, jitter: float, wait_s: float) -> None:
    decision = next_retry(
        DEFAULT, first_failure_at=T0, failures=failures, now=T0, jitter=fixed(jitter)
    )
    assert decision.next_attempt_at == T0 + timedelta(seconds=wait_s)


def test_attempts_in_the_default_window_with_minimum_jitter() -> None:
    # Waits 15, 30, 60, 120, 240 s (t = 465 s), then 300 s each: 22 more up to 7065 s,
    # then one pinned to the window end at 7200 s: 28 attempts.
    attempts, final = schedule(DEFAULT, 0.0)
    assert len(attempts) == 28
    assert attempts[4] == T0 + timedelta(seconds=465)
    assert attempts[-2] == T0 + timedelta(seconds=7065)
    assert attempts[-1] == T0 + timedelta(hours=2)
    assert final.give_up
    assert final.next_attempt_at is None
    assert final.window_ends_at == T0 + timedelta(hours=2)


def test_attempts_in_the_default_window_with_middle_jitter() -> None:
    # Waits 22.5, 45, 90, 180, 360 s (t = 697.5 s), then 450 s each: 14 more up to
    # 6997.5 s, then the window end: 20 attempts.
    attempts, _ = schedule(DEFAULT, 0.5)
    assert len(attempts) == 20
    assert attempts[-2] == T0 + timedelta(seconds=6997.5)
    assert attempts[-1] == T0 + timedelta(hours=2)


def test_gives_up_at_and_after_the_window_end() -> None:
    for now in (T0 + timedelta(hours=2), T0 + timedelta(days=3)):
        decision = next_retry(DEFAULT, first_failure_at=T0, failures=9, now=now, jitter=fixed(0))
        assert decision == RetryDecision(
            give_up=True, next_attempt_at=None, window_ends_at=T0 + timedelta(hours=2)
        )


def test_jitter_is_not_drawn_once_the_window_is_over() -> None:
    def boom() -> float:
        raise AssertionError("jitter drawn after the window closed")

    decision = next_retry(
        DEFAULT, first_failure_at=T0, failures=1, now=T0 + timedelta(hours=3), jitter=boom
    )
    assert decision.give_up


def test_short_window_of_seconds() -> None:
    policy = RetryPolicy(
        window=timedelta(seconds=5),
        initial_backoff=timedelta(seconds=1),
        max_backoff=timedelta(seconds=2),
    )
    attempts, final = schedule(policy, 0.0)
    offsets = [(a - T0).total_seconds() for a in attempts]
    assert offsets == [0.5, 1.5, 2.5, 3.5, 4.5, 5.0]
    assert final.give_up


def test_window_shorter_than_the_first_backoff() -> None:
    policy = RetryPolicy(window=timedelta(seconds=3))
    attempts, _ = schedule(policy, 0.9)
    assert attempts == [T0 + timedelta(seconds=3)]


def test_results_are_utc_even_for_other_zones() -> None:
    tokyo = timezone(timedelta(hours=9))
    decision = next_retry(
        DEFAULT,
        first_failure_at=T0.astimezone(tokyo),
        failures=1,
        now=T0.astimezone(tokyo),
        jitter=fixed(0.0),
    )
    assert decision.window_ends_at.tzinfo is UTC
    assert decision.next_attempt_at is not None
    assert decision.next_attempt_at.tzinfo is UTC
    assert decision.next_attempt_at == T0 + timedelta(seconds=15)


@pytest.mark.parametrize("field", ["first_failure_at", "now"])
def test_naive_datetimes_are_refused(field: str) -> None:
    times = {"first_failure_at": T0, "now": T0} | {field: T0.replace(tzinfo=None)}
    with pytest.raises(ValueError, match=f"{field} must be timezone-aware"):
        next_retry(DEFAULT, failures=1, jitter=fixed(0), **times)


@pytest.mark.parametrize("value", [-0.1, 1.0, 2.0, float("nan")])
def test_jitter_out_of_range_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match=r"jitter must return a value in \[0, 1\)"):
        next_retry(DEFAULT, first_failure_at=T0, failures=1, now=T0, jitter=fixed(value))


def test_failures_must_be_positive() -> None:
    with pytest.raises(ValueError, match="failures must be >= 1"):
        next_retry(DEFAULT, first_failure_at=T0, failures=0, now=T0, jitter=fixed(0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": timedelta(0)}, "window must be positive"),
        ({"initial_backoff": timedelta(seconds=-1)}, "initial backoff must be positive"),
        ({"max_backoff": timedelta(seconds=10)}, "at least the initial backoff"),
        ({"multiplier": 0.5}, "multiplier must be >= 1"),
        ({"multiplier": float("nan")}, "multiplier must be >= 1"),
    ],
)
def test_invalid_policies(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_microscopic_backoff_still_moves_forward() -> None:
    policy = RetryPolicy(
        initial_backoff=timedelta(microseconds=1), max_backoff=timedelta(microseconds=1)
    )
    decision = next_retry(policy, first_failure_at=T0, failures=1, now=T0, jitter=fixed(0))
    assert decision.next_attempt_at == T0 + timedelta(microseconds=1)


# --- properties ---------------------------------------------------------------------

POLICIES = st.builds(
    lambda window, initial, extra, multiplier: RetryPolicy(
        window=timedelta(seconds=window),
        initial_backoff=timedelta(seconds=initial),
        max_backoff=timedelta(seconds=initial + extra),
        multiplier=multiplier,
    ),
    st.integers(min_value=1, max_value=3 * 86400),
    st.floats(min_value=0.001, max_value=3600),
    st.floats(min_value=0, max_value=86400),
    st.floats(min_value=1, max_value=10),
)
JITTER = st.floats(min_value=0, max_value=1, exclude_max=True)


@given(
    POLICIES,
    st.integers(min_value=1, max_value=10_000),
    st.floats(min_value=0, max_value=1, exclude_max=True),
    JITTER,
)
def test_next_attempt_is_after_now_and_within_the_window(
    policy: RetryPolicy, failures: int, progress: float, jitter: float
) -> None:
    # timedelta rounds to microseconds: keep `now` strictly inside the window.
    now = T0 + min(policy.window * progress, policy.window - timedelta(microseconds=1))
    decision = next_retry(
        policy, first_failure_at=T0, failures=failures, now=now, jitter=fixed(jitter)
    )
    assert not decision.give_up
    assert decision.next_attempt_at is not None
    assert now < decision.next_attempt_at <= decision.window_ends_at
    assert decision.window_ends_at == T0 + policy.window


@given(POLICIES, st.integers(min_value=1, max_value=10_000), st.floats(min_value=1, max_value=9))
def test_gives_up_whenever_the_window_is_over(
    policy: RetryPolicy, failures: int, overrun: float
) -> None:
    now = T0 + policy.window * overrun
    decision = next_retry(
        policy, first_failure_at=T0, failures=failures, now=now, jitter=fixed(0.5)
    )
    assert decision.give_up
    assert decision.next_attempt_at is None


@given(POLICIES, JITTER)
def test_delays_never_shrink_as_failures_grow(policy: RetryPolicy, jitter: float) -> None:
    unbounded = RetryPolicy(
        window=timedelta(days=365),
        initial_backoff=policy.initial_backoff,
        max_backoff=policy.max_backoff,
        multiplier=policy.multiplier,
    )
    waits = []
    for failures in range(1, 40):
        decision = next_retry(
            unbounded, first_failure_at=T0, failures=failures, now=T0, jitter=fixed(jitter)
        )
        assert decision.next_attempt_at is not None
        waits.append(decision.next_attempt_at - T0)
    assert waits == sorted(waits)
    assert waits[-1] <= unbounded.max_backoff
