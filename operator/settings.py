"""VoiceStorageSetting: is the namespace's setting complete and consistent (Ready), and
does the bucket accept uploads from its credential (Validated)?

Pure. The settings controller validates the bucket with the seed policy's permissions
only (`uploader/s3calls.open_and_abort`: a multipart upload under the prefix, opened and
aborted, leaving nothing); these rules name its key and read its answer. Validation also
finds the bucket's region when the URL names none: the region the bucket answered from
is kept in `status.bucketRegion` and recordings are signed for it.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from pydantic import ValidationError

from voicevault.crds.recording import StorageSnapshot
from voicevault.crds.voicestoragesetting import VoiceStorageSettingSpec
from voicevault.operator.conditions import condition, find, merge_conditions
from voicevault.operator.config import DEFAULT_RETRY_WINDOW_SECONDS
from voicevault.uploader import envelope
from voicevault.uploader.bucketurl import (
    DEFAULT_REGION,
    BucketLocation,
    BucketUrlError,
    parse_bucket_url,
    region_mismatch,
)
from voicevault.uploader.errors import REGION_HINT_CODES, UploadError

VALIDATION_KEY_DIR = ".voicevault-validation"
# validation answers that say the configuration cannot work (not a passing outage): the
# setting is not Ready and its recordings wait, keeping their media
REFUSED = frozenset(
    {
        "AccessDenied",
        "NoSuchBucket",
        "UploadRejected",
        "CredentialUnusable",
        "RegionMismatch",
        "RegionUnknown",
    }
)


class Validation(NamedTuple):
    """The test upload's verdict, and the region the bucket answered from (if it did)."""

    ok: bool
    reason: str
    message: str
    region: str | None = None


@dataclass(frozen=True)
class CredentialView:
    """An AwsCredential as the settings and recordings controllers need it."""

    namespace: str
    name: str
    sid: str | None
    ready: bool
    message: str
    secret_name: str
    access_key_id_key: str
    secret_access_key_key: str
    session_token_key: str | None
    secret_version: str | None = None  # a new version of its Secret: validate again


@dataclass(frozen=True)
class SettingView:
    """The namespace's setting as a Recording sees it when it is created."""

    namespace: str
    generation: int
    spec: VoiceStorageSettingSpec | None
    location: BucketLocation | None
    public_key_sid: str | None
    ready: bool
    reason: str
    message: str
    default_window_seconds: int = DEFAULT_RETRY_WINDOW_SECONDS
    refused: bool = False  # the bucket refused this configuration's test upload

    @property
    def enabled(self) -> bool:
        return self.spec is not None and self.spec.external_storage.enabled

    def refuses(self, snapshot: StorageSnapshot | None) -> bool:
        """The configuration `snapshot` uploads with is the one the bucket refused."""
        if not self.refused or snapshot is None or self.spec is None or self.location is None:
            return False
        storage = self.spec.external_storage
        return (
            snapshot.bucket == self.location.bucket
            and snapshot.endpoint_url == storage.endpoint_url
            and storage.credential_ref is not None
            and snapshot.credential_name == storage.credential_ref.name
        )

    @property
    def retry_window_seconds(self) -> int:
        """The account's window, or the platform's default when the setting names none."""
        own = self.spec.retry.window_seconds if self.spec is not None else None
        return own if own is not None else self.default_window_seconds


@dataclass(frozen=True)
class SettingEvaluation:
    ready: bool
    reason: str
    message: str
    spec: VoiceStorageSettingSpec | None = None
    location: BucketLocation | None = None
    public_key_sid: str | None = None


def evaluate(
    namespace: str, raw_spec: dict[str, Any], credential: CredentialView | None
) -> SettingEvaluation:
    """Static checks, in the order a person would fix them."""
    try:
        spec = VoiceStorageSettingSpec.model_validate(raw_spec)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return SettingEvaluation(False, "InvalidSpec", f"spec.{where}: {first['msg']}")
    storage = spec.external_storage
    if not storage.enabled:
        return SettingEvaluation(True, "Disabled", "external storage is off", spec=spec)
    if storage.bucket_url is None or storage.credential_ref is None:
        # the CRD's CEL rule refuses this; an older CRD might not have
        return SettingEvaluation(
            False, "InvalidSpec", "bucketUrl and credentialRef are required when enabled", spec=spec
        )
    try:
        location = parse_bucket_url(
            storage.bucket_url, endpoint_url=storage.endpoint_url, region=storage.region
        )
    except BucketUrlError as exc:
        return SettingEvaluation(False, "InvalidBucketUrl", str(exc), spec=spec)
    problem = _cross_namespace(namespace, spec)
    if problem:
        return SettingEvaluation(False, "CrossNamespaceReference", problem, spec=spec)
    public_key_sid = None
    if spec.encryption is not None:
        try:
            public_key_sid = envelope.public_key_sid(
                envelope.load_public_key(spec.encryption.public_key)
            )
        except envelope.InvalidPublicKey as exc:
            return SettingEvaluation(False, "InvalidPublicKey", str(exc), spec=spec)
    ref_name = storage.credential_ref.name
    if credential is None:
        return SettingEvaluation(
            False, "CredentialNotFound", f"AwsCredential {ref_name!r} not found", spec=spec
        )
    if not credential.ready:
        return SettingEvaluation(
            False,
            "CredentialNotReady",
            f"AwsCredential {ref_name!r} is not ready: {credential.message}",
            spec=spec,
        )
    encrypted = f", encrypted with key {public_key_sid}" if public_key_sid else ""
    return SettingEvaluation(
        True,
        "Configured",
        f"uploads go to bucket {location.bucket!r} under {location.prefix or '/'!r}{encrypted}",
        spec=spec,
        location=location,
        public_key_sid=public_key_sid,
    )


def _cross_namespace(namespace: str, spec: VoiceStorageSettingSpec) -> str | None:
    ref = spec.external_storage.credential_ref
    if ref is not None and ref.namespace and ref.namespace != namespace:
        return (
            f"credentialRef.namespace {ref.namespace!r} is not allowed: a setting may only use "
            f"an AwsCredential in its own namespace {namespace!r}"
        )
    callback = spec.status_callback
    signing = callback.signing_key_ref if callback else None
    if signing is not None and signing.namespace and signing.namespace != namespace:
        return (
            f"statusCallback.signingKeyRef.namespace {signing.namespace!r} is not allowed: "
            f"the signing key must be a Secret in {namespace!r}"
        )
    return None


def refusal(
    validated: Validation | tuple[bool, str, str] | None, current: dict[str, Any], generation: int
) -> tuple[str, str] | None:
    """(reason, message) when the bucket refused this generation's configuration: from
    the check that just ran, else from the last one recorded for this generation."""
    if validated is not None:
        ok, reason, message = validated[:3]
        return (reason, message) if not ok and reason in REFUSED else None
    last = find(current.get("conditions"), "Validated")
    if (
        last is not None
        and current.get("validatedGeneration") == generation
        and last.get("status") == "False"
        and last.get("reason") in REFUSED
    ):
        return str(last["reason"]), str(last.get("message", ""))
    return None


def refused_evaluation(evaluation: SettingEvaluation, reason: str, why: str) -> SettingEvaluation:
    """A complete setting the bucket refused: not Ready, for the bucket's reason."""
    return SettingEvaluation(
        False,
        reason,
        f"the bucket refused the test upload: {why}; recordings wait, keeping their media",
        spec=evaluation.spec,
        location=evaluation.location,
        public_key_sid=evaluation.public_key_sid,
    )


def status_for(
    evaluation: SettingEvaluation,
    *,
    generation: int,
    credential: CredentialView | None,
    current: dict[str, Any],
    validated: Validation | None,
    validation_time: datetime | None,
    now: datetime,
    refused: SettingEvaluation | None = None,
    signing: tuple[bool, str, str] | None = None,
) -> dict[str, Any]:
    """The complete desired status. `validated` is None when no check ran this time;
    `refused` is the Ready verdict when the bucket refused the configuration; `signing`
    is whether callbacks can be signed (None: no signing key is named)."""
    location = evaluation.location
    ready = refused or evaluation
    updates = [condition("Ready", ready.ready, ready.reason, ready.message, now, generation)]
    if signing is not None:
        updates.append(condition("CallbackSigning", *signing, now, generation))
    if validated is not None:
        ok, reason, message = validated[:3]
        updates.append(condition("Validated", ok, reason, message, now, generation))
    elif not evaluation.ready or location is None:
        reason = "Disabled" if evaluation.reason == "Disabled" else "NotReady"
        updates.append(
            condition(
                "Validated",
                "Unknown" if reason == "NotReady" else False,
                reason,
                "not validated: " + evaluation.message,
                now,
                generation,
            )
        )
    status: dict[str, Any] = {
        "parsed": (
            {
                "bucket": location.bucket,
                "region": location.named_region or DEFAULT_REGION,
                "prefix": location.prefix,
                "style": location.style,
                "endpointUrl": location.endpoint_url,
            }
            if location
            else None
        ),
        "bucketRegion": known_region(validated, current, generation) if location else None,
        "credentialSid": credential.sid if credential and evaluation.ready and location else None,
        "publicKeySid": evaluation.public_key_sid,
        "lastValidationTime": (
            validation_time.strftime("%Y-%m-%dT%H:%M:%SZ")
            if validation_time
            else current.get("lastValidationTime")
        ),
        "validatedGeneration": generation
        if validated is not None
        else current.get("validatedGeneration"),
        "observedGeneration": generation,
        "conditions": [
            c
            for c in merge_conditions(current.get("conditions") or [], updates)
            if signing is not None or c.get("type") != "CallbackSigning"
        ],
    }
    return status


def validation_due(
    current: dict[str, Any], generation: int, now: datetime, interval_s: float
) -> bool:
    """Validate on a new generation, when never validated, or every `interval_s`."""
    if (
        current.get("validatedGeneration") != generation
        or find(current.get("conditions"), "Validated") is None
    ):
        return True
    last = current.get("lastValidationTime")
    if not last:
        return True
    elapsed = (now - datetime.fromisoformat(last.replace("Z", "+00:00"))).total_seconds()
    return elapsed >= interval_s


def known_region(
    validated: Validation | None, current: dict[str, Any], generation: int
) -> str | None:
    """The bucket's region: from the check that just ran, else as recorded for this
    generation (a new generation may point at another bucket, and is validated first)."""
    if validated is not None and validated.region:
        return validated.region
    recorded = current.get("bucketRegion")
    if current.get("validatedGeneration") == generation and isinstance(recorded, str):
        return recorded or None
    return None


def located(
    evaluation: SettingEvaluation,
    validated: Validation | None,
    current: dict[str, Any],
    generation: int,
) -> SettingEvaluation:
    """The evaluation signing for the bucket's own region, when the URL names none.

    `mediaUrl` keeps the customer's form: only the signing region changes.
    """
    location = evaluation.location
    region = known_region(validated, current, generation)
    if location is None or location.named_region is not None or region in (None, location.region):
        return evaluation
    return dataclasses.replace(evaluation, location=dataclasses.replace(location, region=region))


def validation_key(location: BucketLocation) -> str:
    """A fresh key under the prefix for the test upload (opened and aborted at once)."""
    return f"{location.prefix}{VALIDATION_KEY_DIR}/{uuid.uuid4().hex}"


def validation_passed(location: BucketLocation, region: str) -> Validation:
    """The verdict on a test upload the bucket accepted, answering from `region` (botocore
    follows a wrong-region answer that names the region: where it ended up signing is the
    bucket's region)."""
    mismatch = region_mismatch(location, region)
    if mismatch is not None:
        return Validation(False, "RegionMismatch", mismatch, region)
    found = f" (region {region!r}, found from its answer)" if region != location.region else ""
    return Validation(
        True,
        "BucketAcceptsUploads",
        f"opened and aborted a test upload in {location.bucket!r}{found}",
        region,
    )


def validation_failure(error: UploadError, location: BucketLocation) -> Validation:
    """The verdict on a test upload the bucket refused or never answered."""
    if error.s3_code in REGION_HINT_CODES:
        form = "" if location.endpoint_url else " (https://BUCKET.s3.REGION.amazonaws.com/...)"
        return Validation(
            False,
            "RegionUnknown",
            f"{error.message} (error {int(error.code)}): requests signed for region "
            f"{location.region!r} were refused and the bucket's region could not be found; "
            f"name it in bucketUrl{form} or in spec.externalStorage.region",
        )
    reason = {
        16112: "AccessDenied",
        16111: "BucketUnreachable" if not error.fatal else "UploadRejected",
    }.get(int(error.code), "ValidationFailed")
    if error.s3_code == "NoSuchBucket":
        reason = "NoSuchBucket"
    return Validation(False, reason, f"{error.message} (error {int(error.code)})")
