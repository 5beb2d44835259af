"""Object bodies as the operator keeps them: plain dicts, without what it never reads."""

from __future__ import annotations

from typing import Any

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def plain(body: Any) -> Any:
    """A kopf body (read-only views) as plain dicts and lists."""
    if isinstance(body, dict) or hasattr(body, "items"):
        return {k: plain(v) for k, v in body.items()}
    if isinstance(body, list | tuple):
        return [plain(v) for v in body]
    return body


def slim(body: Any) -> dict[str, Any]:
    """`plain(body)` without managedFields and kubectl's last-applied copy of the object.

    Those two are often most of a Recording's bytes, and no rule reads them; the operator
    can hold thousands of bodies at once (waiting work, waiting for a setting).
    """
    out: dict[str, Any] = {k: plain(v) for k, v in body.items() if k != "metadata"}
    meta = body.get("metadata")
    if meta is not None:
        out["metadata"] = {k: plain(v) for k, v in meta.items() if k != "managedFields"}
        annotations = out["metadata"].get("annotations")
        if annotations and LAST_APPLIED in annotations:
            del annotations[LAST_APPLIED]
    return out


def same_status(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal as the apiserver would store them (None means absent)."""
    return {k: v for k, v in a.items() if v is not None} == {
        k: v for k, v in b.items() if v is not None
    }
