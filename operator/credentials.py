"""AwsCredential: check that its Secret (same namespace) holds an access key.

`evaluate` is pure: the handler reads the Secret and passes what it found. Only the
last four characters of the access key id ever leave this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from voicevault.crds.awscredential import AwsCredentialSpec
from voicevault.operator.conditions import condition, merge_conditions
from voicevault.operator.sids import credential_sid


@dataclass(frozen=True)
class SecretSnapshot:
    """What the handler learned about the Secret, without keeping the secret values."""

    resource_version: str
    present_keys: frozenset[str]  # keys with a non-empty value
    access_key_id_suffix: str | None


@dataclass(frozen=True)
class CredentialEvaluation:
    ready: bool
    reason: str
    message: str
    status: dict[str, Any]  # the complete desired status


def evaluate(
    *,
    namespace: str,
    uid: str,
    generation: int,
    spec: dict[str, Any],
    secret: SecretSnapshot | None,
    current_status: dict[str, Any],
    now: datetime,
) -> CredentialEvaluation:
    ready, reason, message, suffix, version = _check(namespace, spec, secret)
    status: dict[str, Any] = {
        "sid": current_status.get("sid") or credential_sid(uid),
        "accessKeyIdSuffix": suffix,
        "secretVersion": version,
        "observedGeneration": generation,
        "conditions": merge_conditions(
            current_status.get("conditions") or [],
            [condition("Ready", ready, reason, message, now, generation)],
        ),
    }
    return CredentialEvaluation(ready, reason, message, status)


def _check(
    namespace: str, raw_spec: dict[str, Any], secret: SecretSnapshot | None
) -> tuple[bool, str, str, str | None, str | None]:
    try:
        spec = AwsCredentialSpec.model_validate(raw_spec)
    except ValidationError as exc:
        return False, "InvalidSpec", f"spec is invalid: {exc.error_count()} errors", None, None
    ref = spec.secret_ref
    if ref.namespace and ref.namespace != namespace:
        return (
            False,
            "CrossNamespaceReference",
            f"secretRef.namespace {ref.namespace!r} is not allowed: a credential may only use "
            f"a Secret in its own namespace {namespace!r}",
            None,
            None,
        )
    if secret is None:
        return (
            False,
            "SecretNotFound",
            f"Secret {ref.name!r} not found in {namespace!r}",
            None,
            None,
        )
    wanted = [ref.access_key_id_key, ref.secret_access_key_key]
    missing = [k for k in wanted if k not in secret.present_keys]
    if missing:
        return (
            False,
            "SecretKeyMissing",
            f"Secret {ref.name!r} has no (or an empty) {', '.join(repr(k) for k in missing)}; "
            f"it has {sorted(secret.present_keys) or 'no keys'}",
            None,
            secret.resource_version,
        )
    return (
        True,
        "SecretFound",
        f"access key …{secret.access_key_id_suffix} from Secret {ref.name!r}",
        secret.access_key_id_suffix,
        secret.resource_version,
    )


def snapshot_secret(
    resource_version: str, data: dict[str, bytes], access_key_id_key: str
) -> SecretSnapshot:
    """Reduce a Secret's decoded data to what `evaluate` may see."""
    key_id = data.get(access_key_id_key, b"").decode("utf-8", errors="replace").strip()
    return SecretSnapshot(
        resource_version=resource_version,
        present_keys=frozenset(k for k, v in data.items() if v.strip()),
        access_key_id_suffix=key_id[-4:] if key_id else None,
    )
