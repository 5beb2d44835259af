"""The operator's Event queue: bounded, by reference only, and Warnings kept longest.

Only the queue is exercised (no poster runs), so nothing here reaches an API server; the
posting itself is covered end to end in tests/e2e.
"""

from __future__ import annotations

import asyncio
from typing import Any

from voicevault.operator import eventposter, metrics
from voicevault.operator.eventposter import EventPoster, QueuedEvent
from voicevault.phases import Event


def dropped(type_: str) -> float:
    return metrics.sample("voicevault_events_dropped_total", type=type_)


def body(i: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"r{i}",
            "namespace": "acme",
            "uid": f"uid-{i}",
            "resourceVersion": str(i),
            "managedFields": [{"manager": "x" * 1000}],
        },
        "spec": {"mediaPath": "r.wav"},
        "status": {"storage": {"publicKey": "-----BEGIN PUBLIC KEY-----..."}},
    }


def test_normal_events_give_way_to_warnings_and_the_queue_holds_no_bodies() -> None:
    async def main() -> None:
        poster = EventPoster(kube=None)  # type: ignore[arg-type]
        normal, warning = dropped("Normal"), dropped("Warning")
        for i in range(eventposter.QUEUE_NORMAL):
            await poster.post(body(i), Event("Normal", "Accepted", "queued"))
        await poster.post(body(-1), Event("Normal", "Accepted", "queued"))
        assert dropped("Normal") == normal + 1
        room = eventposter.QUEUE - eventposter.QUEUE_NORMAL
        for i in range(room):
            await poster.post(body(i), Event("Warning", "Cached", "kept on its node"))
        assert dropped("Warning") == warning
        await poster.post(body(-2), Event("Warning", "Cached", "kept on its node"))
        assert dropped("Warning") == warning + 1
        assert len(poster) == eventposter.QUEUE
        assert poster.next_queued() == QueuedEvent(
            {
                "metadata": {
                    "name": "r0",
                    "namespace": "acme",
                    "uid": "uid-0",
                    "resourceVersion": "0",
                }
            },
            "Recording",
            "Normal",
            "Accepted",
            "queued",
        )

    asyncio.run(main())
