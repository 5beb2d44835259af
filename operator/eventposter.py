"""Kubernetes Events for people, and the same line in the operator's log.

Events are best effort: they wait in a bounded queue, by reference only (a burst of
thousands must not keep thousands of bodies alive), and a few posters send them, so no
reconcile waits for one. Normal Events stop short of the queue's end: the rest is kept
for Warnings.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NamedTuple

from voicevault import logs
from voicevault.crds import recording
from voicevault.operator import metrics
from voicevault.operator.kube import Kube
from voicevault.phases import Event

log = logging.getLogger("voicevault.operator")

POSTERS = 4
QUEUE = 5000  # Events waiting to be posted; beyond this they are dropped and counted
QUEUE_NORMAL = 4000  # Normal Events stop here: the rest of the queue is for Warnings
REF_FIELDS = ("name", "namespace", "uid", "resourceVersion")  # all an Event names


class QueuedEvent(NamedTuple):
    ref: dict[str, Any]
    kind: str
    type: str
    reason: str
    message: str


class EventPoster:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._queue: asyncio.Queue[QueuedEvent] = asyncio.Queue(maxsize=QUEUE)

    def __len__(self) -> int:
        return self._queue.qsize()

    async def post(
        self,
        body: dict[str, Any],
        event: Event,
        kind: str = recording.KIND,
        *,
        name: str | None = None,
    ) -> None:
        """An Event on the object, and the same line in the log.

        A `name`d Event is posted at once rather than queued: posting it again creates
        nothing, so it is how a once-only Event survives a crash and a stale view.
        """
        meta = body.get("metadata", {})
        message = logs.scrub(event.message)
        log.log(
            logging.INFO if event.type == "Normal" else logging.WARNING,
            message,
            extra={
                "kind": kind,
                "object": f"{meta.get('namespace')}/{meta.get('name')}",
                "reason": event.reason,
            },
        )
        ref = {"metadata": {key: meta.get(key) for key in REF_FIELDS}}
        if name is not None:
            await self.kube.post_event(ref, kind, event.type, event.reason, message, name=name)
            return
        if event.type == "Normal" and self._queue.qsize() >= QUEUE_NORMAL:
            metrics.EVENTS_DROPPED.labels(type=event.type).inc()
            return
        try:
            self._queue.put_nowait(QueuedEvent(ref, kind, event.type, event.reason, message))
        except asyncio.QueueFull:
            metrics.EVENTS_DROPPED.labels(type=event.type).inc()
        metrics.EVENTS_PENDING.set(self._queue.qsize())

    def next_queued(self) -> QueuedEvent:
        """The oldest Event waiting (QueueEmpty if none): what a poster sends next."""
        return self._queue.get_nowait()

    async def run(self) -> None:
        """One poster: sends queued Events until cancelled."""
        while True:
            queued = await self._queue.get()
            await self.kube.post_event(*queued)
            metrics.EVENTS_PENDING.set(self._queue.qsize())
