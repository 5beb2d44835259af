"""The Recording intake queue (operator/workqueue.py) and the slim bodies it holds."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from voicevault.operator.bodies import LAST_APPLIED, slim
from voicevault.operator.workqueue import WorkQueue


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_newer_item_replaces_the_waiting_one() -> None:
    async def main() -> None:
        queue: WorkQueue[int] = WorkQueue()
        queue.put("a", 1)
        queue.put("a", 2)
        assert len(queue) == 1
        assert await queue.get() == ("a", 2)
        assert len(queue) == 0

    run(main())


def test_keys_come_out_oldest_first() -> None:
    async def main() -> None:
        queue: WorkQueue[int] = WorkQueue()
        for key in "cab":
            queue.put(key, 0)
        queue.put("c", 1)  # replacing keeps its place in line
        assert [(await queue.get())[0] for _ in range(3)] == ["c", "a", "b"]

    run(main())


def test_urgent_items_go_first_and_a_replacement_can_make_a_key_urgent() -> None:
    async def main() -> None:
        queue: WorkQueue[str] = WorkQueue()
        queue.put("new-1", "created")
        queue.put("new-2", "created")
        queue.put("busy-1", "uploading", urgent=True)
        queue.put("new-2", "scheduled", urgent=True)  # moves ahead of new-1
        got = [await queue.get() for _ in range(3)]
        assert got == [("busy-1", "uploading"), ("new-2", "scheduled"), ("new-1", "created")]
        assert len(queue) == 0
        queue.done("new-2")
        waiter = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        assert not waiter.done()  # new-2's stale place in the other line is skipped
        waiter.cancel()

    run(main())


def test_a_key_in_progress_is_not_handed_out_again_until_done() -> None:
    async def main() -> None:
        queue: WorkQueue[int] = WorkQueue()
        queue.put("a", 1)
        assert await queue.get() == ("a", 1)
        queue.put("a", 2)
        queue.put("b", 1)
        assert await queue.get() == ("b", 1)  # not a: a worker still holds it
        waiter = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        assert not waiter.done()
        queue.done("a")
        assert await waiter == ("a", 2)
        assert queue.in_progress == 2

    run(main())


def test_offer_never_replaces_a_waiting_item_but_queues_behind_one_in_progress() -> None:
    async def main() -> None:
        queue: WorkQueue[str] = WorkQueue()
        queue.put("a", "watch")
        assert queue.offer("a", "resync") is False
        assert await queue.get() == ("a", "watch")
        assert queue.offer("a", "resync") is True
        queue.done("a")
        assert await queue.get() == ("a", "resync")

    run(main())


def test_room_waits_until_enough_items_are_taken() -> None:
    async def main() -> None:
        queue: WorkQueue[int] = WorkQueue()
        for i in range(3):
            queue.put(str(i), i)
        waiter = asyncio.create_task(queue.room(below=3))
        await asyncio.sleep(0)
        assert not waiter.done()
        await queue.get()
        await asyncio.wait_for(waiter, 5)
        await asyncio.wait_for(queue.room(below=5), 5)  # already true: returns at once

    run(main())


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), workers=st.integers(1, 6))
def test_workers_see_each_key_in_order_alone_and_end_on_its_latest_item(
    seed: int, workers: int
) -> None:
    """Random puts while workers run: per key, versions only go up, no two workers hold
    the same key at once, and the last version put is the last one handled."""
    rng = random.Random(seed)
    keys = [f"k{i}" for i in range(5)]

    async def main() -> None:
        queue: WorkQueue[int] = WorkQueue()
        latest: dict[str, int] = {}
        seen: dict[str, list[int]] = {k: [] for k in keys}
        holding: set[str] = set()

        async def worker() -> None:
            while True:
                key, version = await queue.get()
                assert key not in holding
                holding.add(key)
                for _ in range(rng.randint(0, 2)):
                    await asyncio.sleep(0)
                seen[key].append(version)
                holding.discard(key)
                queue.done(key)

        tasks = [asyncio.create_task(worker()) for _ in range(workers)]
        for version in range(200):
            key = rng.choice(keys)
            latest[key] = version
            queue.put(key, version, urgent=rng.random() < 0.3)
            if rng.random() < 0.5:
                await asyncio.sleep(0)
        while len(queue) or queue.in_progress:
            await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for key in keys:
            assert seen[key] == sorted(set(seen[key]))
            if key in latest:
                assert seen[key][-1] == latest[key]

    run(main())


def test_slim_drops_managed_fields_and_the_last_applied_copy_only() -> None:
    body: dict[str, Any] = {
        "apiVersion": "voicevault.io/v1alpha1",
        "metadata": {
            "name": "r1",
            "uid": "u1",
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
            "annotations": {LAST_APPLIED: "{...}", "voicevault.io/retry": "1"},
            "finalizers": ["voicevault.io/media"],
        },
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Pending"},
    }
    out = slim(body)
    assert out == {
        "apiVersion": "voicevault.io/v1alpha1",
        "metadata": {
            "name": "r1",
            "uid": "u1",
            "annotations": {"voicevault.io/retry": "1"},
            "finalizers": ["voicevault.io/media"],
        },
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Pending"},
    }
    out["spec"]["nodeName"] = "changed"  # a copy, not a view of the original
    assert body["spec"]["nodeName"] == "n1"
    assert "managedFields" in body["metadata"]
