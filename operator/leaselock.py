"""Leader election rules on a `coordination.k8s.io/v1` Lease: pure, clock injected.

The semantics are client-go's leaderelection:
- a candidate takes the Lease when nobody holds it, or when its record has not changed
  for `leaseDurationSeconds` **as measured by the candidate's own clock since it last
  saw the record change** (never by comparing `renewTime` with its clock: clocks skew);
- the holder renews every `retry_period`; when it has not renewed for `renew_deadline`
  (shorter than the lease duration) it stops acting, before anyone else may take over;
- a holder that shuts down cleanly releases the Lease (no holder), so a standby takes
  over at once instead of after a lease duration.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum


@dataclass(frozen=True)
class LeaseTiming:
    """Seconds. Renew deadline < lease duration, so a leader stops before it could overlap."""

    lease_duration: float = 10.0
    renew_deadline: float = 7.0
    retry_period: float = 2.0

    def problems(self) -> list[str]:
        out = []
        if self.retry_period <= 0:
            out.append("the retry period must be positive")
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            out.append(
                "need retry period < renew deadline < lease duration "
                f"(got {self.retry_period:g} s, {self.renew_deadline:g} s, "
                f"{self.lease_duration:g} s)"
            )
        return out


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease's spec says (client-go's LeaderElectionRecord)."""

    holder: str | None
    duration_seconds: int
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int


@dataclass(frozen=True)
class Observed:
    """The last record this candidate saw, and when (its monotonic clock) it changed."""

    record: LeaseRecord
    changed_at: float


class Action(Enum):
    CREATE = "create"  # no Lease yet: create it holding it
    RENEW = "renew"  # ours: write a new renewTime
    TAKE = "take"  # free or expired: write ourselves as holder
    WAIT = "wait"  # someone else holds a live lease


def observe(previous: Observed | None, record: LeaseRecord, now: float) -> Observed:
    """Remember `record`; its clock restarts only when the record itself changed."""
    if previous is not None and previous.record == record:
        return previous
    return Observed(record, now)


def decide(observed: Observed | None, identity: str, now: float) -> Action:
    """What to write next, given the Lease as last observed (None: there is no Lease)."""
    if observed is None:
        return Action.CREATE
    record = observed.record
    if record.holder == identity:
        return Action.RENEW
    if not record.holder:
        return Action.TAKE
    if now - observed.changed_at > record.duration_seconds:
        return Action.TAKE
    return Action.WAIT


def next_record(
    current: LeaseRecord | None,
    action: Action,
    identity: str,
    timing: LeaseTiming,
    wall: datetime,
) -> LeaseRecord:
    """The record to write for `action` (not WAIT)."""
    duration = max(1, round(timing.lease_duration))
    if action is Action.RENEW and current is not None:
        return replace(current, renew_time=wall, duration_seconds=duration)
    transitions = 0 if current is None else current.transitions + 1
    return LeaseRecord(
        holder=identity,
        duration_seconds=duration,
        acquire_time=wall,
        renew_time=wall,
        transitions=transitions,
    )


def released(current: LeaseRecord, wall: datetime) -> LeaseRecord:
    """A clean shutdown's record: no holder, so the next candidate need not wait."""
    return replace(current, holder=None, duration_seconds=1, renew_time=wall)


def must_stop(last_renewed: float | None, now: float, timing: LeaseTiming) -> bool:
    """A leader that has not renewed within the renew deadline stops acting."""
    return last_renewed is not None and now - last_renewed > timing.renew_deadline
