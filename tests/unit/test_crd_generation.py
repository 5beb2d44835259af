"""The CRDs are generated from the models; the committed YAML must not drift."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from voicevault.crds import generate
from voicevault.crds.openapi import structural_schema
from voicevault.crds.recording import RecordingStatus


def test_committed_yaml_matches_the_models() -> None:
    assert generate.drifted() == [], "run `voicevault crds --write crds` and commit"
    assert generate.drifted(generate.CHART_CRD_DIR) == [], "the chart's CRDs drifted from crds/"


def test_drift_is_detected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    generate.write(tmp_path)
    victim = tmp_path / generate.KINDS[0].filename
    victim.write_text(victim.read_text().replace("maxLength: 64", "maxLength: 65"))
    assert generate.drifted(tmp_path) == [victim.name]
    check = subprocess.run(
        [sys.executable, "-m", "voicevault", "crds", "--check", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 1 and "out of date" in check.stderr


def _walk(node: object) -> list[dict[str, object]]:
    found = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found.extend(_walk(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_walk(value))
    return found


def test_schemas_are_structural() -> None:
    for kind in generate.KINDS:
        schema = generate.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for node in _walk(schema["properties"]["spec"]) + _walk(schema["properties"]["status"]):
            if "properties" in node or "items" in node:
                assert node.get("type") in ("object", "array"), node
            assert "$ref" not in node and "anyOf" not in node and "title" not in node
            assert not ("properties" in node and "additionalProperties" in node)


def test_status_has_no_defaults() -> None:
    assert all(
        "default" not in n for n in _walk(structural_schema(RecordingStatus, keep_defaults=False))
    )


def test_crds_command_prints_all_three() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "voicevault", "crds"], capture_output=True, text=True, check=True
    ).stdout
    assert out.count("kind: CustomResourceDefinition") == 3


def _undocumented(node: dict[str, Any], path: str) -> list[str]:
    """Every property below `node` (nested objects and list items too) without a description."""
    missing = []
    properties = node.get("properties")
    if isinstance(properties, dict):
        for name, child in properties.items():
            where = f"{path}.{name}"
            if not str(child.get("description") or "").strip():
                missing.append(where)
            missing.extend(_undocumented(child, where))
    items = node.get("items")
    if isinstance(items, dict):
        missing.extend(_undocumented(items, path + "[]"))
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        missing.extend(_undocumented(extra, path + "{}"))
    return missing


def test_every_field_has_a_description_for_kubectl_explain() -> None:
    missing: list[str] = []
    for kind in generate.KINDS:
        schema = generate.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert schema.get("description"), kind.kind
        # metadata is ObjectMeta: the apiserver refuses a description there and serves its own
        missing.extend(m for m in _undocumented(schema, kind.kind) if m != f"{kind.kind}.metadata")
    assert missing == [], f"fields without a description (kubectl explain shows none): {missing}"


def test_the_description_walk_finds_nested_gaps() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "description": "x", "properties": {"b": {"type": "string"}}},
            "c": {"type": "array", "description": "y", "items": {"properties": {"d": {}}}},
        },
    }
    assert _undocumented(schema, "K") == ["K.a.b", "K.c[].d"]
