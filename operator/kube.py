"""The operator's Kubernetes API calls, counted, off the event loop.

The official client is synchronous; every call runs in a bounded thread pool so the
kopf event loop never blocks. Each request is counted by verb and resource
(`voicevault_kube_requests_total`), which is how the benchmark counts writes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from voicevault import API_GROUP, API_VERSION
from voicevault.operator import metrics

MERGE = "application/merge-patch+json"
COMPONENT = "voicevault-operator"


def load_api_client() -> k8s.ApiClient:
    """In-cluster credentials in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()
    configuration = k8s.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = 32
    return k8s.ApiClient(configuration)


def is_status(exc: BaseException, *codes: int) -> bool:
    return isinstance(exc, ApiException) and exc.status in codes


class Kube:
    def __init__(self, api_client: k8s.ApiClient, workers: int = 16) -> None:
        self.api_client = api_client
        self.custom = k8s.CustomObjectsApi(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.coordination = k8s.CoordinationV1Api(api_client)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")

    def close(self, *, client: bool = True) -> None:
        """Stop the call threads; `client=False` leaves the API client open (its owner's)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if client:
            self.api_client.close()

    async def _call(
        self, verb: str, resource: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        metrics.KUBE_REQUESTS.labels(verb=verb, resource=resource).inc()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    async def _or_none(
        self, verb: str, resource: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """A counted call; None when the object does not exist (404)."""
        try:
            return await self._call(verb, resource, fn, *args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    # -- custom resources ------------------------------------------------------------------

    async def get_or_none(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        result: dict[str, Any] | None = await self._or_none(
            "get",
            plural,
            self.custom.get_namespaced_custom_object,
            API_GROUP,
            API_VERSION,
            namespace,
            plural,
            name,
        )
        return result

    async def patch_status(
        self,
        plural: str,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Merge-patch .status; with `resource_version` it fails (409) if anyone wrote since."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        result: dict[str, Any] = await self._call(
            "patch",
            f"{plural}/status",
            self.custom.patch_namespaced_custom_object_status,
            API_GROUP,
            API_VERSION,
            namespace,
            plural,
            name,
            body,
            _content_type=MERGE,
        )
        return result

    async def patch_status_or_none(
        self, plural: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any] | None:
        """`patch_status`, unguarded; None if the object is gone (its DELETED event follows)."""
        try:
            return await self.patch_status(plural, namespace, name, status)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def patch_meta(
        self, plural: str, namespace: str, name: str, metadata: dict[str, Any]
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "patch",
            plural,
            self.custom.patch_namespaced_custom_object,
            API_GROUP,
            API_VERSION,
            namespace,
            plural,
            name,
            {"metadata": metadata},
            _content_type=MERGE,
        )
        return result

    async def set_finalizers(
        self, plural: str, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> dict[str, Any]:
        """Replace the finalizer list, guarded by resourceVersion (others' entries kept)."""
        return await self.patch_meta(
            plural, namespace, name, {"finalizers": finalizers, "resourceVersion": resource_version}
        )

    async def try_patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any], resource_version: str
    ) -> dict[str, Any] | None:
        """`patch_status` guarded by resourceVersion; None if the object changed or went.

        A stale decision is dropped rather than retried: the watch brings the newer object
        and the rules decide again from it.
        """
        try:
            return await self.patch_status(plural, namespace, name, status, resource_version)
        except ApiException as exc:
            if exc.status in (404, 409):
                return None
            raise

    async def remove_finalizer(
        self, plural: str, body: dict[str, Any], finalizer: str
    ) -> dict[str, Any] | None:
        """Drop one finalizer from `body`'s object (guarded); None if it changed or went."""
        meta = body["metadata"]
        remaining = [f for f in meta.get("finalizers") or [] if f != finalizer]
        try:
            return await self.set_finalizers(
                plural, meta["namespace"], meta["name"], remaining, meta["resourceVersion"]
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return None
            raise

    async def list_pages(
        self, plural: str, page_size: int = 500
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Every object of a kind, one page at a time: memory stays bounded by a page."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": page_size}
            if token:
                kwargs["_continue"] = token
            page = await self._call(
                "list",
                plural,
                self.custom.list_cluster_custom_object,
                API_GROUP,
                API_VERSION,
                plural,
                **kwargs,
            )
            yield page.get("items", [])
            token = page.get("metadata", {}).get("continue")
            if not token:
                return

    async def list_objects(self, plural: str, page_size: int = 500) -> list[dict[str, Any]]:
        """Every object of a kind, read in pages (for kinds with few objects)."""
        return [item async for page in self.list_pages(plural, page_size) for item in page]

    # -- leases ----------------------------------------------------------------------------------

    async def get_lease(self, namespace: str, name: str) -> k8s.V1Lease | None:
        lease: k8s.V1Lease | None = await self._or_none(
            "get", "leases", self.coordination.read_namespaced_lease, name, namespace
        )
        return lease

    async def create_lease(self, namespace: str, body: dict[str, Any]) -> k8s.V1Lease:
        lease: k8s.V1Lease = await self._call(
            "create", "leases", self.coordination.create_namespaced_lease, namespace, body
        )
        return lease

    async def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> k8s.V1Lease:
        """Write the whole Lease, guarded by the resourceVersion in `body` (409 if stale)."""
        lease: k8s.V1Lease = await self._call(
            "update", "leases", self.coordination.replace_namespaced_lease, name, namespace, body
        )
        return lease

    # -- core ------------------------------------------------------------------------------------

    async def read_secret(self, namespace: str, name: str) -> k8s.V1Secret | None:
        secret: k8s.V1Secret | None = await self._or_none(
            "get", "secrets", self.core.read_namespaced_secret, name, namespace
        )
        return secret

    async def secret_data(self, namespace: str, name: str) -> tuple[str, dict[str, bytes]] | None:
        """(resourceVersion, decoded data) of a Secret, or None if it does not exist."""
        secret = await self.read_secret(namespace, name)
        if secret is None:
            return None
        data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        return str(secret.metadata.resource_version if secret.metadata else ""), data

    async def node_exists(self, name: str) -> bool:
        return await self._or_none("get", "nodes", self.core.read_node, name) is not None

    async def create_pod(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        result = await self._call(
            "create", "pods", self.core.create_namespaced_pod, namespace, manifest
        )
        return dict(self.api_client.sanitize_for_serialization(result))

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """As plain JSON: the scheduler lists its pods every poll, and building the client's
        models for them, then turning them back into dicts, was a tenth of its CPU (#19)."""

        def listed() -> list[dict[str, Any]]:
            answer: Any = self.core.list_namespaced_pod(
                namespace, label_selector=selector, _preload_content=False
            )  # the raw answer, whatever the annotation says
            return list(json.loads(answer.data).get("items", []))

        metrics.KUBE_REQUESTS.labels(verb="list", resource="pods").inc()
        return await asyncio.get_running_loop().run_in_executor(self._pool, listed)

    async def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = None) -> None:
        """Delete a pod; one already gone is fine."""
        await self._or_none(
            "delete",
            "pods",
            self.core.delete_namespaced_pod,
            name,
            namespace,
            grace_period_seconds=grace_seconds,
        )

    async def create_secret(self, namespace: str, manifest: dict[str, Any]) -> None:
        await self._call(
            "create", "secrets", self.core.create_namespaced_secret, namespace, manifest
        )

    async def set_owner(self, namespace: str, secret: str, owner: dict[str, Any]) -> None:
        """Make a Secret owned by `owner`, so it is garbage-collected with it."""
        await self._call(
            "patch",
            "secrets",
            self.core.patch_namespaced_secret,
            secret,
            namespace,
            {"metadata": {"ownerReferences": [owner]}},
        )

    async def delete_secret(self, namespace: str, name: str) -> None:
        """Delete a Secret; one already gone is fine."""
        await self._or_none(
            "delete", "secrets", self.core.delete_namespaced_secret, name, namespace
        )

    async def list_secrets(self, namespace: str, selector: str) -> list[k8s.V1Secret]:
        result = await self._call(
            "list", "secrets", self.core.list_namespaced_secret, namespace, label_selector=selector
        )
        return list(result.items or [])

    async def post_event(
        self,
        obj: dict[str, Any],
        kind: str,
        type_: str,
        reason: str,
        message: str,
        name: str | None = None,
    ) -> None:
        """A core/v1 Event about `obj`. Best effort: an Event is never worth a failure.

        With a `name`, an Event of that name already there is the same Event: nothing new.
        """
        meta = obj.get("metadata", {})
        now = datetime.now(UTC)
        event = {
            "metadata": {
                "name": name or f"{meta.get('name', 'object')}.{uuid.uuid4().hex[:16]}",
                "namespace": meta.get("namespace"),
            },
            "involvedObject": {
                "apiVersion": "v1" if kind == "Pod" else f"{API_GROUP}/{API_VERSION}",
                "kind": kind,
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT,
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
        }
        try:
            await self._call(
                "create", "events", self.core.create_namespaced_event, meta.get("namespace"), event
            )
        except Exception as exc:
            if name is None or not is_status(exc, 409):
                metrics.EVENT_FAILURES.inc()
