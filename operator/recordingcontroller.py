"""Recording: the intake of watch events, the resync, and carrying out what the rules decide.

Recordings are many; only the scheduler's queue entries, the bodies waiting for a
setting and a phase per UID are kept. Each event's body is parsed into one
`RecordingView`; `recordings.reconcile` decides, the phase machine (`phases.py`) builds
every status, and this controller writes it, queues the work and settles the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import timedelta
from typing import Any, Literal

from pydantic import ValidationError

from voicevault import logs, phases
from voicevault.crds import recording
from voicevault.crds.recording import FINALIZER, Phase, RecordingSpec, StorageSnapshot
from voicevault.operator import callbacks, metrics
from voicevault.operator.background import Background
from voicevault.operator.bodies import slim
from voicevault.operator.conditions import parse_time
from voicevault.operator.kube import is_status
from voicevault.operator.queues import QueueEntry
from voicevault.operator.recordings import Decision, QueueRequest, reconcile
from voicevault.operator.scheduler import Scheduler
from voicevault.operator.settingcontroller import SettingController
from voicevault.operator.shared import Part, Shared
from voicevault.operator.workqueue import WorkQueue
from voicevault.phases import Event, RecordingView
from voicevault.uploader.metadata import metadata_target

log = logging.getLogger("voicevault.operator")

INTAKE_WORKERS = 32  # recordings handled at once (API calls go through Kube's 16 threads)
RESYNC_ROOM = 500  # the resync offers a page, then waits until fewer than this wait
# Beyond this many waiting, a new recording's event is queued by name only and the object
# read when its turn comes: a burst of new recordings costs a read each, not a body each.
# Recordings in flight keep their bodies: their events are few and must not wait on reads.
INTAKE_BODIES = 3000
REREAD_FIELDS = ("namespace", "name", "uid")
RecordingWork = Literal["event", "deleted", "reread"]
SETTLE_CLAIM_TRIES = 5  # conflicts in a row before a settlement is left to the next look


class RecordingController(Part):
    def __init__(self, shared: Shared, settings: SettingController, background: Background) -> None:
        super().__init__(shared)
        self.settings = settings
        self.background = background
        self.scheduler = Scheduler(shared, held=self._held)
        self.waiting: dict[str, dict[str, dict[str, Any]]] = {}  # namespace -> uid -> body
        self.phases = metrics.PhaseGauge()  # the last phase seen of each recording
        self.settling: set[str] = set()  # uids this process is settling right now
        # names this process in the callback claims it writes, so a restarted operator
        # (or another replica) can tell a claim it did not make from its own
        self.instance = secrets.token_hex(4)
        self.accepted: set[str] = set()  # uids given a first phase, until we see it come back
        # Recording watch events, one slim body per recording, deleted or not
        self.intake: WorkQueue[tuple[RecordingWork, dict[str, Any]]] = WorkQueue()

    # -- intake ----------------------------------------------------------------------------

    def submit(self, body: dict[str, Any], *, deleted: bool = False) -> None:
        """A watch event: handled by an intake worker, after any earlier one of the same uid."""
        meta = body["metadata"]
        work: RecordingWork = "deleted" if deleted else "event"
        new = not deleted and not (body.get("status") or {}).get("phase")
        if new and len(self.intake) >= INTAKE_BODIES:
            work, body = "reread", {"metadata": {k: meta.get(k) for k in REREAD_FIELDS}}
        # work under way first: a burst of new recordings must not hold up the rest
        self.intake.put(meta.get("uid", ""), (work, body), urgent=not new)
        metrics.RECORDING_EVENTS_WAITING.set(len(self.intake))

    def offer(self, body: dict[str, Any]) -> None:
        """A body read again (resync, re-drive): queued unless a watch event already is."""
        self.intake.offer(body["metadata"].get("uid", ""), ("event", body))
        metrics.RECORDING_EVENTS_WAITING.set(len(self.intake))

    def redrive_waiting(self, namespace: str) -> None:
        """The namespace's setting became ready: what waited for it is looked at again."""
        for body in list(self.waiting.get(namespace, {}).values()):
            self.offer(body)

    async def reread(self, ref: dict[str, Any]) -> dict[str, Any] | None:
        """The object a name-only event stands for, or None if it is gone (or replaced)."""
        meta = ref["metadata"]
        metrics.RECORDING_REREADS.inc()
        body = await self.kube.get_or_none(recording.PLURAL, meta["namespace"], meta["name"])
        if body is None:
            return None  # deleted: its DELETED event says so
        if body.get("metadata", {}).get("uid") != meta["uid"]:
            return None  # a new object of the same name: its own events bring it
        return slim(body)

    async def intake_worker(self) -> None:
        while True:
            uid, (work, body) = await self.intake.get()
            metrics.RECORDING_EVENTS_WAITING.set(len(self.intake))
            try:
                if work == "deleted":
                    self.forget(body)
                elif work == "event":
                    await self.on_recording(body)
                elif (current := await self.reread(body)) is not None:
                    await self.on_recording(current)
            except Exception:
                meta = body.get("metadata", {})
                log.exception(
                    "recording handling failed",
                    extra={"recording": f"{meta.get('namespace')}/{meta.get('name')}"},
                )
            finally:
                self.intake.done(uid)

    # -- one event -------------------------------------------------------------------------

    async def on_recording(self, body: dict[str, Any]) -> None:
        rec = RecordingView.from_body(body)
        if rec.phase is None and rec.uid in self.accepted:
            return  # an event from before our own first status write: the next one has it
        self.accepted.discard(rec.uid)
        queued = self.scheduler.queued(rec.uid) if rec.phase is None else None
        if queued is not None and queued.resource_version == rec.resource_version:
            return  # our own finalizer write coming back: it is queued as it is
        if rec.phase is None and self.scheduler.claimed(rec.uid):
            return  # from before its Scheduled write: queued again, it would only meet a 409
        self._track_phase(rec)
        if rec.phase is None and not rec.deleting and rec.namespace not in self.store.settings:
            await self.settings.refresh_from_api(rec.namespace)
        decision = reconcile(rec, self.store.settings.get(rec.namespace), self.clock())
        await self._carry_out(rec, body, decision)

    def forget(self, body: dict[str, Any]) -> None:
        """Its DELETED event: nothing of it stays here."""
        uid = body.get("metadata", {}).get("uid", "")
        namespace = body.get("metadata", {}).get("namespace", "")
        self.scheduler.unqueue(uid)
        self.waiting.get(namespace, {}).pop(uid, None)
        self.accepted.discard(uid)  # deleted before its first phase came back to us
        self.phases.forget(uid)

    async def _carry_out(
        self, rec: RecordingView, body: dict[str, Any], decision: Decision
    ) -> None:
        rv = rec.resource_version
        try:
            if decision.add_finalizer:
                updated = await self.kube.set_finalizers(
                    recording.PLURAL, rec.namespace, rec.name, [*rec.finalizers, FINALIZER], rv
                )
                rv = updated["metadata"]["resourceVersion"]
            if decision.status is not None:
                updated = await self.kube.patch_status(
                    recording.PLURAL, rec.namespace, rec.name, decision.status, rv
                )
                rv = updated["metadata"]["resourceVersion"]
                body = slim(updated)
                if rec.phase is None and decision.status.get("phase"):
                    self.accepted.add(rec.uid)
                rec = RecordingView.from_body(body)  # the version just written
        except Exception as exc:
            if is_status(exc, 404, 409):
                return  # a newer version of the object is on its way to us
            raise
        for event in decision.events:
            await self.events.post(body, event)
        waiting = self.waiting.setdefault(rec.namespace, {})
        if decision.waiting_for_setting:
            waiting[rec.uid] = body
        else:
            waiting.pop(rec.uid, None)
        if decision.unqueue:
            self.scheduler.unqueue(rec.uid)
        if decision.queue is not None:
            self._enqueue(rec, rv, decision.queue)
        if decision.remove_finalizer:
            await self._release(body, rv)
        pod = decision.owned_by_pod
        if pod is not None and self.scheduler.ready and not self.scheduler.pod_is_known(pod):
            await self._pod_lost(rec, body)
        if decision.settle and rec.uid not in self.settling:
            # one settle at a time here; a stale view that comes after it loses the claim
            self.settling.add(rec.uid)
            self.background.spawn(self._settle(rec))

    def _held(self, entry: QueueEntry) -> None:
        """At launch: an upload into a configuration the bucket has refused since it was
        queued is not made. The recording is read again, and the rules make it wait for
        the setting."""
        ref = {"namespace": entry.namespace, "name": entry.name, "uid": entry.uid}
        self.intake.put(entry.uid, ("reread", {"metadata": ref}), urgent=True)

    def _enqueue(self, rec: RecordingView, rv: str, request: QueueRequest) -> None:
        snapshot = request.snapshot or rec.snapshot
        if snapshot is None:
            return
        unwritten = request.snapshot is not None and request.action == "upload"
        queued = self.scheduler.queued(rec.uid)
        if unwritten and queued is not None and queued.unwritten:
            snapshot = queued.snapshot  # taken at first sight, kept while it waits here
        action, due = request.action, request.due
        self.scheduler.enqueue(
            QueueEntry(
                namespace=rec.namespace,
                name=rec.name,
                uid=rec.uid,
                resource_version=rv,
                node=rec.node,
                sid=rec.sid,
                media_path=str(rec.spec.get("mediaPath", "")),
                snapshot=snapshot,
                attempts=rec.attempts,
                action=action,
                due=due,
                created=rec.created,
                metadata=metadata_target(rec.spec, rec.sid, snapshot),
                generation=rec.generation,
                unwritten=unwritten,
                queued_status=phases.pod_base(rec.status),
            )
        )

    async def _release(self, body: dict[str, Any], rv: str) -> None:
        current = body | {"metadata": body["metadata"] | {"resourceVersion": rv}}
        await self.kube.remove_finalizer(recording.PLURAL, current, FINALIZER)

    async def _pod_lost(self, rec: RecordingView, body: dict[str, Any]) -> None:
        transition = phases.pod_lost(rec, self.clock())
        if transition is None:
            return
        written = await self.kube.try_patch_status(
            recording.PLURAL, rec.namespace, rec.name, transition.status, rec.resource_version
        )
        if written is None:
            return
        metrics.UPLOADS.labels(result="lost").inc()
        assert transition.event is not None
        await self.events.post(body, transition.event)

    def _track_phase(self, rec: RecordingView) -> None:
        phase = rec.status.get("phase") or "None"
        old = self.phases.seen(rec.uid, phase)
        if old == phase:
            return
        if old is not None and rec.phase is Phase.COMPLETED:
            # seen happen (not listed after a restart): counted once, and from the watch
            # event alone, since the uploader's own write carries the outcome
            metrics.UPLOADED_BYTES.inc(int(rec.status.get("size") or 0))
            done = parse_time(rec.status.get("completionTime")) or self.clock()
            metrics.UPLOAD_LATENCY.observe(max(0.0, (done - rec.created).total_seconds()))

    # -- settling a finished recording -----------------------------------------------------

    async def _settle(self, rec: RecordingView) -> None:
        """Final conditions and the status callback of a Completed or Failed recording."""
        try:
            await self.settle_once(rec)
        except Exception:
            log.exception("settling failed", extra={"recording": f"{rec.namespace}/{rec.name}"})
        finally:
            self.settling.discard(rec.uid)

    async def settle_once(self, rec: RecordingView) -> None:
        """Claim the settlement with a write guarded by the version decided on, then act.

        The same completion reaches this operator several ways (the uploader's watch event,
        a resync page listed a moment earlier, a re-drive), some of them already stale. An
        unguarded write let each of them settle it again: two Stored Events, two callbacks.
        Only the view that is still current wins the claim; a stale one gets 409 and looks
        again at the current object, which shows the claim.
        """
        for _ in range(SETTLE_CLAIM_TRIES):
            plan = phases.settlement(rec, self.clock(), self.instance)
            if plan is None:
                return
            if plan.event is not None:
                # named after the outcome: a second post (a stale view, a restart after a
                # crash between this and the claim) creates no second Event
                await self.events.post(rec.body_ref(), plan.event, name=plan.event_name)
            claimed, current = await self._write_guarded(rec, plan.status)
            if claimed is not None:
                break
            if current is None:
                return  # gone
            rec = current
        else:
            return  # still contended: the next event or resync brings it back
        if plan.callback:
            await self._call_back(RecordingView.from_body(slim(claimed)), plan.idempotency_token)

    async def _write_guarded(
        self, rec: RecordingView, patch: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, RecordingView | None]:
        """(written object, None), or on a conflict (None, the object as it is now);
        (None, None) once it is gone."""
        try:
            written = await self.kube.patch_status(
                recording.PLURAL, rec.namespace, rec.name, patch, rec.resource_version
            )
            return written, None
        except Exception as exc:
            if not is_status(exc, 409):
                if is_status(exc, 404):
                    return None, None
                raise
        body = await self.kube.get_or_none(recording.PLURAL, rec.namespace, rec.name)
        if body is None:
            return None, None
        current = RecordingView.from_body(slim(body))
        return None, current if current.uid == rec.uid else None

    async def _call_back(self, rec: RecordingView, token: str) -> None:
        """Send the claimed callback and record its result over the claim."""
        snapshot = rec.snapshot
        assert snapshot is not None
        delivered, reason, message, attempts = await self._callback(rec, snapshot, token)
        now = self.clock()
        metrics.CALLBACKS.labels(result="delivered" if delivered else "failed").inc()
        if not delivered:  # a delivery is in the CallbackDelivered condition, not an Event
            await self.events.post(rec.body_ref(), Event("Warning", f"Callback{reason}", message))
        for _ in range(SETTLE_CLAIM_TRIES):
            patch = phases.callback_recorded(
                rec, delivered=delivered, reason=reason, message=message, attempts=attempts, now=now
            )
            if patch is None:
                return  # no longer ours to record (a manual retry started a new outcome)
            written, current = await self._write_guarded(rec, patch)
            if written is not None or current is None:
                return
            rec = current

    async def _callback(
        self, rec: RecordingView, snapshot: StorageSnapshot, token: str
    ) -> tuple[bool, str, str, int]:
        try:
            spec = RecordingSpec.model_validate(rec.spec)
        except ValidationError:
            return False, "InvalidSpec", "the Recording's spec is invalid", 0
        signing_key = None
        if snapshot.callback_signing_secret:
            found = await self.kube.secret_data(rec.namespace, snapshot.callback_signing_secret)
            problem = callbacks.signing_problem(
                rec.namespace,
                snapshot.callback_signing_secret,
                snapshot.callback_signing_key or "",
                found[1] if found else None,
            )
            if problem is not None:
                reason, why = problem
                return False, reason, f"{why}; callback not sent", 0
            assert found is not None
            value = found[1][snapshot.callback_signing_key or ""]
            signing_key = value.decode("utf-8", errors="replace").strip()
            logs.register_secret(signing_key)
        params = callbacks.callback_params(spec, rec.status | {"sid": rec.sid})
        assert snapshot.callback_url is not None  # settled with a callback only when it has one
        result = await callbacks.deliver(
            snapshot.callback_url,
            params,
            signing_key,
            attempts=self.config.callback_attempts,
            timeout=self.config.callback_timeout,
            idempotency_token=token,
        )
        reason = "Delivered" if result.delivered else "DeliveryFailed"
        message = f"{result.detail} after {result.attempts} attempt(s) to {snapshot.callback_url}"
        return result.delivered, reason, message, result.attempts

    # -- resync ----------------------------------------------------------------------------

    async def resync_loop(self) -> None:
        """Every unfinished recording is looked at again now and then.

        Watches can miss nothing in theory; in practice an event handled while the API was
        down, or a pod that ended while this operator was not looking, would otherwise
        leave a recording waiting for an event that never comes.
        """
        while True:
            await asyncio.sleep(self.config.resync_interval)
            try:
                await self.resync_once()
            except Exception:
                log.exception("resync: cannot list recordings")

    async def resync_once(self, *, everything: bool = False) -> None:
        """One pass, a page of recordings at a time, so memory stays bounded by a page.

        `everything`: new recordings too (on start, when the watch's events so far went by
        unhandled: a standby's, or during the start)."""
        async for page in self.kube.list_pages(recording.PLURAL):
            # a recording that never had a phase and is younger than one interval is
            # still in the watch's backlog: handling it here too would only collide
            now = self.clock()
            cutoff = now - timedelta(seconds=self.config.resync_interval)
            for body in page:
                if not everything and not (body.get("status") or {}).get("phase"):
                    created = parse_time(body["metadata"].get("creationTimestamp"))
                    if created is not None and created > cutoff:
                        continue
                rec = RecordingView.from_body(body)
                # counted in the phase gauges even when settled: after a restart, or on a
                # new leader, no watch event brings the recordings settled before it
                self._track_phase(rec)
                if reconcile(rec, self.store.settings.get(rec.namespace), now).idle:
                    continue  # settled: nothing to decide, so nothing to queue or hold
                self.offer(slim(body))
            await self.intake.room(below=RESYNC_ROOM)
