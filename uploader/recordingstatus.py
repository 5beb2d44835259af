"""Writing an upload's progress and outcome into its Recording's status, conflict-safe.

Every write is a merge patch carrying the resourceVersion of the status it was built on.
The batch tells the pod each recording's status as the operator's Scheduled write left
it, and its resourceVersion; after that, each answer gives the next. So the common
write needs no read. If anyone wrote in between, the apiserver answers 409: then, and
only then, the pod reads the recording, checks that it still owns the attempt (same
uid, `status.upload.pod` is this pod) and builds the write again on what it read. A pod
that lost ownership (the operator gave up on it, the Recording was retried) writes
nothing. A write whose answer was lost is sent again and meets a 409; the read then
shows the outcome already there, and the phase functions return None: nothing is
written twice.

A batch handed to a running pod is not marked Scheduled: its items carry their claim,
and the first write of each carries the claim with it. On a 409 before the claim is
written, the recording is still the pod's if nobody claimed or settled it since
(`phases.claim_open`); the write is then built again on what was read, claim included.

Before an outcome write the pod posts its Stored or Failed Event, under the name the
operator's settlement would give it, so a retry or a crash never posts a second one.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from voicevault import API_GROUP, API_VERSION, phases
from voicevault.contract import BatchItem
from voicevault.crds.recording_names import KIND, PLURAL
from voicevault.uploader.errors import UploadError
from voicevault.uploader.kubeapi import KubeApi, KubeApiError, custom_object_path, events_path
from voicevault.uploader.transfer import UploadResult

log = logging.getLogger("voicevault.uploader.status")
COMPONENT = "voicevault-uploader"

Mutation = Callable[[dict[str, Any]], dict[str, Any] | None]


class StatusReporter(Protocol):
    def progress(self, item: BatchItem, sent: int, total: int) -> bool: ...

    def completed(self, item: BatchItem, result: UploadResult) -> bool: ...

    def failed(self, item: BatchItem, error: UploadError, media_deleted: bool) -> bool: ...

    def metadata_pending(self, item: BatchItem, result: UploadResult, error: UploadError) -> bool:
        """The media is stored but its metadata document is not (yet)."""
        ...


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def completed_patch(result: UploadResult, status: dict[str, Any], at: str) -> dict[str, Any] | None:
    """`phases.completed` for an upload's result."""
    return phases.completed(
        status,
        media_url=result.media_url,
        stored=result.size,
        source_size=result.source_size,
        encryption=result.encryption.to_status() if result.encryption else None,
        metadata_url=result.metadata_url,
        at=at,
    )


def failed_patch(
    error: UploadError, status: dict[str, Any], at: str, *, media_deleted: bool
) -> dict[str, Any] | None:
    """`phases.failed` for an upload's fatal error."""
    return phases.failed(
        status,
        code=int(error.code),
        error_class=error.error_class.value,
        message=error.message,
        media_deleted=media_deleted,
        at=at,
    )


def metadata_pending_patch(
    result: UploadResult, error: UploadError, url: str, status: dict[str, Any], at: str
) -> dict[str, Any] | None:
    """`phases.metadata_pending` for a stored media whose metadata document is not."""
    return phases.metadata_pending(
        status,
        media_url=result.media_url,
        source_size=result.source_size,
        encryption=result.encryption.to_status() if result.encryption else None,
        metadata_url=url,
        fatal=error.fatal,
        code=int(error.code),
        message=error.message,
        at=at,
    )


@dataclass
class _Known:
    """The status this pod last saw for a recording, and the resourceVersion it had."""

    resource_version: str
    status: dict[str, Any]
    claim: dict[str, Any] | None = None  # still to be written with the next write


class KubeStatusReporter:
    """Reports through the Kubernetes API as pod `pod`."""

    def __init__(
        self,
        api: KubeApi,
        pod: str,
        *,
        deadline_seconds: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api = api
        self.pod = pod
        self.deadline_seconds = deadline_seconds
        self.sleep = sleep
        self.requests = 0
        self._known: dict[str, _Known] = {}  # by uid
        self._spent: set[str] = set()  # uids whose batch resourceVersion met a conflict
        self._lock = threading.Lock()
        self._event_failure_logged = False

    def progress(self, item: BatchItem, sent: int, total: int) -> bool:
        return self._write(item, lambda s: phases.uploading(s, sent, total, now_iso()), retry=False)

    def completed(self, item: BatchItem, result: UploadResult) -> bool:
        return self._write(item, lambda s: completed_patch(result, s, now_iso()), outcome=True)

    def failed(self, item: BatchItem, error: UploadError, media_deleted: bool) -> bool:
        return self._write(
            item,
            lambda s: failed_patch(error, s, now_iso(), media_deleted=media_deleted),
            outcome=True,
        )

    def metadata_pending(self, item: BatchItem, result: UploadResult, error: UploadError) -> bool:
        url = item.metadata.url if item.metadata else ""
        return self._write(item, lambda s: metadata_pending_patch(result, error, url, s, now_iso()))

    def _write(
        self, item: BatchItem, mutate: Mutation, *, retry: bool = True, outcome: bool = False
    ) -> bool:
        """Apply `mutate` to the status; False if not ours any more or the API stayed away."""
        give_up_at = time.monotonic() + (self.deadline_seconds if retry else 0)
        delay = 0.5
        while True:
            try:
                return self._write_once(item, mutate, outcome=outcome)
            except KubeApiError as exc:
                if exc.status == 409:
                    self._forget(item)  # someone wrote in between: read, then build again
                    continue
                if exc.status == 404:
                    log.info("recording is gone", extra=_ctx(item))
                    return False
                failure = _failure(exc)
            except Exception as exc:  # anything else: the apiserver restarting, a bad answer
                failure = type(exc).__name__
            self._forget(item)  # the write may have gone through: do not build on a guess
            if time.monotonic() >= give_up_at:
                log.warning(
                    "could not write status: %s",
                    failure,
                    extra=_ctx(item) | {"event": "patch_failed"},
                )
                return False
            self.sleep(delay * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, 8.0)

    def _write_once(self, item: BatchItem, mutate: Mutation, *, outcome: bool) -> bool:
        known = self._base(item)
        if known is None:
            return False
        patch = mutate(known.status)
        if patch is None:
            return True
        if outcome:
            self._post_outcome_event(item, known, patch)
        if known.claim:
            patch = known.claim | patch  # the in-pod patches keep the claim's `upload.pod`
        self.requests += 1
        written = self.api.merge_patch(
            self._path(item),
            {"metadata": {"resourceVersion": known.resource_version}, "status": patch},
        )
        self._remember(item, written)
        return True

    def _base(self, item: BatchItem) -> _Known | None:
        """What to build the write on: the last answer, the batch's word, or a read."""
        with self._lock:
            known = self._known.get(item.uid)
            spent = item.uid in self._spent
        if known is None and item.resource_version and not spent:
            known = _Known(item.resource_version, dict(item.status), item.claim or None)
        if known is not None:
            return known
        self.requests += 1
        current = self.api.get(self._path(item))
        meta = current.get("metadata") or {}
        status = current.get("status") or {}
        if meta.get("uid") == item.uid:
            if (status.get("upload") or {}).get("pod") == self.pod:
                return self._remember(item, current)
            if item.claim and phases.claim_open(status, item.claim):
                return self._remember(item, current, item.claim)
        log.info("recording is no longer this pod's to report", extra=_ctx(item))
        return None

    def _remember(
        self, item: BatchItem, body: dict[str, Any], claim: dict[str, Any] | None = None
    ) -> _Known:
        """`body` as the base of the next write, which also writes `claim` (applied)."""
        known = _Known(
            str((body.get("metadata") or {}).get("resourceVersion", "")),
            dict(body.get("status") or {}) | (claim or {}),
            claim,
        )
        with self._lock:
            self._known[item.uid] = known
        return known

    def _forget(self, item: BatchItem) -> None:
        """The next write reads first (the batch's resourceVersion is spent too)."""
        with self._lock:
            self._known.pop(item.uid, None)
            self._spent.add(item.uid)

    def _path(self, item: BatchItem) -> str:
        return custom_object_path(
            API_GROUP, API_VERSION, item.namespace, PLURAL, item.name, "status"
        )

    def _post_outcome_event(self, item: BatchItem, known: _Known, patch: dict[str, Any]) -> None:
        """Best effort: an Event that cannot be posted never stops the status write."""
        named = phases.outcome_event(item.uid, item.name, known.status, patch)
        body = event_body(item, known.resource_version, named)
        self.requests += 1
        try:
            self.api.create(events_path(item.namespace), body)
        except KubeApiError as exc:
            if exc.status == 409:
                return  # posted before this retry or crash: the same Event
            self._event_failed(item, _failure(exc))
        except Exception as exc:
            self._event_failed(item, type(exc).__name__)

    def _event_failed(self, item: BatchItem, failure: str) -> None:
        if not self._event_failure_logged:
            self._event_failure_logged = True
            log.warning(
                "could not post the outcome Event: %s (logged once per pod)",
                failure,
                extra=_ctx(item) | {"event": "event_failed"},
            )


def event_body(item: BatchItem, resource_version: str, named: phases.NamedEvent) -> dict[str, Any]:
    """A core/v1 Event about the item's Recording, as the operator's Events look."""
    now = now_iso()
    return {
        "metadata": {"name": named.name, "namespace": item.namespace},
        "involvedObject": {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": KIND,
            "name": item.name,
            "namespace": item.namespace,
            "uid": item.uid,
            "resourceVersion": resource_version,
        },
        "reason": named.event.reason,
        "message": named.event.message[:1024],
        "type": named.event.type,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def _failure(exc: KubeApiError) -> str:
    return f"HTTP {exc.status} {exc.reason}" if exc.status else exc.reason


def _ctx(item: BatchItem) -> dict[str, Any]:
    return {"recording": f"{item.namespace}/{item.name}", "sid": item.sid}
