"""AwsCredential: the seed's "AWS Credential", pointing at a Secret in its own namespace."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from voicevault.crds.meta import DNS_SUBDOMAIN, SECRET_KEY, Condition, KubeModel, conditions_field

KIND = "AwsCredential"
PLURAL = "awscredentials"
CREDENTIAL_SID = r"^CR[0-9a-f]{32}$"


class AwsSecretRef(KubeModel):
    """The Secret holding the IAM user's access key. Only its name is stored here, never a value."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the Secret.")
    namespace: str | None = Field(
        default=None,
        max_length=63,
        description=(
            "Must be empty or equal to this credential's namespace: a credential may only "
            "use a Secret of its own namespace (account)."
        ),
    )
    access_key_id_key: str = Field(
        default="AWS_ACCESS_KEY_ID",
        max_length=253,
        pattern=SECRET_KEY,
        description="Key in the Secret that holds the access key id.",
    )
    secret_access_key_key: str = Field(
        default="AWS_SECRET_ACCESS_KEY",
        max_length=253,
        pattern=SECRET_KEY,
        description="Key in the Secret that holds the secret access key.",
    )
    session_token_key: str | None = Field(
        default=None,
        max_length=253,
        pattern=SECRET_KEY,
        description="Optional key holding a session token (temporary credentials).",
    )


class AwsCredentialSpec(KubeModel):
    """Which Secret holds the access key id and secret access key of the upload user."""

    friendly_name: str | None = Field(
        default=None, max_length=64, description="A name for people; not used by the operator."
    )
    secret_ref: AwsSecretRef


class AwsCredentialStatus(KubeModel):
    """What the operator found. Never contains a secret value."""

    sid: str | None = Field(
        default=None,
        pattern=CREDENTIAL_SID,
        description="Credential SID (CR + 32 hex), assigned once and never changed.",
    )
    access_key_id_suffix: str | None = Field(
        default=None,
        max_length=4,
        description="The last 4 characters of the access key id, to tell keys apart.",
    )
    secret_version: str | None = Field(
        default=None,
        description="resourceVersion of the Secret last checked; a change triggers a re-check.",
    )
    observed_generation: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="metadata.generation the operator last acted on."
    )
    conditions: list[Condition] = conditions_field("Ready: the Secret exists with both keys.")
