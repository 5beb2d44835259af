"""AwsCredential: evaluate each one (and its Secret), write its status, keep its view."""

from __future__ import annotations

import asyncio
from typing import Any

from voicevault.crds import awscredential
from voicevault.operator import credentials
from voicevault.operator.bodies import same_status
from voicevault.operator.conditions import find
from voicevault.operator.settingcontroller import SettingController
from voicevault.operator.settings import CredentialView
from voicevault.operator.shared import Part, Shared
from voicevault.phases import Event

ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"  # noqa: S105 - the default key name in a Secret


class CredentialController(Part):
    def __init__(self, shared: Shared, settings: SettingController) -> None:
        super().__init__(shared)
        self.settings = settings
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def on_credential(self, body: dict[str, Any], *, refresh_settings: bool = True) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        async with self._lock(key):
            await self._apply(body, refresh_settings=refresh_settings)

    async def _recheck(self, key: tuple[str, str]) -> None:
        """Evaluate a credential again from the cache, which holds its body as last written:
        starting from an older body, the evaluation would find no conditions and write them
        again with new timestamps."""
        async with self._lock(key):
            body = self.store.credential_bodies.get(key)
            if body is not None:
                await self._apply(body, refresh_settings=True)

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        """One evaluation per credential at a time (its own event, or a Secret's)."""
        return self._locks.setdefault(key, asyncio.Lock())

    async def _apply(self, body: dict[str, Any], *, refresh_settings: bool) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        key = (namespace, name)
        self.store.credential_bodies[key] = body
        spec = body.get("spec") or {}
        ref = spec.get("secretRef") or {}
        secret = None
        if ref.get("name") and (not ref.get("namespace") or ref.get("namespace") == namespace):
            found = await self.kube.secret_data(namespace, ref["name"])
            if found is not None:
                secret = credentials.snapshot_secret(
                    found[0], found[1], ref.get("accessKeyIdKey", ACCESS_KEY_ID)
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
        if not same_status(result.status, current):
            # the object as written: a later re-evaluation from the cache starts from it
            written = await self.kube.patch_status_or_none(
                awscredential.PLURAL, namespace, name, result.status
            )
            self.store.credential_bodies[key] = written or body  # gone: its DELETED event
            ready = find(current.get("conditions"), "Ready")
            if ready is None or ready.get("reason") != result.reason:
                await self.events.post(
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
            access_key_id_key=ref.get("accessKeyIdKey", ACCESS_KEY_ID),
            secret_access_key_key=ref.get("secretAccessKeyKey", SECRET_ACCESS_KEY),
            session_token_key=ref.get("sessionTokenKey"),
            secret_version=result.status.get("secretVersion"),
        )
        changed = self.store.credentials.get(key) != view
        self.store.credentials[key] = view
        if changed and refresh_settings:
            # new keys (or a new credential): what the bucket said about the old ones
            # no longer holds, so ask it again now rather than at the next interval
            await self.settings.refresh(namespace, force_validation=True)

    def forget(self, namespace: str, name: str) -> None:
        self.store.credential_bodies.pop((namespace, name), None)
        self.store.credentials.pop((namespace, name), None)
        self._locks.pop((namespace, name), None)

    async def on_secret(self, namespace: str, name: str) -> None:
        """A Secret changed: re-check the credentials that use it."""
        for (ns, cred_name), view in list(self.store.credentials.items()):
            if ns == namespace and view.secret_name == name:
                await self._recheck((ns, cred_name))
