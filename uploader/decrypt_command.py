"""`voicevault decrypt`: turn a downloaded object back into the original recording.

The plaintext is written to a temporary file beside OUTPUT and renamed into place only
after the GCM tag verified, so a wrong key or a tampered object never leaves a partial
file that looks valid.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from voicevault.uploader import envelope
from voicevault.uploader.atomicfile import replacing

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
PASSWORD_ENV = "VOICEVAULT_KEY_PASSWORD"  # noqa: S105 - a variable name


class UsageError(Exception):
    pass


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Decrypt an object stored with rsa-aes encryption. DETAILS is the encryptionDetails "
        "object (Kubernetes camelCase or Twilio snake_case), inline JSON or a file."
    )
    parser.epilog = f"A password-protected private key reads its password from ${PASSWORD_ENV}."
    parser.add_argument("--private-key", required=True, type=Path, metavar="PEM_FILE")
    parser.add_argument("--details", required=True, metavar="JSON")
    parser.add_argument("input", type=Path, metavar="INPUT", help="the encrypted object")
    parser.add_argument("output", type=Path, metavar="OUTPUT", help="where to write the audio")


def run(args: argparse.Namespace) -> int:
    try:
        details = _details(args.details)
        pem = _read(args.private_key, "private key")
        size = _size(args.input)
    except UsageError as exc:
        print(f"voicevault decrypt: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    password = os.environ.get(PASSWORD_ENV)
    try:
        content_key = envelope.open_content_key(
            pem, details, os.fsencode(password) if password else None
        )
        written = _decrypt_to(args.input, args.output, content_key, size)
    except envelope.DecryptionError as exc:
        hint = f" (set ${PASSWORD_ENV})" if "password" in str(exc) and not password else ""
        print(f"voicevault decrypt: error: {exc}{hint}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"voicevault decrypt: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    print(f"decrypted {written} bytes to {args.output}", file=sys.stderr)
    return EXIT_OK


def _details(text: str) -> envelope.EncryptionDetails:
    source = text
    if not text.lstrip().startswith("{"):
        source = _read(Path(text), "details file").decode("utf-8", errors="replace")
    try:
        data = json.loads(source)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--details is not valid JSON ({exc.msg} at char {exc.pos})") from None
    except (ValueError, RecursionError):
        # a number over Python's 4300-digit limit, or nesting deeper than the recursion limit
        raise UsageError(
            "--details is not valid JSON (a number or the nesting is too large)"
        ) from None
    if not isinstance(data, dict):
        raise UsageError("--details must be a JSON object")
    if "encryption_details" in data and "media" in data:
        # a whole metadata document (<object key>.json)
        if not isinstance(data["encryption_details"], dict):
            raise UsageError("the metadata document says the object is not encrypted")
        data = data["encryption_details"]
    try:
        return envelope.EncryptionDetails.from_mapping(data)
    except envelope.DecryptionError as exc:
        raise UsageError(str(exc)) from None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {str(path)!r}: {exc.strerror}") from None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise UsageError(f"cannot read {str(path)!r}: {exc.strerror}") from None


def _decrypt_to(src: Path, dst: Path, content_key: envelope.ContentKey, size: int) -> int:
    with replacing(dst, prefix=f".{dst.name}.", suffix=".part") as out, src.open("rb") as inp:
        return envelope.decrypt_stream(content_key, inp, out, size)
