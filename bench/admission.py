"""What the admission webhook adds to an apply: the decision alone, and the API round trip.

    python bench/admission.py [--requests 200]

Times `decide()` in-process on a setting with an RSA-2048 key, then brings up the local
stack twice (real kube-apiserver + etcd, the operator), without and with the webhook,
and times server-side dry-run creates of a VoiceStorageSetting through the API: with the
webhook each one is a real AdmissionReview over HTTPS to the operator.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.bed.controlplane import ControlPlane
from tests.bed.s3_moto import MotoS3
from tests.bed.stack import SYSTEM_NAMESPACE, Stack
from tests.support.keys import key_pair
from voicevault import API_GROUP, API_VERSION
from voicevault.operator.admission import decide


def _spec() -> dict[str, Any]:
    return {
        "externalStorage": {
            "bucketUrl": "https://calls.s3.eu-west-1.amazonaws.com/x",
            "credentialRef": {"name": "writer"},
        },
        "encryption": {"publicKey": key_pair().public_pem.decode()},
    }


def decision_ms(reviews: int) -> float:
    request = {
        "kind": {"kind": "VoiceStorageSetting"},
        "operation": "CREATE",
        "namespace": "acme",
        "object": {"spec": _spec()},
    }
    started = time.perf_counter()
    for _ in range(reviews):
        assert decide(request).allowed
    return (time.perf_counter() - started) * 1000 / reviews


def round_trips_ms(workdir: Path, *, webhook: bool, requests: int) -> list[float]:
    body = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "VoiceStorageSetting",
        "metadata": {"name": "default"},
        "spec": _spec(),
    }
    with (
        ControlPlane(workdir / "controlplane") as plane,
        MotoS3(workdir / "moto") as s3,
    ):
        stack = Stack(plane, s3, workdir / "stack", webhook=webhook).start()
        try:
            took = []
            for _ in range(requests):
                started = time.perf_counter()
                stack.custom.create_namespaced_custom_object(
                    API_GROUP,
                    API_VERSION,
                    SYSTEM_NAMESPACE,
                    "voicestoragesettings",
                    body,
                    dry_run="All",
                )
                took.append((time.perf_counter() - started) * 1000)
            return sorted(took)
        finally:
            stack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    print(f"decide(): {decision_ms(1000):.3f} ms per review (1000 reviews, RSA-2048 key)")
    with tempfile.TemporaryDirectory(prefix="voicevault-bench-admission-") as tmp:
        for webhook in (False, True):
            took = round_trips_ms(Path(tmp) / str(webhook), webhook=webhook, requests=args.requests)
            p95 = took[int(len(took) * 0.95) - 1]
            print(
                f"webhook {'on ' if webhook else 'off'}: dry-run create through the API "
                f"median {statistics.median(took):.1f} ms, p95 {p95:.1f} ms "
                f"({len(took)} requests)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
