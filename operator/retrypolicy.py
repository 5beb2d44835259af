"""When to retry a failed upload, and when to stop and keep the media cached.

The seed promises retries for two hours after a previously working configuration
starts failing, then the recording stays cached on its node until someone asks again.
This module only computes times; the caller supplies the clock and the randomness so
the schedule is reproducible in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["RetryDecision", "RetryPolicy", "next_retry"]

_TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff inside a fixed window that starts at the first failure."""

    window: timedelta = timedelta(hours=2)
    initial_backoff: timedelta = timedelta(seconds=30)
    max_backoff: timedelta = timedelta(minutes=10)
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.window <= timedelta(0):
            raise ValueError(f"retry window must be positive, got {self.window}")
        if self.initial_backoff <= timedelta(0):
            raise ValueError(f"initial backoff must be positive, got {self.initial_backoff}")
        if self.max_backoff < self.initial_backoff:
            raise ValueError(
                f"max backoff {self.max_backoff} must be at least the initial backoff "
                f"{self.initial_backoff}"
            )
        if not self.multiplier >= 1.0:
            raise ValueError(f"backoff multiplier must be >= 1, got {self.multiplier}")

    def backoff(self, failures: int) -> timedelta:
        """Un-jittered delay after the n-th consecutive failure (n >= 1)."""
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures}")
        cap = self.max_backoff.total_seconds()
        try:
            seconds = self.initial_backoff.total_seconds() * self.multiplier ** (failures - 1)
        except OverflowError:
            seconds = cap
        return timedelta(seconds=min(cap, seconds))


@dataclass(frozen=True)
class RetryDecision:
    """The outcome: give up (phase Cached) or try again at next_attempt_at."""

    give_up: bool
    next_attempt_at: datetime | None
    window_ends_at: datetime


def next_retry(
    policy: RetryPolicy,
    *,
    first_failure_at: datetime,
    failures: int,
    now: datetime,
    jitter: Callable[[], float],
) -> RetryDecision:
    """Decide after `failures` consecutive failures, the first at `first_failure_at`.

    Equal jitter (half the delay fixed, half random) spreads retries from many uploaders
    without ever retrying immediately. The last attempt is pinned to the window's end so
    the full window is used.
    """
    first = _utc(first_failure_at, "first_failure_at")
    current = _utc(now, "now")
    window_end = first + policy.window
    delay = policy.backoff(failures)
    if current >= window_end:
        return RetryDecision(give_up=True, next_attempt_at=None, window_ends_at=window_end)
    fraction = jitter()
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"jitter must return a value in [0, 1), got {fraction}")
    # At least one tick, so a microscopic backoff still moves the clock forward.
    wait = max(delay / 2 + delay * (fraction / 2), _TICK)
    return RetryDecision(
        give_up=False,
        next_attempt_at=min(current + wait, window_end),
        window_ends_at=window_end,
    )


def _utc(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got a naive datetime")
    return moment.astimezone(UTC)
