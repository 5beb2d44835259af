"""A clean stop lets the settlements under way finish before the Lease goes, within a bound.

A settlement cut off with its callback on the wire leaves its claim behind, and the next
leader sends the callback again: the rolling-upgrade journey on the real node
(tests/cluster/test_rolling_upgrade.py) saw each of them called back once per handover.
"""

from __future__ import annotations

import asyncio

from voicevault.operator.config import OperatorConfig
from voicevault.operator.controller import Controller


def test_stop_waits_for_settlements_under_way_and_cancels_them_past_the_bound() -> None:
    async def main() -> tuple[list[str], float]:
        ctl = Controller(kube=None, config=OperatorConfig())  # type: ignore[arg-type]
        ended: list[str] = []

        async def settlement(name: str, seconds: float) -> None:
            try:
                await asyncio.sleep(seconds)
                ended.append(name)
            except asyncio.CancelledError:
                ended.append(f"{name} cancelled")
                raise

        ctl.background.spawn(settlement("quick", 0.2))
        ctl.background.spawn(settlement("stuck", 30))
        loop = asyncio.get_running_loop()
        began = loop.time()
        await ctl.stop(drain=1.0)
        return ended, loop.time() - began

    ended, took = asyncio.run(main())
    assert ended == ["quick", "stuck cancelled"]
    assert 1.0 <= took < 5
