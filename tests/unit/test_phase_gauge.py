"""The phase gauges kept from each recording's last phase, and what that costs to keep."""

from __future__ import annotations

import gc
import json
import tracemalloc
import uuid

from voicevault.operator.metrics import PhaseGauge, sample


def _recordings(phase: str) -> float:
    return sample("voicevault_recordings", phase=phase)


def test_each_recording_counts_once_in_its_last_phase_and_cached_is_a_count() -> None:
    gauge = PhaseGauge()
    base = {p: _recordings(p) for p in ("Scheduled", "Cached")}
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    assert gauge.seen(a, "Scheduled") is None
    assert gauge.seen(a, "Scheduled") == "Scheduled"  # the same event again: no change
    assert gauge.seen(b, "Cached") is None
    assert _recordings("Scheduled") == base["Scheduled"] + 1
    assert sample("voicevault_cached_recordings") == 1
    assert gauge.seen(a, "Cached") == "Scheduled"
    assert _recordings("Scheduled") == base["Scheduled"]
    assert _recordings("Cached") == base["Cached"] + 2
    assert sample("voicevault_cached_recordings") == 2
    gauge.forget(b)
    gauge.forget(b)  # a second DELETED event (a relist) changes nothing
    assert sample("voicevault_cached_recordings") == 1 and len(gauge) == 1 and b not in gauge
    gauge.seen(a, "Completed")
    gauge.forget(a)
    assert _recordings("Cached") == base["Cached"] and len(gauge) == 0
    assert sample("voicevault_cached_recordings") == 0


def test_a_settled_recording_costs_the_gauge_one_map_entry() -> None:
    """Measured with tracemalloc over 20,000 Completed recordings whose phase string, as
    in each watch event, is a copy of its own; the UID strings are kopf's (alive anyway)."""
    count = 20_000
    uids = [str(uuid.uuid4()) for _ in range(count)]
    gauge = PhaseGauge()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for uid in uids:
            gauge.seen(uid, json.loads('"Completed"'))  # a string of its own, as from JSON
        gc.collect()
        per_recording = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
        for uid in uids:
            gauge.forget(uid)
    # a dict entry with its share of the table (about 21 bytes); a phase string kept per
    # recording would be 58 more
    assert per_recording < 40, f"{per_recording:.0f} bytes per settled recording"
