"""`voicevault upload`: upload one recording by hand, exactly as an uploader pod would.

Exit codes: 0 stored, 2 usage error, 3 fatal failure (do not retry), 4 transient failure
(run the same command again: it resumes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from voicevault.batchfile import read_facts
from voicevault.contract import BatchFileError, ErrorClass, ErrorCode
from voicevault.uploader import envelope
from voicevault.uploader.bucketurl import BucketUrlError, parse_bucket_url
from voicevault.uploader.errors import UploadError, fatal
from voicevault.uploader.media import content_type_for
from voicevault.uploader.metadata import MetadataTarget, metadata_object_key
from voicevault.uploader.metadata_store import store_metadata
from voicevault.uploader.progress import for_stream
from voicevault.uploader.s3client import AwsKeys, ClientSettings, make_client
from voicevault.uploader.state import StateStore
from voicevault.uploader.transfer import EncryptionKey, TransferConfig, UploadRequest, upload

EXIT_OK, EXIT_USAGE, EXIT_FATAL, EXIT_TRANSIENT = 0, 2, 3, 4
MIB = 1 << 20


class UsageError(Exception):
    """A mistake in the command line or environment; exit 2 with this message."""


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "voicevault" / "uploads"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Upload FILE to the bucket, encrypted when a public key is given. Credentials come "
        "from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN). Prints one "
        "JSON object on success. Run it again after an interruption: it resumes."
    )
    parser.epilog = "exit codes: 0 stored, 2 usage, 3 fatal (do not retry), 4 transient (retry)"
    parser.add_argument("file", type=Path, metavar="FILE", help="the recording to upload")
    parser.add_argument("--bucket-url", required=True, metavar="URL", help="bucket URL")
    parser.add_argument("--endpoint-url", metavar="URL", help="S3-compatible endpoint")
    parser.add_argument("--region", help="signing region (default: from the URL)")
    parser.add_argument("--public-key", type=Path, metavar="PEM_FILE", help="encrypt with it")
    parser.add_argument("--public-key-sid", metavar="SID", help="SID shown in the details")
    parser.add_argument("--account-sid", metavar="AC...", help="key: PREFIX/AC.../RE...EXT")
    parser.add_argument("--recording-sid", metavar="RE...")
    parser.add_argument("--key", help="object key below the URL's key path (default: name)")
    parser.add_argument(
        "--delete-source", action="store_true", help="delete FILE once it is stored"
    )
    parser.add_argument("--state-dir", type=Path, default=None, help="resume state folder")
    parser.add_argument("--part-size", type=int, default=8, metavar="MIB", help="default 8")
    parser.add_argument("--concurrency", type=int, default=3, metavar="N", help="default 3")
    parser.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS", help="read timeout (default 60)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    meta = parser.add_argument_group(
        "metadata document",
        "With --metadata, KEY.json is written beside the object once it is stored (the "
        "recording's SIDs, source, channels, track, start time, duration, the object's size "
        "and SHA-256, encryption details). Needs --account-sid and --recording-sid.",
    )
    meta.add_argument("--metadata", action="store_true", help="write the metadata document")
    meta.add_argument("--call-sid", metavar="CA...", help="the call recorded")
    meta.add_argument("--conference-sid", metavar="CF...", help="the conference recorded")
    meta.add_argument("--source", help="what started the recording (e.g. DialVerb)")
    meta.add_argument("--channels", type=int, default=1, help="1 or 2 (default 1)")
    meta.add_argument("--track", default="both", help="inbound, outbound or both (default)")
    meta.add_argument("--start-time", metavar="RFC3339", help="e.g. 2026-11-02T14:03:00Z")
    meta.add_argument("--duration", type=int, metavar="SECONDS", help="length of the recording")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        request, keys, config = _prepare(args)
        target = _metadata_target(args, request)
    except UsageError as exc:
        print(f"voicevault upload: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UploadError as exc:
        return _report_failure(exc)
    store = StateStore(args.state_dir or default_state_dir())
    client = make_client(request.location, keys, ClientSettings(read_timeout=args.timeout))
    try:
        result = upload(client, request, store, config, progress=for_stream(sys.stderr))
        if target is not None:
            store_metadata(client, request, result, target, store)
    except UploadError as exc:
        return _report_failure(exc)
    store.wipe(request.upload_name)
    if args.delete_source:
        request.source.unlink(missing_ok=True)
    print(json.dumps(result.to_json()))
    return EXIT_OK


def _report_failure(exc: UploadError) -> int:
    retry = "run the command again to resume" if not exc.fatal else "not retryable"
    print(
        f"voicevault upload: {exc.error_class.value.lower()} error {int(exc.code)}: "
        f"{exc.message} ({retry})",
        file=sys.stderr,
    )
    return EXIT_FATAL if exc.error_class is ErrorClass.FATAL else EXIT_TRANSIENT


def _keys_from_environment() -> AwsKeys:
    key_id = os.environ.get("AWS_ACCESS_KEY_ID", "")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    if not key_id or not secret:
        raise UsageError("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment")
    return AwsKeys(key_id, secret, os.environ.get("AWS_SESSION_TOKEN") or None)


def _prepare(args: argparse.Namespace) -> tuple[UploadRequest, AwsKeys, TransferConfig]:
    if not args.file.is_file():
        raise UsageError(f"{args.file}: no such file")
    if (args.account_sid is None) != (args.recording_sid is None):
        raise UsageError("give --account-sid and --recording-sid together")
    if args.key and args.account_sid:
        raise UsageError("give either --key or --account-sid/--recording-sid")
    if args.part_size < 5 or args.concurrency < 1:
        raise UsageError("--part-size must be at least 5 (MiB) and --concurrency at least 1")
    try:
        location = parse_bucket_url(
            args.bucket_url, endpoint_url=args.endpoint_url, region=args.region
        )
    except BucketUrlError as exc:
        raise UsageError(str(exc)) from None
    keys = _keys_from_environment()
    extension = args.file.suffix
    if args.account_sid:
        key = location.object_key(args.account_sid, args.recording_sid, extension)
    else:
        key = location.prefix + (args.key or args.file.name).lstrip("/")
    encryption = _encryption_key(args.public_key, args.public_key_sid)
    request = UploadRequest(
        source=args.file,
        location=location,
        key=key,
        content_type=content_type_for(extension, encrypted=encryption is not None),
        encryption=encryption,
        state_name=args.recording_sid or "",
        with_metadata=args.metadata,
    )
    config = TransferConfig(part_size=args.part_size * MIB, concurrency=args.concurrency)
    return request, keys, config


def _metadata_target(args: argparse.Namespace, request: UploadRequest) -> MetadataTarget | None:
    if not args.metadata:
        given = [f for f in _METADATA_FLAGS if getattr(args, f) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UsageError(f"{flag} is part of the metadata document: add --metadata")
        return None
    if not args.account_sid:
        raise UsageError("--metadata needs --account-sid and --recording-sid")
    missing = [f for f in ("source", "start_time", "duration") if getattr(args, f) is None]
    if missing:
        raise UsageError(
            "--metadata needs " + ", ".join("--" + f.replace("_", "-") for f in missing)
        )
    if not args.call_sid and not args.conference_sid:
        raise UsageError("--metadata needs --call-sid or --conference-sid")
    fields: dict[str, Any] = {
        "account_sid": args.account_sid,
        "recording_sid": args.recording_sid,
        "call_sid": args.call_sid,
        "conference_sid": args.conference_sid,
        "source": args.source,
        "channels": args.channels,
        "track": args.track,
        "start_time": args.start_time,
        "duration": args.duration,
    }
    try:
        facts = read_facts(fields, "metadata")
    except BatchFileError as exc:
        flag = "--" + exc.field_name.replace("_", "-")
        raise UsageError(f"{flag}: {str(exc).partition(': ')[2]}") from None
    if facts.start_time.tzinfo is None:
        raise UsageError("--start-time needs a time zone (e.g. 2026-11-02T14:03:00Z)")
    key = metadata_object_key(request.key)
    return MetadataTarget(key=key, url=request.location.object_url(key), recording=facts)


_METADATA_FLAGS = ("call_sid", "conference_sid", "source", "start_time", "duration")


def _encryption_key(pem_file: Path | None, sid: str | None) -> EncryptionKey | None:
    if pem_file is None:
        if sid:
            raise UsageError("--public-key-sid needs --public-key")
        return None
    try:
        pem = pem_file.read_bytes()
    except OSError as exc:
        raise UsageError(f"{pem_file}: {exc.strerror}") from None
    try:
        public_key = envelope.load_public_key(pem)
    except envelope.InvalidPublicKey as exc:
        raise fatal(ErrorCode.INVALID_PUBLIC_KEY, f"invalid public key: {exc}") from None
    return EncryptionKey(public_key=public_key, sid=sid or envelope.public_key_sid(public_key))
