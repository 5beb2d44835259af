"""Prometheus metrics of the operator. Labels never carry secrets or unbounded values
other than namespace (an account) and phase."""

from __future__ import annotations

import sys

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from voicevault.crds.recording import Phase

UPLOADS = Counter(
    "voicevault_uploads_total",
    "Upload attempts by result (completed, transient, fatal, lost).",
    ["result"],
)
UPLOADED_BYTES = Counter("voicevault_uploaded_bytes_total", "Media bytes stored in buckets.")
PARTS_RESENT = Counter(
    "voicevault_upload_parts_resent_total",
    "Upload bodies the storage rejected as corrupted in transit (checksum) and re-sent.",
)
UPLOAD_LATENCY = Histogram(
    "voicevault_recording_store_seconds",
    "Time from a Recording's creation to Completed.",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 7200, 14400),
)
RECORDINGS = Gauge("voicevault_recordings", "Recordings by phase, as last seen.", ["phase"])
RETRIES = Counter("voicevault_retries_total", "Transient failures that scheduled a retry.")
CACHED = Gauge("voicevault_cached_recordings", "Recordings whose media is cached on a node.")
CACHED_TOTAL = Counter("voicevault_cached_total", "Recordings that ended a retry window cached.")
SETTING_VALID = Gauge(
    "voicevault_storage_setting_valid",
    "1 when the namespace's VoiceStorageSetting is Ready and Validated, else 0.",
    ["namespace"],
)
CALLBACKS = Counter("voicevault_callbacks_total", "Status callbacks by result.", ["result"])
PODS_CREATED = Counter("voicevault_uploader_pods_created_total", "Uploader pods created.")
PODS_ACTIVE = Gauge("voicevault_uploader_pods_active", "Uploader pods not yet finished.")
RECORDINGS_HANDED = Counter(
    "voicevault_uploader_recordings_handed_total",
    "Recordings handed to an uploader pod already running, which asked for more work.",
)
KUBE_REQUESTS = Counter(
    "voicevault_kube_requests_total",
    "Kubernetes API requests by verb and resource.",
    ["verb", "resource"],
)
SECRET_WATCH_BYTES = Counter(
    "voicevault_secret_watch_bytes_total",
    "Bytes of Secret metadata received by the list and watch (bodies are never watched).",
)
LEADER = Gauge("voicevault_leader", "1 while this replica holds the leader Lease, else 0.")
LEADER_TRANSITIONS = Counter(
    "voicevault_leader_transitions_total", "Times this replica took the leader Lease."
)
EVENT_FAILURES = Counter("voicevault_event_post_failures_total", "Events that could not be posted.")
RECORDING_EVENTS_WAITING = Gauge(
    "voicevault_recording_events_waiting", "Recordings with a watch event not yet handled."
)
RECORDING_REREADS = Counter(
    "voicevault_recording_rereads_total",
    "Recordings read again because their watch event was queued by name only (a backlog).",
)
EVENTS_PENDING = Gauge("voicevault_events_pending", "Events waiting to be posted.")
EVENTS_DROPPED = Counter(
    "voicevault_events_dropped_total",
    "Events not posted because too many were waiting (Normal ones go first).",
    ["type"],
)
HEAP_BLOCKS = Gauge(
    "voicevault_python_heap_blocks",
    "Memory blocks Python holds for live objects. Growth here is live state; RSS growth "
    "without it is the allocator's high-water mark.",
)
HEAP_BLOCKS.set_function(sys.getallocatedblocks)
WEBHOOK_REVIEWS = Counter(
    "voicevault_webhook_reviews_total",
    "Admission reviews answered by the webhooks (validating and mutating), by kind and decision.",
    ["kind", "allowed"],
)
WEBHOOK_CERT_EXPIRY = Gauge(
    "voicevault_webhook_cert_expiry_timestamp_seconds",
    "When the webhook's serving certificate in use expires (Unix time).",
)


# Every known label value is exported from the start, at 0: the alert rules and the
# dashboard (charts/voicevault/templates/prometheusrule.yaml) take rates and differences,
# and a series that first appears at 1 hides its first increase from them.
for _result in ("completed", "recorded", "transient", "fatal", "lost"):
    UPLOADS.labels(result=_result)
for _result in ("delivered", "failed"):
    CALLBACKS.labels(result=_result)
for _type in ("Normal", "Warning"):
    EVENTS_DROPPED.labels(type=_type)
for _phase in Phase:
    RECORDINGS.labels(phase=_phase.value)


def sample(name: str, **labels: str) -> float:
    """One sample as a scrape would read it (0 before it is first set), e.g.
    `sample("voicevault_events_dropped_total", type="Normal")`."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


class PhaseGauge:
    """`voicevault_recordings` by phase and `voicevault_cached_recordings`, kept from the
    last phase seen of each recording.

    A watch event carries only the new object, so the phase a recording leaves is
    remembered per UID. That map is held for every Recording in the cluster, so it is
    kept small: the phase strings are interned (each event's JSON gives its own copy
    otherwise, 58 bytes a Completed recording), and the Cached count is kept as a number
    instead of counting the map at each change.
    """

    def __init__(self) -> None:
        self._phases: dict[str, str] = {}  # uid -> last phase seen
        self._cached = 0

    def __len__(self) -> int:
        return len(self._phases)

    def __contains__(self, uid: object) -> bool:
        return uid in self._phases

    def seen(self, uid: str, phase: str) -> str | None:
        """Count `uid` in `phase`; the phase it was counted in before (None: first seen)."""
        phase = sys.intern(phase)
        old = self._phases.get(uid)
        if old == phase:
            return old
        if old is not None:
            RECORDINGS.labels(phase=old).dec()
        RECORDINGS.labels(phase=phase).inc()
        self._phases[uid] = phase
        self._count_cached(old, phase)
        return old

    def forget(self, uid: str) -> None:
        """The recording is gone: it is counted nowhere."""
        old = self._phases.pop(uid, None)
        if old is not None:
            RECORDINGS.labels(phase=old).dec()
            self._count_cached(old, None)

    def _count_cached(self, old: str | None, new: str | None) -> None:
        cached = Phase.CACHED.value
        if cached in (old, new):
            self._cached += (new == cached) - (old == cached)
            CACHED.set(self._cached)
