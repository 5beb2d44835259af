"""Debian packages the real node needs, installed with apt only when missing.

While apt runs, ``/usr/sbin/policy-rc.d`` (``exit 101``) stops any packaged service
(containerd) from starting; the file is removed afterwards unless it was there before.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.bed.binaries import BinaryInstallError, cache_dir, file_lock

PACKAGES = (
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    "conntrack",
    "mmdebstrap",
    "buildah",
    "uidmap",
    "fuse-overlayfs",
    "gcc",
    "libc6-dev",
    "openssl",
    "procps",
    "iproute2",
)

POLICY_RC = Path("/usr/sbin/policy-rc.d")
APT_TIMEOUT_S = 15 * 60


def missing(packages: Sequence[str] = PACKAGES) -> list[str]:
    """Packages dpkg does not report as installed."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\\n", *packages],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    installed = {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}
    return [p for p in packages if p not in installed]


def ensure_installed(packages: Sequence[str] = PACKAGES) -> None:
    """apt-get install whatever is missing (a no-op, no apt call, when nothing is)."""
    if not missing(packages):
        return
    with file_lock(cache_dir() / ".apt.lock"):
        todo = missing(packages)
        if not todo:
            return
        print(f"[debian] installing {' '.join(todo)}", file=sys.stderr, flush=True)
        ours = not POLICY_RC.exists()
        if ours:
            POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
            POLICY_RC.chmod(0o755)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            for argv in (
                ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", *todo],
            ):
                done = subprocess.run(
                    argv,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=APT_TIMEOUT_S,
                    check=False,
                )
                if done.returncode != 0:
                    tail = (done.stdout + done.stderr)[-3000:]
                    raise BinaryInstallError(f"{' '.join(argv)} failed:\n{tail}")
        finally:
            if ours:
                POLICY_RC.unlink(missing_ok=True)
        still = missing(packages)
        if still:
            raise BinaryInstallError(f"apt installed, but these are still missing: {still}")


def apt_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt on this machine uses (deb822 ``URIs:`` or a one-line ``deb``).

    mmdebstrap falls back to a fixed public mirror without one, so it is always passed.
    """
    files = sorted((sources / "sources.list.d").glob("*.sources"))
    files += [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*.list"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text()
        for match in re.finditer(r"^URIs:\s*(\S+)", text, re.MULTILINE):
            uri = match.group(1)
            if "security" not in uri:
                return uri
        for match in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", text, re.MULTILINE):
            if "security" not in match.group(1) and "debian" in match.group(1):
                return match.group(1)
    raise BinaryInstallError(f"no Debian mirror found in {sources}/sources.list*")


def require_tools(*names: str) -> None:
    for name in names:
        if shutil.which(name) is None:
            raise BinaryInstallError(f"{name} not on PATH after installing {PACKAGES}")


if __name__ == "__main__":
    ensure_installed()
    print(apt_mirror())
