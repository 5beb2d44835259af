"""Per-node queues of work waiting for an uploader pod. Pure data structure, no I/O."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from voicevault.crds.recording import StorageSnapshot
from voicevault.phases import pod_base
from voicevault.uploader.metadata import MetadataTarget


@dataclass
class QueueEntry:
    """A recording waiting on its node, with what the batch needs to describe it."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    node: str
    sid: str
    media_path: str
    snapshot: StorageSnapshot
    attempts: int
    action: Literal["upload", "purge"]
    due: datetime
    created: datetime
    metadata: MetadataTarget | None = None  # the metadata document to write (setting's choice)
    generation: int = 1
    # no status of its own yet: the Scheduled write carries the accepted fields as well
    unwritten: bool = False
    scheduled_status: dict[str, Any] = field(default_factory=dict)  # `phases.pod_base` of it
    queued_status: dict[str, Any] = field(default_factory=dict)  # `pod_base` of the view queued
    # handed to a running pod with its Scheduled fields unwritten: the pod's first write
    # carries them (None: written, or not handed out)
    claim: dict[str, Any] | None = None

    def scheduled_as(self, written: dict[str, Any]) -> None:
        """The Scheduled write's answer: the batch tells the pod what its writes build on."""
        self.resource_version = str(written["metadata"]["resourceVersion"])
        self.scheduled_status = pod_base(written.get("status") or {})

    def claimed_unwritten(self, claim: dict[str, Any]) -> None:
        """Handed out without the Scheduled write: the pod builds on the queued view with
        the claim applied, and its first write, guarded by the queued resourceVersion,
        carries the claim."""
        self.claim = claim
        self.scheduled_status = pod_base(self.queued_status | claim)

    def unclaimed(self) -> None:
        """Its unwritten claim is void (the pod never got or never touched it)."""
        self.claim = None
        self.scheduled_status = {}

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(order=True)
class _Slot:
    due: datetime
    created: datetime
    uid: str = field(compare=False)


class NodeQueues:
    """Entries by node, taken earliest-due first; re-queuing a uid replaces its entry."""

    def __init__(self) -> None:
        self._entries: dict[str, QueueEntry] = {}
        self._heaps: dict[str, list[_Slot]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, uid: str) -> bool:
        return uid in self._entries

    def get(self, uid: str) -> QueueEntry | None:
        return self._entries.get(uid)

    def put(self, entry: QueueEntry) -> None:
        old = self._entries.get(entry.uid)
        self._entries[entry.uid] = entry
        if old is not None and old.node == entry.node and old.due == entry.due:
            return  # same slot already in the heap
        heapq.heappush(
            self._heaps.setdefault(entry.node, []), _Slot(entry.due, entry.created, entry.uid)
        )

    def remove(self, uid: str) -> QueueEntry | None:
        return self._entries.pop(uid, None)  # its heap slot is skipped when it surfaces

    def due_nodes(self, now: datetime) -> list[str]:
        nodes = []
        for node, heap in self._heaps.items():
            self._drop_stale(node, heap)
            if heap and heap[0].due <= now:
                nodes.append(node)
        return nodes

    def take(self, node: str, now: datetime, limit: int) -> list[QueueEntry]:
        """Up to `limit` due entries of `node`, removed from the queue."""
        heap = self._heaps.get(node, [])
        taken: list[QueueEntry] = []
        while heap and len(taken) < limit:
            self._drop_stale(node, heap)
            if not heap or heap[0].due > now:
                break
            slot = heapq.heappop(heap)
            entry = self._entries.pop(slot.uid)
            taken.append(entry)
        if not heap:
            self._heaps.pop(node, None)
        return taken

    def next_due(self) -> datetime | None:
        dues = []
        for node, heap in list(self._heaps.items()):
            self._drop_stale(node, heap)
            if heap:
                dues.append(heap[0].due)
        return min(dues) if dues else None

    def _drop_stale(self, node: str, heap: list[_Slot]) -> None:
        """Pop heap slots whose entry was removed or re-queued elsewhere or at another time."""
        while heap:
            slot = heap[0]
            entry = self._entries.get(slot.uid)
            if entry is not None and entry.node == node and entry.due == slot.due:
                return
            heapq.heappop(heap)
