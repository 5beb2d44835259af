"""Running the real `voicevault` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.bed.s3_common import S3Account

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2


def voicevault_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "voicevault", *args]


def aws_env(account: S3Account, secret: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_ACCESS_KEY_ID"] = account.access_key_id
    env["AWS_SECRET_ACCESS_KEY"] = secret if secret is not None else account.secret_access_key
    return env


def run(
    args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        voicevault_argv(*args),
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def endpoint_bucket_url(account: S3Account, endpoint: str | None = None) -> str:
    """The bucket as a URL on the endpoint (path style), the form for S3-compatible stores."""
    return f"{(endpoint or account.endpoint_url).rstrip('/')}/{account.bucket}/{account.prefix}"


def upload_args(
    path: Path,
    account: S3Account,
    state_dir: Path,
    *,
    recording_sid: str,
    endpoint: str | None = None,
    public_key: Path | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    endpoint = endpoint or account.endpoint_url
    args = [
        "upload",
        str(path),
        "--bucket-url",
        endpoint_bucket_url(account, endpoint),
        "--endpoint-url",
        endpoint,
        "--region",
        account.region,
        "--account-sid",
        ACCOUNT_SID,
        "--recording-sid",
        recording_sid,
        "--state-dir",
        str(state_dir),
    ]
    if public_key is not None:
        args += ["--public-key", str(public_key)]
    return [*args, *extra]
