"""Leader election: only the replica holding the Lease reconciles (rules: `leaselock`).

Every replica runs kopf with warm watches. Until it leads, its handlers drop events; when
it takes the Lease it starts the controller, which reads everything afresh. A leader
that cannot renew within the renew deadline exits at once, before its lease can expire,
so that it never writes after another leader has begun (the process manager, the kubelet
in a pod, starts it again as a standby). A leader that stops cleanly releases the Lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from voicevault.operator import metrics
from voicevault.operator.kube import Kube
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

log = logging.getLogger(__name__)

LOST_LEASE_EXIT = 3
_MICRO = "%Y-%m-%dT%H:%M:%S.%fZ"


def _stamp(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime(_MICRO) if value else None


def record_of(spec: Any) -> LeaseRecord:
    """A V1LeaseSpec (or None) as a LeaseRecord."""
    return LeaseRecord(
        holder=getattr(spec, "holder_identity", None) or None,
        duration_seconds=int(getattr(spec, "lease_duration_seconds", None) or 0),
        acquire_time=getattr(spec, "acquire_time", None),
        renew_time=getattr(spec, "renew_time", None),
        transitions=int(getattr(spec, "lease_transitions", None) or 0),
    )


def _version_of(lease: Any) -> str | None:
    meta = getattr(lease, "metadata", None)
    return getattr(meta, "resource_version", None)


def spec_of(record: LeaseRecord) -> dict[str, Any]:
    return {
        "holderIdentity": record.holder,
        "leaseDurationSeconds": record.duration_seconds,
        "acquireTime": _stamp(record.acquire_time),
        "renewTime": _stamp(record.renew_time),
        "leaseTransitions": record.transitions,
    }


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        *,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        self.monotonic = monotonic
        self.wall = wall
        self.leading = False
        self.lost = False  # another holder was seen while leading
        self.last_renewed: float | None = None
        self._observed: Observed | None = None
        self._version: str | None = None

    async def run(
        self, on_started: Callable[[], Coroutine[Any, Any, None]], on_lost: Callable[[], None]
    ) -> None:
        """Campaign until leading, then renew; `on_lost()` (which must end the process)
        when a renewal is overdue. `on_started` runs beside the renewals (a long start
        must not starve them); if it fails, the process ends the same way."""
        while not self.leading:
            await self._attempt()
            if not self.leading:
                await asyncio.sleep(self.timing.retry_period)
        log.info("leading", extra={"identity": self.identity, "lease": self.name})
        metrics.LEADER.set(1)
        watchdog = asyncio.create_task(self._watchdog(on_lost), name="lease-watchdog")
        starting = asyncio.create_task(on_started(), name="lead")

        def started(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                log.error("could not start leading", exc_info=task.exception())
                on_lost()

        starting.add_done_callback(started)
        try:
            while True:
                await asyncio.sleep(self.timing.retry_period)
                await self._attempt()
        finally:
            watchdog.cancel()
            starting.cancel()

    async def release(self) -> None:
        """Give the Lease up on a clean stop, so a standby takes over at once."""
        if not self.leading or self._observed is None:
            return
        self.leading = False
        metrics.LEADER.set(0)
        try:
            await self._write(released(self._observed.record, self.wall()))
        except Exception:
            log.warning("could not release the lease", exc_info=True)

    async def _watchdog(self, on_lost: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(min(0.25, self.timing.retry_period / 4))
            if self.lost or must_stop(self.last_renewed, self.monotonic(), self.timing):
                metrics.LEADER.set(0)
                on_lost()
                return

    async def _attempt(self) -> None:
        """One read and, if the rules say so, one write of the Lease. Failures only wait."""
        started = self.monotonic()  # a renewal counts from before it was sent
        try:
            lease = await self.kube.get_lease(self.namespace, self.name)
            if lease is None:
                self._observed, self._version = None, None
            else:
                self._observed = observe(self._observed, record_of(lease.spec), started)
                self._version = _version_of(lease)
                if self.leading and self._observed.record.holder != self.identity:
                    self.lost = True  # taken over: stop now, not at the deadline
                    return
            action = decide(self._observed, self.identity, started)
            if action is Action.WAIT:
                return
            current = None if self._observed is None else self._observed.record
            record = next_record(current, action, self.identity, self.timing, self.wall())
            await self._write(record, create=action is Action.CREATE)
        except ApiException as exc:
            if exc.status not in (404, 409):  # someone else wrote first: read again next time
                log.warning("lease request failed", extra={"status": exc.status})
            return
        except Exception as exc:  # the API is unreachable: the watchdog decides
            log.warning("lease request failed", extra={"error": type(exc).__name__})
            return
        if not self.leading and action is not Action.RENEW:
            metrics.LEADER_TRANSITIONS.inc()
        self.leading = True
        self.last_renewed = started

    async def _write(self, record: LeaseRecord, *, create: bool = False) -> None:
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec_of(record),
        }
        if create:
            lease = await self.kube.create_lease(self.namespace, body)
        else:
            body["metadata"]["resourceVersion"] = self._version
            lease = await self.kube.replace_lease(self.namespace, self.name, body)
        self._version = _version_of(lease)
        self._observed = observe(self._observed, record_of(lease.spec), self.monotonic())


class ElectionThread:
    """An elector on a thread and event loop of its own, with API connections of its own.

    Under a burst the operator's event loop runs seconds behind (kopf handles several watch
    events per recording) and its API calls queue in one pool: a renewal waiting behind
    them missed its deadline, and a healthy leader exited. Here a renewal waits for
    neither, and the watchdog, on the same thread, still ends the process the moment a
    renewal is overdue. `lead()` runs on the operator's loop.
    """

    def __init__(self, elector: LeaderElector) -> None:
        self.elector = elector
        self._thread = threading.Thread(target=self._main, name="leader-election", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._lead: Callable[[], Coroutine[Any, Any, None]] | None = None
        self._on_lost: Callable[[], None] = exit_now
        self._operator_loop: asyncio.AbstractEventLoop | None = None

    def start(
        self, lead: Callable[[], Coroutine[Any, Any, None]], on_lost: Callable[[], None]
    ) -> None:
        """From the operator's loop: campaign, and run `lead()` there once leading."""
        self._operator_loop = asyncio.get_running_loop()
        self._lead, self._on_lost = lead, on_lost
        self._thread.start()
        self._ready.wait()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop campaigning and release the Lease if held (a clean stop)."""
        if self._loop is None or self._stop is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        await asyncio.to_thread(self._thread.join, timeout)

    def _main(self) -> None:
        asyncio.run(self._campaign())

    async def _campaign(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        running = asyncio.create_task(self.elector.run(self._started, self._on_lost))
        stopping = asyncio.create_task(self._stop.wait())
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        running.cancel()
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await self.elector.release()

    async def _started(self) -> None:
        assert self._lead is not None
        assert self._operator_loop is not None
        leading = asyncio.run_coroutine_threadsafe(self._lead(), self._operator_loop)
        await asyncio.wrap_future(leading)


def exit_now() -> None:
    """End the process at once: no cleanup handler may write after the lease is lost."""
    log.error("lost the leader lease: exiting, so that no write follows another leader's")
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(LOST_LEASE_EXIT)
