"""Pure parts of the operator: pod manifests, the batch contract, queues, checks, callbacks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support import samples
from voicevault.contract import (
    MAX_BATCH_ITEMS,
    TERMINATION_MESSAGE_LIMIT,
    BatchOutcome,
    BatchSpec,
    CredentialFile,
    ItemResult,
    ResultKind,
)
from voicevault.crds.recording import RecordingSpec
from voicevault.operator import credentials, pods, settings
from voicevault.operator.callbacks import callback_params
from voicevault.operator.conditions import condition, merge_conditions
from voicevault.operator.config import UploaderPodConfig
from voicevault.operator.queues import NodeQueues, QueueEntry
from voicevault.operator.settings import CredentialView
from voicevault.operator.viewstore import ViewStore, keys_digest

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_uploader_pod_is_pinned_restricted_and_carries_no_secret_values() -> None:
    config = UploaderPodConfig(run_as_user=1234, run_as_group=4321)
    pod = pods.uploader_pod("vv-upload-x", "node-a", "vv-upload-x", config)
    spec = pod["spec"]
    assert spec["nodeName"] == "node-a" and spec["restartPolicy"] == "Never"
    assert spec["securityContext"]["runAsUser"] == 1234 and spec["securityContext"]["runAsNonRoot"]
    container = spec["containers"][0]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    host = [v for v in spec["volumes"] if "hostPath" in v]
    assert host == [
        {
            "name": "recordings",
            "hostPath": {"path": config.recordings_host_path, "type": "Directory"},
        }
    ]
    assert all("valueFrom" not in e for e in container["env"])
    assert {"name": "batch", "secret": {"secretName": "vv-upload-x", "defaultMode": 0o440}} in spec[
        "volumes"
    ]


def test_uploader_pod_carries_the_recording_node_selector_and_tolerations() -> None:
    plain = pods.uploader_pod("p", "node-a", "p", UploaderPodConfig())["spec"]
    assert "nodeSelector" not in plain and plain["tolerations"] == []
    config = UploaderPodConfig(
        node_selector=(("voicevault.io/recordings", "true"),),
        tolerations=({"key": "media", "operator": "Exists", "effect": "NoExecute"},),
        cpu_request="50m",
        memory_request="64Mi",
    )
    spec = pods.uploader_pod("p", "node-a", "p", config)["spec"]
    assert spec["nodeName"] == "node-a"
    assert spec["nodeSelector"] == {"voicevault.io/recordings": "true"}
    assert spec["tolerations"] == [{"key": "media", "operator": "Exists", "effect": "NoExecute"}]
    assert spec["containers"][0]["resources"]["requests"] == {"cpu": "50m", "memory": "64Mi"}


def test_pod_names_are_valid_and_unique() -> None:
    long_node = "ip-10-0-0-1.eu-west-1.compute.internal-" + "x" * 200
    names = {pods.pod_name(long_node) for _ in range(50)}
    assert len(names) == 50
    assert all(len(n) <= 63 and n.replace("-", "").isalnum() and n.islower() for n in names)


def test_batch_secret_holds_the_batch_and_keys_and_is_owned_by_the_pod() -> None:
    pod = pods.uploader_pod("p", "n", "p", UploaderPodConfig()) | {}
    pod["metadata"] = pod["metadata"] | {"uid": "u-1"}
    batch = BatchSpec(pod="p", node="n", items=[])
    secret = pods.batch_secret(
        "p",
        "ns",
        batch,
        {"credential-0.json": CredentialFile(access_key_id="AK", secret_access_key="SK")},
    )
    assert pods.owner_reference(pod)["uid"] == "u-1"
    assert set(secret["data"]) == {"batch.json", "credential-0.json"}
    assert "SK" not in repr(CredentialFile(access_key_id="AK", secret_access_key="SK"))


def _result(i: int) -> ItemResult | None:
    kinds: list[ResultKind] = [
        "completed",
        "transient",
        "fatal",
        "purged",
        "completed-unrecorded",
        "skipped",
    ]
    kind = kinds[i % len(kinds)]
    if i % 7 == 6:
        return None
    code = 16111 if kind == "transient" else 16112 if kind == "fatal" else None
    message = f"message {i % 3} " + "x" * 150 if code else ""
    return ItemResult(kind=kind, error_code=code, message=message)


def test_outcome_round_trips_and_fits_the_termination_message() -> None:
    outcome = BatchOutcome(results=[_result(i) for i in range(50)])
    text = outcome.encode()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    decoded = BatchOutcome.decode(text)
    assert decoded is not None
    assert [r.kind if r else None for r in decoded.results] == [
        r.kind if r else None for r in outcome.results
    ]
    assert [r.error_code if r else None for r in decoded.results] == [
        r.error_code if r else None for r in outcome.results
    ]


def test_outcome_shortens_messages_rather_than_overflowing() -> None:
    many = BatchOutcome(
        results=[
            ItemResult(kind="transient", error_code=16111, message=f"unique {i} " + "y" * 190)
            for i in range(200)
        ]
    )
    text = many.encode()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    decoded = BatchOutcome.decode(text)
    assert decoded is not None and len(decoded.results) == 200
    assert all(r is not None and r.kind == "transient" for r in decoded.results)


def test_a_full_batch_keeps_every_result_even_when_each_has_an_error() -> None:
    worst = BatchOutcome(
        results=[
            ItemResult(kind="fatal-unrecorded", error_code=99999, message=f"unique {i}")
            for i in range(MAX_BATCH_ITEMS)
        ],
        parts_resent=10**6,
    )
    decoded = BatchOutcome.decode(worst.encode())
    assert decoded is not None and len(decoded.results) == MAX_BATCH_ITEMS
    assert all(r is not None and r.error_code == 99999 for r in decoded.results)


def test_outcome_decode_refuses_foreign_text() -> None:
    for text in (
        "",
        "Traceback (most recent call last):",
        '{"v": 2}',
        "[1,2]",
        '{"v":1,"r":["Z"]}',
    ):
        assert BatchOutcome.decode(text) is None


def _entry(uid: str, node: str, due: datetime) -> QueueEntry:
    return samples.queue_entry(uid, node, due, created=NOW)


def test_queues_take_due_entries_per_node_in_order_and_requeue_replaces() -> None:
    q = NodeQueues()
    q.put(_entry("a", "n1", NOW + timedelta(seconds=5)))
    q.put(_entry("b", "n1", NOW))
    q.put(_entry("c", "n2", NOW + timedelta(seconds=60)))
    assert q.due_nodes(NOW) == ["n1"]
    assert [e.uid for e in q.take("n1", NOW + timedelta(seconds=10), limit=10)] == ["b", "a"]
    q.put(_entry("c", "n2", NOW))  # re-queued earlier: replaces the old entry
    assert len(q) == 1 and q.due_nodes(NOW) == ["n2"]
    assert q.remove("c") is not None and q.due_nodes(NOW) == [] and q.next_due() is None


def test_queue_take_respects_the_batch_limit() -> None:
    q = NodeQueues()
    for i in range(120):
        q.put(_entry(f"u{i}", "n1", NOW))
    assert len(q.take("n1", NOW, limit=50)) == 50 and len(q) == 70


def test_credential_checks_never_expose_more_than_four_characters() -> None:
    secret = credentials.snapshot_secret(
        "9",
        {"AWS_ACCESS_KEY_ID": b"AKIAEXAMPLE1234", "AWS_SECRET_ACCESS_KEY": b"s3cr3t-value"},
        "AWS_ACCESS_KEY_ID",
    )
    result = credentials.evaluate(
        namespace="a",
        uid="0a1b2c3d-4e5f-6789-abcd-ef0123456789",
        generation=1,
        spec=samples.credential()["spec"],
        secret=secret,
        current_status={},
        now=NOW,
    )
    assert result.ready and result.status["accessKeyIdSuffix"] == "1234"
    text = json.dumps(result.status)
    assert "AKIAEXAMPLE" not in text and "s3cr3t" not in text
    assert result.status["sid"] == "CR0a1b2c3d4e5f6789abcdef0123456789"


def test_credential_problems_are_explained() -> None:
    spec = samples.credential()["spec"]
    cases = [
        (None, spec, "SecretNotFound"),
        (
            credentials.snapshot_secret("1", {"AWS_ACCESS_KEY_ID": b"AK"}, "AWS_ACCESS_KEY_ID"),
            spec,
            "SecretKeyMissing",
        ),
        (
            None,
            spec | {"secretRef": {"name": "k", "namespace": "other"}},
            "CrossNamespaceReference",
        ),
    ]
    for secret, s, reason in cases:
        result = credentials.evaluate(
            namespace="a",
            uid="0a1b2c3d-4e5f-6789-abcd-ef0123456789",
            generation=1,
            spec=s,
            secret=secret,
            current_status={},
            now=NOW,
        )
        assert not result.ready and result.reason == reason, result


def test_setting_checks_in_the_order_a_person_fixes_them() -> None:
    ready = CredentialView("a", "s3-writer", "CR" + "1" * 32, True, "ok", "k", "A", "B", None)
    not_ready = CredentialView(
        "a", "s3-writer", None, False, "Secret 'k' not found", "k", "A", "B", None
    )
    base = samples.setting()["spec"]
    cases: list[tuple[dict[str, Any], CredentialView | None, str]] = [
        (base, ready, "Configured"),
        (base, None, "CredentialNotFound"),
        (base, not_ready, "CredentialNotReady"),
        (samples.setting(enabled=False)["spec"], None, "Disabled"),
        (
            samples.setting(bucketUrl="https://not-s3.example.com/x")["spec"],
            ready,
            "InvalidBucketUrl",
        ),
        (
            samples.setting(credentialRef={"name": "s3-writer", "namespace": "b"})["spec"],
            ready,
            "CrossNamespaceReference",
        ),
        (
            base
            | {
                "encryption": {
                    "publicKey": "-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----"
                }
            },
            ready,
            "InvalidPublicKey",
        ),
    ]
    for spec, cred, reason in cases:
        assert settings.evaluate("a", spec, cred).reason == reason, (spec, reason)


def test_conditions_keep_their_transition_time_until_they_flip() -> None:
    first = merge_conditions([], [condition("Ready", True, "Ok", "fine", NOW)])
    later = NOW + timedelta(hours=1)
    same = merge_conditions(first, [condition("Ready", True, "Ok", "fine again", later)])
    assert same[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    flipped = merge_conditions(same, [condition("Ready", False, "Broken", "no", later)])
    assert flipped[0]["lastTransitionTime"] == "2026-11-25T13:00:00Z"


def test_callback_parameters_are_twilio_shaped() -> None:
    spec = RecordingSpec.model_validate(samples.recording()["spec"])
    status = {
        "phase": "Completed",
        "sid": "RE" + "a" * 32,
        "mediaUrl": "https://b.s3.amazonaws.com/k.wav",
        "encryptionDetails": {
            "type": "rsa-aes",
            "publicKeySid": "CR" + "b" * 32,
            "encryptedCek": "AAAA",
            "iv": "AAAAAAAAAAAAAAAA",
        },
    }
    params = callback_params(spec, status)
    assert params["RecordingUrl"] == status["mediaUrl"] and params["RecordingStatus"] == "completed"
    assert (
        params["ErrorCode"] == "0"
        and params["RecordingStartTime"] == "Wed, 25 Nov 2026 10:00:00 +0000"
    )
    assert json.loads(params["EncryptionDetails"]) == {
        "type": "rsa-aes",
        "public_key_sid": "CR" + "b" * 32,
        "encrypted_cek": "AAAA",
        "iv": "AAAAAAAAAAAAAAAA",
    }
    failed = callback_params(spec, {"phase": "Failed", "sid": "RE" + "a" * 32, "errorCode": 16112})
    assert (
        failed["RecordingStatus"] == "failed"
        and failed["ErrorCode"] == "16112"
        and failed["RecordingUrl"] == ""
    )


def test_batch_item_round_trip() -> None:
    item = samples.batch_item()
    spec = BatchSpec(pod="p", node="n", items=[item])
    assert BatchSpec.from_json(spec.to_json()) == spec


def test_each_batch_item_gets_its_own_namespaces_credentials() -> None:
    """Regression: with an entry dropped before the batch was built, another tenant's keys
    were once numbered into the first credential file."""
    a, b = _entry("a1", "n1", NOW), _entry("b1", "n1", NOW)
    b.namespace = "tenant-b"
    found = {
        ("ns", "c"): CredentialFile(access_key_id="KEY-OF-TENANT-A", secret_access_key="sa"),
        ("tenant-b", "c"): CredentialFile(access_key_id="KEY-OF-TENANT-B", secret_access_key="sb"),
    }
    batch, files, refs = pods.batch_for("p", "n1", [b], found)
    assert [i.credential for i in batch.items] == ["credential-0.json"]
    assert files == {"credential-0.json": found[("tenant-b", "c")]}
    assert refs == {("tenant-b", "c"): "credential-0.json"}
    both, files, refs = pods.batch_for("p", "n1", [a, b], found)
    by_namespace = {i.namespace: files[i.credential].access_key_id for i in both.items}
    assert by_namespace == {"ns": "KEY-OF-TENANT-A", "tenant-b": "KEY-OF-TENANT-B"}


def test_outcome_carries_the_count_of_resent_parts() -> None:
    outcome = BatchOutcome(
        results=[ItemResult(kind="completed", parts_resent=2), None], parts_resent=2
    )
    decoded = BatchOutcome.decode(outcome.encode())
    assert decoded is not None and decoded.parts_resent == 2


def _ended_pod(terminated: dict[str, Any], limit: str = "24Mi") -> dict[str, Any]:
    return {
        "spec": {"containers": [{"resources": {"limits": {"memory": limit}}}]},
        "status": {
            "phase": "Failed",
            "containerStatuses": [{"state": {"terminated": terminated}}],
        },
    }


def test_an_oom_kill_names_the_memory_limit_and_the_chart_value() -> None:
    _, why = pods.outcome(_ended_pod({"exitCode": 137, "reason": "OOMKilled"}), None)
    assert why is not None
    assert "more than its memory limit of 24Mi" in why
    assert "uploader.memoryLimit" in why


def test_a_pod_that_never_started_says_what_the_kubelet_waits_for() -> None:
    waiting = {"reason": "ErrImageNeverPull", "message": "image is not present"}
    pod = {"status": {"phase": "Pending", "containerStatuses": [{"state": {"waiting": waiting}}]}}
    assert pods.waiting_reason(pod) == " (ErrImageNeverPull: image is not present)"
    assert pods.waiting_reason({"status": {"phase": "Pending"}}) == ""


def test_keys_other_than_the_ones_the_bucket_accepted_wait_for_their_validation() -> None:
    store = ViewStore(kube=None)  # type: ignore[arg-type]
    good = CredentialFile(access_key_id="AK", secret_access_key="right")
    edited = CredentialFile(access_key_id="AK", secret_access_key="wrong")
    assert not store.keys_unvalidated("ns", "cred", edited), "nothing known yet: go ahead"
    store.validated_keys["ns", "cred"] = keys_digest(good)
    assert not store.keys_unvalidated("ns", "cred", good)
    assert store.keys_unvalidated("ns", "cred", edited)
    assert "right" not in keys_digest(good) and "wrong" not in repr(store.validated_keys)
