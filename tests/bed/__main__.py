"""The local stack for people: `python -m tests.bed demo` or `python -m tests.bed up`.

demo  brings up a real kube-apiserver + etcd, an S3 server enforcing the seed's IAM
      policy, the operator and a node, creates an account (credential, setting, key pair),
      records a call on the node, waits for the Recording to reach Completed, then
      downloads and decrypts the object to prove it, and tears everything down.
demo-cluster  the same journey on a real one-node cluster (kubelet, containerd): the
      image built from the Dockerfile, `helm install` of the chart, the operator and the
      uploader in real pods. Needs root (it makes a bridge, mounts, iptables rules).
up    brings up the same stack with one example account and keeps it running until
      Ctrl-C, printing commands to try it with: kubectl, examples/recording.yaml, and
      a look into the bucket.

Both remove their temporary folder on exit, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TypeVar

import yaml

from tests.bed import binaries
from tests.bed.controlplane import ControlPlane
from tests.bed.s3_moto import MotoS3
from tests.bed.stack import REPO, Account, Stack
from tests.support.callbacks import CallbackReceiver
from tests.support.kube import kubectl

T = TypeVar("T")
# The stack matches examples/recording.yaml, so a newcomer can apply it as it is.
EXAMPLE_RECORDING = REPO / "examples" / "recording.yaml"
_EXAMPLE = yaml.safe_load(EXAMPLE_RECORDING.read_text())
NAMESPACE: str = _EXAMPLE["metadata"]["namespace"]
RECORDING: str = _EXAMPLE["metadata"]["name"]
NODE: str = _EXAMPLE["spec"]["nodeName"]
MEDIA_PATH: str = _EXAMPLE["spec"]["mediaPath"]
WORKDIR_PREFIX = "voicevault-demo-"
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def say(message: str) -> None:
    print(f"{BOLD}==>{RESET} {message}", flush=True)


def timed(what: str, fn: Callable[[], T]) -> T:
    started = time.monotonic()
    result = fn()
    say(f"{what} ({time.monotonic() - started:.1f}s)")
    return result


def call_audio(seconds: float = 4.0, rate: int = 8000) -> bytes:
    """A short two-tone 'call' as 16-bit mono WAV, so the demo moves real audio bytes."""
    frames = bytearray()
    for i in range(int(seconds * rate)):
        tone = 440 if (i // rate) % 2 == 0 else 660
        frames += struct.pack("<h", int(8000 * math.sin(2 * math.pi * tone * i / rate)))
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return out.getvalue()


@contextmanager
def running_stack(workdir: Path) -> Iterator[tuple[Stack, MotoS3, CallbackReceiver]]:
    timed(
        "binaries ready (cached in ~/.cache/voicevault)",
        lambda: [binaries.kube_apiserver(), binaries.kubectl(), binaries.helm()],
    )
    with ControlPlane(workdir / "controlplane") as plane:
        say(f"kube-apiserver {binaries.KUBERNETES_VERSION} + etcd on {plane.server}")
        with MotoS3(workdir / "moto") as s3:
            say(f"S3 (moto, IAM enforced with the seed policy) on {s3.endpoint_url}")
            stack = Stack(plane, s3, workdir / "stack", nodes=(NODE,), webhook=True)
            timed("CRDs applied, RBAC installed, node registered, operator running", stack.start)
            receiver = CallbackReceiver().start()
            try:
                yield stack, s3, receiver
            finally:
                receiver.stop()
                stack.stop()


@contextmanager
def running_cluster(workdir: Path) -> Iterator[tuple[Stack, MotoS3, CallbackReceiver]]:
    from tests.bed.cluster_stack import ClusterStack
    from tests.bed.realnode import BRIDGE_IP, RealNode

    node = RealNode()
    timed(
        "real node up: binaries and images ready, kubelet + containerd + kube-proxy, Node Ready",
        node.start,
    )
    try:
        say(
            f"node {node.kubectl('get', 'nodes', '-o', 'name').strip()}, image {node.project_image}"
        )
        with MotoS3(workdir / "moto", host=BRIDGE_IP) as s3:
            say(f"S3 (moto, IAM enforced with the seed policy) on {s3.endpoint_url}")
            stack = ClusterStack(node, s3, workdir / "cluster")
            timed("helm install charts/voicevault: the operator pod is Ready", stack.install)
            receiver = CallbackReceiver(host=BRIDGE_IP).start()
            try:
                yield stack, s3, receiver
            finally:
                receiver.stop()
                stack.stop()
    finally:
        timed("real node torn down", node.stop)


def _kubeconfig(stack: Stack) -> Path:
    node = getattr(stack, "node", None)
    return node.admin_kubeconfig if node is not None else stack.cp.admin_kubeconfig


def show(stack: Stack, namespace: str) -> None:
    out = kubectl(
        _kubeconfig(stack),
        "get",
        "recordings,voicestoragesettings,awscredentials",
        "-n",
        namespace,
        check=False,
    ).stdout
    print(f"{DIM}{out.rstrip()}{RESET}", flush=True)


def demo(workdir: Path, *, cluster: bool = False) -> int:
    started = time.monotonic()
    bring_up = running_cluster if cluster else running_stack
    with bring_up(workdir) as (stack, _, receiver):
        node = stack.nodes[0]  # the example's node on the local stack, the real node's name
        account: Account = timed(
            f"account {NAMESPACE!r} ready: Secret + AwsCredential + VoiceStorageSetting "
            "(encrypted)",
            lambda: stack.add_account(
                namespace=NAMESPACE,
                encrypted=True,
                callback_url=receiver.url(),
                signing_key="demo-auth-token",
            ),
        )
        audio = call_audio()
        stack.record(account, RECORDING, audio, node=node, media_path=MEDIA_PATH)
        say(
            f"recorded a {len(audio)} byte call on node {node} "
            f"and created Recording {NAMESPACE}/{RECORDING}"
        )
        body = timed(
            "Recording reached a final phase",
            lambda: stack.wait_phase(
                NAMESPACE, RECORDING, "Completed", "Failed", "Cached", timeout=120
            ),
        )
        show(stack, NAMESPACE)
        status = body["status"]
        if status.get("phase") != "Completed":
            say(f"the recording ended {status.get('phase')}: {status.get('message')}")
            return 1
        say(f"mediaUrl: {status['mediaUrl']}")
        say(
            "local media on the node: "
            + (
                "still there (unexpected)"
                if stack.media_file(node, NAMESPACE, MEDIA_PATH).exists()
                else "deleted"
            )
        )
        obj = workdir / "object.bin"
        obj.write_bytes(stack.object_bytes(account, status["storage"]["objectKey"]))
        assert account.keys is not None
        private, _ = account.keys.write(workdir)
        out = workdir / f"{RECORDING}.wav"
        decrypt = subprocess.run(
            [
                sys.executable,
                "-m",
                "voicevault",
                "decrypt",
                "--private-key",
                str(private),
                "--details",
                json.dumps(status["encryptionDetails"]),
                str(obj),
                str(out),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if decrypt.returncode != 0 or out.read_bytes() != audio:
            say(f"decryption failed: {decrypt.stderr.strip()}")
            return 1
        say("downloaded the object and ran `voicevault decrypt`: identical to the recorded audio")
        deadline = time.monotonic() + 30
        while not receiver.for_recording(status["sid"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        calls = receiver.for_recording(status["sid"])
        if calls:
            say(
                f"status callback received: RecordingStatus={calls[0].params['RecordingStatus']}, "
                f"signed with X-Twilio-Signature"
            )
        say(f"demo finished in {time.monotonic() - started:.0f}s; tearing down")
    return 0


def try_it(stack: Stack, s3: MotoS3, account: Account, workdir: Path) -> list[str]:
    """Shell lines a newcomer can paste as they are (a test runs them)."""
    sample = workdir / "sample-call.wav"
    sample.write_bytes(call_audio())
    media = stack.media_file(NODE, NAMESPACE, MEDIA_PATH)
    key_id, secret = s3.admin_credentials
    endpoint, bucket = s3.endpoint_url, account.s3.bucket
    listing = (
        f'import boto3; s3 = boto3.client("s3", endpoint_url="{endpoint}", '
        f'aws_access_key_id="{key_id}", aws_secret_access_key="{secret}", '
        'region_name="us-east-1"); '
        f'[print(o["Key"], o["Size"]) for o in s3.list_objects_v2(Bucket="{bucket}")'
        '.get("Contents", [])]'
    )
    q = shlex.quote
    return [
        f"export KUBECONFIG={q(str(stack.cp.admin_kubeconfig))}",
        f"export KUBECACHEDIR={q(str(workdir / 'kubectl-cache'))}  # this stack's own cache",
        f"export PATH={q(str(binaries.kubectl().parent))}:$PATH  # kubectl and helm, pinned",
        "kubectl get voicevault -A",
        f"# a call recording lands on node {NODE}; the platform creates its Recording:",
        f"mkdir -p {q(str(media.parent))}",
        f"cp {q(str(sample))} {q(str(media))}",
        f"kubectl apply -f {q(str(EXAMPLE_RECORDING))}",
        f"kubectl -n {NAMESPACE} wait recording/{RECORDING} "
        "--for=jsonpath='{.status.phase}'=Completed --timeout=120s",
        f"kubectl -n {NAMESPACE} get recordings -o wide",
        "# what landed in the bucket, with the local S3's admin keys (local only, throwaway):",
        f"{q(sys.executable)} -c {q(listing)}",
        f"# or: AWS_ACCESS_KEY_ID={key_id} AWS_SECRET_ACCESS_KEY={secret} "
        f"aws --endpoint-url {endpoint} s3 ls --recursive s3://{bucket}/",
    ]


def up(workdir: Path) -> int:
    with running_stack(workdir) as (stack, s3, receiver):
        account = stack.add_account(
            namespace=NAMESPACE, encrypted=True, callback_url=receiver.url()
        )
        say("the stack is up. In another terminal:")
        print("", *(f"    {line}" for line in try_it(stack, s3, account, workdir)), sep="\n")
        print(
            f"\nOperator log: {stack.operator.log_path}\nPress Ctrl-C to stop.",
            flush=True,
        )
        while True:
            signal.pause()  # until Ctrl-C or SIGTERM (_interrupted raises)


def _interrupted(signum: int, _frame: FrameType | None) -> None:
    """SIGINT and SIGTERM: unwind, so the stack stops and the temporary folder goes."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["demo", "demo-cluster", "up"])
    parser.add_argument("--workdir", type=Path, help="keep state here (default: a temp dir)")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # SIGINT too: a shell starts background jobs with it ignored, and Ctrl-C must still work
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.command == "up":
            return up(workdir)
        return demo(workdir, cluster=args.command == "demo-cluster")
    except KeyboardInterrupt:
        say("interrupted: stack stopped")
        return 130
    finally:
        if args.workdir is None:  # ours: a temp folder of ~60 MB (etcd, logs, media)
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
