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

from voicevault import API_GROUP, API_VERSION
from voicevault.crds.recording import PLURAL, Phase, Reason
from voicevault.operator.conditions import condition, merge_conditions, parse_time
from voicevault.uploader.batchspec import BatchItem
from voicevault.uploader.errors import UploadError, failed_summary
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


TERMINAL = (Phase.COMPLETED.value, Phase.FAILED.value)


def completed_patch(result: UploadResult, status: dict[str, Any], at: str) -> dict[str, Any] | None:
    """None when the status already says so: a write whose answer was lost and that is
    retried must not write the outcome a second time (with a new completionTime)."""
    if status.get("phase") in TERMINAL:
        return None
    upload = dict(status.get("upload") or {})
    upload.update({"bytesSent": result.size, "bytesTotal": result.size})
    extra: dict[str, Any] = {}
    if result.metadata_url:
        stored = condition(
            METADATA_CONDITION,
            True,
            "MetadataStored",
            f"metadata document stored at {result.metadata_url}",
            _parse(at),
        )
        extra = {
            "metadataUrl": result.metadata_url,
            "conditions": merge_conditions(status.get("conditions") or [], [stored]),
        }
    return extra | {
        "phase": Phase.COMPLETED.value,
        "reason": None,
        "message": "Stored in the bucket"
        + (" with its metadata document" if result.metadata_url else "")
        + "; local media deleted",
        "mediaUrl": result.media_url,
        "size": result.source_size,
        "encryptionDetails": result.encryption.to_status() if result.encryption else None,
        "completionTime": at,
        "upload": upload,
        "errorCode": None,
        "errorClass": None,
        "errorMessage": None,
        "nextRetryTime": None,
    }


def failed_patch(
    error: UploadError, status: dict[str, Any], at: str, *, media_deleted: bool
) -> dict[str, Any] | None:
    if status.get("phase") in TERMINAL:
        return None
    return {
        "phase": Phase.FAILED.value,
        "reason": Reason.FATAL_ERROR.value,
        "message": failed_summary(int(error.code), media_deleted=media_deleted),
        "errorCode": int(error.code),
        "errorClass": error.error_class.value,
        "errorMessage": error.message[:1024],
        "firstFailureTime": status.get("firstFailureTime") or at,
        "lastFailureTime": at,
        "nextRetryTime": None,
    }


METADATA_CONDITION = "MetadataStored"


def metadata_pending_patch(
    result: UploadResult, error: UploadError, url: str, status: dict[str, Any], at: str
) -> dict[str, Any] | None:
    """The media URL (it is stored) and a MetadataStored=False condition saying why not."""
    if status.get("phase") in TERMINAL:
        return None
    if error.fatal:
        reason, then = "MetadataFailed", "not retried"
    else:
        reason, then = "MetadataPending", "written on the next attempt"
    pending = condition(
        METADATA_CONDITION,
        False,
        reason,
        f"metadata document {url} not stored ({then}): error {int(error.code)}: {error.message}"[
            :1024
        ],
        _parse(at),
    )
    return {
        "mediaUrl": result.media_url,
        "size": result.source_size,
        "encryptionDetails": result.encryption.to_status() if result.encryption else None,
        "conditions": merge_conditions(status.get("conditions") or [], [pending]),
    }


def _parse(at: str) -> datetime:
    return parse_time(at) or datetime.now(UTC)


def progress_patch(sent: int, total: int, status: dict[str, Any], at: str) -> dict[str, Any] | None:
    """None once the outcome is written: progress never moves a finished recording back."""
    if status.get("phase") in TERMINAL:
        return None
    upload = dict(status.get("upload") or {})
    upload.setdefault("startedAt", at)
    upload.update({"bytesSent": sent, "bytesTotal": total})
    return {"phase": Phase.UPLOADING.value, "reason": None, "upload": upload}


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
        return self._write(item, lambda s: progress_patch(sent, total, s, now_iso()), retry=False)

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
