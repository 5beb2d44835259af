"""Uploader pods: one per node with due work, carrying a bounded batch of recordings.

The scheduler owns the node queues and the pods it launched. For a node with due work
and no pod it marks each recording Scheduled (guarded by the resourceVersion it queued
with, so stale work is dropped), creates the pod and its batch Secret, then watches the
pod until it ends and turns its outcome into each recording's next status. A pod that
crashes, is evicted, never starts or vanishes becomes a transient failure of the
recordings it had not finished: never a silent loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from voicevault.crds.recording import FINALIZER, PLURAL, Phase, StorageSnapshot
from voicevault.operator import metrics, pods
from voicevault.operator.config import OperatorConfig
from voicevault.operator.kube import Kube, is_status
from voicevault.operator.queues import NodeQueues, QueueEntry
from voicevault.operator.recordings import (
    Event,
    RecordingView,
    fatal_failure,
    requeued,
    transient_failure,
)
from voicevault.uploader.batchspec import (
    BATCH_FILE,
    BatchItem,
    BatchOutcome,
    BatchSpec,
    CredentialFile,
    ItemResult,
    credential_file_name,
)
from voicevault.uploader.errors import ErrorCode

log = logging.getLogger("voicevault.operator.scheduler")

# (namespace, credential name) -> credential file contents, or an error message
CredentialResolver = Callable[[str, str], Awaitable[CredentialFile | str]]
EventPoster = Callable[[dict[str, Any], Event], Awaitable[None]]
Clock = Callable[[], datetime]
RELAUNCH_DELAY = timedelta(seconds=5)
API_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)  # reading a recording after its pod ended


@dataclass
class ActivePod:
    name: str
    node: str
    items: list[QueueEntry]
    secret: str
    started: datetime
    uid: str | None = None
    seen: bool = False  # listed at least once since creation


def utcnow() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    def __init__(
        self,
        kube: Kube,
        config: OperatorConfig,
        resolve_credential: CredentialResolver,
        post_event: EventPoster,
        clock: Clock = utcnow,
        hold: Callable[[QueueEntry], bool] = lambda _: False,
    ) -> None:
        self.kube = kube
        self.hold = hold  # True: not to be uploaded now (the controller takes it back)
        self.config = config
        self.resolve_credential = resolve_credential
        self.post_event = post_event
        self.clock = clock
        self.queues = NodeQueues()
        self.active: dict[str, ActivePod] = {}  # by node
        self._wake = asyncio.Event()
        self._ready = False
        self._stopping = False
        self._finishing: set[str] = set()

    # -- what the recording controller asks -------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once existing uploader pods have been adopted (after a restart)."""
        return self._ready

    def enqueue(self, entry: QueueEntry) -> None:
        """Queue work for the entry's node. While that node's pod runs nothing is launched
        there, and a stale entry is dropped when marking it Scheduled fails (409)."""
        self.queues.put(entry)
        self._wake.set()

    def unqueue(self, uid: str) -> None:
        self.queues.remove(uid)

    def pod_is_known(self, pod_name: str) -> bool:
        return any(p.name == pod_name for p in self.active.values())

    # -- lifecycle --------------------------------------------------------------------------------

    async def adopt_existing_pods(self) -> None:
        """After a restart: keep following the uploader pods a previous run launched."""
        namespace = self.config.pods.namespace
        for pod in await self.kube.list_pods(namespace, pods.SELECTOR):
            meta = pod["metadata"]
            node = pod["spec"].get("nodeName") or meta.get("annotations", {}).get(
                "voicevault.io/node-name", ""
            )
            items = await self._items_from_secret(meta["name"])
            if items is None or node in self.active:
                log.warning(
                    "uploader pod without a readable batch; deleting it",
                    extra={"pod": meta["name"]},
                )
                await self.kube.delete_pod(namespace, meta["name"], grace_seconds=0)
                continue
            self.active[node] = ActivePod(
                name=meta["name"],
                node=node,
                items=items,
                secret=meta["name"],
                started=self.clock(),
                uid=meta.get("uid"),
                seen=True,
            )
        # a batch Secret whose pod is gone (a crash between creating the two) holds keys
        known = {p.secret for p in self.active.values()}
        for secret in await self.kube.list_secrets(namespace, pods.SELECTOR):
            name = secret.metadata.name if secret.metadata else None
            if name and name not in known:
                await self.kube.delete_secret(namespace, name)
        metrics.PODS_ACTIVE.set(len(self.active))
        self._ready = True
        log.info("adopted %d uploader pods", len(self.active))

    async def run(self) -> None:
        """The scheduling loop; returns when `stop()` is called."""
        while not self._stopping:
            try:
                await self._tick()
            except Exception:
                log.exception("scheduler tick failed; continuing")
            await self._sleep()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def _sleep(self) -> None:
        timeout = self.config.poll_interval if self.active else 30.0
        due = self.queues.next_due()
        if due is not None:
            timeout = min(timeout, max(0.05, (due - self.clock()).total_seconds()))
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def _tick(self) -> None:
        if self.active:
            await self._check_pods()
        now = self.clock()
        launches: list[Awaitable[None]] = []
        for node in self.queues.due_nodes(now):
            if node in self.active:
                continue
            if len(self.active) + len(launches) >= self.config.max_active_pods:
                break
            launches.append(self._launch(node, self.queues.take(node, now, self.config.batch_size)))
        if launches:
            await asyncio.gather(*launches)

    # -- launching ---------------------------------------------------------------------------------

    async def _launch(self, node: str, entries: list[QueueEntry]) -> None:
        name = pods.pod_name(node)
        active = ActivePod(name=name, node=node, items=[], secret=name, started=self.clock())
        self.active[node] = active  # before any write: a Scheduled event must find the pod
        try:
            await self._launch_batch(active, entries)
        except Exception:
            log.exception("launching an uploader pod on %s failed; its work is queued again", node)
            for entry in entries:
                if entry not in active.items:  # claimed ones are found again as pod-lost
                    entry.due = self.clock() + RELAUNCH_DELAY
                    self.queues.put(entry)
        finally:
            if not active.items or active.uid is None:
                self.active.pop(node, None)
            metrics.PODS_ACTIVE.set(len(self.active))

    async def _launch_batch(self, active: ActivePod, entries: list[QueueEntry]) -> None:
        node, name = active.node, active.name
        if not await self.kube.node_exists(node):
            await self._node_missing(node, entries)
            return
        found, usable = await self._credentials(entries)
        marked = await asyncio.gather(*(self._mark_scheduled(e, name) for e in usable))
        active.items = [e for e, ok in zip(usable, marked, strict=True) if ok]
        if not active.items:
            return
        # numbered over the items actually in the batch, so each item's credential file
        # is its own namespace's even when an earlier entry was dropped as stale
        batch, credentials = self._batch(name, node, active.items, found)
        manifest = pods.uploader_pod(name, node, name, self.config.pods)
        namespace = self.config.pods.namespace
        try:
            await self.kube.create_secret(
                namespace, pods.batch_secret(name, namespace, batch, credentials)
            )
            created = await self.kube.create_pod(namespace, manifest)
            active.uid = created["metadata"]["uid"]
            await self.kube.set_owner(namespace, name, pods.owner_reference(created))
        except Exception as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            log.error("cannot create uploader pod on %s: %s", node, reason, extra={"pod": name})
            await self.kube.delete_pod(namespace, name, grace_seconds=0)
            await self.kube.delete_secret(namespace, name)
            await self._fail_all(active, f"could not create the uploader pod: {reason}")
            return
        metrics.PODS_CREATED.inc()
        log.info(
            "uploader pod created",
            extra={
                "pod": name,
                "node": node,
                "items": len(active.items),
                "event": "pod_created",
            },
        )

    async def _credentials(
        self, entries: list[QueueEntry]
    ) -> tuple[dict[tuple[str, str], CredentialFile], list[QueueEntry]]:
        """Credentials by (namespace, credential name); entries whose credential is
        unusable fail now."""
        by_ref: dict[tuple[str, str], CredentialFile | None] = {}
        usable: list[QueueEntry] = []
        for entry in entries:
            if self.hold(entry):
                continue
            ref = (entry.namespace, entry.snapshot.credential_name)
            if ref not in by_ref:
                found = await self.resolve_credential(*ref)
                if isinstance(found, str):
                    by_ref[ref] = None
                    await self._transient_now(entry, found)
                    continue
                by_ref[ref] = found
            elif by_ref[ref] is None:
                await self._transient_now(entry, "credential not usable")
                continue
            usable.append(entry)
        return {ref: found for ref, found in by_ref.items() if found is not None}, usable

    async def _mark_scheduled(self, entry: QueueEntry, pod_name: str) -> bool:
        """Claim the recording for the pod; False if it changed since it was queued."""
        upload = {"pod": pod_name, "startedAt": None, "bytesSent": None, "bytesTotal": None}
        if entry.action == "purge":
            status: dict[str, Any] = {"upload": upload, "message": "Removing local media (deleted)"}
        else:
            status = {
                "phase": Phase.SCHEDULED.value,
                "reason": None,
                "upload": upload,
                "attempts": entry.attempts + 1,
                "message": f"In uploader pod {pod_name}'s batch (attempt {entry.attempts + 1})",
            }
        try:
            await self.kube.patch_status(
                PLURAL, entry.namespace, entry.name, status, entry.resource_version
            )
        except Exception as exc:
            if not is_status(exc, 404, 409, 422):
                log.warning("could not schedule %s: %s", entry.ref, type(exc).__name__)
                self.queues.put(entry)  # try again on a later tick
            return False
        if entry.action == "upload":
            await self.post_event(_ref_body(entry), Event("Normal", "Scheduled", status["message"]))
        return True

    def _batch(
        self,
        pod_name: str,
        node: str,
        entries: list[QueueEntry],
        found: dict[tuple[str, str], CredentialFile],
    ) -> tuple[BatchSpec, dict[str, CredentialFile]]:
        """The batch and its credential files: one file per (namespace, credential) of
        these entries, numbered in the same pass that names them in the items."""
        refs: dict[tuple[str, str], str] = {}
        files: dict[str, CredentialFile] = {}
        for entry in entries:
            ref = (entry.namespace, entry.snapshot.credential_name)
            if ref not in refs:
                refs[ref] = credential_file_name(len(files))
                files[refs[ref]] = found[ref]
        items = [
            BatchItem(
                namespace=e.namespace,
                name=e.name,
                uid=e.uid,
                sid=e.sid,
                action=e.action,
                media_path=e.media_path,
                bucket_url=e.snapshot.bucket_url,
                endpoint_url=e.snapshot.endpoint_url,
                region=e.snapshot.region,
                bucket=e.snapshot.bucket,
                object_key=e.snapshot.object_key,
                media_url=e.snapshot.media_url,
                public_key=e.snapshot.public_key,
                public_key_sid=e.snapshot.public_key_sid,
                credential=refs[(e.namespace, e.snapshot.credential_name)],
                credential_name=e.snapshot.credential_name,
                metadata=e.metadata,
            )
            for e in entries
        ]
        return BatchSpec(pod=pod_name, node=node, items=items), files

    async def _items_from_secret(self, name: str) -> list[QueueEntry] | None:
        found = await self.kube.secret_data(self.config.pods.namespace, name)
        if found is None or BATCH_FILE not in found[1]:
            return None
        try:
            batch = BatchSpec.model_validate_json(found[1][BATCH_FILE])
        except ValueError:
            return None
        now = self.clock()
        return [
            QueueEntry(
                namespace=i.namespace,
                name=i.name,
                uid=i.uid,
                resource_version="",
                node=batch.node,
                sid=i.sid,
                media_path=i.media_path,
                snapshot=StorageSnapshot(
                    setting_generation=0,
                    bucket_url=i.bucket_url,
                    endpoint_url=i.endpoint_url,
                    region=i.region,
                    bucket=i.bucket,
                    object_key=i.object_key,
                    media_url=i.media_url,
                    credential_name=i.credential_name,
                    public_key_sid=i.public_key_sid,
                    public_key=i.public_key,
                    retry_window_seconds=1,
                    initial_backoff_seconds=1,
                    max_backoff_seconds=1,
                ),
                attempts=0,
                action=i.action,
                due=now,
                created=now,
                metadata=i.metadata,
            )
            for i in batch.items
        ]

    # -- following pods ----------------------------------------------------------------------------

    async def _check_pods(self) -> None:
        listed = {
            p["metadata"]["name"]: p
            for p in await self.kube.list_pods(self.config.pods.namespace, pods.SELECTOR)
        }
        now = self.clock()
        finished = []
        for active in list(self.active.values()):
            if active.name in self._finishing or active.uid is None:
                continue
            pod = listed.get(active.name)
            if pod is None:
                if (
                    active.seen
                    or (now - active.started).total_seconds() > self.config.poll_interval * 5
                ):
                    finished.append(self._finish(active, None, "the uploader pod disappeared"))
                continue
            active.seen = True
            phase = pod.get("status", {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                finished.append(self._finish(active, pod, None))
            elif (
                phase in (None, "Pending")
                and (now - active.started).total_seconds() > self.config.pod_start_timeout
            ):
                finished.append(
                    self._finish(
                        active,
                        pod,
                        f"the uploader pod did not start on node {active.node} within "
                        f"{int(self.config.pod_start_timeout)}s{_waiting_reason(pod)}",
                    )
                )
        if finished:
            await asyncio.gather(*finished)

    async def _finish(
        self, active: ActivePod, pod: dict[str, Any] | None, lost: str | None
    ) -> None:
        self._finishing.add(active.name)
        try:
            outcome, why = _outcome(pod, lost)
            results = outcome.results if outcome else []
            metrics.PARTS_RESENT.inc(outcome.parts_resent if outcome else 0)
            await asyncio.gather(
                *(
                    self._apply(entry, active, results[i] if i < len(results) else None, why, pod)
                    for i, entry in enumerate(active.items)
                )
            )
            namespace = self.config.pods.namespace
            await self.kube.delete_pod(
                namespace, active.name, grace_seconds=0 if pod is None or lost is None else None
            )
            await self.kube.delete_secret(namespace, active.secret)
            log.info(
                "uploader pod finished",
                extra={
                    "pod": active.name,
                    "node": active.node,
                    "event": "pod_finished",
                    "reason": why or "done",
                },
            )
        finally:
            self._finishing.discard(active.name)
            if self.active.get(active.node) is active:
                del self.active[active.node]
            metrics.PODS_ACTIVE.set(len(self.active))
            self._wake.set()

    async def _apply(
        self,
        entry: QueueEntry,
        active: ActivePod,
        result: ItemResult | None,
        why: str | None,
        pod: dict[str, Any] | None,
    ) -> None:
        """Turn one item's result into its next status (only if the pod still owns it)."""
        body = await self._read_recording(entry)
        if body is None:
            return
        rec = RecordingView.from_body(body)
        if rec.uid != entry.uid or rec.pod != active.name:
            return
        if entry.action == "purge":
            await self._after_purge(rec, entry, result)
            return
        patch, event = self._next_status(rec, active, result, why, pod)
        if patch is None:
            return
        written = await self.kube.try_patch_status(
            PLURAL, rec.namespace, rec.name, patch, rec.resource_version
        )
        if written is not None and event is not None:
            await self.post_event(body, event)

    async def _read_recording(self, entry: QueueEntry) -> dict[str, Any] | None:
        """The recording, read again after its pod ended; retried while the API is away
        (an apiserver restart must not leave a recording claimed by a finished pod)."""
        for delay in (*API_RETRY_DELAYS, None):
            try:
                body: dict[str, Any] = await self.kube.get_status(
                    PLURAL, entry.namespace, entry.name
                )
            except Exception as exc:
                if is_status(exc, 404):
                    return None
                if delay is None:
                    log.warning("cannot read %s after its pod: %s", entry.ref, type(exc).__name__)
                    return None
                await asyncio.sleep(delay)
            else:
                return body
        return None

    def _next_status(
        self,
        rec: RecordingView,
        active: ActivePod,
        result: ItemResult | None,
        why: str | None,
        pod: dict[str, Any] | None,
    ) -> tuple[dict[str, Any] | None, Event | None]:
        now = self.clock()
        snapshot = rec.snapshot
        if snapshot is None:
            return None, None
        kind = result.kind if result else None
        if kind in ("completed", "fatal") or rec.phase in (Phase.COMPLETED, Phase.FAILED):
            metrics.UPLOADS.labels(result=kind or "recorded").inc()
            return None, None  # the uploader wrote it
        if kind == "fatal-unrecorded":
            metrics.UPLOADS.labels(result="fatal").inc()
            assert result is not None
            return fatal_failure(
                rec.status,
                code=result.error_code or int(ErrorCode.UPLOAD_FAILED),
                message=result.message,
                now=now,
            )
        if kind == "skipped" or (result is None and why is None and rec.phase is Phase.SCHEDULED):
            return requeued(
                "Back in the queue: the uploader pod stopped before this recording"
            ), None
        if kind in ("transient", "completed-unrecorded"):
            assert result is not None
            code, message = result.error_code or int(ErrorCode.UPLOAD_FAILED), result.message
        else:
            code, message = (
                int(ErrorCode.UPLOAD_FAILED),
                why or "the uploader pod ended without a result",
            )
        metrics.UPLOADS.labels(result="transient" if result else "lost").inc()
        patch, event = transient_failure(
            rec.status, snapshot, code=code, message=message, now=now, node=active.node
        )
        if patch.get("phase") == Phase.CACHED.value:
            metrics.CACHED_TOTAL.inc()
        else:
            metrics.RETRIES.inc()
        patch["upload"] = None
        return patch, event

    async def _after_purge(
        self, rec: RecordingView, entry: QueueEntry, result: ItemResult | None
    ) -> None:
        if result is not None and result.kind == "purged":
            body = await self.kube.get_status(PLURAL, rec.namespace, rec.name)
            await self.kube.remove_finalizer(PLURAL, body, FINALIZER)
            return
        entry.due = self.clock()
        entry.resource_version = rec.resource_version
        self.queues.put(entry)

    async def _node_missing(self, node: str, entries: list[QueueEntry]) -> None:
        for entry in entries:
            await self._transient_now(entry, f"node {node} does not exist", purge_ok=True)

    async def _fail_all(self, active: ActivePod, message: str) -> None:
        await asyncio.gather(*(self._apply(e, active, None, message, None) for e in active.items))

    async def _transient_now(self, entry: QueueEntry, message: str, purge_ok: bool = False) -> None:
        """A failure before any pod ran (no node, no credential): the retry policy applies."""
        if entry.action == "purge":
            if purge_ok:
                log.warning("node gone; releasing %s without removing local media", entry.ref)
                await self._release_without_purge(entry, message)
            else:
                entry.due = self.clock()
                self.queues.put(entry)
            return
        try:
            body = await self.kube.get_status(PLURAL, entry.namespace, entry.name)
        except Exception:
            return
        rec = RecordingView.from_body(body)
        if (
            rec.uid != entry.uid
            or rec.phase not in (Phase.PENDING, Phase.RETRYING)
            or rec.snapshot is None
        ):
            return
        status = dict(rec.status)
        status["attempts"] = int(status.get("attempts") or 0) + 1
        patch, event = transient_failure(
            status,
            rec.snapshot,
            code=int(ErrorCode.UPLOAD_FAILED),
            message=message,
            now=self.clock(),
            node=entry.node,
        )
        patch["attempts"] = status["attempts"]
        if await self.kube.try_patch_status(
            PLURAL, rec.namespace, rec.name, patch, rec.resource_version
        ):
            await self.post_event(body, event)

    async def _release_without_purge(self, entry: QueueEntry, message: str) -> None:
        try:
            body = await self.kube.get_status(PLURAL, entry.namespace, entry.name)
        except Exception as exc:
            if is_status(exc, 404):
                return
            raise
        await self.post_event(
            body, Event("Warning", "NodeGone", f"{message}; local media could not be removed")
        )
        await self.kube.remove_finalizer(PLURAL, body, FINALIZER)


def _ref_body(entry: QueueEntry) -> dict[str, Any]:
    return {"metadata": {"name": entry.name, "namespace": entry.namespace, "uid": entry.uid}}


def _waiting_reason(pod: dict[str, Any]) -> str:
    """Why the kubelet has not started the container (``ErrImageNeverPull: ...``), if known."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            detail = f": {waiting['message']}" if waiting.get("message") else ""
            return f" ({waiting['reason']}{detail})"
    return ""


def _oom_message(pod: dict[str, Any]) -> str:
    """An OOM kill in words: which limit, and the chart value that sets it."""
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    limit = ((containers[0].get("resources") or {}).get("limits") or {}).get("memory")
    of = f" of {limit}" if limit else ""
    return (
        f"the uploader pod was killed for using more than its memory limit{of} (OOMKilled); "
        "raise the uploader memory limit (chart value uploader.memoryLimit)"
    )


def _outcome(
    pod: dict[str, Any] | None, lost: str | None
) -> tuple[BatchOutcome | None, str | None]:
    """The pod's reported outcome and, if it did not end normally, why."""
    if pod is None:
        return None, lost
    status = pod.get("status", {})
    terminated: dict[str, Any] = {}
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
    outcome = BatchOutcome.decode(terminated.get("message") or "") if terminated else None
    if lost:
        return outcome, lost
    exit_code = terminated.get("exitCode")
    if status.get("phase") == "Failed" and status.get("reason"):
        return (
            outcome,
            f"the uploader pod was {status['reason']}: {status.get('message', '')}".strip(": "),
        )
    if terminated.get("reason") == "OOMKilled":
        return outcome, _oom_message(pod)
    if exit_code not in (0, None, 143):
        reason = terminated.get("reason") or "Error"
        return outcome, f"the uploader pod exited with code {exit_code} ({reason})"
    if outcome is None:
        return None, "the uploader pod ended without reporting a result"
    return outcome, None
