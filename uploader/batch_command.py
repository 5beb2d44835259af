"""`voicevault uploader`: the program an uploader pod runs.

It reads the batch the operator mounted, uploads each recording and writes each outcome
into the Recording's status. Done with a batch, it asks the operator for the next one
(`handoff`), with that batch's results, until there is none. Then it writes a compact
summary of its last batch's results into the termination message and exits. SIGTERM
stops it at the next part boundary; what was not finished resumes later.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
    HANDOFF_FILE,
    BatchFileError,
    BatchItem,
    BatchOutcome,
    BatchSpec,
    CredentialFile,
    HandoffFile,
    MoreRequest,
)
from voicevault.uploader import kubeapi
from voicevault.uploader.batch import BatchSettings, run_batch, worker_pool
from voicevault.uploader.bucketurl import parse_bucket_url
from voicevault.uploader.handoff import HandoffClient, HandoffError
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
        handoff = load_handoff(args.batch_dir)
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
    summary: Counter[str] = Counter()
    resent = 0
    asker = _handoff_client(handoff)
    # one set of threads (their API connections with them) and one connection to the
    # operator serve all the pod's batches
    with worker_pool(settings) as pool, contextlib.ExitStack() as closing:
        if asker is not None:
            closing.callback(asker.close)
        while True:
            log.info(
                "batch started",
                extra={
                    "pod": spec.pod,
                    "node": spec.node,
                    "items": len(spec.items),
                    "chunk": spec.chunk,
                },
            )
            outcome = dataclasses.replace(
                run_batch(spec, settings, reporter, clients.get, cancel, pool), chunk=spec.chunk
            )
            summary.update(r.kind if r else "not-started" for r in outcome.results)
            resent += outcome.parts_resent
            following = _next_batch(asker, spec, outcome, credentials, cancel)
            if following is None:
                break
            if not following.items:  # the results are with the operator: none to report
                outcome = BatchOutcome(chunk=following.chunk)
                break
            spec = following
    _write_termination_message(args.termination_log, outcome)
    log.info(
        "batch done: %s; %d parts re-sent after checksum mismatches",
        ", ".join(f"{n} {k}" for k, n in sorted(summary.items())),
        resent,
        extra={
            "event": "batch_done",
            "api_requests": reporter.requests,
            "parts_resent": resent,
        }
        | dict(summary),
    )
    return 143 if cancel.is_set() else 0


def _handoff_client(handoff: HandoffFile | None) -> HandoffClient | None:
    if handoff is None:
        return None
    try:
        return HandoffClient(handoff)
    except HandoffError as exc:
        log.info("this pod will not ask for more work: %s", exc)
        return None


def _next_batch(
    asker: HandoffClient | None,
    spec: BatchSpec,
    outcome: BatchOutcome,
    credentials: dict[str, AwsKeys],
    cancel: threading.Event,
) -> BatchSpec | None:
    """The operator's next batch for this pod, or None: end with this batch's results."""
    if asker is None or cancel.is_set() or None in outcome.results:
        return None
    request = MoreRequest(pod=spec.pod, chunk=spec.chunk, outcome=outcome)
    try:
        following = asker.ask(request)
    except HandoffError as exc:
        log.info("no more work from the operator: %s", exc)
        return None
    unknown = {item.credential for item in following.items} - credentials.keys()
    if following.pod != spec.pod or following.chunk != spec.chunk + 1 or unknown:
        # reported as not received: the operator queues that work again
        log.warning("the operator's next batch does not fit this pod; ending")
        return None
    return following


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


def load_handoff(directory: Path) -> HandoffFile | None:
    """How to ask for more work, if this pod may (an older operator gives no file)."""
    path = directory / HANDOFF_FILE
    if not path.exists():
        return None
    try:
        handoff = HandoffFile.from_json(path.read_text())
    except BatchFileError as exc:
        raise ValueError(f"{HANDOFF_FILE} is not valid: {exc}") from None
    logs.register_secret(handoff.token)
    return handoff


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
