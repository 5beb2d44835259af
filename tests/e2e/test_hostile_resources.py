"""Resources that pass the CRD schema and are still wrong, through the real stack.

Each case must end in a condition or status a person understands, and the operator must
keep running: every test here checks, for the stretch of the operator log it caused,
that the process is alive and that no unexpected exception was logged.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from kubernetes import client as k8s

from tests.bed.s3_common import S3Account
from tests.bed.stack import ACCOUNT_SID, Account, Stack
from tests.support.keys import key_pair
from tests.support.kube import as_dict, wait_for
from voicevault import API_GROUP, API_VERSION
from voicevault.uploader import envelope

pytestmark = [pytest.mark.kube, pytest.mark.s3, pytest.mark.slow]

SHORT_WINDOW = {"windowSeconds": 5, "initialBackoffSeconds": 1, "maxBackoffSeconds": 2}
TERMINAL = ("Completed", "Failed", "Cached", "Local")


# --- the operator must survive all of this ---------------------------------------------


def _unexpected(log_text: str) -> list[str]:
    """Log lines that show a crash: a traceback, or an exception the operator did not
    expect (the JSON formatter puts an exception's type and text in an "error" field;
    every expected failure is logged without one)."""
    bad = []
    for line in log_text.splitlines():
        if "Traceback (most recent call last)" in line:
            bad.append(line)
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # not one of ours (kopf's own start-up lines, for example)
        if isinstance(entry, dict) and "error" in entry:
            bad.append(line)
    return bad


@pytest.fixture(autouse=True)
def operator_survives(live_stack: Stack) -> Iterator[None]:
    """Afterwards: the operator is alive, was not restarted, and logged nothing unexpected."""
    start = len(live_stack.operator.log())
    starts = live_stack.operator.starts
    yield
    assert live_stack.operator.alive, "the operator died"
    assert live_stack.operator.starts == starts, "the operator was restarted"
    unexpected = _unexpected(live_stack.operator.log()[start:])
    assert not unexpected, "the operator logged unexpected errors:\n" + "\n".join(unexpected)


# --- helpers ---------------------------------------------------------------------------


def _namespace(stack: Stack, hint: str) -> str:
    name = f"hostile-{hint}-{uuid.uuid4().hex[:6]}"
    stack.core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    return name


def _secret(stack: Stack, namespace: str, name: str, data: dict[str, str]) -> None:
    stack.core.create_namespaced_secret(
        namespace,
        k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name=name),
            data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        ),
    )
    stack.secrets.update(v for k, v in data.items() if "secret" in k.lower())


def _credential(stack: Stack, namespace: str, secret_ref: dict[str, str]) -> None:
    stack.create(
        namespace,
        "awscredentials",
        {"metadata": {"name": "s3-writer"}, "spec": {"secretRef": secret_ref}},
    )


def _condition(body: dict[str, Any], type_: str) -> dict[str, Any]:
    found = [c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == type_]
    assert found, f"no {type_} condition in {body.get('status')}"
    first: dict[str, Any] = found[0]
    return first


def _patch_spec(stack: Stack, namespace: str, plural: str, name: str, spec: Any) -> None:
    stack.custom.patch_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, plural, name, {"spec": spec}
    )


def _recording_without_media(
    stack: Stack, namespace: str, name: str, media_path: str, node: str = "node-a"
) -> dict[str, Any]:
    """A Recording like `Stack.record` makes, but nothing is written on the node."""
    spec = {
        "accountSid": ACCOUNT_SID,
        "callSid": "CA" + uuid.uuid4().hex,
        "source": "StartCallRecordingAPI",
        "channels": 1,
        "startTime": "2026-11-25T10:00:00Z",
        "duration": 7,
        "nodeName": node,
        "mediaPath": media_path,
    }
    return stack.create(namespace, "recordings", {"metadata": {"name": name}, "spec": spec})


def _bucket_keys(stack: Stack, bucket: S3Account) -> list[str]:
    page = stack.s3.admin_client().list_objects_v2(Bucket=bucket.bucket)
    return [str(o["Key"]) for o in page.get("Contents", [])]


def _wait_deleted(media: Path) -> None:
    """The uploader writes Completed first and deletes the media right after."""
    wait_for(lambda: not media.exists(), timeout=15, what=f"{media.name} to be deleted")


def _gone(stack: Stack, namespace: str, name: str) -> bool:
    try:
        stack.get(namespace, "recordings", name)
    except k8s.ApiException as exc:
        return bool(exc.status == 404)
    return False


# --- credentials ------------------------------------------------------------------------


def test_secret_with_the_wrong_key_names_then_fixed_credential(live_stack: Stack) -> None:
    namespace = _namespace(live_stack, "keynames")
    bucket = live_stack.s3.add_bucket(f"rec-{uuid.uuid4().hex[:12]}", "calls/")
    # what people often write: their own names instead of the AWS_* defaults
    _secret(
        live_stack,
        namespace,
        "keys",
        {"accessKey": bucket.access_key_id, "secretKey": bucket.secret_access_key},
    )
    _credential(live_stack, namespace, {"name": "keys"})
    live_stack.create(namespace, "voicestoragesettings", live_stack.setting_body(bucket))

    body = live_stack.wait_condition(
        namespace, "awscredentials", "s3-writer", "Ready", "False", reason="SecretKeyMissing"
    )
    message = _condition(body, "Ready")["message"]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "accessKey", "secretKey"):
        assert name in message, message
    assert bucket.secret_access_key not in json.dumps(body)
    assert bucket.access_key_id not in json.dumps(body)
    assert not body["status"].get("accessKeyIdSuffix")
    setting = live_stack.wait_condition(
        namespace, "voicestoragesettings", "default", "Ready", "False", reason="CredentialNotReady"
    )
    assert "s3-writer" in _condition(setting, "Ready")["message"]

    _patch_spec(
        live_stack,
        namespace,
        "awscredentials",
        "s3-writer",
        {"secretRef": {"accessKeyIdKey": "accessKey", "secretAccessKeyKey": "secretKey"}},
    )
    fixed = live_stack.wait_condition(namespace, "awscredentials", "s3-writer", "Ready", "True")
    assert fixed["status"]["accessKeyIdSuffix"] == bucket.access_key_id[-4:]
    live_stack.wait_condition(namespace, "voicestoragesettings", "default", "Ready", "True")
    # and the fixed credential really uploads
    account = Account(namespace, bucket, None)
    live_stack.record(account, "after-fix", b"RIFF" + os.urandom(1000))
    done = live_stack.wait_phase(namespace, "after-fix", "Completed", "Failed", timeout=60)
    assert done["status"]["phase"] == "Completed", done["status"]


def test_secret_created_after_the_credential(live_stack: Stack) -> None:
    namespace = _namespace(live_stack, "late")
    bucket = live_stack.s3.add_bucket(f"rec-{uuid.uuid4().hex[:12]}", "calls/")
    _credential(live_stack, namespace, {"name": "late-keys"})
    live_stack.create(namespace, "voicestoragesettings", live_stack.setting_body(bucket))
    body = live_stack.wait_condition(
        namespace, "awscredentials", "s3-writer", "Ready", "False", reason="SecretNotFound"
    )
    assert "late-keys" in _condition(body, "Ready")["message"]
    live_stack.wait_condition(
        namespace, "voicestoragesettings", "default", "Ready", "False", reason="CredentialNotReady"
    )
    # a recording made meanwhile waits, keeping its media
    account = Account(namespace, bucket, None)
    data = b"RIFF" + os.urandom(2000)
    live_stack.record(account, "early", data)
    media = live_stack.media_file("node-a", namespace, "2026/11/early.wav")
    live_stack.wait_phase(namespace, "early", "Pending", timeout=30)
    assert media.exists()

    _secret(
        live_stack,
        namespace,
        "late-keys",
        {
            "AWS_ACCESS_KEY_ID": bucket.access_key_id,
            "AWS_SECRET_ACCESS_KEY": bucket.secret_access_key,
        },
    )
    # no change to the credential itself: the operator notices the Secret
    ready = live_stack.wait_condition(namespace, "awscredentials", "s3-writer", "Ready", "True")
    assert ready["metadata"]["generation"] == 1
    live_stack.wait_condition(namespace, "voicestoragesettings", "default", "Ready", "True")
    done = live_stack.wait_phase(namespace, "early", "Completed", "Failed", "Cached", timeout=60)
    assert done["status"]["phase"] == "Completed", done["status"]
    assert live_stack.object_bytes(account, done["status"]["storage"]["objectKey"]) == data
    _wait_deleted(media)


# --- public keys ------------------------------------------------------------------------


def _certificate_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "customer.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _rsa_1024_public_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _private_key_pem() -> str:
    return key_pair().private_pem.decode()


@pytest.mark.parametrize(
    ("make_pem", "why"),
    [
        pytest.param(_certificate_pem, "could not be parsed", id="certificate-not-key"),
        pytest.param(_rsa_1024_public_pem, "1024 bits", id="rsa-1024"),
        pytest.param(_private_key_pem, "got a private key", id="private-key"),
    ],
)
def test_unusable_public_key_in_the_setting(live_stack: Stack, make_pem: Any, why: str) -> None:
    account = live_stack.add_account()
    pem: str = make_pem()
    _patch_spec(
        live_stack,
        account.namespace,
        "voicestoragesettings",
        "default",
        {"encryption": {"publicKey": pem}},
    )
    body = live_stack.wait_condition(
        account.namespace,
        "voicestoragesettings",
        "default",
        "Ready",
        "False",
        reason="InvalidPublicKey",
    )
    ready = _condition(body, "Ready")
    assert why in ready["message"], ready["message"]
    assert ready["observedGeneration"] == body["metadata"]["generation"]
    for line in pem.splitlines()[1:-1]:
        assert line not in json.dumps(body["status"]), "the PEM is not echoed into the status"
    # putting a good key back makes it Ready again
    _patch_spec(
        live_stack,
        account.namespace,
        "voicestoragesettings",
        "default",
        {"encryption": {"publicKey": key_pair().public_pem.decode()}},
    )
    live_stack.wait_condition(account.namespace, "voicestoragesettings", "default", "Ready", "True")


# --- media on the node ------------------------------------------------------------------


def test_media_missing_on_the_node(live_stack: Stack) -> None:
    account = live_stack.add_account()
    ns = account.namespace
    # neighbours that must survive: same folder, same namespace, another namespace
    sibling = live_stack.put_media("node-a", ns, "2026/11/sibling.wav", b"keep me")
    other_ns = live_stack.put_media("node-a", f"{ns}-other", "2026/11/ghost.wav", b"keep me too")
    _recording_without_media(live_stack, ns, "ghost", "2026/11/ghost.wav")
    status = live_stack.wait_phase(ns, "ghost", *TERMINAL, timeout=60)["status"]
    assert status["phase"] == "Failed", status
    assert status["errorCode"] == 16111 and status["errorClass"] == "Fatal"
    assert "media file '2026/11/ghost.wav' not found" in status["errorMessage"], status
    assert str(live_stack.workdir) not in status["errorMessage"], "no host paths"
    assert "nothing was deleted" in status["message"], "there was no local media to delete"
    assert status["reason"] == "FatalError", status
    assert sibling.read_bytes() == b"keep me"
    assert other_ns.read_bytes() == b"keep me too"
    assert _bucket_keys(live_stack, account.s3) == []


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_empty_recording(live_stack: Stack, encrypted: bool) -> None:
    account = live_stack.add_account(encrypted=encrypted)
    live_stack.record(account, "silence", b"")
    status = live_stack.wait_phase(account.namespace, "silence", *TERMINAL, timeout=60)["status"]
    assert status["phase"] == "Completed", status
    stored = live_stack.object_bytes(account, status["storage"]["objectKey"])
    assert len(stored) == (envelope.TAG_SIZE if encrypted else 0)
    _wait_deleted(live_stack.media_file("node-a", account.namespace, "2026/11/silence.wav"))
    if encrypted:
        assert account.keys is not None
        details = envelope.EncryptionDetails.from_mapping(status["encryptionDetails"])
        content_key = envelope.open_content_key(account.keys.private_pem, details)
        out = io.BytesIO()
        envelope.decrypt_stream(content_key, io.BytesIO(stored), out, len(stored))
        assert out.getvalue() == b""


def _escape_link(stack: Stack, attacker: str, victim_file: Path, how: str) -> str:
    """Plant a symlink in the attacker's folder that leads to the victim's file; return
    the attacker's mediaPath that goes through it."""
    if how == "file-link":
        link = stack.media_file("node-a", attacker, "2026/11/borrowed.wav")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(victim_file, link.parent))
        return "2026/11/borrowed.wav"
    if how == "absolute-link":
        link = stack.media_file("node-a", attacker, "2026/11/borrowed.wav")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(victim_file)
        return "2026/11/borrowed.wav"
    # a folder link: the last component is a plain name inside a linked folder
    link = stack.media_file("node-a", attacker, "2026/linked")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(victim_file.parent, link.parent), target_is_directory=True)
    return f"2026/linked/{victim_file.name}"


@pytest.mark.parametrize("how", ["file-link", "absolute-link", "folder-link"])
def test_symlink_into_another_namespaces_folder(live_stack: Stack, how: str) -> None:
    victim = live_stack.add_account()
    attacker = live_stack.add_account()
    secret_audio = b"RIFF victim's call " + os.urandom(500)
    victim_file = live_stack.put_media(
        "node-a", victim.namespace, "2026/11/private.wav", secret_audio
    )
    media_path = _escape_link(live_stack, attacker.namespace, victim_file, how)

    _recording_without_media(live_stack, attacker.namespace, "steal", media_path)
    status = live_stack.wait_phase(attacker.namespace, "steal", *TERMINAL, timeout=60)["status"]
    assert status["phase"] == "Failed", status
    assert status["errorCode"] == 16111 and status["errorClass"] == "Fatal"
    assert "outside the namespace's folder" in status["errorMessage"], status
    assert victim_file.read_bytes() == secret_audio, "the other namespace's file is untouched"
    assert _bucket_keys(live_stack, attacker.s3) == [], "nothing was uploaded"


def test_media_path_that_is_not_a_file(live_stack: Stack) -> None:
    """`x.wav` is a folder, a link to the namespace's own folder, or a named pipe: an
    invalid media path, so fatal at once (16111) rather than two hours of retries (or a
    hung uploader); nothing is deleted."""
    account = live_stack.add_account(retry=SHORT_WINDOW)
    ns = account.namespace
    inside = live_stack.put_media("node-a", ns, "2026/11/folder.wav/inner.wav", b"keep")
    own = live_stack.media_file("node-a", ns, "2026/11/self.wav")
    own.symlink_to("../..")  # the namespace's folder itself
    # a named pipe would block the uploader on open, holding the node's pod for its deadline
    os.mkfifo(live_stack.media_file("node-a", ns, "2026/11/pipe.wav"))
    cases = {"folder": "folder.wav", "itself": "self.wav", "pipe": "pipe.wav"}
    for name, file in cases.items():
        _recording_without_media(live_stack, ns, name, f"2026/11/{file}")
    for name in cases:
        status = live_stack.wait_phase(ns, name, *TERMINAL, timeout=60)["status"]
        assert status["phase"] == "Failed", (name, status)
        assert status["errorCode"] == 16111 and status["errorClass"] == "Fatal", status
        assert "invalid media path" in status["errorMessage"], status
    assert inside.read_bytes() == b"keep"
    assert own.is_symlink()


def test_recording_on_a_node_that_does_not_exist(live_stack: Stack) -> None:
    account = live_stack.add_account(retry=SHORT_WINDOW)
    node = f"ghost-{uuid.uuid4().hex[:6]}"
    assert node not in {n.metadata.name for n in live_stack.core.list_node().items if n.metadata}
    _recording_without_media(
        live_stack, account.namespace, "nowhere", "2026/11/nowhere.wav", node=node
    )
    retrying = live_stack.wait_phase(account.namespace, "nowhere", "Retrying", "Cached", timeout=60)
    assert node in retrying["status"]["errorMessage"], retrying["status"]
    cached = live_stack.wait_phase(account.namespace, "nowhere", *TERMINAL, timeout=60)["status"]
    assert cached["phase"] == "Cached", cached
    assert cached["errorClass"] == "Transient" and cached["errorCode"] == 16111
    assert node in cached["errorMessage"] or node in (cached.get("message") or ""), cached

    # the operator still works for real nodes in the same namespace...
    live_stack.record(account, "somewhere", b"RIFF" + os.urandom(100))
    done = live_stack.wait_phase(account.namespace, "somewhere", *TERMINAL, timeout=60)["status"]
    assert done["phase"] == "Completed", done
    # ...and the recording for the missing node can still be deleted
    live_stack.delete(account.namespace, "recordings", "nowhere")
    wait_for(
        lambda: _gone(live_stack, account.namespace, "nowhere"),
        timeout=60,
        what="the Recording for a missing node to be deleted",
    )


# --- a burst ----------------------------------------------------------------------------


def test_burst_of_30_mixed_recordings(live_stack: Stack) -> None:
    account = live_stack.add_account(retry=SHORT_WINDOW)
    victim = live_stack.add_account()
    ns = account.namespace
    victim_file = live_stack.put_media("node-a", victim.namespace, "2026/11/victim.wav", b"private")
    link = live_stack.media_file("node-a", ns, "2026/11/escape.wav")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim_file)

    plan: dict[str, tuple[str, str]] = {}  # name -> (kind, node)
    for i in range(30):
        kind = ["good", "good", "empty", "missing", "escape"][i % 5]
        plan[f"burst-{i:02d}"] = (kind, "node-a" if i % 3 else "node-b")
    for name, (kind, node) in plan.items():
        if kind in ("good", "empty"):
            data = b"" if kind == "empty" else os.urandom(1000 + 97 * len(name))
            live_stack.put_media(node, ns, f"2026/11/{name}.wav", data)

    def create(name: str) -> None:
        kind, node = plan[name]
        media_path = "2026/11/escape.wav" if kind == "escape" else f"2026/11/{name}.wav"
        _recording_without_media(
            live_stack, ns, name, media_path, node="node-a" if kind == "escape" else node
        )

    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(create, plan))

    def all_settled() -> dict[str, dict[str, Any]] | None:
        items = as_dict(
            live_stack.custom.list_namespaced_custom_object(
                API_GROUP, API_VERSION, ns, "recordings"
            )
        )
        statuses = {i["metadata"]["name"]: i.get("status") or {} for i in items["items"]}
        done = all(s.get("phase") in TERMINAL for s in statuses.values())
        return statuses if done and len(statuses) == len(plan) else None

    statuses = wait_for(all_settled, timeout=180, interval=1, what="all 30 recordings to settle")
    expected = Counter(
        {"good": "Completed", "empty": "Completed", "missing": "Failed", "escape": "Failed"}[k]
        for k, _ in plan.values()
    )
    assert Counter(s["phase"] for s in statuses.values()) == expected, {
        n: (s.get("phase"), s.get("errorMessage")) for n, s in statuses.items()
    }
    for name, (kind, node) in plan.items():
        status = statuses[name]
        if kind == "missing":
            assert "not found" in status["errorMessage"], (name, status)
        elif kind == "escape":
            assert "outside the namespace's folder" in status["errorMessage"], (name, status)
        else:
            _wait_deleted(live_stack.media_file(node, ns, f"2026/11/{name}.wav"))
    assert victim_file.read_bytes() == b"private"
    assert len(_bucket_keys(live_stack, account.s3)) == expected["Completed"]
