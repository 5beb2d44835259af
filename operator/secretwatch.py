"""Notice Secret changes without their bodies: a metadata-only list and watch.

The operator must learn when a Secret that a credential or a callback signing key names
appears, changes or goes. Watching Secrets themselves would stream every Secret body of
the cluster (Helm releases of up to 1 MiB, service-account tokens, TLS keys of every
tenant) through the operator and hold them decoded at the initial list. The API serves
any resource as `PartialObjectMetadata` instead, so only names and versions arrive here;
the few bodies the operator needs are then read one by one (`Kube.secret_data`).

The client is synchronous, so the loop runs in a thread of its own, with an API client of
its own (whose default Accept header asks for metadata; per-request headers are not in
every client version), and hands each change to the event loop. It follows the
informer's rules: list (in pages) for a resourceVersion, watch from it, watch again from
the last version seen when the server ends the watch, and list again only when that
version is gone (410).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from voicevault.operator import metrics

log = logging.getLogger(__name__)

LIST_ACCEPT = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
WATCH_ACCEPT = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"

OnChange = Callable[[str, str], None]


class ExpiredError(Exception):
    """The resourceVersion to watch from is too old (410 Gone): list again."""


class SecretMetadataWatch:
    """List and watch Secret metadata in `namespaces` (all if empty); call `on_change`.

    `on_change(namespace, name)` runs in the watch thread for every Secret added, modified
    or deleted, and for every Secret a list finds once `announce` is set; it must be cheap
    and thread-safe (hand the work to the loop). The first list before `announce` is
    silent: the operator reads the Secrets it needs after it, at a newer version, so a
    start does not read each of them twice.
    """

    def __init__(
        self,
        api_client: k8s.ApiClient,
        on_change: OnChange,
        *,
        namespaces: tuple[str, ...] = (),
        page_size: int = 500,
        watch_seconds: int = 300,
        backoff_seconds: float = 2.0,
    ) -> None:
        self.configuration = api_client.configuration
        self.on_change = on_change
        self.namespaces = namespaces or ("",)
        self.page_size = page_size
        self.watch_seconds = watch_seconds
        self.backoff_seconds = backoff_seconds
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.synced = threading.Event()  # set once every namespace's first list is done
        self.announce = threading.Event()
        self._listed: set[str] = set()

    def start(self) -> None:
        for namespace in self.namespaces:
            thread = threading.Thread(
                target=self._run, args=(namespace,), name="secret-metadata", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Ask the threads to end; a watch in flight ends at its server timeout at the latest."""
        self._stop.set()

    # -- one namespace (or all) ------------------------------------------------------------

    def _run(self, namespace: str) -> None:
        with k8s.ApiClient(self.configuration) as api:
            self._follow(k8s.CoreV1Api(api), namespace)

    def _follow(self, core: k8s.CoreV1Api, namespace: str) -> None:
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list(core, namespace)
                    self._listed.add(namespace)
                    if len(self._listed) == len(self.namespaces):
                        self.synced.set()
                version = self._watch(core, namespace, version)
            except ExpiredError:
                version = None
            except Exception as exc:  # the API is unreachable or refuses: try again soon
                log.warning(
                    "secret metadata watch failed; retrying",
                    extra={"namespace": namespace or "*", "error": type(exc).__name__},
                )
                self._stop.wait(self.backoff_seconds)

    def _request(self, core: k8s.CoreV1Api, namespace: str, accept: str, **kwargs: Any) -> Any:
        """A list or watch request whose response is `accept`; the raw, unread response."""
        core.api_client.default_headers["Accept"] = accept  # this thread's own client
        response: Any  # urllib3's response: not preloaded, so never a V1SecretList
        if namespace:
            response = core.list_namespaced_secret(namespace, _preload_content=False, **kwargs)
        else:
            response = core.list_secret_for_all_namespaces(_preload_content=False, **kwargs)
        if response.status >= 300:
            status = response.status
            response.release_conn()
            if status == 410:
                raise ExpiredError
            raise ApiException(status=status, reason="secret metadata request refused")
        return response

    def _list(self, core: k8s.CoreV1Api, namespace: str) -> str:
        """Every Secret's name, page by page; the list's resourceVersion."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self.page_size, "_request_timeout": 60}
            if token:
                kwargs["_continue"] = token
            response = self._request(core, namespace, LIST_ACCEPT, **kwargs)
            try:
                raw = response.data
            finally:
                response.release_conn()
            metrics.SECRET_WATCH_BYTES.inc(len(raw))
            page = json.loads(raw)
            if self.announce.is_set():
                for item in page.get("items") or []:
                    self._changed(item)
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return str(meta.get("resourceVersion") or "")

    def _watch(self, core: k8s.CoreV1Api, namespace: str, version: str) -> str:
        """Follow changes from `version` until the server ends the watch; the last version."""
        try:
            response = self._request(
                core,
                namespace,
                WATCH_ACCEPT,
                watch=True,
                allow_watch_bookmarks=True,
                resource_version=version,
                timeout_seconds=self.watch_seconds,
                _request_timeout=(30, self.watch_seconds + 30),
            )
        except ApiException as exc:
            if exc.status == 410:
                raise ExpiredError from None
            raise
        try:
            for event in _events(response):
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise ExpiredError
                    raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('reason')}")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind != "BOOKMARK":
                    self._changed(obj)
                if self._stop.is_set():
                    break
        finally:
            response.release_conn()
        return version

    def _changed(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        namespace, name = meta.get("namespace"), meta.get("name")
        if namespace and name:
            self.on_change(namespace, name)


def _events(response: Any) -> Iterator[dict[str, Any]]:
    """Watch events, one JSON object per line, from a streaming urllib3 response."""
    pending = b""
    for chunk in response.stream(amt=65536, decode_content=True):
        metrics.SECRET_WATCH_BYTES.inc(len(chunk))
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if pending.strip():
        yield json.loads(pending)
