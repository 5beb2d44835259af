"""The local stack for people: `python -m tests.bed demo` or `python -m tests.bed up`.

demo  brings up a real kube-apiserver + etcd, an S3 server enforcing the seed's IAM
      policy, the operator and a node, creates an account (credential, setting, key pair),
      records a call on the node, waits for the Recording to reach Completed, then
      downloads and decrypts the object to prove it, and tears everything down.
demo-cluster  the same journey on a real one-node cluster (kubelet, containerd): the
      image built from the Dockerfile, `helm install` of the chart, the operator and the
      uploader in real pods. Needs root (it makes a bridge, mounts, iptables rules).
up    brings up the same stack with one example account and keeps it running until
      Ctrl-C, printing the KUBECONFIG to use with kubectl.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

from tests.bed import binaries
from tests.bed.controlplane import ControlPlane
from tests.bed.s3_moto import MotoS3
from tests.bed.stack import Account, Stack
from tests.support.callbacks import CallbackReceiver
from tests.support.kube import kubectl

T = TypeVar("T")
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
def running_stack(workdir: Path) -> Iterator[tuple[Stack, CallbackReceiver]]:
    timed(
        "binaries ready (cached in ~/.cache/voicevault)",
        lambda: [binaries.kube_apiserver(), binaries.kubectl(), binaries.helm()],
    )
    with ControlPlane(workdir / "controlplane") as plane:
        say(f"kube-apiserver {binaries.KUBERNETES_VERSION} + etcd on {plane.server}")
        with MotoS3(workdir / "moto") as s3:
            say(f"S3 (moto, IAM enforced with the seed policy) on {s3.endpoint_url}")
            stack = Stack(plane, s3, workdir / "stack", nodes=("media-node-1",))
            timed("CRDs applied, RBAC installed, node registered, operator running", stack.start)
            receiver = CallbackReceiver().start()
            try:
                yield stack, receiver
            finally:
                receiver.stop()
                stack.stop()


@contextmanager
def running_cluster(workdir: Path) -> Iterator[tuple[Stack, CallbackReceiver]]:
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
                yield stack, receiver
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
    with bring_up(workdir) as (stack, receiver):
        node = stack.nodes[0]
        account: Account = timed(
            "account 'acme' ready: Secret + AwsCredential + VoiceStorageSetting (encrypted)",
            lambda: stack.add_account(
                namespace="acme",
                encrypted=True,
                callback_url=receiver.url(),
                signing_key="demo-auth-token",
            ),
        )
        audio = call_audio()
        stack.record(account, "call-0001", audio)
        say(
            f"recorded a {len(audio)} byte call on node {node} and created Recording acme/call-0001"
        )
        body = timed(
            "Recording reached a final phase",
            lambda: stack.wait_phase(
                "acme", "call-0001", "Completed", "Failed", "Cached", timeout=120
            ),
        )
        show(stack, "acme")
        status = body["status"]
        if status.get("phase") != "Completed":
            say(f"the recording ended {status.get('phase')}: {status.get('message')}")
            return 1
        say(f"mediaUrl: {status['mediaUrl']}")
        say(
            "local media on the node: "
            + (
                "still there (unexpected)"
                if stack.media_file(node, "acme", "2026/11/call-0001.wav").exists()
                else "deleted"
            )
        )
        obj = workdir / "object.bin"
        obj.write_bytes(stack.object_bytes(account, status["storage"]["objectKey"]))
        assert account.keys is not None
        private, _ = account.keys.write(workdir)
        out = workdir / "call-0001.wav"
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


def up(workdir: Path) -> int:
    with running_stack(workdir) as (stack, receiver):
        stack.add_account(namespace="acme", encrypted=True, callback_url=receiver.url())
        kubeconfig = stack.cp.admin_kubeconfig
        say("the stack is up. In another terminal:")
        print(
            f"""
    export KUBECONFIG={kubeconfig}
    {binaries.kubectl()} get voicevault -A
    # put media on the node, then create a Recording for it:
    mkdir -p {stack.media_file("media-node-1", "acme", "x").parent}
    cp some.wav {stack.media_file("media-node-1", "acme", "my-call.wav")}
    # (see examples/recording.yaml; nodeName: media-node-1, mediaPath: my-call.wav)

Operator log: {stack.operator.log_path}
Press Ctrl-C to stop.""",
            flush=True,
        )
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with suppress(KeyboardInterrupt):
            stop.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["demo", "demo-cluster", "up"])
    parser.add_argument("--workdir", type=Path, help="keep state here (default: a temp dir)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="voicevault-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if args.command == "up":
        return up(workdir)
    return demo(workdir, cluster=args.command == "demo-cluster")


if __name__ == "__main__":
    raise SystemExit(main())
