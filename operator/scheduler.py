"""Uploader pods: one per node with due work, carrying a bounded batch of recordings.

The scheduler owns the node queues and the pods it launched. For a node with due work
and no pod it marks each recording Scheduled (guarded by the resourceVersion it queued
with, so stale work is dropped), creates the pod and its batch Secret, then watches the
pod until it ends and turns its outcome into each recording's next status. A pod that
crashes, is evicted, never starts or vanishes becomes a transient failure of the
recordings it had not finished: never a silent loss.

A running pod done with its batch asks for more (`more_work`, through `handoff`): it
gets its node's due work as its next batch until the queue is empty. Those recordings
are not marked Scheduled first: each item carries its claim, and the pod's first write
(guarded by the resourceVersion it was queued with) writes claim and progress or outcome
together, one write per recording instead of two. The claim is still exclusive: one pod
per node, and an entry is never handed out twice while a pod holds it. Whoever writes
after the pod (the operator, when the pod ends without writing) applies the claim first
if the recording is still as queued (`phases.claim_open`). Each batch is numbered
(`chunk`); a batch handed out but never received (the answer was lost) is queued again
when the pod ends, not counted as an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

from voicevault import phases
from voicevault.contract import (
    BATCH_FILE,
    MAX_BATCH_ITEMS,
    BatchOutcome,
    BatchSpec,
    CredentialFile,
    HandoffFile,
    ItemResult,
    MoreRequest,
)
from voicevault.crds.recording import FINALIZER, PLURAL, Phase, StorageSnapshot
from voicevault.operator import metrics, pods
from voicevault.operator.handoff import HandoffDesk, RefusalError
from voicevault.operator.kube import is_status
from voicevault.operator.queues import NodeQueues, QueueEntry
from voicevault.operator.shared import Part, Shared
from voicevault.phases import Event, RecordingView

log = logging.getLogger("voicevault.operator.scheduler")

RELAUNCH_DELAY = timedelta(seconds=5)
KEYS_FRESH = timedelta(seconds=10)  # a running pod's keys, trusted for its next batch
NEVER = datetime.min.replace(tzinfo=UTC)
API_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)  # reading a recording after its pod ended
# after the first recording that arrives for a waiting pod, the rest arriving with it are
# gathered this long, so a trickle is handed in batches rather than one at a time
GATHER_S = 0.25


@dataclass
class ActivePod:
    name: str
    node: str
    items: list[QueueEntry]  # those of its latest batch
    secret: str
    started: datetime
    uid: str | None = None
    seen: bool = False  # listed at least once since creation
    chunk: int | None = 0  # its latest batch's number; None: adopted, not known
    token: str = ""  # how it proves who asks for more work ("": it may not)
    files: dict[pods.CredentialRef, str] = dataclasses.field(default_factory=dict)
    keys: dict[pods.CredentialRef, CredentialFile] = dataclasses.field(default_factory=dict)
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    keys_read: datetime = NEVER  # when `keys` were read
    keys_seen: int = -1  # `ViewStore.secret_changes` then


class Scheduler(Part):
    def __init__(self, shared: Shared, held: Callable[[QueueEntry], None] = lambda _: None) -> None:
        super().__init__(shared)
        self.held = held  # an upload not made now: the recordings controller reads it again
        self.queues = NodeQueues()
        self.active: dict[str, ActivePod] = {}  # by node
        self._wake = asyncio.Event()
        self._ready = False
        self._stopping = False
        self._finishing: set[str] = set()
        self.desk: HandoffDesk | None = None  # where pods ask for more work, if they may
        self._claimed: set[str] = set()  # uids of uploads taken whose results are not in
        self._arrivals: dict[str, asyncio.Event] = {}  # by node: set when work is queued there
        self._checked_at = float("-inf")  # loop time of the last pod listing

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
        arrival = self._arrivals.get(entry.node)
        if arrival is not None:
            arrival.set()

    def unqueue(self, uid: str) -> None:
        self.queues.remove(uid)

    def queued(self, uid: str) -> QueueEntry | None:
        """The entry waiting for a pod, if any."""
        return self.queues.get(uid)

    def claimed(self, uid: str) -> bool:
        """Taken for a pod (an upload) whose results are not in: a view of it without a
        phase is from before its Scheduled write (a resync page, an echo that came late)."""
        return uid in self._claimed

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
                chunk=None,  # which batch it is on is not known: it is given no more work
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

    @property
    def _batch_size(self) -> int:
        return max(1, min(self.config.batch_size, MAX_BATCH_ITEMS))

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for arrival in self._arrivals.values():
            arrival.set()  # a pod waiting for work is answered now

    async def _sleep(self) -> None:
        timeout = self.config.poll_interval if self.active else 30.0
        due = self.queues.next_due()
        if due is not None:
            timeout = min(timeout, max(0.05, (due - self.clock()).total_seconds()))
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def _tick(self) -> None:
        # pods are listed once a poll interval, not on every wake-up: in a burst, each
        # queued recording wakes the loop, and a listing each time was most of its reads
        loop_now = asyncio.get_running_loop().time()
        if self.active and loop_now - self._checked_at >= self.config.poll_interval:
            self._checked_at = loop_now
            await self._check_pods()
        now = self.clock()
        launches: list[Awaitable[None]] = []
        for node in self.queues.due_nodes(now):
            if node in self.active:
                continue
            if len(self.active) + len(launches) >= self.config.max_active_pods:
                break
            launches.append(self._launch(node, self._take(node, now)))
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
                    self._requeue(entry)
        finally:
            if not active.items or active.uid is None:
                self.active.pop(node, None)
                self._release_claims(active.items)
            metrics.PODS_ACTIVE.set(len(self.active))

    async def _launch_batch(self, active: ActivePod, entries: list[QueueEntry]) -> None:
        node, name = active.node, active.name
        if not await self.kube.node_exists(node):
            await self._node_missing(node, entries)
            return
        seen = self.store.secret_changes
        found, usable = await self._credentials(entries)
        marked = await asyncio.gather(*(self._mark_scheduled(e, name) for e in usable))
        active.items = [e for e, ok in zip(usable, marked, strict=True) if ok]
        if not active.items:
            return
        # numbered over the items actually in the batch, so each item's credential file
        # is its own namespace's even when an earlier entry was dropped as stale
        batch, credentials, active.files = pods.batch_for(name, node, active.items, found)
        active.keys = {ref: found[ref] for ref in active.files}
        active.keys_read, active.keys_seen = self.clock(), seen
        handoff = self._handoff_file(active)
        manifest = pods.uploader_pod(name, node, name, self.config.pods)
        namespace = self.config.pods.namespace
        try:
            await self.kube.create_secret(
                namespace, pods.batch_secret(name, namespace, batch, credentials, handoff)
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
        await self.events.post(
            created,
            Event("Normal", "Uploading", pods.batch_summary(active.items, node)),
            kind="Pod",
        )
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
        self,
        entries: list[QueueEntry],
        known: dict[tuple[str, str], CredentialFile] | None = None,
    ) -> tuple[dict[tuple[str, str], CredentialFile], list[QueueEntry]]:
        """Credentials by (namespace, credential name), read from their Secrets unless
        `known`; entries whose credential is unusable fail now."""
        by_ref: dict[tuple[str, str], CredentialFile | None] = {}
        usable: list[QueueEntry] = []
        waiting: list[QueueEntry] = []
        waiting_refs: set[tuple[str, str]] = set()
        for entry in entries:
            if self.store.refuses(entry):
                self._release_claims([entry])
                self.held(entry)
                continue
            ref = (entry.namespace, entry.snapshot.credential_name)
            if ref in waiting_refs:
                waiting.append(entry)
                continue
            if ref not in by_ref:
                found = (known or {}).get(ref) or await self.store.credential_keys(*ref)
                if isinstance(found, str):
                    by_ref[ref] = None
                    self._release_claims([entry])
                    await self._transient_now(entry, found)
                    continue
                if entry.action == "upload" and self.store.keys_unvalidated(*ref, found):
                    # the Secret changed since the bucket last accepted its keys: its
                    # validation is on its way, and decides (a refusal holds the upload)
                    log.info("credential %s/%s changed; waiting for its validation", *ref)
                    waiting_refs.add(ref)
                    waiting.append(entry)
                    continue
                by_ref[ref] = found
            elif by_ref[ref] is None:
                self._release_claims([entry])
                await self._transient_now(entry, "credential not usable")
                continue
            usable.append(entry)
        for entry in waiting:  # back in the queue, not counted as an attempt
            entry.due = self.clock() + RELAUNCH_DELAY
            self._requeue(entry)
        return {ref: found for ref, found in by_ref.items() if found is not None}, usable

    def _handoff_file(self, active: ActivePod) -> HandoffFile | None:
        address = self.desk.address() if self.desk is not None else None
        if address is None:
            return None
        active.token = secrets.token_urlsafe(32)
        return HandoffFile(url=address[0], fingerprint=address[1], token=active.token)

    # -- more work for a running pod ---------------------------------------------------------

    async def more_work(self, request: MoreRequest, token: str) -> BatchSpec:
        """A pod done with batch `request.chunk`: record its results, hand it the next batch
        (empty: there is none, the pod ends). Raises `RefusalError` for a pod that may not ask."""
        active = next((p for p in self.active.values() if p.name == request.pod), None)
        if active is None or not active.token or not hmac.compare_digest(token, active.token):
            raise RefusalError(HTTPStatus.FORBIDDEN, "not a pod this operator runs")
        async with active.lock:
            if active.chunk is None or request.chunk != active.chunk:
                raise RefusalError(HTTPStatus.CONFLICT, "not the batch this pod was given last")
            if active.name in self._finishing:
                raise RefusalError(HTTPStatus.CONFLICT, "the pod has ended")
            await self._record(active, request.outcome)
            active.items = await self._next_or_wait(active)
            active.chunk += 1
            if active.items:
                metrics.RECORDINGS_HANDED.inc(len(active.items))
                log.info(
                    "more work for a running uploader pod",
                    extra={"pod": active.name, "node": active.node, "items": len(active.items)},
                )
            return BatchSpec(
                pod=active.name,
                node=active.node,
                items=pods.batch_items(active.items, active.files),
                chunk=active.chunk,
            )

    async def _record(
        self,
        active: ActivePod,
        outcome: BatchOutcome | None,
        why: str | None = None,
        pod: dict[str, Any] | None = None,
    ) -> None:
        """The results of the pod's latest batch (none: `why` it has none) turned into each
        recording's next status: when the pod asks for more, and when it ends."""
        results = outcome.results if outcome else []
        metrics.PARTS_RESENT.inc(outcome.parts_resent if outcome else 0)
        await asyncio.gather(
            *(
                self._apply(entry, active, results[i] if i < len(results) else None, why, pod)
                for i, entry in enumerate(active.items)
            )
        )
        self._release_claims(active.items)

    async def _next_or_wait(self, active: ActivePod) -> list[QueueEntry]:
        """The next batch; when the node has no work at all, what arrives within the
        configured linger (with what follows it within `GATHER_S`), or none."""
        arrival = self._arrivals.setdefault(active.node, asyncio.Event())
        arrival.clear()  # single-threaded: whatever is queued from here on sets it
        try:
            items = await self._next_batch(active)
            if items or active.node in self.queues.due_nodes(self.clock()):
                return items  # work, or work this pod may not take: a new pod takes that
            if self.config.linger <= 0 or not self._may_take_more(active):
                return []
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrival.wait(), self.config.linger)
            if not arrival.is_set() or self._stopping:
                return []
            await asyncio.sleep(GATHER_S)
            return await self._next_batch(active)
        finally:
            if self._arrivals.get(active.node) is arrival:
                del self._arrivals[active.node]

    async def _next_batch(self, active: ActivePod) -> list[QueueEntry]:
        """The node's due work the pod can take, marked Scheduled for it. Work under a
        credential the pod was not given (or whose keys changed) waits for the next pod,
        and so does everything once the pod is half way to its deadline."""
        if not self._may_take_more(active):
            return []
        now = self.clock()
        # the pod's keys, read at most KEYS_FRESH ago and no Secret changed since, are not
        # read again for every small batch it asks for: it uses them for all its work
        seen = self.store.secret_changes
        fresh = now - active.keys_read < KEYS_FRESH and active.keys_seen == seen
        taken = self._take(active.node, now)
        found, usable = await self._credentials(taken, active.keys if fresh else None)
        if not fresh and all(found.get(ref, keys) == keys for ref, keys in active.keys.items()):
            active.keys_read, active.keys_seen = now, seen  # read again: still the pod's
        fits = []
        for entry in usable:
            ref = (entry.namespace, entry.snapshot.credential_name)
            if ref in active.files and found.get(ref) == active.keys.get(ref):
                fits.append(entry)
            else:  # a new pod takes it, with its credential
                self._requeue(entry)
        marked = await asyncio.gather(*(self._hand(e, active.name) for e in fits))
        return [e for e, ok in zip(fits, marked, strict=True) if ok]

    async def _hand(self, entry: QueueEntry, pod_name: str) -> bool:
        """Claim the entry for a running pod: an upload's claim rides on the pod's first
        write to it; a purge (the pod writes nothing for it) is marked Scheduled."""
        if entry.action == "purge":
            return await self._mark_scheduled(entry, pod_name)
        claim = phases.scheduled("upload", entry.attempts, pod_name, _first(entry))
        entry.claimed_unwritten(claim.status)
        return True

    def _may_take_more(self, active: ActivePod) -> bool:
        age = (self.clock() - active.started).total_seconds()
        return not self._stopping and age <= self.config.pods.active_deadline_seconds / 2

    def _unreceived(self, active: ActivePod) -> None:
        """The pod ended before it got its latest batch: that work waits for the next pod,
        claimed by this one until then, with no attempt counted."""
        for entry in active.items:
            self._untried(entry)
        if active.items:
            log.info(
                "a batch the uploader pod never received is queued again",
                extra={"pod": active.name, "items": len(active.items)},
            )

    def _untried(self, entry: QueueEntry) -> None:
        """Queued again, due now, with no attempt counted: the pod never tried it."""
        if entry.claim is None:  # its Scheduled write carried the accepted fields
            entry.unwritten = False
        entry.unclaimed()
        entry.due = self.clock()
        self._requeue(entry)

    async def _mark_scheduled(self, entry: QueueEntry, pod_name: str) -> bool:
        """Claim the recording for the pod; False if it changed since it was queued."""
        status, _ = phases.scheduled(entry.action, entry.attempts, pod_name, _first(entry))
        try:
            written = await self.kube.patch_status(
                PLURAL, entry.namespace, entry.name, status, entry.resource_version
            )
        except Exception as exc:
            if not is_status(exc, 404, 409, 422):
                log.warning("could not schedule %s: %s", entry.ref, type(exc).__name__)
                self._requeue(entry)  # try again on a later tick
                return False
            self._release_claims([entry])
            if is_status(exc, 409):  # changed since: an event skipped meanwhile is read again
                self.held(entry)
            return False
        entry.scheduled_as(written)  # no Event: the pod's own names its batch
        return True

    def _take(self, node: str, now: datetime) -> list[QueueEntry]:
        """Due work of `node`, claimed from now on: a view of it without a phase that comes
        in while it is being marked Scheduled, or later, is not queued a second time."""
        taken = []
        for entry in self.queues.take(node, now, self._batch_size):
            if entry.action == "upload" and entry.uid in self._claimed:
                # queued again while a pod holds it: it waits until the pod's results are in
                entry.due = now + RELAUNCH_DELAY
                self.queues.put(entry)
                continue
            taken.append(entry)
        self._claimed.update(entry.uid for entry in taken if entry.action == "upload")
        return taken

    def _requeue(self, entry: QueueEntry) -> None:
        self._release_claims([entry])
        self.queues.put(entry)

    def _release_claims(self, entries: list[QueueEntry]) -> None:
        self._claimed.difference_update(entry.uid for entry in entries)

    async def _items_from_secret(self, name: str) -> list[QueueEntry] | None:
        found = await self.kube.secret_data(self.config.pods.namespace, name)
        if found is None or BATCH_FILE not in found[1]:
            return None
        try:
            batch = BatchSpec.from_json(found[1][BATCH_FILE])
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
                        f"{int(self.config.pod_start_timeout)}s{pods.waiting_reason(pod)}",
                    )
                )
        if finished:
            await asyncio.gather(*finished)

    async def _finish(
        self, active: ActivePod, pod: dict[str, Any] | None, lost: str | None
    ) -> None:
        self._finishing.add(active.name)
        try:
            async with active.lock:  # a request for more work under way ends first
                why = await self._settle_pod(active, pod, lost)
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

    async def _settle_pod(
        self, active: ActivePod, pod: dict[str, Any] | None, lost: str | None
    ) -> str | None:
        """The ended pod's latest batch: its results, or what its end means for each; and
        why it ended, if not normally."""
        outcome, why = pods.outcome(pod, lost)
        if outcome is not None and outcome.chunk != (active.chunk or 0):
            # it ended on an earlier batch, whose results came with its last request. An
            # adopted pod's later batches are not known here: the resync finds them
            # claimed by a pod that is gone (`phases.pod_lost`)
            if active.chunk is not None:
                self._unreceived(active)
            return why
        await self._record(active, outcome, why, pod)
        return why

    async def _apply(
        self,
        entry: QueueEntry,
        active: ActivePod,
        result: ItemResult | None,
        why: str | None,
        pod: dict[str, Any] | None,
    ) -> None:
        """Turn one item's result into its next status (only if the pod still owns it)."""
        if (
            entry.action == "upload"
            and result is not None
            and result.kind in phases.RECORDED_BY_POD
        ):
            metrics.UPLOADS.labels(result=result.kind).inc()
            return  # the pod wrote the outcome itself: nothing to read or write
        body = await self._read_recording(entry)
        if body is None:
            return
        rec = RecordingView.from_body(body)
        if rec.uid != entry.uid:
            return
        claim = entry.claim if rec.pod != active.name else None
        if claim is not None:  # the pod never wrote it: its claim first, if still open
            if not phases.claim_open(rec.status, claim):
                self.held(entry)  # changed meanwhile: the controller reads it again
                return
            untried = result.kind == "skipped" if result is not None else why is None
            if untried:
                self._untried(entry)  # as it was queued: nothing to write
                return
            rec = dataclasses.replace(rec, status=rec.status | claim)
        elif rec.pod != active.name:
            return
        if entry.action == "purge":
            await self._after_purge(rec, entry, result)
            return
        transition = self._next_status(rec, active, result, why)
        if transition is None:
            return
        written = await self.kube.try_patch_status(
            PLURAL, rec.namespace, rec.name, (claim or {}) | transition.status, rec.resource_version
        )
        if written is not None and transition.event is not None:
            await self.events.post(body, transition.event)

    async def _read_recording(self, entry: QueueEntry) -> dict[str, Any] | None:
        """The recording, read again after its pod ended; retried while the API is away
        (an apiserver restart must not leave a recording claimed by a finished pod)."""
        for delay in (*API_RETRY_DELAYS, None):
            try:
                return await self.kube.get_or_none(PLURAL, entry.namespace, entry.name)
            except Exception as exc:
                if delay is None:
                    log.warning("cannot read %s after its pod: %s", entry.ref, type(exc).__name__)
                    return None
                await asyncio.sleep(delay)
        return None

    def _next_status(
        self, rec: RecordingView, active: ActivePod, result: ItemResult | None, why: str | None
    ) -> phases.Transition | None:
        """`phases.after_attempt`, counted in the upload metrics."""
        after = phases.after_attempt(rec, result, why, node=active.node, now=self.clock())
        if after.counted is not None:
            metrics.UPLOADS.labels(result=after.counted).inc()
        if after.counted in ("transient", "lost") and after.transition is not None:
            if after.transition.status.get("phase") == Phase.CACHED.value:
                metrics.CACHED_TOTAL.inc()
            else:
                metrics.RETRIES.inc()
        return after.transition

    async def _after_purge(
        self, rec: RecordingView, entry: QueueEntry, result: ItemResult | None
    ) -> None:
        if result is not None and result.kind == "purged":
            body = await self.kube.get_or_none(PLURAL, rec.namespace, rec.name)
            if body is not None:
                await self.kube.remove_finalizer(PLURAL, body, FINALIZER)
            return
        entry.due = self.clock()
        entry.resource_version = rec.resource_version
        self.queues.put(entry)

    async def _node_missing(self, node: str, entries: list[QueueEntry]) -> None:
        self._release_claims(entries)
        for entry in entries:
            await self._transient_now(entry, f"node {node} does not exist", purge_ok=True)

    async def _fail_all(self, active: ActivePod, message: str) -> None:
        await self._record(active, None, message)

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
            body = await self.kube.get_or_none(PLURAL, entry.namespace, entry.name)
        except Exception:
            return
        if body is None:
            return
        rec = RecordingView.from_body(body)
        if rec.uid != entry.uid:
            return
        first = _first(entry) if rec.phase is None else None
        if first is not None:  # as if its accepted status were written: this write carries it
            rec = dataclasses.replace(rec, status=rec.status | first)
        transition = phases.failed_before_pod(rec, message, node=entry.node, now=self.clock())
        if transition is not None and await self.kube.try_patch_status(
            PLURAL, rec.namespace, rec.name, (first or {}) | transition.status, rec.resource_version
        ):
            assert transition.event is not None
            await self.events.post(body, transition.event)

    async def _release_without_purge(self, entry: QueueEntry, message: str) -> None:
        body = await self.kube.get_or_none(PLURAL, entry.namespace, entry.name)
        if body is None:
            return
        await self.events.post(
            body, Event("Warning", "NodeGone", f"{message}; local media could not be removed")
        )
        await self.kube.remove_finalizer(PLURAL, body, FINALIZER)


def _first(entry: QueueEntry) -> dict[str, Any] | None:
    """The accepted fields an entry queued without a status of its own still has to write."""
    if not entry.unwritten:
        return None
    return phases.accepted_fields(entry.sid, entry.generation, entry.node, entry.snapshot)
