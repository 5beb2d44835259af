"""The user's journeys on the real node: the chart installed with helm, real pods.

The operator runs in its pod (in-cluster config, the projected token), each uploader is
a real container: the chart's UID, the real hostPath, a read-only root, a memory limit.
"""

from __future__ import annotations

import io
import os
import threading
from collections import Counter
from typing import Any

import pytest

from tests.bed.cluster_stack import RELEASE, RELEASE_NAMESPACE, UPLOADER_NAMESPACE, ClusterStack
from tests.bed.faultproxy import Delay, FaultProxy, Respond, Rule
from tests.bed.realnode import BRIDGE_IP, NODE_NAME
from tests.bed.realnode_fixtures import CLUSTER_GROUP
from tests.support.callbacks import CallbackReceiver, Received
from tests.support.kube import wait_for
from voicevault.operator.signature import verify_twilio_signature
from voicevault.uploader import envelope

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.xdist_group(CLUSTER_GROUP)]
MIB = 1 << 20
SHORT_WINDOW = {"windowSeconds": 8, "initialBackoffSeconds": 1, "maxBackoffSeconds": 2}
PHASE_TIMEOUT = 180


def _media(cluster: ClusterStack, namespace: str, name: str) -> Any:
    return cluster.media_file(NODE_NAME, namespace, f"2026/11/{name}.wav")


@pytest.fixture
def bridge_proxy(cluster: ClusterStack) -> Any:
    """A fault proxy in front of the node's S3, on the bridge address (pods reach it)."""
    with FaultProxy(cluster.s3.endpoint_url, host=BRIDGE_IP) as proxy:
        yield proxy


def test_happy_path_encrypted_in_real_pods(
    cluster: ClusterStack, bridge_callbacks: CallbackReceiver
) -> None:
    account = cluster.add_account(
        encrypted=True, callback_url=bridge_callbacks.url(), signing_key="auth-token-123456"
    )
    data = os.urandom(300_000)
    cluster.record(account, "call-1", data)
    media = _media(cluster, account.namespace, "call-1")
    assert media.stat().st_uid == cluster.media_uid

    body = cluster.wait_phase(
        account.namespace, "call-1", "Completed", "Failed", timeout=PHASE_TIMEOUT
    )
    status = body["status"]
    assert status["phase"] == "Completed", status
    wait_for(lambda: not media.exists(), timeout=30, what="media deleted by the uploader")
    stored = cluster.object_bytes(account, status["storage"]["objectKey"])
    assert account.keys is not None
    details = envelope.EncryptionDetails.from_mapping(status["encryptionDetails"])
    content_key = envelope.open_content_key(account.keys.private_pem, details)
    out = io.BytesIO()
    envelope.decrypt_stream(content_key, io.BytesIO(stored), out, len(stored))
    assert out.getvalue() == data

    def delivered() -> list[Received]:
        return bridge_callbacks.for_recording(status["sid"])

    call = wait_for(delivered, timeout=60, what="the status callback from the operator pod")[0]
    assert call.params["RecordingStatus"] == "completed"
    assert verify_twilio_signature(
        "auth-token-123456",
        bridge_callbacks.url(),
        call.params,
        call.headers["X-Twilio-Signature"],
    )
    assert cluster.open_uploads(account) == []


def test_access_denied_is_fatal_and_deletes_the_media(cluster: ClusterStack) -> None:
    """The seed's rule, in a real pod: once the configuration worked, access denied
    during an upload is fatal and the media goes at once."""
    account = cluster.add_account()
    cluster.wait_condition(account.namespace, "voicestoragesettings", "default", "Validated")
    cluster.s3.revoke(account.s3)  # type: ignore[attr-defined]
    cluster.record(account, "denied", os.urandom(2000))
    media = _media(cluster, account.namespace, "denied")
    status = cluster.wait_phase(
        account.namespace, "denied", "Failed", "Completed", timeout=PHASE_TIMEOUT
    )["status"]
    assert status["phase"] == "Failed", status
    assert status["errorCode"] == 16112
    assert status["errorClass"] == "Fatal" and status["attempts"] == 1
    assert not media.exists(), "fatal: the media is deleted at once"


def test_keys_the_bucket_refuses_hold_recordings_with_their_media(cluster: ClusterStack) -> None:
    """A configuration already known to be broken deletes nothing: the setting is not
    Ready and its recordings wait on the node."""
    account = cluster.add_account(
        secret_access_key="not-the-right-secret-at-all-0000000000", wait_ready=False
    )
    cluster.record(account, "held", os.urandom(2000))
    media = _media(cluster, account.namespace, "held")

    def held() -> dict[str, Any] | None:
        status = cluster.get(account.namespace, "recordings", "held").get("status") or {}
        return status if status.get("reason") == "SettingNotReady" else None

    status = wait_for(held, timeout=PHASE_TIMEOUT, what="the recording held by its setting")
    assert status["phase"] == "Pending" and int(status.get("attempts") or 0) == 0
    assert media.exists(), "the media stays on the node"


def _running_uploader(cluster: ClusterStack) -> Any:
    pods: list[Any] = cluster.uploader_pods()
    for pod in pods:
        for cs in pod.status.container_statuses or []:
            if cs.state and cs.state.running and cs.container_id:
                return pod, cs.container_id.split("://", 1)[1]
    return None


def test_uploader_container_killed_mid_upload_resumes_once(
    cluster: ClusterStack, bridge_proxy: FaultProxy
) -> None:
    account = cluster.add_account(endpoint=bridge_proxy.url)
    bridge_proxy.add_rule(Rule(action=Delay(1.0), method="PUT", query_contains="partNumber"))
    data = os.urandom(30 * MIB + 17)
    cluster.record(account, "long", data)
    admin = cluster.s3.admin_client()

    def parts_stored() -> int:
        status = cluster.get(account.namespace, "recordings", "long").get("status") or {}
        assert status.get("phase") not in ("Completed", "Failed", "Cached"), status
        for upload in cluster.open_uploads(account):
            parts = admin.list_parts(
                Bucket=account.s3.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
            if len(parts.get("Parts", [])) >= 2:
                return len(parts["Parts"])
        return 0

    wait_for(parts_stored, timeout=PHASE_TIMEOUT, what="two parts in the bucket")
    running = wait_for(lambda: _running_uploader(cluster), timeout=30, what="the uploader")
    pod, container = running
    cluster.node.kill_container(container)
    bridge_proxy.clear_rules()
    status = cluster.wait_phase(account.namespace, "long", "Completed", timeout=PHASE_TIMEOUT)[
        "status"
    ]
    assert status["attempts"] >= 2, status
    assert cluster.object_bytes(account, status["storage"]["objectKey"]) == data
    assert cluster.open_uploads(account) == [], "no duplicate or stray multipart upload"
    keys = [o["Key"] for o in admin.list_objects_v2(Bucket=account.s3.bucket).get("Contents", [])]
    assert keys == [status["storage"]["objectKey"]], "exactly one object"
    del pod


def test_operator_pod_deleted_mid_batch_each_recording_ends_once(
    cluster: ClusterStack, bridge_proxy: FaultProxy
) -> None:
    account = cluster.add_account(endpoint=bridge_proxy.url)
    bridge_proxy.add_rule(Rule(action=Delay(0.4), method="PUT"))
    names = [f"call-{i}" for i in range(6)]
    data = {n: os.urandom((i % 2) * 11 * MIB + 3000) for i, n in enumerate(names)}
    for name in names:
        cluster.record(account, name, data[name])

    def in_flight() -> bool:
        phases = {
            (cluster.get(account.namespace, "recordings", n).get("status") or {}).get("phase")
            for n in names
        }
        return bool(phases & {"Scheduled", "Uploading"})

    wait_for(in_flight, timeout=PHASE_TIMEOUT, what="an uploader pod at work")
    old = cluster.operator_pod()
    cluster.core.delete_namespaced_pod(old.metadata.name, "voicevault-system")
    new = cluster.wait_operator_ready(timeout=PHASE_TIMEOUT)
    assert new.metadata.uid != old.metadata.uid
    bridge_proxy.clear_rules()
    for name in names:
        status = cluster.wait_phase(account.namespace, name, "Completed", timeout=PHASE_TIMEOUT)[
            "status"
        ]
        assert cluster.object_bytes(account, status["storage"]["objectKey"]) == data[name]

    def stored_events() -> Counter[str]:
        return Counter(
            str(e.involved_object.name)
            for e in cluster.events(account.namespace)
            if e.reason == "Stored"
        )

    wait_for(lambda: len(stored_events()) == len(names), timeout=60, what="a Stored event each")
    assert stored_events() == Counter(dict.fromkeys(names, 1)), "each ended exactly once"
    assert cluster.open_uploads(account) == []


def test_cached_then_voicevault_retry_inside_a_pod_completes(
    cluster: ClusterStack, bridge_proxy: FaultProxy
) -> None:
    account = cluster.add_account(endpoint=bridge_proxy.url, retry=SHORT_WINDOW)
    bridge_proxy.add_rule(Rule(action=Respond(503, "SlowDown", "Please reduce your request rate.")))
    cluster.record(account, "busy", os.urandom(50_000))
    media = _media(cluster, account.namespace, "busy")
    cached = cluster.wait_phase(account.namespace, "busy", "Cached", timeout=PHASE_TIMEOUT)[
        "status"
    ]
    assert media.exists(), "Cached: the media stays on its node"
    assert cached["errorClass"] == "Transient"
    bridge_proxy.clear_rules()
    log = cluster.retry_in_pod(account.namespace, "busy")
    assert "retry requested" in log
    cluster.wait_phase(account.namespace, "busy", "Completed", timeout=PHASE_TIMEOUT)
    wait_for(lambda: not media.exists(), timeout=30, what="media deleted after the retry")


def test_missing_image_is_a_transient_failure_not_a_loss(cluster: ClusterStack) -> None:
    """The node cannot start the uploader (ErrImageNeverPull): retried, then Cached, media
    kept; with the image back, a retry completes."""
    account = cluster.add_account(retry=SHORT_WINDOW)
    with cluster.image_removed():
        cluster.record(account, "noimage", os.urandom(4000))
        media = _media(cluster, account.namespace, "noimage")

        def never_pull() -> bool:
            pods: list[Any] = cluster.uploader_pods()
            for pod in pods:
                for cs in pod.status.container_statuses or []:
                    waiting = cs.state.waiting if cs.state else None
                    if waiting and waiting.reason == "ErrImageNeverPull":
                        return True
            return False

        wait_for(never_pull, timeout=PHASE_TIMEOUT, what="ErrImageNeverPull on the node")
        cached = cluster.wait_phase(
            account.namespace, "noimage", "Cached", "Failed", timeout=PHASE_TIMEOUT
        )["status"]
        assert cached["phase"] == "Cached", cached
        assert cached["errorClass"] == "Transient"
        assert "ErrImageNeverPull" in cached["errorMessage"], cached["errorMessage"]
        assert media.exists()
    cluster.retry_in_pod(account.namespace, "noimage")
    cluster.wait_phase(account.namespace, "noimage", "Completed", timeout=PHASE_TIMEOUT)


def test_oom_killed_uploader_is_transient_with_a_readable_reason(cluster: ClusterStack) -> None:
    account = cluster.add_account(retry=SHORT_WINDOW)
    with cluster.values("uploader.memoryLimit=24Mi", "uploader.memoryRequest=16Mi"):
        cluster.record(account, "oom", os.urandom(4000))
        cached = cluster.wait_phase(
            account.namespace, "oom", "Cached", "Failed", "Completed", timeout=PHASE_TIMEOUT
        )["status"]
    assert cached["phase"] == "Cached", cached
    message = cached["errorMessage"]
    assert "memory limit" in message and "24Mi" in message, message
    assert _media(cluster, account.namespace, "oom").exists()


def test_media_uid_mismatch_says_so(cluster: ClusterStack) -> None:
    account = cluster.add_account(retry=SHORT_WINDOW)
    cluster.media_uid = 2345
    try:
        cluster.record(account, "other-uid", os.urandom(4000))
    finally:
        cluster.media_uid = 10001
    status = cluster.wait_phase(
        account.namespace, "other-uid", "Cached", "Failed", "Completed", timeout=PHASE_TIMEOUT
    )["status"]
    assert status["phase"] != "Completed", status
    message = status["errorMessage"]
    assert "2345" in message and "10001" in message, message


def test_helm_upgrade_then_uninstall_leaves_no_uploader_pods_or_secrets(
    cluster: ClusterStack,
) -> None:
    try:
        cluster.upgrade("uploader.batchSize=7")
        pod = cluster.wait_operator_ready()
        assert "--batch-size=7" in pod.spec.containers[0].args
        account = cluster.add_account()
        cluster.record(account, "before-uninstall", os.urandom(2000))
        cluster.wait_phase(
            account.namespace, "before-uninstall", "Completed", timeout=PHASE_TIMEOUT
        )
        cluster.uninstall()

        def nothing_left() -> bool:
            return not cluster.uploader_pods() and not cluster.batch_secrets()

        wait_for(
            nothing_left, timeout=120, what=f"no uploader pods or Secrets in {UPLOADER_NAMESPACE}"
        )
    finally:
        cluster.reinstall()


def test_helm_test_passes_in_the_cluster(cluster: ClusterStack) -> None:
    """`helm test` as a user runs it: its pod reaches the operator through the Service
    (by the Service's environment variables: this cluster has no DNS, as some do not)."""
    cluster.wait_operator_ready()
    out = cluster.helm("test", RELEASE, "--namespace", RELEASE_NAMESPACE, "--timeout", "3m")
    assert "Succeeded" in out.stdout, out.stdout


def test_a_running_uploader_pod_takes_the_work_queued_behind_it(
    cluster: ClusterStack, bridge_proxy: FaultProxy
) -> None:
    """The pod asks the leader for more over the pod network (its IP, the pinned
    certificate) and carries what queued while it ran."""
    account = cluster.add_account(endpoint=bridge_proxy.url)
    release = threading.Event()
    hold = Rule(action=Delay(PHASE_TIMEOUT, release=release), method="PUT", times=1)
    bridge_proxy.add_rule(hold)
    later = [f"later-{i}" for i in range(3)]
    try:
        cluster.record(account, "first", os.urandom(3000))
        wait_for(lambda: hold.matched >= 1, timeout=PHASE_TIMEOUT, what="the first upload")
        for name in later:
            cluster.record(account, name, os.urandom(3000))

        def all_queued() -> bool:
            bodies = [cluster.get(account.namespace, "recordings", n) for n in later]
            return all(b["metadata"].get("finalizers") for b in bodies)

        wait_for(all_queued, timeout=60, what="the later recordings to queue behind the pod")
    finally:
        release.set()
    done = [
        cluster.wait_phase(account.namespace, n, "Completed", timeout=PHASE_TIMEOUT)["status"]
        for n in ["first", *later]
    ]
    assert len({status["upload"]["pod"] for status in done}) == 1, done
    assert all(status["attempts"] == 1 for status in done)
