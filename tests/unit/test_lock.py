"""The lock in requirements/ against pyproject.toml: pinned, hashed, fresh and consistent.

`make`, CI and the image install only from these files, so a dependency added to
pyproject.toml without `make lock`, a floor raised above the locked version, or a floor
that requirements/floor.txt does not really install would go unnoticed without this.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support.kube import REPO

REQUIREMENTS = REPO / "requirements"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCKS = ("lock.txt", "runtime.txt", "build.txt", "uv.txt", "floor.txt")
_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+?)(?: ; (?P<marker>.+?))?$"
)


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    marker: str | None
    hashes: frozenset[str]

    def applies(self) -> bool:
        """Whether this interpreter installs this pin (universal locks fork on markers)."""
        return self.marker is None or Marker(self.marker).evaluate()


def pins(name: str) -> list[Pin]:
    """The requirements of a uv/pip-compile file: `name==version [; marker]` plus hashes."""
    text = (REQUIREMENTS / name).read_text()
    found: list[Pin] = []
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        lines = [ln.strip().removesuffix("\\").strip() for ln in block.splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        if not lines:
            continue
        head = _PIN.match(lines[0])
        assert head, f"{name}: not an exact pin: {lines[0]!r}"
        hashes = frozenset(ln.removeprefix("--hash=") for ln in lines[1:])
        assert all(h.startswith("sha256:") for h in hashes), f"{name}: {lines}"
        found.append(
            Pin(canonicalize_name(head["name"]), Version(head["version"]), head["marker"], hashes)
        )
    return found


def applying(name: str) -> dict[str, Pin]:
    return {p.name: p for p in pins(name) if p.applies()}


def declared(*, test: bool) -> list[Requirement]:
    project = PYPROJECT["project"]
    reqs = list(project["dependencies"])
    if test:
        reqs += project["optional-dependencies"]["test"] + PYPROJECT["build-system"]["requires"]
    return [Requirement(r) for r in reqs]


def floor_of(req: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    return max(bounds) if bounds else None


@pytest.mark.parametrize("name", LOCKS)
def test_every_requirement_is_pinned_with_hashes(name: str) -> None:
    found = pins(name)
    assert found, name
    for pin in found:
        assert pin.hashes, f"{name}: {pin.name} has no hash"


def test_build_inputs_are_the_build_system_requires() -> None:
    lines = (REQUIREMENTS / "build.in").read_text().splitlines()
    listed = [ln for ln in lines if ln.strip() and not ln.startswith("#")]
    assert listed == PYPROJECT["build-system"]["requires"]


def test_the_lock_holds_every_declared_dependency_within_its_range() -> None:
    lock = applying("lock.txt")
    for req in declared(test=True):
        pin = lock.get(canonicalize_name(req.name))
        assert pin, f"{req.name} is declared but not locked: run `make lock`"
        assert req.specifier.contains(pin.version, prereleases=True), f"{req} vs {pin.version}"


def test_every_direct_dependency_has_a_floor() -> None:
    assert [str(r) for r in declared(test=True) if floor_of(r) is None] == []


def test_the_floor_lock_installs_each_declared_minimum() -> None:
    floor = applying("floor.txt")
    for req in declared(test=True):
        pin = floor.get(canonicalize_name(req.name))
        assert pin, f"{req.name} is not in floor.txt: run `make lock`"
        assert pin.version == floor_of(req), (
            f"{req} installs {pin.version} at the floor: raise the declared floor to it "
            "(something else needs it) or refresh the floor lock (`make lock`)"
        )


@pytest.mark.parametrize("name", ["runtime.txt", "build.txt", "uv.txt"])
def test_partial_locks_are_slices_of_the_lock(name: str) -> None:
    locked = {(p.name, p.version, p.hashes) for p in pins("lock.txt")}
    for pin in pins(name):  # markers may differ: a slice needs fewer packages unconditionally
        assert (pin.name, pin.version, pin.hashes) in locked, f"{name}: {pin.name} differs"


def test_the_image_lock_is_the_runtime_set() -> None:
    runtime = applying("runtime.txt")
    for req in declared(test=False):
        assert canonicalize_name(req.name) in runtime, req.name
    test_only = {"pytest", "moto", "mypy", "ruff", "uv", "setuptools", "hypothesis"}
    assert not test_only & set(runtime)
    assert set(applying("build.txt")) == {"setuptools"}
    assert set(applying("uv.txt")) == {"uv"}


def test_markers_of_the_universal_lock_are_evaluated() -> None:
    forked = [p for p in pins("lock.txt") if p.marker]
    assert any(p.name == "pywin32" and not p.applies() for p in forked)  # Linux and macOS
    by_name: dict[str, list[Pin]] = {}
    for pin in pins("lock.txt"):
        by_name.setdefault(pin.name, []).append(pin)
    for name, forks in by_name.items():
        if len(forks) > 1:  # a version fork (networkx by Python version): exactly one applies
            assert sum(p.applies() for p in forks) == 1, name
