"""Admission decisions: refuse at apply time what the operator would refuse later anyway,
and give a new Recording the operator's finalizer at its create.

Pure: an AdmissionReview request in, a response out, no I/O. The checks call the same
parsers the operator and the uploader use (the bucket URL parser, the public key check,
the retry policy), so a refusal carries the very message the setting's condition would
have shown, with the values as the user wrote them. Recordings are never judged: the
mutating route allows every one, and only adds the finalizer that the operator would
otherwise write with a request of its own.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from voicevault.crds import awscredential, recording_names, voicestoragesetting
from voicevault.crds.awscredential import AwsCredentialSpec
from voicevault.crds.voicestoragesetting import VoiceStorageSettingSpec
from voicevault.operator.config import DEFAULT_RETRY_WINDOW_SECONDS
from voicevault.operator.retrypolicy import RetryPolicy
from voicevault.uploader import envelope
from voicevault.uploader.bucketurl import (
    BucketLocation,
    BucketUrlError,
    parse_bucket_url,
    region_mismatch,
)

__all__ = [
    "ROUTES",
    "Decision",
    "decide",
    "finalizer_patch",
    "mutation_response",
    "review_response",
]

ADMISSION_VERSION = "admission.k8s.io/v1"
JUDGED_KINDS = (awscredential.KIND, voicestoragesetting.KIND)
COUNTED_KINDS = (*JUDGED_KINDS, recording_names.KIND)
_USERINFO_RE = re.compile(r"(?<=://)[^/@]*@")
_PEM_BEGIN_RE = re.compile(r"-----BEGIN [A-Z0-9 ]{1,40}-----")
_Spec = TypeVar("_Spec", bound=BaseModel)


@dataclass(frozen=True)
class Decision:
    """Allowed, or refused with one message per problem (in the order to fix them)."""

    problems: tuple[str, ...] = field(default=())

    @property
    def allowed(self) -> bool:
        return not self.problems

    @property
    def message(self) -> str:
        return "; ".join(self.problems)


def decide(request: dict[str, Any]) -> Decision:
    """Judge one AdmissionReview `request` (CREATE or UPDATE of a setting or credential)."""
    kind = _mapping(request.get("kind")).get("kind")
    if kind not in JUDGED_KINDS or request.get("operation") not in ("CREATE", "UPDATE"):
        return Decision()  # not ours to judge: never refuse what we do not know
    obj = _mapping(request.get("object"))
    spec = obj.get("spec")
    old = _mapping(request.get("oldObject"))
    if request.get("operation") == "UPDATE" and spec == old.get("spec"):
        # labels, annotations, finalizers: never blocked, even on an object that predates
        # the webhook and would not pass it
        return Decision()
    namespace = str(request.get("namespace") or _mapping(obj.get("metadata")).get("namespace"))
    if not isinstance(spec, dict):
        return Decision(("spec is required",))
    if kind == voicestoragesetting.KIND:
        status = _mapping(old.get("status")) if request.get("operation") == "UPDATE" else {}
        return Decision(tuple(setting_problems(namespace, spec, status)))
    return Decision(tuple(credential_problems(namespace, spec)))


def review_response(review: dict[str, Any]) -> dict[str, Any]:
    """The AdmissionReview to send back for `review` (same uid, v1)."""
    request = _mapping(review.get("request"))
    decision = decide(request)
    response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": decision.allowed}
    if not decision.allowed:
        response["status"] = {
            "code": 422,
            "reason": "Invalid",
            "message": decision.message,
        }
    return {"apiVersion": ADMISSION_VERSION, "kind": "AdmissionReview", "response": response}


def finalizer_patch(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSONPatch that gives a Recording being created the operator's finalizer.

    Empty when there is nothing to add: not a Recording's CREATE, the finalizer already
    there, or metadata the API server would not have decoded (hostile input).
    """
    kind = _mapping(request.get("kind")).get("kind")
    if kind != recording_names.KIND or request.get("operation") != "CREATE":
        return []
    metadata = _mapping(request.get("object")).get("metadata")
    if not isinstance(metadata, dict):
        return []
    finalizers = metadata.get("finalizers")
    if finalizers is None:
        return [{"op": "add", "path": "/metadata/finalizers", "value": [recording_names.FINALIZER]}]
    if not isinstance(finalizers, list) or recording_names.FINALIZER in finalizers:
        return []
    return [{"op": "add", "path": "/metadata/finalizers/-", "value": recording_names.FINALIZER}]


def mutation_response(review: dict[str, Any]) -> dict[str, Any]:
    """The AdmissionReview to send back for a Recording's create: always allowed."""
    request = _mapping(review.get("request"))
    response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": True}
    patch = finalizer_patch(request)
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"apiVersion": ADMISSION_VERSION, "kind": "AdmissionReview", "response": response}


# the webhook's HTTPS paths, each with the answer for a review sent to it
ROUTES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "/validate": review_response,
    "/mutate": mutation_response,
}


def summary(review: dict[str, Any]) -> dict[str, str]:
    """What to log and count about a review: its kind (a bounded label) and object."""
    request = _mapping(review.get("request"))
    kind = _mapping(request.get("kind")).get("kind")
    return {
        "kind": kind if kind in COUNTED_KINDS else "other",
        "namespace": str(request.get("namespace") or ""),
        "object": str(request.get("name") or ""),
        "operation": str(request.get("operation") or ""),
    }


def _mapping(value: object) -> dict[str, Any]:
    """A JSON object of the review, or an empty one for anything else (hostile input)."""
    return value if isinstance(value, dict) else {}


# --- VoiceStorageSetting ------------------------------------------------------------------


def setting_problems(
    namespace: str, raw: dict[str, Any], old_status: dict[str, Any] | None = None
) -> list[str]:
    """`old_status`: the status of the setting being updated, whose `bucketRegion` says
    where its bucket answered from."""
    spec = _model(VoiceStorageSettingSpec, raw)
    if isinstance(spec, str):
        return [spec]
    problems: list[str] = []
    storage = spec.external_storage
    if storage.enabled and storage.bucket_url is not None:
        try:
            location = parse_bucket_url(
                storage.bucket_url, endpoint_url=storage.endpoint_url, region=storage.region
            )
        except BucketUrlError as exc:
            problems.append(f"{_as_written(storage)}: {exc}")
        else:
            mismatch = _known_region_mismatch(location, old_status or {})
            if mismatch is not None:
                problems.append(f"{_as_written(storage)}: {mismatch}")
    ref = storage.credential_ref
    if ref is not None and ref.namespace and ref.namespace != namespace:
        problems.append(
            f"spec.externalStorage.credentialRef.namespace {ref.namespace!r}: a setting may "
            f"only use an AwsCredential in its own namespace {namespace!r}"
        )
    callback = spec.status_callback
    signing = callback.signing_key_ref if callback else None
    if signing is not None and signing.namespace and signing.namespace != namespace:
        problems.append(
            f"spec.statusCallback.signingKeyRef.namespace {signing.namespace!r}: the signing "
            f"key must be a Secret in {namespace!r}"
        )
    if spec.encryption is not None:
        try:
            envelope.load_public_key(spec.encryption.public_key)
        except envelope.InvalidPublicKey as exc:
            problems.append(
                f"spec.encryption.publicKey{_pem_kind(spec.encryption.public_key)}: {exc}"
            )
    retry = spec.retry
    try:
        RetryPolicy(
            window=timedelta(seconds=retry.window_seconds or DEFAULT_RETRY_WINDOW_SECONDS),
            initial_backoff=timedelta(seconds=retry.initial_backoff_seconds),
            max_backoff=timedelta(seconds=retry.max_backoff_seconds),
        )
    except ValueError:
        problems.append(
            f"spec.retry: maxBackoffSeconds {retry.max_backoff_seconds} must be at least "
            f"initialBackoffSeconds {retry.initial_backoff_seconds}"
        )
    return problems


def _known_region_mismatch(location: BucketLocation, old_status: dict[str, Any]) -> str | None:
    """A named region that contradicts where this very bucket answered from before."""
    parsed = _mapping(old_status.get("parsed"))
    answered = old_status.get("bucketRegion")
    if (
        not isinstance(answered, str)
        or parsed.get("bucket") != location.bucket
        or parsed.get("endpointUrl") != location.endpoint_url
    ):
        return None
    problem = region_mismatch(location, answered)
    if problem is None:
        return None
    return (
        f"{problem} (found at its last validation; if the bucket has moved since, leave the "
        "region out and the next validation finds it)"
    )


def _as_written(storage: voicestoragesetting.ExternalStorage) -> str:
    """`bucketUrl 'X' (endpointUrl 'Y', region 'Z')` as the user wrote them, minus passwords."""
    overrides = [
        f"{name} {_redacted(value)!r}"
        for name, value in (("endpointUrl", storage.endpoint_url), ("region", storage.region))
        if value is not None
    ]
    tail = f" ({', '.join(overrides)})" if overrides else ""
    return f"spec.externalStorage.bucketUrl {_redacted(storage.bucket_url or '')!r}{tail}"


def _redacted(url: str) -> str:
    """A URL with any user name or password replaced: refusals are logged and audited."""
    return _USERINFO_RE.sub("***@", url)


def _pem_kind(pem: str) -> str:
    """The PEM's BEGIN line as written (never the key itself, never a private key's)."""
    match = _PEM_BEGIN_RE.search(pem)
    if match is None or "PRIVATE" in match.group(0):
        return ""
    return f" ({match.group(0)!r} block)"


# --- AwsCredential ------------------------------------------------------------------------


def credential_problems(namespace: str, raw: dict[str, Any]) -> list[str]:
    spec = _model(AwsCredentialSpec, raw)
    if isinstance(spec, str):
        return [spec]
    ref = spec.secret_ref
    problems: list[str] = []
    if ref.namespace and ref.namespace != namespace:
        problems.append(
            f"spec.secretRef.namespace {ref.namespace!r}: a credential may only use a Secret "
            f"in its own namespace {namespace!r}"
        )
    keys = [
        ("accessKeyIdKey", ref.access_key_id_key),
        ("secretAccessKeyKey", ref.secret_access_key_key),
        ("sessionTokenKey", ref.session_token_key),
    ]
    seen: dict[str, str] = {}
    for name, key in keys:
        if key is None:
            continue
        if key in seen:
            problems.append(
                f"spec.secretRef.{name} {key!r} is also {seen[key]}: each value needs its "
                "own key in the Secret"
            )
        else:
            seen[key] = name
    return problems


def _model(model: type[_Spec], raw: dict[str, Any]) -> _Spec | str:
    """The parsed spec, or the first schema error as `spec.<path>: <message>`."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"spec.{where}: {first['msg']}"
