"""What each kind of Recording request costs the apiserver (and etcd), in CPU ms.

    python bench/apicost.py [--requests 1000]

A control plane of its own with the CRDs, and nothing else: no operator, no webhook. The
same number of each request is sent from 8 threads of a raw HTTPS client (keep-alive,
the admin's client certificate), one kind after the other on the same Recordings, and
the apiserver's and etcd's CPU is read from /proc around each kind. The bodies have the
shape voicevault writes: the create as a recorder sends it, the `Scheduled` claim with
its storage snapshot, the uploader's outcome with its `Stored` condition, the outcome
Event. Then two controls: the same one-field status patch on an object with three
managers in its managedFields, and again after managedFields were cleared, which is what
field management costs a write.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.proc_cpu import own
from tests.bed.controlplane import ControlPlane
from tests.support.kube import apply_crds, kubectl

NAMESPACE = "bench"
BASE = f"/apis/voicevault.io/v1alpha1/namespaces/{NAMESPACE}/recordings"
URL = "https://rec-1.s3.us-east-1.amazonaws.com/calls/AC0123456789abcdef0123456789abcdef/RE0.wav"
THREADS = 8
SCHEDULED = {
    "status": {
        "phase": "Scheduled",
        "attempts": 1,
        "observedGeneration": 1,
        "sid": "RE0123456789abcdef0123456789abcdef",
        "message": "In uploader pod vv-upload-node-01-70997b-9a2132b6's batch (attempt 1)",
        "storage": {
            "bucket": "rec-1",
            "bucketUrl": "https://rec-1.s3.us-east-1.amazonaws.com/calls/",
            "credentialName": "s3-writer",
            "endpointUrl": "http://127.0.0.1:9000",
            "initialBackoffSeconds": 1,
            "maxBackoffSeconds": 2,
            "mediaUrl": URL,
            "objectKey": URL.split(".com/", 1)[1],
            "region": "us-east-1",
            "retryWindowSeconds": 7200,
            "settingGeneration": 1,
        },
        "upload": {"pod": "vv-upload-node-01-70997b-9a2132b6"},
    }
}
OUTCOME = {
    "status": {
        "phase": "Completed",
        "completionTime": "2026-12-02T08:13:12Z",
        "conditions": [
            {
                "type": "Stored",
                "status": "True",
                "reason": "Uploaded",
                "message": f"stored at {URL}",
                "lastTransitionTime": "2026-12-02T08:13:12Z",
            }
        ],
        "mediaUrl": URL,
        "message": "Stored in the bucket; local media deleted",
        "size": 2048,
        "upload": {"bytesSent": 2048, "bytesTotal": 2048},
    }
}


class Client:
    """JSON over one keep-alive HTTPS connection per thread."""

    def __init__(self, plane: ControlPlane) -> None:
        self.port = plane.port
        self.context = plane.admin_context()
        self.local = threading.local()

    def send(self, method: str, path: str, body: Any, kind: str = "application/json") -> None:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPSConnection(
                "127.0.0.1", self.port, context=self.context, timeout=60
            )
        conn.request(method, path, json.dumps(body).encode(), {"Content-Type": kind})
        answer = conn.getresponse()
        data = answer.read()
        if answer.status >= 300:
            raise RuntimeError(f"{method} {path}: {answer.status} {data[:200]!r}")


def recording(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "voicevault.io/v1alpha1",
        "kind": "Recording",
        "metadata": {"name": f"r{i}", "finalizers": ["voicevault.io/cleanup"]},
        "spec": {
            "accountSid": "AC0123456789abcdef0123456789abcdef",
            "callSid": f"CA{i:032x}",
            "source": "RecordVerb",
            "startTime": "2026-11-25T10:00:00Z",
            "duration": 3,
            "nodeName": "node-01",
            "mediaPath": f"r{i}.wav",
        },
    }


def event(i: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"r{i}.outcome", "namespace": NAMESPACE},
        "involvedObject": {
            "apiVersion": "voicevault.io/v1alpha1",
            "kind": "Recording",
            "name": f"r{i}",
            "namespace": NAMESPACE,
        },
        "reason": "Stored",
        "message": f"stored at {URL}",
        "type": "Normal",
        "source": {"component": "voicevault-uploader"},
        "firstTimestamp": "2026-12-02T08:13:12Z",
        "lastTimestamp": "2026-12-02T08:13:12Z",
        "count": 1,
    }


def status_patch(client: Client, body: Any, manager: str) -> Callable[[int], None]:
    def send(i: int) -> None:
        path = f"{BASE}/r{i}/status?fieldManager={manager}"
        client.send("PATCH", path, body, "application/merge-patch+json")

    return send


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000, help="of each kind")
    n = parser.parse_args().requests
    with tempfile.TemporaryDirectory(prefix="vv-apicost-") as tmp, ControlPlane(Path(tmp)) as cp:
        apply_crds(cp.admin_kubeconfig)
        kubectl(cp.admin_kubeconfig, "create", "namespace", NAMESPACE)
        client = Client(cp)
        roles = {"kube-apiserver": own(cp.apiserver_pid), "etcd": own(cp.etcd_pid)}
        merge = "application/merge-patch+json"
        kinds: list[tuple[str, Callable[[int], None]]] = [
            ("POST recordings (the create)", lambda i: client.send("POST", BASE, recording(i))),
            ("PATCH status: Scheduled", status_patch(client, SCHEDULED, "voicevault-operator")),
            ("PATCH status: the outcome", status_patch(client, OUTCOME, "voicevault-uploader")),
            (
                "POST events",
                lambda i: client.send("POST", f"/api/v1/namespaces/{NAMESPACE}/events", event(i)),
            ),
            ("GET recording", lambda i: client.send("GET", f"{BASE}/r{i}", None)),
            (
                "PATCH status: one field, 3 managers",
                lambda i: client.send(
                    "PATCH", f"{BASE}/r{i}/status", {"status": {"size": i}}, merge
                ),
            ),
            (
                "(clear managedFields)",
                lambda i: client.send(
                    "PATCH", f"{BASE}/r{i}", {"metadata": {"managedFields": [{}]}}, merge
                ),
            ),
            (
                "PATCH status: one field, no managers",
                lambda i: client.send(
                    "PATCH", f"{BASE}/r{i}/status", {"status": {"size": i + 1}}, merge
                ),
            ),
        ]
        print(f"{n} requests of each kind, {THREADS} threads; CPU ms per request\n")
        print("| request | apiserver | etcd |")
        print("|---|---:|---:|")
        for label, send in kinds:
            before = {role: cpu() for role, cpu in roles.items()}
            with ThreadPoolExecutor(THREADS) as pool:
                list(pool.map(send, range(n)))
            spent = {role: 1000 * (cpu() - before[role]) / n for role, cpu in roles.items()}
            print(f"| {label} | {spent['kube-apiserver']:.2f} | {spent['etcd']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
