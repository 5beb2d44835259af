"""Run one uploader pod's batch: upload (or purge) each recording, report, clean up.

Rules, in the seed's words and ours:
- stored: write Completed, then delete the local media and its resume state. If
  Completed could not be written, keep both, so the next attempt records it without
  uploading again (the platform keeps no copy once the outcome is recorded). With a
  metadata document, "stored" means the media and then its document (metadata_store);
  a document that could not be written fails by the same rules below, and the status
  shows the media URL with the metadata pending.
- fatal: delete the media at once, write Failed.
- transient: keep the media and the resume state; the operator applies the retry policy
  when it reads this pod's outcome.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicevault.contract import BatchItem, BatchOutcome, BatchSpec, ErrorCode, ItemResult
from voicevault.uploader import envelope
from voicevault.uploader.bucketurl import parse_bucket_url
from voicevault.uploader.errors import UploadError, classify, fatal, transient
from voicevault.uploader.media import (
    MediaPathError,
    content_type_for,
    delete_media,
    ownership_problem,
    resolve_media,
)
from voicevault.uploader.metadata_store import store_metadata
from voicevault.uploader.recordingstatus import StatusReporter
from voicevault.uploader.s3calls import abort_open_uploads
from voicevault.uploader.state import StateStore
from voicevault.uploader.transfer import (
    EncryptionKey,
    TransferConfig,
    UploadRequest,
    upload,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("voicevault.uploader")

ClientFactory = Callable[[BatchItem], "S3Client"]


@dataclass(frozen=True)
class BatchSettings:
    media_root: Path
    state_dir: Path
    concurrency: int = 4  # recordings at once
    transfer: TransferConfig = field(default_factory=lambda: TransferConfig(concurrency=2))
    progress_interval: float = 10.0  # seconds between Uploading status writes


class _ItemProgress:
    """Throttled Uploading writes: the first after `interval`, then at most one per interval."""

    def __init__(
        self, item: BatchItem, reporter: StatusReporter, interval: float, cancel: threading.Event
    ) -> None:
        self.item, self.reporter, self.interval, self.cancel = item, reporter, interval, cancel
        self.total = 0
        self.done = 0
        self.lock = threading.Lock()
        self.next_write = time.monotonic() + interval

    def start(self, total: int) -> None:
        self.total = total

    def advance(self, done: int) -> None:
        with self.lock:
            self.done += done
            now = time.monotonic()
            if now < self.next_write or self.done >= self.total:
                return
            self.next_write = now + self.interval
            sent, total = self.done, self.total
        if not self.reporter.progress(self.item, sent, total):
            log.debug("progress not written", extra={"sid": self.item.sid})


def run_batch(
    spec: BatchSpec,
    settings: BatchSettings,
    reporter: StatusReporter,
    client_for: ClientFactory,
    cancel: threading.Event,
    pool: ThreadPoolExecutor | None = None,
) -> BatchOutcome:
    """Process every item with bounded concurrency; results come back in batch order.

    A pod that runs batch after batch passes its own `pool` (of `settings.concurrency`
    threads): the same threads, and so the same keep-alive API connections, serve all
    its batches, instead of new threads and TLS handshakes for each small batch."""
    results: list[ItemResult | None] = [None] * len(spec.items)
    store = StateStore(settings.state_dir)

    def work(index: int, item: BatchItem) -> None:
        if cancel.is_set():
            return
        results[index] = _process(item, settings, store, reporter, client_for, cancel)

    with contextlib.ExitStack() as owned:
        if pool is None:
            pool = owned.enter_context(worker_pool(settings))
        for future in [pool.submit(work, i, item) for i, item in enumerate(spec.items)]:
            future.result()
    resent = sum(r.parts_resent for r in results if r is not None)
    return BatchOutcome(results=results, parts_resent=resent)


def worker_pool(settings: BatchSettings) -> ThreadPoolExecutor:
    """The threads a batch's items run on: `settings.concurrency` at once."""
    return ThreadPoolExecutor(max_workers=max(1, settings.concurrency), thread_name_prefix="item")


def _process(
    item: BatchItem,
    settings: BatchSettings,
    store: StateStore,
    reporter: StatusReporter,
    client_for: ClientFactory,
    cancel: threading.Event,
) -> ItemResult:
    ctx = {"recording": f"{item.namespace}/{item.name}", "sid": item.sid}
    if item.action == "purge":
        return _purge(item, settings, store, client_for, ctx)
    started = time.monotonic()
    try:
        path = resolve_media(settings.media_root, item.namespace, item.media_path)
        problem = ownership_problem(path)
        if problem:
            raise transient(problem)
        request = _request(item, path)
        client = client_for(item)
        progress = _ItemProgress(item, reporter, settings.progress_interval, cancel)
        result = upload(client, request, store, settings.transfer, progress, cancel)
        if item.metadata is not None:
            try:
                store_metadata(
                    client, request, result, item.metadata, store, settings.transfer.part_attempts
                )
            except UploadError as failure:
                reporter.metadata_pending(item, result, failure)
                return _report_failure(item, _metadata_error(failure), reporter, path, store, ctx)
    except MediaPathError as exc:
        # not ours to delete: the path leads outside the namespace's folder, or is no file
        error = fatal(ErrorCode.UPLOAD_FAILED, f"invalid media path: {exc}")
        return _report_failure(item, error, reporter, None, store, ctx)
    except UploadError as failure:
        media = _media_or_none(settings, item)
        return _report_failure(item, failure, reporter, media, store, ctx)
    except Exception as exc:
        log.exception("unexpected error", extra=ctx)
        media = _media_or_none(settings, item)
        return _report_failure(item, classify(exc, "upload"), reporter, media, store, ctx)
    elapsed = time.monotonic() - started
    log.info(
        "stored %d bytes in %.2fs (%d parts sent, %d skipped, %d re-sent)",
        result.size,
        elapsed,
        result.parts_sent,
        result.parts_skipped,
        result.parts_resent,
        extra=ctx
        | {"event": "stored", "resumed": result.resumed, "parts_resent": result.parts_resent},
    )
    if not reporter.completed(item, result):
        return ItemResult(
            kind="completed-unrecorded",
            message="stored; status not written yet",
            parts_resent=result.parts_resent,
        )
    delete_media(path)
    store.wipe(item.sid)
    return ItemResult(kind="completed", parts_resent=result.parts_resent)


def _request(item: BatchItem, path: Path) -> UploadRequest:
    location = parse_bucket_url(item.bucket_url, endpoint_url=item.endpoint_url, region=item.region)
    encryption = None
    if item.public_key:
        try:
            key = envelope.load_public_key(item.public_key)
        except envelope.InvalidPublicKey as exc:
            raise fatal(ErrorCode.INVALID_PUBLIC_KEY, f"invalid public key: {exc}") from None
        encryption = EncryptionKey(
            public_key=key, sid=item.public_key_sid or envelope.public_key_sid(key)
        )
    return UploadRequest(
        source=path,
        media_name=item.media_path,
        location=location,
        key=item.object_key,
        content_type=content_type_for(path.suffix, encrypted=encryption is not None),
        encryption=encryption,
        state_name=item.sid,
        with_metadata=item.metadata is not None,
    )


def _metadata_error(error: UploadError) -> UploadError:
    """The same failure, saying that only the metadata document is missing."""
    return UploadError(
        error.error_class,
        error.code,
        f"media stored; metadata document not stored: {error.message}",
        error.s3_code,
    )


def _media_or_none(settings: BatchSettings, item: BatchItem) -> Path | None:
    try:
        return resolve_media(settings.media_root, item.namespace, item.media_path)
    except MediaPathError:
        return None


def _report_failure(
    item: BatchItem,
    error: UploadError,
    reporter: StatusReporter,
    media: Path | None,
    store: StateStore,
    ctx: Mapping[str, Any],
) -> ItemResult:
    extra = dict(ctx) | {"error_code": int(error.code), "error_class": error.error_class.value}
    if not error.fatal:
        log.warning("transient failure: %s", error.message, extra=extra | {"event": "transient"})
        return ItemResult(kind="transient", error_code=int(error.code), message=error.message)
    log.error("fatal failure: %s", error.message, extra=extra | {"event": "fatal"})
    deleted = media is not None and delete_media(media)
    if deleted:
        log.info("local media deleted after a fatal error", extra=dict(ctx))
    store.wipe(item.sid)
    recorded = reporter.failed(item, error, deleted)
    return ItemResult(
        kind="fatal" if recorded else "fatal-unrecorded",
        error_code=int(error.code),
        message=error.message,
    )


def _purge(
    item: BatchItem,
    settings: BatchSettings,
    store: StateStore,
    client_for: ClientFactory,
    ctx: Mapping[str, Any],
) -> ItemResult:
    """The Recording is being deleted: abort its open upload, remove its media and state."""
    try:
        abort_open_uploads(client_for(item), item.bucket, item.object_key)
    except Exception as exc:
        error = classify(exc, "abort")
        log.warning("purge failed: %s", error.message, extra=dict(ctx))
        return ItemResult(kind="transient", error_code=int(error.code), message=error.message)
    media = _media_or_none(settings, item)
    if media is not None:
        delete_media(media)
    store.wipe(item.sid)
    log.info("purged local media and open uploads", extra=dict(ctx) | {"event": "purged"})
    return ItemResult(kind="purged")
