"""The operator's Event queue: bounded, by reference only, and Warnings kept longest.

Only the queue is exercised (no poster runs), so nothing here reaches an API server; the
posting itself is covered end to end in tests/e2e.
"""

from __future__ import annotations

import asyncio
from typing import Any

from voicevault.operator import controller as controller_module
from voicevault.operator import metrics
from voicevault.operator.config import OperatorConfig
from voicevault.operator.controller import Controller
from voicevault.operator.recordings import Event


def dropped(type_: str) -> float:
    return metrics.EVENTS_DROPPED.labels(type=type_)._value.get()  # type: ignore[no-any-return]


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
        ctl = Controller(kube=None, config=OperatorConfig())  # type: ignore[arg-type]
        normal, warning = dropped("Normal"), dropped("Warning")
        for i in range(controller_module.EVENT_QUEUE_NORMAL):
            await ctl.post_event(body(i), Event("Normal", "Accepted", "queued"))
        await ctl.post_event(body(-1), Event("Normal", "Accepted", "queued"))
        assert dropped("Normal") == normal + 1
        room = controller_module.EVENT_QUEUE - controller_module.EVENT_QUEUE_NORMAL
        for i in range(room):
            await ctl.post_event(body(i), Event("Warning", "Cached", "kept on its node"))
        assert dropped("Warning") == warning
        await ctl.post_event(body(-2), Event("Warning", "Cached", "kept on its node"))
        assert dropped("Warning") == warning + 1
        ref, kind, type_, reason, message = ctl._events.get_nowait()
        assert ref == {
            "metadata": {"name": "r0", "namespace": "acme", "uid": "uid-0", "resourceVersion": "0"}
        }
        assert (kind, type_, reason, message) == ("Recording", "Normal", "Accepted", "queued")

    asyncio.run(main())
