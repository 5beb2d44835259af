"""Container images for the real node, built without any registry.

A Python base from Debian packages (mmdebstrap, the machine's own apt mirror), a
derived base without PEP 668's ``EXTERNALLY-MANAGED`` (the Dockerfile pip-installs into
the system Python), a static pause image, then the project's own Dockerfile through
``buildah bud``. Each image is cached as an OCI archive in ``$VOICEVAULT_CACHE/images``
whose name carries the hash of its inputs, so a warm run builds nothing.

Run ``python -m tests.bed.images`` to build them ahead of a test run.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.bed import debian
from tests.bed.binaries import _log, _run, cache_dir, file_lock
from tests.bed.mounts import unmount_under

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
BASE_REF = "localhost/python:3.11-debian-bookworm"
PAUSE_REF = "localhost/pause:3.10"
PROJECT_REPO = "localhost/voicevault"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
RUNC = "/usr/sbin/runc"
BUILD_TIMEOUT_S = 20 * 60

_PAUSE_C = r"""
/* PID 1 of every pod sandbox: sleeps, reaps children, exits on SIGINT/SIGTERM. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
    if (getpid() != 1) return 1;
    signal(SIGINT, quit);
    signal(SIGTERM, quit);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
"""


@dataclass(frozen=True)
class Image:
    """An OCI archive in the cache and the reference it carries."""

    ref: str
    archive: Path


def images_dir() -> Path:
    path = cache_dir() / "images"
    path.mkdir(exist_ok=True)
    return path


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


@contextmanager
def _buildah_storage() -> Iterator[list[str]]:
    """A throwaway buildah store; every mount under it is undone before it is deleted."""
    root = Path(tempfile.mkdtemp(prefix=".buildah-", dir=images_dir()))
    flags = [
        "--root",
        str(root / "root"),
        "--runroot",
        str(root / "run"),
        "--storage-driver",
        "overlay",
    ]
    try:
        yield flags
    finally:
        subprocess.run(["buildah", *flags, "rm", "--all"], capture_output=True, check=False)
        subprocess.run(
            ["buildah", *flags, "rmi", "--all", "--force"], capture_output=True, check=False
        )
        unmount_under([root])
        shutil.rmtree(root, ignore_errors=True)


def _cached(name: str, key: str, ref: str, build: Callable[[list[str], Path], None]) -> Image:
    """``images/<name>-<key>.oci.tar``, built under a lock into a temp file, then renamed."""
    archive = images_dir() / f"{name}-{key}.oci.tar"
    if archive.is_file():
        return Image(ref, archive)
    with file_lock(images_dir() / f".{name}.lock"):
        if archive.is_file():
            return Image(ref, archive)
        started = time.monotonic()
        _log(f"image {name}", "build started", started)
        for stale in images_dir().glob(f".{name}-*.tmp"):
            stale.unlink()
        with _buildah_storage() as storage:
            tmp = images_dir() / f".{name}-{key}.tmp"
            build(storage, tmp)
            tmp.rename(archive)
        for old in images_dir().glob(f"{name}-*.oci.tar"):
            if old != archive:
                old.unlink()
        _log(f"image {name}", f"built {archive.stat().st_size / 1e6:.0f} MB", started)
    return Image(ref, archive)


def _push(storage: Sequence[str], ref: str, out: Path) -> None:
    _run(["buildah", *storage, "push", ref, f"oci-archive:{out}:{ref}"], timeout=BUILD_TIMEOUT_S)


def _from_archive(storage: Sequence[str], image: Image) -> None:
    _run(["buildah", *storage, "pull", f"oci-archive:{image.archive}"], timeout=BUILD_TIMEOUT_S)


# What the official python image has and Debian's python3 has not: pip may install into
# the system Python (PEP 668 marker gone), and ``python`` is a command.
_DERIVE = "rm -f /usr/lib/python3*/EXTERNALLY-MANAGED && ln -sf python3 /usr/bin/python"

# --- the Python base -------------------------------------------------------------------


def python_base() -> Image:
    """Debian's python3 in a rootfs, then a derived image shaped like the official one."""
    mirror = debian.apt_mirror()
    key = _digest(SUITE, mirror, *BASE_PACKAGES, BASE_REF, _DERIVE)

    def build(storage: list[str], out: Path) -> None:
        with tempfile.TemporaryDirectory(dir=images_dir()) as work:
            rootfs = Path(work) / "rootfs.tar"
            _run(
                [
                    "mmdebstrap",
                    "--variant=apt",
                    "--quiet",
                    f"--include={','.join(BASE_PACKAGES)}",
                    SUITE,
                    rootfs,
                    mirror,
                ],
                timeout=BUILD_TIMEOUT_S,
            )
            plain = f"{BASE_REF}-plain"
            ctr = _run(["buildah", *storage, "from", "scratch"]).strip()
            _run(["buildah", *storage, "add", ctr, rootfs, "/"], timeout=BUILD_TIMEOUT_S)
        env = ["--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        env += ["--env", "LANG=C.UTF-8", "--cmd", "python3"]
        _run(["buildah", *storage, "config", *env, ctr])
        _run(["buildah", *storage, "commit", "--rm", ctr, plain], timeout=BUILD_TIMEOUT_S)
        derived = _run(["buildah", *storage, "from", plain]).strip()
        _run(
            [
                "buildah",
                *storage,
                "run",
                "--runtime",
                RUNC,
                "--network",
                "host",
                derived,
                "--",
                "sh",
                "-c",
                _DERIVE,
            ]
        )
        _run(["buildah", *storage, "commit", "--rm", derived, BASE_REF], timeout=BUILD_TIMEOUT_S)
        _push(storage, BASE_REF, out)

    return _cached("python-base", key, BASE_REF, build)


# --- pause -----------------------------------------------------------------------------


def pause() -> Image:
    key = _digest(_PAUSE_C, PAUSE_REF)

    def build(storage: list[str], out: Path) -> None:
        with tempfile.TemporaryDirectory(dir=images_dir()) as work:
            src = Path(work) / "pause.c"
            src.write_text(_PAUSE_C)
            binary = Path(work) / "pause"
            _run(["gcc", "-Os", "-static", "-o", binary, src])
            _run(["strip", binary])
            ctr = _run(["buildah", *storage, "from", "scratch"]).strip()
            _run(["buildah", *storage, "copy", ctr, binary, "/pause"])
        _run(["buildah", *storage, "config", "--entrypoint", '["/pause"]', ctr])
        _run(["buildah", *storage, "commit", "--rm", ctr, PAUSE_REF])
        _push(storage, PAUSE_REF, out)

    return _cached("pause", key, PAUSE_REF, build)


# --- the project image -----------------------------------------------------------------


def _dockerignore_patterns(repo: Path) -> list[str]:
    path = repo / ".dockerignore"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [ln.strip().rstrip("/") for ln in lines if ln.strip() and not ln.startswith("#")]


def _ignored(path: str, patterns: Sequence[str]) -> bool:
    """``.dockerignore`` semantics the project uses: a pattern matches a path or a parent."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(prefix.split("/")[-1], bare):
                return True
    return False


def context_files(repo: Path = REPO) -> list[str]:
    """The git-tracked files ``COPY . .`` brings into the build (``.dockerignore`` applied)."""
    listed = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo)
    patterns = _dockerignore_patterns(repo)
    return sorted(p for p in listed.split("\0") if p and not _ignored(p, patterns))


# The lock files the Dockerfile installs from. They are in the key by name even if a
# .dockerignore rule ever hid them from the context: a lock change rebuilds the image.
IMAGE_LOCKS = ("requirements/build.txt", "requirements/runtime.txt")


def project_key(base: Image, repo: Path = REPO) -> str:
    parts: list[bytes | str] = [base.archive.name, (repo / "Dockerfile").read_bytes()]
    for rel in IMAGE_LOCKS:
        parts += [rel, (repo / rel).read_bytes()]
    for rel in context_files(repo):
        path = repo / rel
        if path.is_symlink():
            parts += [rel, "->", os.readlink(path)]
        elif path.is_file():
            parts += [rel, path.read_bytes()]
    return _digest(*parts)


def project(base: Image | None = None) -> Image:
    """The project's Dockerfile built on the local base, tagged with its input hash."""
    base = base or python_base()
    key = project_key(base)
    ref = f"{PROJECT_REPO}:0.1.0-{key}"

    def build(storage: list[str], out: Path) -> None:
        _from_archive(storage, base)
        _run(
            [
                "buildah",
                *storage,
                "bud",
                "--runtime",
                RUNC,
                "--network",
                "host",
                "--layers=false",
                "-v",
                f"{HOST_CA_BUNDLE}:/etc/ssl/certs/ca-certificates.crt:ro",
                "--build-arg",
                f"PYTHON_IMAGE={base.ref}",
                "-t",
                ref,
                "-f",
                REPO / "Dockerfile",
                REPO,
            ],
            timeout=BUILD_TIMEOUT_S,
        )
        _push(storage, ref, out)

    return _cached("voicevault", key, ref, build)


def all_images() -> list[Image]:
    debian.ensure_installed()
    base = python_base()
    return [pause(), base, project(base)]


def main(argv: Sequence[str] | None = None) -> int:
    del argv
    for image in all_images():
        print(json.dumps({"ref": image.ref, "archive": str(image.archive)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
