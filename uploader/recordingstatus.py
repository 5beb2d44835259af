"""Writing an upload's progress and outcome into its Recording's status, conflict-safe.

Every write reads the status, checks that this pod still owns the attempt
(`status.upload.pod`), and sends a merge patch carrying the resourceVersion it read: if
anyone wrote in between, the apiserver answers 409 and we read again. A pod that lost
ownership (the operator gave up on it, the Recording was retried) writes nothing.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from voicevault import API_GROUP, API_VERSION, phases
from voicevault.contract import BatchItem
from voicevault.crds.recording import PLURAL
from voicevault.uploader.errors import UploadError
from voicevault.uploader.transfer import UploadResult

log = logging.getLogger("voicevault.uploader.status")

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


class KubeStatusReporter:
    """Reports through the Kubernetes API as pod `pod`."""

    def __init__(
        self,
        api: k8s.CustomObjectsApi,
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

    def progress(self, item: BatchItem, sent: int, total: int) -> bool:
        return self._write(item, lambda s: phases.uploading(s, sent, total, now_iso()), retry=False)

    def completed(self, item: BatchItem, result: UploadResult) -> bool:
        return self._write(item, lambda s: completed_patch(result, s, now_iso()))

    def failed(self, item: BatchItem, error: UploadError, media_deleted: bool) -> bool:
        return self._write(
            item, lambda s: failed_patch(error, s, now_iso(), media_deleted=media_deleted)
        )

    def metadata_pending(self, item: BatchItem, result: UploadResult, error: UploadError) -> bool:
        url = item.metadata.url if item.metadata else ""
        return self._write(item, lambda s: metadata_pending_patch(result, error, url, s, now_iso()))

    def _write(self, item: BatchItem, mutate: Mutation, *, retry: bool = True) -> bool:
        """Apply `mutate` to the status; False if not ours any more or the API stayed away."""
        give_up_at = time.monotonic() + (self.deadline_seconds if retry else 0)
        delay = 0.5
        while True:
            try:
                return self._write_once(item, mutate)
            except ApiException as exc:
                if exc.status == 409:
                    continue  # someone wrote in between: read again
                if exc.status == 404:
                    log.info("recording is gone", extra=_ctx(item))
                    return False
                failure = f"HTTP {exc.status} {exc.reason}"
            except Exception as exc:  # network errors, apiserver restarting
                failure = type(exc).__name__
            if time.monotonic() >= give_up_at:
                log.warning(
                    "could not write status: %s",
                    failure,
                    extra=_ctx(item) | {"event": "patch_failed"},
                )
                return False
            self.sleep(delay * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, 8.0)

    def _write_once(self, item: BatchItem, mutate: Mutation) -> bool:
        self.requests += 1
        current: dict[str, Any] = self.api.get_namespaced_custom_object_status(  # type: ignore[assignment]
            API_GROUP, API_VERSION, item.namespace, PLURAL, item.name
        )
        meta = current.get("metadata", {})
        status = current.get("status") or {}
        if meta.get("uid") != item.uid or (status.get("upload") or {}).get("pod") != self.pod:
            log.info("recording is no longer this pod's to report", extra=_ctx(item))
            return False
        patch = mutate(status)
        if patch is None:
            return True
        self.requests += 1
        self.api.patch_namespaced_custom_object_status(
            API_GROUP,
            API_VERSION,
            item.namespace,
            PLURAL,
            item.name,
            {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": patch},
            _content_type="application/merge-patch+json",
        )
        return True


def _ctx(item: BatchItem) -> dict[str, Any]:
    return {"recording": f"{item.namespace}/{item.name}", "sid": item.sid}
