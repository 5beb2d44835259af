"""The metadata-only Secret watch against a real apiserver: names arrive, bodies never do."""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from tests.bed.processes import wait_until
from voicevault.operator import metrics
from voicevault.operator.secretwatch import ExpiredError, SecretMetadataWatch

pytestmark = [pytest.mark.kube]

BODY = 256 * 1024  # a Helm release's size


class Seen:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.names: list[tuple[str, str]] = []

    def __call__(self, namespace: str, name: str) -> None:
        with self.lock:
            self.names.append((namespace, name))

    def count(self, namespace: str, name: str) -> int:
        with self.lock:
            return self.names.count((namespace, name))


def big_secret(core: k8s.CoreV1Api, namespace: str, name: str) -> None:
    blob = base64.b64encode(os.urandom(BODY)).decode()
    core.create_namespaced_secret(
        namespace, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=name), data={"release": blob})
    )


def received() -> float:
    return metrics.sample("voicevault_secret_watch_bytes_total")


@pytest.fixture
def core(kube_api: Any) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(kube_api)


@pytest.fixture
def own_core(kube_api: Any) -> Iterator[k8s.CoreV1Api]:
    """A client of the watch's own, as each watch thread has (it sets its Accept header)."""
    with k8s.ApiClient(kube_api.configuration) as api:
        yield k8s.CoreV1Api(api)


@pytest.fixture
def watch(kube_api: Any, namespace: str) -> Iterator[tuple[SecretMetadataWatch, Seen]]:
    seen = Seen()
    watcher = SecretMetadataWatch(kube_api, seen, namespaces=(namespace,), watch_seconds=5)
    watcher.start()
    yield watcher, seen
    watcher.stop()


def test_changes_arrive_by_name_and_no_secret_body_is_received(
    core: k8s.CoreV1Api, namespace: str, watch: tuple[SecretMetadataWatch, Seen]
) -> None:
    watcher, seen = watch
    assert watcher.synced.wait(30)
    before = received()
    for i in range(8):
        big_secret(core, namespace, f"release-{i}")
    core.patch_namespaced_secret("release-3", namespace, {"metadata": {"labels": {"a": "b"}}})
    core.delete_namespaced_secret("release-5", namespace)
    wait_until(
        lambda: seen.count(namespace, "release-5") >= 2 and seen.count(namespace, "release-7") > 0,
        timeout=30,
        what="watch events for the new Secrets",
    )
    assert seen.count(namespace, "release-3") == 2  # added, then modified
    # eight 256 KiB bodies went into the API; what came back is names and versions
    assert received() - before < 8 * BODY / 50


def test_the_first_list_is_silent_and_a_list_after_announce_names_every_secret(
    kube_api: Any, core: k8s.CoreV1Api, own_core: k8s.CoreV1Api, namespace: str
) -> None:
    for i in range(3):
        big_secret(core, namespace, f"old-{i}")
    seen = Seen()
    quiet = SecretMetadataWatch(kube_api, seen, namespaces=(namespace,), page_size=2)
    version = quiet._list(own_core, namespace)  # not announced: the start reads what it needs after
    assert version and seen.names == []
    quiet.announce.set()
    quiet._list(own_core, namespace)  # a list after a 410, in pages of 2
    assert {name for ns, name in seen.names if ns == namespace} >= {"old-0", "old-1", "old-2"}


class Replayed:
    """A finished watch response as the apiserver streams it, for the 410 path: a fresh
    test apiserver keeps its whole history in its watch cache and never answers 410."""

    def __init__(self, *events: dict[str, Any]) -> None:
        self.body = b"".join(json.dumps(e).encode() + b"\n" for e in events)

    def stream(self, amt: int, decode_content: bool) -> Iterator[bytes]:
        for start in range(0, len(self.body), 7):  # split inside lines on purpose
            yield self.body[start : start + 7]

    def release_conn(self) -> None:
        pass


def test_a_watch_ended_by_410_means_list_again_and_bookmarks_move_the_version(
    kube_api: Any, own_core: k8s.CoreV1Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = Seen()
    watcher = SecretMetadataWatch(kube_api, seen)
    added = {
        "type": "ADDED",
        "object": {"metadata": {"namespace": "a", "name": "s", "resourceVersion": "7"}},
    }
    mark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
    monkeypatch.setattr(watcher, "_request", lambda *a, **k: Replayed(added, mark))
    assert watcher._watch(own_core, "", "5") == "9"
    assert seen.names == [("a", "s")]
    monkeypatch.setattr(watcher, "_request", lambda *a, **k: Replayed(added, gone))
    with pytest.raises(ExpiredError):
        watcher._watch(own_core, "", "9")
