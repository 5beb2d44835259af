"""A keyed, coalescing work queue: one waiting item per key, latest wins.

The Recording watch hands each event here and returns at once, so kopf's own per-object
backlog (a queue, a task and every full event body per object) never builds up during a
burst. What waits here is one slim body per recording, however many events it had, and
a key is never handed to two workers at once, so each recording is still handled in
order. It is the same contract as client-go's workqueue (dirty set + processing set),
with one addition: urgent items (work in flight) go before the others (new work), so a
burst of new objects cannot hold up the ones already under way.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class WorkQueue(Generic[T]):
    def __init__(self) -> None:
        self._items: dict[str, tuple[T, bool]] = {}  # waiting, by key: (item, urgent)
        # keys waiting and not in progress, oldest first; a key may be in both lines (or
        # twice) after its item was replaced: the copy that surfaces later is skipped
        self._urgent: deque[str] = deque()
        self._ready: deque[str] = deque()
        self._busy: set[str] = set()  # keys a worker holds
        self._wake = asyncio.Event()  # something became ready
        self._taken = asyncio.Event()  # something was taken (room for bulk producers)

    def __len__(self) -> int:
        """Items waiting (not counting those in progress)."""
        return len(self._items)

    @property
    def in_progress(self) -> int:
        return len(self._busy)

    def put(self, key: str, item: T, *, urgent: bool = False) -> None:
        """Queue `item`, replacing any item still waiting for `key` (a newer state wins)."""
        old = self._items.get(key)
        self._items[key] = (item, urgent)
        if key in self._busy:
            return  # `done` puts it in line
        if old is None or (urgent and not old[1]):
            self._line(key, urgent)

    def _line(self, key: str, urgent: bool) -> None:
        (self._urgent if urgent else self._ready).append(key)
        self._wake.set()

    def offer(self, key: str, item: T, *, urgent: bool = False) -> bool:
        """Queue `item` unless one is already waiting for `key` (that one is as new).

        For re-reads (a resync page, a re-drive): a body read earlier must never replace
        one that a watch event delivered since.
        """
        if key in self._items:
            return False
        self.put(key, item, urgent=urgent)
        return True

    async def get(self) -> tuple[str, T]:
        """The oldest urgent item, else the oldest other; its key is held until `done(key)`."""
        while True:
            while self._urgent or self._ready:
                key = (self._urgent or self._ready).popleft()
                if key in self._items and key not in self._busy:
                    self._busy.add(key)
                    item, _ = self._items.pop(key)
                    self._taken.set()
                    return key, item
            self._wake.clear()
            await self._wake.wait()

    def done(self, key: str) -> None:
        """Release `key`; an item that arrived for it meanwhile becomes ready."""
        self._busy.discard(key)
        waiting = self._items.get(key)
        if waiting is not None:
            self._line(key, waiting[1])

    async def room(self, below: int) -> None:
        """Return once fewer than `below` items wait: back-pressure for bulk producers."""
        while len(self._items) >= below:
            self._taken.clear()
            await self._taken.wait()
