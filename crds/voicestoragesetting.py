"""VoiceStorageSetting: the account's voice settings for external storage (one per namespace)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from voicevault.crds.awscredential import CREDENTIAL_SID
from voicevault.crds.meta import (
    DNS_SUBDOMAIN,
    Condition,
    KubeModel,
    LocalSecretKeyRef,
    cel_rule,
    conditions_field,
)

KIND = "VoiceStorageSetting"
PLURAL = "voicestoragesettings"
# The one setting of a namespace has this name, so which setting applies is never ambiguous.
SETTING_NAME = "default"
DEFAULT_OBJECT_KEY_TEMPLATE = "{accountSid}/{recordingSid}{ext}"
OBJECT_KEY_PLACEHOLDERS = (
    "accountSid",
    "recordingSid",
    "callSid",
    "conferenceSid",
    "startDate",
    "ext",
)


class CredentialRef(KubeModel):
    """An AwsCredential in the same namespace."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN, description="AwsCredential name.")
    namespace: str | None = Field(
        default=None,
        max_length=63,
        description="Must be empty or this setting's namespace: no cross-account credentials.",
    )


class ExternalStorage(KubeModel):
    """Where recordings go: the customer's bucket, as the seed describes it."""

    enabled: bool = Field(
        default=True,
        description="External storage on or off. Off: media stays on the node (platform default).",
    )
    bucket_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s?#]+$",
        description=(
            "Bucket URL, virtual-host style https://BUCKET.s3.REGION.amazonaws.com/key-path or "
            "path style https://s3.REGION.amazonaws.com/BUCKET/key-path; region and key path "
            "are optional. With endpointUrl, a URL on that endpoint (S3-compatible stores)."
        ),
    )
    endpoint_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^/\s?#]+/?$",
        description=(
            "Send S3 requests here instead of AWS (MinIO, Ceph, a VPC endpoint). Requests then "
            "use path-style addressing."
        ),
    )
    region: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Signing region; overrides the region in the URL. Default: from the URL.",
    )
    credential_ref: CredentialRef | None = Field(
        default=None, description="The AwsCredential of the upload user (same namespace)."
    )
    object_key_template: str = Field(
        default=DEFAULT_OBJECT_KEY_TEMPLATE,
        max_length=512,
        pattern=r"^[A-Za-z0-9{}._/=-]+$",
        description=(
            "Object key below the bucket URL's key path. Placeholders: "
            + ", ".join("{" + p + "}" for p in OBJECT_KEY_PLACEHOLDERS)
            + ". Must contain {recordingSid}."
        ),
        json_schema_extra={
            "x-kubernetes-validations": [
                cel_rule(
                    "self.contains('{recordingSid}')",
                    "objectKeyTemplate must contain {recordingSid} so keys are unique",
                    shows="self",
                ),
                cel_rule(
                    "!self.startsWith('/') && !self.contains('//')",
                    "objectKeyTemplate must be relative and have no empty segments",
                    shows="self",
                ),
            ]
        },
    )


class Encryption(KubeModel):
    """Encrypt every recording with the customer's RSA public key (Twilio rsa-aes)."""

    public_key: str = Field(
        max_length=16384,
        description=(
            "PEM-encoded RSA public key (2048 bits or more). Recordings are encrypted with a "
            "fresh AES-256-GCM key per recording, wrapped with this key (RSA-OAEP SHA-256)."
        ),
        json_schema_extra={
            "x-kubernetes-validations": [
                cel_rule(
                    "self.contains('-----BEGIN ')",
                    "publicKey must be a PEM block (-----BEGIN PUBLIC KEY-----)",
                    shows="self",
                    limit=30,
                )
            ]
        },
    )


class RetryPolicySpec(KubeModel):
    """How long transient failures are retried before the media is kept cached on its node."""

    window_seconds: int | None = Field(
        default=None,
        ge=1,
        le=7 * 24 * 3600,
        description=(
            "Retry window from the first failure. Default: the operator's "
            "--default-retry-window (chart value operator.defaultRetryWindowSeconds), "
            "7200 s (the seed's 2 hours) unless the platform changed it."
        ),
    )
    initial_backoff_seconds: int = Field(
        default=30, ge=1, le=3600, description="First delay between attempts."
    )
    max_backoff_seconds: int = Field(
        default=600, ge=1, le=24 * 3600, description="Longest delay between attempts."
    )


class StatusCallbackDefaults(KubeModel):
    """Where to POST the Twilio-style recording status callback, and how to sign it."""

    url: str = Field(
        max_length=2048,
        pattern=r"^https?://[^\s#]+$",
        description="Callback URL used when a Recording names none.",
    )
    signing_key_ref: LocalSecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret key whose value signs callbacks (X-Twilio-Signature, like an auth token). "
            "Unsigned when absent."
        ),
    )


class MetadataObject(KubeModel):
    """A JSON document written next to each media object: what Twilio keeps behind its API."""

    enabled: bool = Field(
        default=False,
        description=(
            "Write <object key>.json beside every new recording's media object: its SIDs, "
            "source, channels, track, start time, duration, the object's size and SHA-256, "
            "and the encryption details (never key material). Schema: "
            "docs/recording-metadata.schema.json."
        ),
    )


class VoiceStorageSettingSpec(KubeModel):
    """External storage, encryption, retry and callback settings of one account (namespace)."""

    external_storage: ExternalStorage = Field(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!self.enabled || (has(self.bucketUrl) && has(self.credentialRef))",
                    "message": "bucketUrl and credentialRef are required when enabled",
                },
                # only about http:// URLs: anything else already fails the bucketUrl pattern,
                # and one accurate message beats two
                cel_rule(
                    "!has(self.bucketUrl) || has(self.endpointUrl) || "
                    "!self.bucketUrl.startsWith('http://')",
                    "bucketUrl must use https unless endpointUrl is set",
                    # a URL with user info may carry a key: never echo it
                    shows="(self.bucketUrl.contains('@') ? 'http://...' : self.bucketUrl)",
                    limit=120,
                    field_path=".bucketUrl",
                ),
            ]
        }
    )
    encryption: Encryption | None = None
    retry: RetryPolicySpec = Field(
        default_factory=RetryPolicySpec,
        # an empty object by default, so the apiserver fills in and shows the backoff defaults
        json_schema_extra={"default": {}},
    )
    status_callback: StatusCallbackDefaults | None = None
    metadata_object: MetadataObject | None = Field(
        default=None,
        description="Metadata JSON beside the media (off when absent); new recordings only.",
    )


class ParsedBucket(KubeModel):
    """The bucket URL as the operator understood it."""

    bucket: str = Field(description="Bucket name.")
    region: str = Field(
        description=(
            "Region the bucket URL or spec region names; us-east-1 when neither names one "
            "(bucketRegion then says where the bucket is)."
        )
    )
    prefix: str = Field(description="Key path inside the bucket ('' for the root).")
    style: Literal["virtual", "path"] = Field(
        description="virtual: BUCKET.host/key; path: host/BUCKET/key (as the URL was written)."
    )
    endpoint_url: str | None = Field(
        default=None, description="The S3 endpoint used instead of AWS, when one is set."
    )


class VoiceStorageSettingStatus(KubeModel):
    """Parsed bucket, resolved credential and key, and validation against the bucket."""

    parsed: ParsedBucket | None = None
    bucket_region: str | None = Field(
        default=None,
        max_length=64,
        description=(
            "Region the bucket answered from at the last validation; recordings are signed "
            "for it. When the bucket URL names no region, this is how it is found."
        ),
    )
    credential_sid: str | None = Field(
        default=None,
        pattern=CREDENTIAL_SID,
        description="SID of the AwsCredential named by spec.externalStorage.credentialRef.",
    )
    public_key_sid: str | None = Field(
        default=None,
        pattern=CREDENTIAL_SID,
        description="SID of the encryption public key (CR + 32 hex, derived from the key).",
    )
    last_validation_time: datetime | None = Field(
        default=None, description="When the bucket was last checked with the upload user."
    )
    validated_generation: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="metadata.generation that lastValidationTime refers to."
    )
    observed_generation: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="metadata.generation the operator last acted on."
    )
    conditions: list[Condition] = conditions_field(
        "Ready: settings are complete and consistent. Validated: the bucket accepts uploads."
    )
