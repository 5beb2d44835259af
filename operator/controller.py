"""The operator's state and I/O: carries out what the pure rules decide.

One `Controller` per operator process. The kopf handlers in `handlers.py` only forward
watch events here. Settings and credentials are few; their latest bodies are kept so a
change in one (a Secret appears, a credential becomes ready) re-evaluates the others.
Recordings are many; only the scheduler's queue entries and a phase per UID are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from voicevault import logs
from voicevault.crds import awscredential, recording, voicestoragesetting
from voicevault.crds.recording import FINALIZER, Phase, RecordingSpec
from voicevault.crds.voicestoragesetting import SETTING_NAME
from voicevault.operator import callbacks, credentials, metrics, settings
from voicevault.operator.bodies import slim
from voicevault.operator.conditions import condition, find, merge_conditions, parse_time
from voicevault.operator.config import OperatorConfig
from voicevault.operator.kube import Kube, is_status
from voicevault.operator.queues import QueueEntry
from voicevault.operator.recordings import (
    SENDING,
    Decision,
    Event,
    RecordingView,
    reconcile,
    settlement,
    transient_failure,
)
from voicevault.operator.scheduler import Scheduler
from voicevault.operator.settings import CredentialView, SettingView
from voicevault.operator.workqueue import WorkQueue
from voicevault.uploader.batchspec import CredentialFile
from voicevault.uploader.errors import ErrorCode
from voicevault.uploader.metadata import metadata_target
from voicevault.uploader.s3client import AwsKeys, make_client, warm_up

log = logging.getLogger("voicevault.operator")

Clock = Callable[[], datetime]
EVENT_POSTERS = 4
EVENT_QUEUE = 5000  # Events waiting to be posted; beyond this they are dropped and counted
EVENT_QUEUE_NORMAL = 4000  # Normal Events stop here: the rest of the queue is for Warnings
EVENT_REF_FIELDS = ("name", "namespace", "uid", "resourceVersion")  # all an Event names
INTAKE_WORKERS = 32  # recordings handled at once (API calls go through Kube's 16 threads)
RESYNC_ROOM = 500  # the resync offers a page, then waits until fewer than this wait
# Beyond this many waiting, a new recording's event is queued by name only and the object
# read when its turn comes: a burst of new recordings costs a read each, not a body each.
# Recordings in flight keep their bodies: their events are few and must not wait on reads.
INTAKE_BODIES = 3000
REREAD_FIELDS = ("namespace", "name", "uid")
RecordingWork = Literal["event", "deleted", "reread"]
SETTLE_CLAIM_TRIES = 5  # conflicts in a row before a settlement is left to the next look
# A clean stop lets the work under way finish this long: within the pod's 30 s of
# termination grace, 5 of which its preStop pause takes
STOP_DRAIN_S = 15.0


def utcnow() -> datetime:
    return datetime.now(UTC)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal as the apiserver would store them (None means absent)."""
    return {k: v for k, v in a.items() if v is not None} == {
        k: v for k, v in b.items() if v is not None
    }


class Controller:
    def __init__(self, kube: Kube, config: OperatorConfig, clock: Clock = utcnow) -> None:
        self.kube = kube
        self.config = config
        self.clock = clock
        self.scheduler = Scheduler(
            kube, config, self.resolve_credential, self.post_event, clock, hold=self._hold
        )
        self.credential_bodies: dict[tuple[str, str], dict[str, Any]] = {}
        self.credentials: dict[tuple[str, str], CredentialView] = {}
        self.setting_bodies: dict[str, dict[str, Any]] = {}
        self._setting_locks: dict[str, asyncio.Lock] = {}
        self._credential_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.settings: dict[str, SettingView] = {}
        self.signing_secrets: dict[str, str] = {}  # namespace -> its setting's signing Secret
        self.next_validation: dict[str, datetime] = {}
        self.waiting: dict[str, dict[str, dict[str, Any]]] = {}  # namespace -> uid -> body
        self.phases: dict[str, str] = {}  # uid -> last seen phase (for metrics and events)
        self.settling: set[str] = set()  # uids this process is settling right now
        # names this process in the callback claims it writes, so a restarted operator
        # (or another replica) can tell a claim it did not make from its own
        self.instance = secrets.token_hex(4)
        self.accepted: set[str] = set()  # uids given a first phase, until we see it come back
        # Recording watch events, one slim body per recording, deleted or not
        self.intake: WorkQueue[tuple[RecordingWork, dict[str, Any]]] = WorkQueue()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        # each entry names its object by reference only, never by body: a burst of
        # thousands of Events must not keep thousands of Recording bodies alive
        self._events: asyncio.Queue[tuple[dict[str, Any], str, str, str, str]] = asyncio.Queue(
            maxsize=EVENT_QUEUE
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load credentials and settings before any Recording is looked at, adopt pods."""
        await asyncio.to_thread(warm_up)  # the S3 model, once, before the first validation
        for body in await self.kube.list_objects(awscredential.PLURAL):
            await self.on_credential(body, refresh_settings=False)
        for body in await self.kube.list_objects(voicestoragesetting.PLURAL):
            await self.on_setting(body)
        await self.scheduler.adopt_existing_pods()
        self._tasks = [
            asyncio.create_task(self.scheduler.run(), name="scheduler"),
            asyncio.create_task(self._validation_loop(), name="validation"),
            asyncio.create_task(self._resync_loop(), name="resync"),
            *(
                asyncio.create_task(self._intake_worker(), name=f"recordings-{i}")
                for i in range(INTAKE_WORKERS)
            ),
            *(
                asyncio.create_task(self._event_poster(), name=f"events-{i}")
                for i in range(EVENT_POSTERS)
            ),
        ]

    async def stop(self, drain: float = STOP_DRAIN_S) -> None:
        """Take no new work, let the work under way finish (`drain` seconds at most), then
        cancel what is left. A leader that stops cleanly releases its Lease after this.

        Work cut off halfway is done again by the next leader, once more than needed: a
        settlement whose callback is on its way is called back a second time, a batch
        marked Scheduled before its pod exists becomes a second attempt.
        """
        self.scheduler.stop()  # its loop ends once the tick under way is done
        finishing = [t for t in self._tasks if t.get_name() == "scheduler"]
        posting = [t for t in self._tasks if t.get_name().startswith("events-")]
        taking = [t for t in self._tasks if t not in finishing and t not in posting]
        for task in taking:
            task.cancel()
        await asyncio.gather(*taking, return_exceptions=True)
        under_way = [*finishing, *self._background]  # settlements, their callbacks included
        if under_way:
            await asyncio.wait(under_way, timeout=drain)
        left = [t for t in (*self._tasks, *self._background) if not t.done()]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    def probe(self) -> dict[str, Any]:
        return {
            "queued": len(self.scheduler.queues),
            "uploader_pods": len(self.scheduler.active),
            "settings": len(self.settings),
            "recordings": len(self.phases),
            "recording_events_waiting": len(self.intake),
        }

    async def post_event(
        self,
        body: dict[str, Any],
        event: Event,
        kind: str = recording.KIND,
        *,
        name: str | None = None,
    ) -> None:
        """An Event on the object, and the same line in the log.

        A `name`d Event is posted at once rather than queued: posting it again creates
        nothing, so it is how a once-only Event survives a crash and a stale view.
        """
        meta = body.get("metadata", {})
        message = logs.scrub(event.message)
        log.log(
            logging.INFO if event.type == "Normal" else logging.WARNING,
            message,
            extra={
                "kind": kind,
                "object": f"{meta.get('namespace')}/{meta.get('name')}",
                "reason": event.reason,
            },
        )
        ref = {"metadata": {key: meta.get(key) for key in EVENT_REF_FIELDS}}
        if name is not None:
            await self.kube.post_event(ref, kind, event.type, event.reason, message, name=name)
            return
        if event.type == "Normal" and self._events.qsize() >= EVENT_QUEUE_NORMAL:
            metrics.EVENTS_DROPPED.labels(type=event.type).inc()
            return
        try:
            self._events.put_nowait((ref, kind, event.type, event.reason, message))
        except asyncio.QueueFull:
            metrics.EVENTS_DROPPED.labels(type=event.type).inc()
        metrics.EVENTS_PENDING.set(self._events.qsize())

    async def _event_poster(self) -> None:
        """Posts queued Events, so no reconcile waits for one (Events are best effort)."""
        while True:
            ref, kind, type_, reason, message = await self._events.get()
            await self.kube.post_event(ref, kind, type_, reason, message)
            metrics.EVENTS_PENDING.set(self._events.qsize())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- AwsCredential ---------------------------------------------------------------------

    async def on_credential(self, body: dict[str, Any], *, refresh_settings: bool = True) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        async with self._credential_lock(key):
            await self._apply_credential(body, refresh_settings=refresh_settings)

    async def _recheck_credential(self, key: tuple[str, str]) -> None:
        """Evaluate a credential again from the cache, which holds its body as last written:
        starting from an older body, the evaluation would find no conditions and write them
        again with new timestamps."""
        async with self._credential_lock(key):
            body = self.credential_bodies.get(key)
            if body is not None:
                await self._apply_credential(body, refresh_settings=True)

    def _credential_lock(self, key: tuple[str, str]) -> asyncio.Lock:
        """One evaluation per credential at a time (its own event, or a Secret's)."""
        return self._credential_locks.setdefault(key, asyncio.Lock())

    async def _apply_credential(self, body: dict[str, Any], *, refresh_settings: bool) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        key = (namespace, name)
        self.credential_bodies[key] = body
        spec = body.get("spec") or {}
        ref = spec.get("secretRef") or {}
        secret = None
        if ref.get("name") and (not ref.get("namespace") or ref.get("namespace") == namespace):
            found = await self.kube.secret_data(namespace, ref["name"])
            if found is not None:
                secret = credentials.snapshot_secret(
                    found[0], found[1], ref.get("accessKeyIdKey", "AWS_ACCESS_KEY_ID")
                )
        current = body.get("status") or {}
        result = credentials.evaluate(
            namespace=namespace,
            uid=meta["uid"],
            generation=int(meta.get("generation") or 1),
            spec=spec,
            secret=secret,
            current_status=current,
            now=self.clock(),
        )
        if not _same(result.status, current):
            self.credential_bodies[key] = await self._patch_status(
                awscredential.PLURAL, body, result.status
            )
            if (
                find(current.get("conditions"), "Ready") is None
                or (find(current.get("conditions"), "Ready") or {}).get("reason") != result.reason
            ):
                await self.post_event(
                    body,
                    Event("Normal" if result.ready else "Warning", result.reason, result.message),
                    awscredential.KIND,
                )
        view = CredentialView(
            namespace=namespace,
            name=name,
            sid=result.status["sid"],
            ready=result.ready,
            message=result.message,
            secret_name=ref.get("name", ""),
            access_key_id_key=ref.get("accessKeyIdKey", "AWS_ACCESS_KEY_ID"),
            secret_access_key_key=ref.get("secretAccessKeyKey", "AWS_SECRET_ACCESS_KEY"),
            session_token_key=ref.get("sessionTokenKey"),
            secret_version=result.status.get("secretVersion"),
        )
        changed = self.credentials.get(key) != view
        self.credentials[key] = view
        if changed and refresh_settings:
            # new keys (or a new credential): what the bucket said about the old ones
            # no longer holds, so ask it again now rather than at the next interval
            await self._refresh_setting(namespace, force_validation=True)

    def forget_credential(self, namespace: str, name: str) -> None:
        self.credential_bodies.pop((namespace, name), None)
        self.credentials.pop((namespace, name), None)
        self._credential_locks.pop((namespace, name), None)

    async def on_secret(self, namespace: str, name: str) -> None:
        """A Secret changed: re-check the credentials that use it, and the setting that
        signs its callbacks with it."""
        for (ns, cred_name), view in list(self.credentials.items()):
            if ns == namespace and view.secret_name == name:
                await self._recheck_credential((ns, cred_name))
        if self.signing_secrets.get(namespace) == name:
            await self._refresh_setting(namespace)

    def notice_secret(self, namespace: str, name: str) -> None:
        """A Secret's metadata changed (the watch brings no body): re-read it if it is used."""
        if self.uses_secret(namespace, name):
            self._spawn(self.on_secret(namespace, name))

    def uses_secret(self, namespace: str, name: str) -> bool:
        return self.signing_secrets.get(namespace) == name or any(
            ns == namespace and view.secret_name == name
            for (ns, _), view in self.credentials.items()
        )

    async def resolve_credential(self, namespace: str, name: str) -> CredentialFile | str:
        """The keys of a ready credential, or why it cannot be used."""
        view = self.credentials.get((namespace, name))
        if view is None:
            return f"AwsCredential {name!r} not found in {namespace!r}"
        if not view.ready:
            return f"AwsCredential {name!r} is not ready: {view.message}"
        found = await self.kube.secret_data(namespace, view.secret_name)
        if found is None:
            return f"Secret {view.secret_name!r} of AwsCredential {name!r} not found"
        data = found[1]

        def text(key: str | None) -> str:
            return data.get(key or "", b"").decode("utf-8", errors="replace").strip()

        key_id, secret = text(view.access_key_id_key), text(view.secret_access_key_key)
        token = text(view.session_token_key) or None
        if not key_id or not secret:
            return f"Secret {view.secret_name!r} lacks the access key"
        for value in (key_id, secret, token):
            logs.register_secret(value)
        return CredentialFile(access_key_id=key_id, secret_access_key=secret, session_token=token)

    # -- VoiceStorageSetting ---------------------------------------------------------------

    async def on_setting(self, body: dict[str, Any], *, force_validation: bool = False) -> None:
        meta = body["metadata"]
        if meta.get("name") != SETTING_NAME:
            return  # the CRD's CEL rule refuses other names
        # one evaluation per namespace at a time: a new recording waits for it to finish
        async with self._setting_lock(meta["namespace"]):
            await self._apply_setting(body, force_validation=force_validation)

    def _setting_lock(self, namespace: str) -> asyncio.Lock:
        return self._setting_locks.setdefault(namespace, asyncio.Lock())

    async def _apply_setting(self, body: dict[str, Any], *, force_validation: bool) -> None:
        meta = body["metadata"]
        namespace = meta["namespace"]
        self.setting_bodies[namespace] = body
        generation = int(meta.get("generation") or 1)
        spec = body.get("spec") or {}
        ref = ((spec.get("externalStorage") or {}).get("credentialRef") or {}).get("name")
        credential = self.credentials.get((namespace, ref)) if ref else None
        evaluation = settings.evaluate(namespace, spec, credential)
        current = body.get("status") or {}
        now = self.clock()
        validated = None
        if (
            evaluation.ready
            and evaluation.location is not None
            and (
                force_validation
                or settings.validation_due(
                    current, generation, now, self.config.validation_interval
                )
            )
        ):
            validated = await self._validate(namespace, evaluation, credential)
        evaluation = settings.located(evaluation, validated, current, generation)
        refusal = settings.refusal(validated, current, generation) if evaluation.ready else None
        refused = settings.refused_evaluation(evaluation, *refusal) if refusal else None
        status = settings.status_for(
            evaluation,
            generation=generation,
            credential=credential,
            current=current,
            validated=validated,
            validation_time=now if validated else None,
            now=now,
            refused=refused,
            signing=await self._signing(namespace, evaluation),
        )
        if not _same(status, current):
            self.setting_bodies[namespace] = await self._patch_status(
                voicestoragesetting.PLURAL, body, status
            )
            await self._setting_events(body, current, status)
        ok = evaluation.ready and (validated[0] if validated else _validated(status))
        metrics.SETTING_VALID.labels(namespace=namespace).set(1 if ok else 0)
        interval = self.config.validation_interval
        self.next_validation[namespace] = now + timedelta(
            seconds=interval if ok or not evaluation.ready else min(interval, 60.0)
        )
        view = SettingView(
            namespace=namespace,
            generation=generation,
            spec=evaluation.spec,
            location=evaluation.location,
            public_key_sid=evaluation.public_key_sid,
            ready=(refused or evaluation).ready,
            reason=(refused or evaluation).reason,
            message=(refused or evaluation).message,
            default_window_seconds=self.config.default_retry_window_seconds,
            refused=refused is not None,
        )
        old = self.settings.get(namespace)
        self.settings[namespace] = view
        if view.ready and (old is None or not old.ready or old.generation != view.generation):
            self._redrive_waiting(namespace)

    async def _signing(
        self, namespace: str, evaluation: settings.SettingEvaluation
    ) -> tuple[bool, str, str] | None:
        """Whether the setting's callbacks can be signed; None if it names no key."""
        callback = evaluation.spec.status_callback if evaluation.spec else None
        ref = callback.signing_key_ref if callback else None
        if ref is None:
            self.signing_secrets.pop(namespace, None)
            return None
        self.signing_secrets[namespace] = ref.name
        found = await self.kube.secret_data(namespace, ref.name)
        problem = callbacks.signing_problem(
            namespace, ref.name, ref.key, found[1] if found else None
        )
        if problem is not None:
            reason, why = problem
            return False, reason, f"{why}: status callbacks are not sent"
        return True, "SigningKeyFound", f"callbacks are signed with {ref.key!r} of {ref.name!r}"

    def forget_setting(self, namespace: str, name: str) -> None:
        if name == SETTING_NAME:
            self.signing_secrets.pop(namespace, None)
            self.setting_bodies.pop(namespace, None)
            self.settings.pop(namespace, None)
            self.next_validation.pop(namespace, None)
            # no setting is not an invalid one: the series goes (an alert watches for 0)
            with contextlib.suppress(KeyError):
                metrics.SETTING_VALID.remove(namespace)

    async def _refresh_setting_from_api(self, namespace: str) -> None:
        """Read the namespace's setting now, not from the watch.

        A Recording applied together with its setting (one `kubectl apply`, a GitOps sync)
        may arrive before the setting's own watch event. When no setting is known for the
        namespace, one read makes sure there really is none before the recording is
        declared Local.
        """
        try:
            body = await self.kube.get_object(voicestoragesetting.PLURAL, namespace, SETTING_NAME)
        except Exception as exc:
            if is_status(exc, 404):
                self.forget_setting(namespace, SETTING_NAME)
                return
            raise
        async with self._setting_lock(namespace):
            # a watch event for the same setting may be mid-evaluation (validating against
            # the bucket): the lock waits for it, and only a newer version is applied again
            known = self.setting_bodies.get(namespace, {}).get("metadata", {})
            if namespace not in self.settings or known.get("resourceVersion") != body[
                "metadata"
            ].get("resourceVersion"):
                await self._apply_setting(body, force_validation=False)

    async def _refresh_setting(self, namespace: str, *, force_validation: bool = False) -> None:
        body = self.setting_bodies.get(namespace)
        if body is not None:
            await self.on_setting(body, force_validation=force_validation)

    async def _validate(
        self,
        namespace: str,
        evaluation: settings.SettingEvaluation,
        credential: CredentialView | None,
    ) -> settings.Validation:
        assert evaluation.location is not None
        assert credential is not None
        keys = await self.resolve_credential(namespace, credential.name)
        if isinstance(keys, str):
            return settings.Validation(False, "CredentialUnusable", keys)
        location = evaluation.location
        aws_keys = AwsKeys(keys.access_key_id, keys.secret_access_key, keys.session_token)

        def validate() -> settings.Validation:
            return settings.validate_bucket(make_client(location, aws_keys), location)

        return await asyncio.to_thread(validate)

    async def _setting_events(
        self, body: dict[str, Any], old: dict[str, Any], new: dict[str, Any]
    ) -> None:
        for type_ in ("Ready", "Validated", "CallbackSigning"):
            before, after = find(old.get("conditions"), type_), find(new.get("conditions"), type_)
            if after and (before is None or before.get("reason") != after.get("reason")):
                good = after.get("status") == "True" or after.get("reason") == "Disabled"
                await self.post_event(
                    body,
                    Event(
                        "Normal" if good else "Warning", after["reason"], after.get("message", "")
                    ),
                    voicestoragesetting.KIND,
                )

    async def _resync_loop(self) -> None:
        """Every unfinished recording is looked at again now and then.

        Watches can miss nothing in theory; in practice an event handled while the API was
        down, or a pod that ended while this operator was not looking, would otherwise
        leave a recording waiting for an event that never comes.
        """
        while True:
            await asyncio.sleep(self.config.resync_interval)
            try:
                await self._resync_once()
            except Exception:
                log.exception("resync: cannot list recordings")

    async def resync_all(self) -> None:
        """Every recording that has something to decide, new ones included: on start, when
        the watch's events so far went by unhandled (a standby's, or during the start)."""
        await self._resync_once(everything=True)

    async def _resync_once(self, *, everything: bool = False) -> None:
        """One pass, a page of recordings at a time, so memory stays bounded by a page."""
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
                if reconcile(rec, self.settings.get(rec.namespace), now).idle:
                    continue  # settled: nothing to decide, so nothing to queue or hold
                self._offer_recording(slim(body))
            await self.intake.room(below=RESYNC_ROOM)

    async def _validation_loop(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, self.config.validation_interval))
            now = self.clock()
            for namespace, due in list(self.next_validation.items()):
                body = self.setting_bodies.get(namespace)
                if due <= now and body is not None:
                    try:
                        await self.on_setting(body, force_validation=True)
                    except Exception:
                        log.exception("re-validation failed", extra={"namespace": namespace})

    # -- Recording -------------------------------------------------------------------------

    def submit_recording(self, body: dict[str, Any], *, deleted: bool = False) -> None:
        """A watch event: handled by an intake worker, after any earlier one of the same uid."""
        meta = body["metadata"]
        work: RecordingWork = "deleted" if deleted else "event"
        new = not deleted and not (body.get("status") or {}).get("phase")
        if new and len(self.intake) >= INTAKE_BODIES:
            work, body = "reread", {"metadata": {k: meta.get(k) for k in REREAD_FIELDS}}
        # work under way first: a burst of new recordings must not hold up the rest
        self.intake.put(meta.get("uid", ""), (work, body), urgent=not new)
        metrics.RECORDING_EVENTS_WAITING.set(len(self.intake))

    def _offer_recording(self, body: dict[str, Any]) -> None:
        """A body read again (resync, re-drive): queued unless a watch event already is."""
        self.intake.offer(body["metadata"].get("uid", ""), ("event", body))
        metrics.RECORDING_EVENTS_WAITING.set(len(self.intake))

    async def _reread(self, ref: dict[str, Any]) -> dict[str, Any] | None:
        """The object a name-only event stands for, or None if it is gone (or replaced)."""
        meta = ref["metadata"]
        metrics.RECORDING_REREADS.inc()
        try:
            body = await self.kube.get_object(recording.PLURAL, meta["namespace"], meta["name"])
        except Exception as exc:
            if is_status(exc, 404):
                return None  # deleted: its DELETED event says so
            raise
        if body.get("metadata", {}).get("uid") != meta["uid"]:
            return None  # a new object of the same name: its own events bring it
        return slim(body)

    async def _intake_worker(self) -> None:
        while True:
            uid, (work, body) = await self.intake.get()
            metrics.RECORDING_EVENTS_WAITING.set(len(self.intake))
            try:
                if work == "deleted":
                    self.forget_recording(body)
                elif work == "event":
                    await self.on_recording(body)
                elif (current := await self._reread(body)) is not None:
                    await self.on_recording(current)
            except Exception:
                meta = body.get("metadata", {})
                log.exception(
                    "recording handling failed",
                    extra={"recording": f"{meta.get('namespace')}/{meta.get('name')}"},
                )
            finally:
                self.intake.done(uid)

    async def on_recording(self, body: dict[str, Any]) -> None:
        rec = RecordingView.from_body(body)
        if rec.phase is None and rec.uid in self.accepted:
            return  # an event from before our own first status write: the next one has it
        self.accepted.discard(rec.uid)
        self._track_phase(rec, body)
        if rec.phase is None and not rec.deleting and rec.namespace not in self.settings:
            await self._refresh_setting_from_api(rec.namespace)
        decision = reconcile(rec, self.settings.get(rec.namespace), self.clock())
        await self._carry_out(rec, body, decision)

    def forget_recording(self, body: dict[str, Any]) -> None:
        uid = body.get("metadata", {}).get("uid", "")
        namespace = body.get("metadata", {}).get("namespace", "")
        self.scheduler.unqueue(uid)
        self.waiting.get(namespace, {}).pop(uid, None)
        self.accepted.discard(uid)  # deleted before its first phase came back to us
        if uid in self.phases:
            metrics.RECORDINGS.labels(phase=self.phases.pop(uid)).dec()
            self._update_cached_gauge()

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
        except Exception as exc:
            if is_status(exc, 404, 409):
                return  # a newer version of the object is on its way to us
            raise
        for event in decision.events:
            await self.post_event(body, event)
        waiting = self.waiting.setdefault(rec.namespace, {})
        if decision.waiting_for_setting:
            waiting[rec.uid] = body
        else:
            waiting.pop(rec.uid, None)
        if decision.unqueue:
            self.scheduler.unqueue(rec.uid)
        if decision.queue is not None:
            self._enqueue(body, rv, decision)
        if decision.remove_finalizer:
            await self._release(body, rv)
        pod = decision.owned_by_pod
        if pod is not None and self.scheduler.ready and not self.scheduler.pod_is_known(pod):
            await self._pod_lost(body)
        if decision.settle and rec.uid not in self.settling:
            # one settle at a time here; a stale view that comes after it loses the claim
            self.settling.add(rec.uid)
            self._spawn(self._settle(body))

    def _hold(self, entry: QueueEntry) -> bool:
        """At launch: an upload into a configuration the bucket has refused since it was
        queued is not made (it would fail fatally and delete the media). The recording is
        read again, and the rules make it wait for the setting."""
        setting = self.settings.get(entry.namespace)
        if entry.action != "upload" or setting is None or not setting.refuses(entry.snapshot):
            return False
        ref = {"namespace": entry.namespace, "name": entry.name, "uid": entry.uid}
        self.intake.put(entry.uid, ("reread", {"metadata": ref}), urgent=True)
        return True

    def _enqueue(self, body: dict[str, Any], rv: str, decision: Decision) -> None:
        assert decision.queue is not None
        rec = RecordingView.from_body(body)
        snapshot = rec.snapshot
        if snapshot is None:
            return
        self.scheduler.enqueue(
            QueueEntry(
                namespace=rec.namespace,
                name=rec.name,
                uid=rec.uid,
                resource_version=rv,
                node=str(rec.spec.get("nodeName", "")),
                sid=rec.sid,
                media_path=str(rec.spec.get("mediaPath", "")),
                snapshot=snapshot,
                attempts=int(rec.status.get("attempts") or 0),
                action=decision.queue.action,
                due=decision.queue.due,
                created=rec.created,
                metadata=metadata_target(rec.spec, rec.sid, snapshot),
            )
        )

    async def _release(self, body: dict[str, Any], rv: str) -> None:
        current = body | {"metadata": body["metadata"] | {"resourceVersion": rv}}
        await self.kube.remove_finalizer(recording.PLURAL, current, FINALIZER)

    async def _pod_lost(self, body: dict[str, Any]) -> None:
        """Scheduled on a pod this operator does not know (any more): a transient failure."""
        rec = RecordingView.from_body(body)
        snapshot = rec.snapshot
        if snapshot is None:
            return
        message = f"uploader pod {rec.pod} is gone without a result"
        patch, event = transient_failure(
            rec.status,
            snapshot,
            code=int(ErrorCode.UPLOAD_FAILED),
            message=message,
            now=self.clock(),
            node=str(rec.spec.get("nodeName", "")),
        )
        patch["upload"] = None
        written = await self.kube.try_patch_status(
            recording.PLURAL, rec.namespace, rec.name, patch, rec.resource_version
        )
        if written is None:
            return
        metrics.UPLOADS.labels(result="lost").inc()
        await self.post_event(body, event)

    def _redrive_waiting(self, namespace: str) -> None:
        for body in list(self.waiting.get(namespace, {}).values()):
            self._offer_recording(body)

    def _track_phase(self, rec: RecordingView, body: dict[str, Any]) -> None:
        phase = rec.status.get("phase") or "None"
        old = self.phases.get(rec.uid)
        if old == phase:
            return
        if old is not None:
            metrics.RECORDINGS.labels(phase=old).dec()
        metrics.RECORDINGS.labels(phase=phase).inc()
        self.phases[rec.uid] = phase
        if Phase.CACHED.value in (old, phase):
            self._update_cached_gauge()
        if old is not None and phase == Phase.UPLOADING.value:
            upload = rec.status.get("upload") or {}
            self._spawn(
                self.post_event(
                    body,
                    Event("Normal", "Uploading", f"uploader pod {upload.get('pod')} is sending it"),
                )
            )

    def _update_cached_gauge(self) -> None:
        metrics.CACHED.set(Counter(self.phases.values())[Phase.CACHED.value])

    async def _settle(self, body: dict[str, Any]) -> None:
        """Final conditions and the status callback of a Completed or Failed recording."""
        rec = RecordingView.from_body(body)
        try:
            await self._settle_once(rec)
        except Exception:
            log.exception("settling failed", extra={"recording": f"{rec.namespace}/{rec.name}"})
        finally:
            self.settling.discard(rec.uid)

    async def _settle_once(self, rec: RecordingView) -> None:
        """Claim the settlement with a write guarded by the version decided on, then act.

        The same completion reaches this operator several ways (the uploader's watch event,
        a resync page listed a moment earlier, a re-drive), some of them already stale. An
        unguarded write let each of them settle it again: two Stored Events, two callbacks.
        Only the view that is still current wins the claim; a stale one gets 409 and looks
        again at the current object, which shows the claim.
        """
        for _ in range(SETTLE_CLAIM_TRIES):
            plan = settlement(rec, self.clock(), self.instance)
            if plan is None:
                return
            if plan.event is not None:
                # named after the outcome: a second post (a stale view, a restart after a
                # crash between this and the claim) creates no second Event
                await self.post_event(rec.body_ref(), plan.event, name=plan.event_name)
            claimed, current = await self._write_guarded(rec, plan.status)
            if claimed is not None:
                break
            if current is None:
                return  # gone
            rec = current
        else:
            return  # still contended: the next event or resync brings it back
        if plan.event is not None and rec.phase is Phase.COMPLETED:
            metrics.UPLOADED_BYTES.inc(int(rec.status.get("size") or 0))
            done = parse_time(rec.status.get("completionTime")) or self.clock()
            metrics.UPLOAD_LATENCY.observe(max(0.0, (done - rec.created).total_seconds()))
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
            if not is_status(exc, 404, 409):
                raise
            if is_status(exc, 404):
                return None, None
        try:
            body = await self.kube.get_status(recording.PLURAL, rec.namespace, rec.name)
        except Exception as exc:
            if is_status(exc, 404):
                return None, None
            raise
        current = RecordingView.from_body(slim(body))
        return None, current if current.uid == rec.uid else None

    async def _call_back(self, rec: RecordingView, token: str) -> None:
        """Send the claimed callback and record its result over the claim."""
        snapshot = rec.snapshot
        assert snapshot is not None
        delivered, reason, message, attempts = await self._callback(rec, snapshot, token)
        now = self.clock()
        metrics.CALLBACKS.labels(result="delivered" if delivered else "failed").inc()
        await self.post_event(
            rec.body_ref(),
            Event("Normal" if delivered else "Warning", f"Callback{reason}", message),
        )
        for _ in range(SETTLE_CLAIM_TRIES):
            claim = find(rec.status.get("conditions"), "CallbackDelivered")
            if claim is None or claim.get("reason") != SENDING:
                return  # no longer ours to record (a manual retry started a new outcome)
            patch = {
                "conditions": merge_conditions(
                    rec.status.get("conditions") or [],
                    [
                        condition(
                            "CallbackDelivered", delivered, reason, message, now, rec.generation
                        )
                    ],
                ),
                "callbackAttempts": attempts,
            }
            written, current = await self._write_guarded(rec, patch)
            if written is not None or current is None:
                return
            rec = current

    async def _callback(
        self, rec: RecordingView, snapshot: Any, token: str
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

    async def _patch_status(
        self, plural: str, body: dict[str, Any], status: dict[str, Any]
    ) -> dict[str, Any]:
        """Write the status; the object as written, so what is cached is what the API holds
        (a later re-evaluation from the cache, on a Secret's change, starts from it)."""
        meta = body["metadata"]
        try:
            return await self.kube.patch_status(plural, meta["namespace"], meta["name"], status)
        except Exception as exc:
            if not is_status(exc, 404):
                raise
            return body  # gone: its DELETED event forgets it


def _validated(status: dict[str, Any]) -> bool:
    found = find(status.get("conditions"), "Validated")
    return bool(found and found.get("status") == "True")
