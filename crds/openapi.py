"""Turn pydantic's JSON Schema into a Kubernetes structural OpenAPI v3 schema.

The apiserver accepts only structural schemas: every node has a type, no `$ref`, no
`anyOf` with types, no `additionalProperties` beside `properties`. pydantic gives us
JSON Schema, so this module inlines definitions, turns `X | None` into an optional `X`,
and drops what Kubernetes does not understand (titles, null defaults).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_DROP = frozenset({"title", "additionalProperties", "$defs"})


def structural_schema(model: type[BaseModel], *, keep_defaults: bool) -> dict[str, Any]:
    """The structural schema of `model` (camelCase field names).

    `keep_defaults`: the apiserver fills defaults in on write. Right for spec fields (a
    user sees the effective value), wrong for status, which only the operator writes.
    """
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions: dict[str, Any] = raw.get("$defs", {})
    return _convert(raw, definitions, keep_defaults)


def _convert(node: dict[str, Any], defs: dict[str, Any], keep_defaults: bool) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _convert(merged, defs, keep_defaults)
    if "anyOf" in node:
        return _convert(_without_null(node), defs, keep_defaults)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "default" and (value is None or not keep_defaults)):
            continue
        if key == "properties":
            out[key] = {k: _convert(v, defs, keep_defaults) for k, v in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, keep_defaults)
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = _enum_type(out["enum"])
    if "properties" in out:
        out["type"] = "object"
    if out.get("type") == "object" and "properties" not in out:
        # a free-form map (dict[str, str]) in pydantic terms
        out["additionalProperties"] = _convert(
            node.get("additionalProperties") or {"type": "string"}, defs, keep_defaults
        )
    if "required" in out and not out["required"]:
        del out["required"]
    return out


def _without_null(node: dict[str, Any]) -> dict[str, Any]:
    """`X | None` is an optional X in Kubernetes: absent, not null."""
    options = [o for o in node["anyOf"] if o.get("type") != "null"]
    if len(options) != 1:
        raise ValueError(f"only `X | None` unions are structural, got {node['anyOf']!r}")
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    return {**options[0], **rest}


def _enum_type(values: list[Any]) -> str:
    if all(isinstance(v, str) for v in values):
        return "string"
    if all(isinstance(v, bool) for v in values):
        return "boolean"
    if all(isinstance(v, int) for v in values):
        return "integer"
    raise ValueError(f"enum values of mixed types: {values!r}")
