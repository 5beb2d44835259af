"""`voicevault uploader`: the program an uploader pod runs.

It reads the batch the operator mounted, uploads each recording, writes each outcome
into the Recording's status and a compact summary into the termination message, then
exits. SIGTERM stops it at the next part boundary; what was not finished resumes later.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

# first: botocore's docs and urllib3's HTTP/2 package bodies deferred, collections paused
from voicevault.uploader import podstart  # noqa: F401  # isort: skip
from voicevault import logs
from voicevault.contract import (
    BATCH_FILE,
    BatchFileError,
    BatchItem,
    BatchOutcome,
    BatchSpec,
    CredentialFile,
)
from voicevault.uploader import kubeapi
from voicevault.uploader.batch import BatchSettings, run_batch
from voicevault.uploader.bucketurl import parse_bucket_url
from voicevault.uploader.recordingstatus import KubeStatusReporter
from voicevault.uploader.s3client import AwsKeys, make_client
from voicevault.uploader.transfer import TransferConfig

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("voicevault.uploader")
MIB = 1 << 20


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Upload the batch of recordings the operator assigned to this pod."
    parser.add_argument("--batch-dir", type=Path, required=True, help="mounted batch Secret")
    parser.add_argument("--media-root", type=Path, required=True, help="recordings directory")
    parser.add_argument(
        "--state-dir", type=Path, help="resume state (default: MEDIA_ROOT/.voicevault/state)"
    )
    parser.add_argument("--termination-log", type=Path, default=Path("/dev/termination-log"))
    parser.add_argument("--concurrency", type=int, default=4, help="recordings at once")
    parser.add_argument("--part-concurrency", type=int, default=2, help="parts at once each")
    parser.add_argument("--part-size", type=int, default=8, metavar="MIB")
    parser.add_argument("--progress-interval", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument("--log-format", default="json", choices=["json", "plain"])


def run(args: argparse.Namespace) -> int:
    logs.setup(args.log_level, args.log_format)
    try:
        spec, credentials = load_batch(args.batch_dir)
    except (OSError, ValueError) as exc:
        log.error("cannot read the batch: %s", exc)
        return 1
    cancel = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: cancel.set())
    settings = BatchSettings(
        media_root=args.media_root,
        state_dir=args.state_dir or args.media_root / ".voicevault" / "state",
        concurrency=args.concurrency,
        transfer=TransferConfig(concurrency=args.part_concurrency, part_size=args.part_size * MIB),
        progress_interval=args.progress_interval,
    )
    try:
        api = kubeapi.KubeApi(kubeapi.from_environment())
    except (kubeapi.KubeConfigError, OSError, ValueError) as exc:
        log.error("cannot reach the Kubernetes API: %s", exc)
        return 1
    reporter = KubeStatusReporter(api, spec.pod)
    clients = _ClientCache(credentials)
    log.info("batch started", extra={"pod": spec.pod, "node": spec.node, "items": len(spec.items)})
    outcome = run_batch(spec, settings, reporter, clients.get, cancel)
    _write_termination_message(args.termination_log, outcome)
    summary = Counter(r.kind if r else "not-started" for r in outcome.results)
    log.info(
        "batch done: %s; %d parts re-sent after checksum mismatches",
        ", ".join(f"{n} {k}" for k, n in sorted(summary.items())),
        outcome.parts_resent,
        extra={
            "event": "batch_done",
            "api_requests": reporter.requests,
            "parts_resent": outcome.parts_resent,
        }
        | dict(summary),
    )
    return 143 if cancel.is_set() else 0


def load_batch(directory: Path) -> tuple[BatchSpec, dict[str, AwsKeys]]:
    """The batch and its credentials; every secret value is registered for log scrubbing."""
    try:
        spec = BatchSpec.from_json((directory / BATCH_FILE).read_text())
    except BatchFileError as exc:
        raise ValueError(f"{BATCH_FILE} is not a valid batch: {exc}") from None
    credentials: dict[str, AwsKeys] = {}
    for name in {item.credential for item in spec.items}:
        if "/" in name or name.startswith("."):
            raise ValueError(f"invalid credential file name {name!r}")
        try:
            raw = CredentialFile.from_json((directory / name).read_text(), name)
        except BatchFileError as exc:
            raise ValueError(f"credential file {name} is not valid: {exc}") from None
        for value in (raw.access_key_id, raw.secret_access_key, raw.session_token):
            logs.register_secret(value)
        credentials[name] = AwsKeys(raw.access_key_id, raw.secret_access_key, raw.session_token)
    return spec, credentials


class _ClientCache:
    """One S3 client per (credential, endpoint, region); boto3 clients are thread-safe."""

    def __init__(self, credentials: dict[str, AwsKeys]) -> None:
        self._credentials = credentials
        self._clients: dict[tuple[str, str | None, str, str], S3Client] = {}
        self._lock = threading.Lock()

    def get(self, item: BatchItem) -> S3Client:
        key = (item.credential, item.endpoint_url, item.region, item.bucket_url)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                location = parse_bucket_url(
                    item.bucket_url, endpoint_url=item.endpoint_url, region=item.region
                )
                client = make_client(location, self._credentials[item.credential])
                self._clients[key] = client
            return client


def _write_termination_message(path: Path, outcome: BatchOutcome) -> None:
    text = outcome.encode()
    try:
        path.write_text(text)
    except OSError as exc:
        log.warning("cannot write the termination message: %s", exc.strerror)
        print(text, file=sys.stdout)
