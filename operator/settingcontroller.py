"""VoiceStorageSetting: evaluate the namespace's setting, validate its bucket, keep its view.

One evaluation per namespace at a time. The bucket is asked again every validation
interval (sooner while it refuses), and at once when the setting's credential changes.
When a setting becomes ready, the recordings that waited for it are offered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from voicevault.crds import voicestoragesetting
from voicevault.crds.voicestoragesetting import SETTING_NAME
from voicevault.operator import callbacks, metrics, settings
from voicevault.operator.bodies import same_status
from voicevault.operator.conditions import find, is_true
from voicevault.operator.settings import CredentialView, SettingView
from voicevault.operator.shared import Part, Shared
from voicevault.operator.viewstore import keys_digest
from voicevault.phases import Event
from voicevault.uploader import s3calls
from voicevault.uploader.bucketurl import BucketLocation
from voicevault.uploader.errors import UploadError
from voicevault.uploader.s3client import AnsweredRegion, AwsKeys, make_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("voicevault.operator")


class SettingController(Part):
    def __init__(self, shared: Shared, ready: Callable[[str], None] = lambda _: None) -> None:
        super().__init__(shared)
        self.ready = ready  # called with the namespace whose setting became ready
        self.next_validation: dict[str, datetime] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def on_setting(self, body: dict[str, Any], *, force_validation: bool = False) -> None:
        meta = body["metadata"]
        if meta.get("name") != SETTING_NAME:
            return  # the CRD's CEL rule refuses other names
        # one evaluation per namespace at a time: a new recording waits for it to finish
        async with self._lock(meta["namespace"]):
            await self._apply(body, force_validation=force_validation)

    def _lock(self, namespace: str) -> asyncio.Lock:
        return self._locks.setdefault(namespace, asyncio.Lock())

    async def _apply(self, body: dict[str, Any], *, force_validation: bool) -> None:
        meta = body["metadata"]
        namespace = meta["namespace"]
        self.store.setting_bodies[namespace] = body
        generation = int(meta.get("generation") or 1)
        spec = body.get("spec") or {}
        ref = ((spec.get("externalStorage") or {}).get("credentialRef") or {}).get("name")
        credential = self.store.credentials.get((namespace, ref)) if ref else None
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
        if not same_status(status, current):
            written = await self.kube.patch_status_or_none(
                voicestoragesetting.PLURAL, namespace, meta["name"], status
            )
            self.store.setting_bodies[namespace] = written or body  # as written, for re-checks
            await self._post_events(body, current, status)
        ok = evaluation.ready and (
            validated[0] if validated else is_true(status.get("conditions"), "Validated")
        )
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
        old = self.store.settings.get(namespace)
        self.store.settings[namespace] = view
        if view.ready and (old is None or not old.ready or old.generation != view.generation):
            self.ready(namespace)

    async def _signing(
        self, namespace: str, evaluation: settings.SettingEvaluation
    ) -> tuple[bool, str, str] | None:
        """Whether the setting's callbacks can be signed; None if it names no key."""
        callback = evaluation.spec.status_callback if evaluation.spec else None
        ref = callback.signing_key_ref if callback else None
        if ref is None:
            self.store.signing_secrets.pop(namespace, None)
            return None
        self.store.signing_secrets[namespace] = ref.name
        found = await self.kube.secret_data(namespace, ref.name)
        problem = callbacks.signing_problem(
            namespace, ref.name, ref.key, found[1] if found else None
        )
        if problem is not None:
            reason, why = problem
            return False, reason, f"{why}: status callbacks are not sent"
        return True, "SigningKeyFound", f"callbacks are signed with {ref.key!r} of {ref.name!r}"

    def forget(self, namespace: str, name: str) -> None:
        if name == SETTING_NAME:
            self.store.signing_secrets.pop(namespace, None)
            self.store.setting_bodies.pop(namespace, None)
            self.store.settings.pop(namespace, None)
            self.next_validation.pop(namespace, None)
            # no setting is not an invalid one: the series goes (an alert watches for 0)
            with contextlib.suppress(KeyError):
                metrics.SETTING_VALID.remove(namespace)

    async def refresh_from_api(self, namespace: str) -> None:
        """Read the namespace's setting now, not from the watch.

        A Recording applied together with its setting (one `kubectl apply`, a GitOps sync)
        may arrive before the setting's own watch event. When no setting is known for the
        namespace, one read makes sure there really is none before the recording is
        declared Local.
        """
        body = await self.kube.get_or_none(voicestoragesetting.PLURAL, namespace, SETTING_NAME)
        if body is None:
            self.forget(namespace, SETTING_NAME)
            return
        async with self._lock(namespace):
            # a watch event for the same setting may be mid-evaluation (validating against
            # the bucket): the lock waits for it, and only a newer version is applied again
            known = self.store.setting_bodies.get(namespace, {}).get("metadata", {})
            if namespace not in self.store.settings or known.get("resourceVersion") != body[
                "metadata"
            ].get("resourceVersion"):
                await self._apply(body, force_validation=False)

    async def refresh(self, namespace: str, *, force_validation: bool = False) -> None:
        """Evaluate the namespace's known setting again (a credential or Secret changed)."""
        body = self.store.setting_bodies.get(namespace)
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
        keys = await self.store.credential_keys(namespace, credential.name)
        if isinstance(keys, str):
            return settings.Validation(False, "CredentialUnusable", keys)
        location = evaluation.location
        aws_keys = AwsKeys(keys.access_key_id, keys.secret_access_key, keys.session_token)

        def validate() -> settings.Validation:
            return validate_bucket(make_client(location, aws_keys), location)

        verdict = await asyncio.to_thread(validate)
        if verdict.ok:
            self.store.validated_keys[namespace, credential.name] = keys_digest(keys)
        return verdict

    async def _post_events(
        self, body: dict[str, Any], old: dict[str, Any], new: dict[str, Any]
    ) -> None:
        for type_ in ("Ready", "Validated", "CallbackSigning"):
            before, after = find(old.get("conditions"), type_), find(new.get("conditions"), type_)
            if after and (before is None or before.get("reason") != after.get("reason")):
                good = after.get("status") == "True" or after.get("reason") == "Disabled"
                await self.events.post(
                    body,
                    Event(
                        "Normal" if good else "Warning", after["reason"], after.get("message", "")
                    ),
                    voicestoragesetting.KIND,
                )

    async def validation_loop(self) -> None:
        """Asks each namespace's bucket again when its validation is due."""
        while True:
            await asyncio.sleep(min(30.0, self.config.validation_interval))
            now = self.clock()
            for namespace, due in list(self.next_validation.items()):
                body = self.store.setting_bodies.get(namespace)
                if due <= now and body is not None:
                    try:
                        await self.on_setting(body, force_validation=True)
                    except Exception:
                        log.exception("re-validation failed", extra={"namespace": namespace})


def validate_bucket(client: S3Client, location: BucketLocation) -> settings.Validation:
    """The test upload (`s3calls.open_and_abort`) under the prefix, and the verdict the
    rules read from its answer, with the region the bucket answered from."""
    answered = AnsweredRegion(client)
    try:
        s3calls.open_and_abort(client, location.bucket, settings.validation_key(location))
    except UploadError as exc:
        return settings.validation_failure(exc, location)
    return settings.validation_passed(location, answered.region or location.region)
