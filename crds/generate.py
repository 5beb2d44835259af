"""Generate the CustomResourceDefinitions from the pydantic models.

The committed YAML in `crds/` and the Helm chart are outputs of this module; a test
fails when they drift from the models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from voicevault import API_GROUP, API_VERSION
from voicevault.crds import awscredential, recording, voicestoragesetting
from voicevault.crds.meta import cel_rule
from voicevault.crds.openapi import structural_schema

CATEGORY = "voicevault"
CRD_DIR = Path(__file__).resolve().parent
# the Helm chart installs the same files from its own crds/ folder
CHART_CRD_DIR = CRD_DIR.parent / "charts" / "voicevault" / "crds"


API_VERSION_DESCRIPTION = f"{API_GROUP}/{API_VERSION}: the API group and version of this schema."
KIND_DESCRIPTION = "The resource kind, as named in this CRD."


def _ready(type_: str) -> str:
    return f'.status.conditions[?(@.type=="{type_}")].status'


@dataclass(frozen=True)
class Kind:
    """Everything about one resource kind that is not in its spec and status models."""

    kind: str
    plural: str
    short_names: list[str]
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    columns: list[dict[str, Any]]
    root_rules: list[dict[str, str]] = field(default_factory=list)

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{API_GROUP}"

    @property
    def filename(self) -> str:
        return f"{self.crd_name}.yaml"


KINDS: tuple[Kind, ...] = (
    Kind(
        kind=awscredential.KIND,
        plural=awscredential.PLURAL,
        short_names=["awscred", "awscreds"],
        spec=awscredential.AwsCredentialSpec,
        status=awscredential.AwsCredentialStatus,
        description=(
            "An AWS access key for uploads (the seed's AWS Credential, SID CR...). The key "
            "itself stays in a Secret of the same namespace; this resource only names it."
        ),
        columns=[
            {"name": "SID", "type": "string", "jsonPath": ".status.sid"},
            {"name": "Key", "type": "string", "jsonPath": ".status.accessKeyIdSuffix"},
            {"name": "Ready", "type": "string", "jsonPath": _ready("Ready")},
            {
                "name": "Reason",
                "type": "string",
                "priority": 1,
                "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
            },
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    ),
    Kind(
        kind=voicestoragesetting.KIND,
        plural=voicestoragesetting.PLURAL,
        short_names=["vss", "voicesettings"],
        spec=voicestoragesetting.VoiceStorageSettingSpec,
        status=voicestoragesetting.VoiceStorageSettingStatus,
        description=(
            "The voice recording storage settings of one account (namespace). There is one "
            "per namespace, named 'default'; recordings snapshot it when they are created."
        ),
        columns=[
            {"name": "Enabled", "type": "boolean", "jsonPath": ".spec.externalStorage.enabled"},
            {"name": "Bucket", "type": "string", "jsonPath": ".status.parsed.bucket"},
            {"name": "Prefix", "type": "string", "jsonPath": ".status.parsed.prefix"},
            {
                "name": "Key SID",
                "type": "string",
                "priority": 1,
                "jsonPath": ".status.publicKeySid",
            },
            {"name": "Ready", "type": "string", "jsonPath": _ready("Ready")},
            {"name": "Validated", "type": "string", "jsonPath": _ready("Validated")},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        root_rules=[
            cel_rule(
                f"self.metadata.name == '{voicestoragesetting.SETTING_NAME}'",
                "a VoiceStorageSetting must be named 'default': "
                "there is exactly one per namespace (account)",
                shows="self.metadata.name",
            )
        ],
    ),
    Kind(
        kind=recording.KIND,
        plural=recording.PLURAL,
        short_names=["rec", "recs"],
        spec=recording.RecordingSpec,
        status=recording.RecordingStatus,
        description=(
            "One call recording whose media sits on a node, and its upload into the account's "
            "bucket. Delete it to remove the metadata; the stored object is the customer's."
        ),
        columns=[
            {"name": "SID", "type": "string", "priority": 1, "jsonPath": ".status.sid"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Reason", "type": "string", "jsonPath": ".status.reason"},
            {"name": "Node", "type": "string", "jsonPath": ".spec.nodeName"},
            {"name": "Attempts", "type": "integer", "priority": 1, "jsonPath": ".status.attempts"},
            {"name": "Error", "type": "integer", "jsonPath": ".status.errorCode"},
            # a full object URL is ~150 characters: only in `kubectl get -o wide`
            {"name": "Media URL", "type": "string", "priority": 1, "jsonPath": ".status.mediaUrl"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    ),
)


def crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind, as a dict ready for YAML."""
    spec_schema = structural_schema(kind.spec, keep_defaults=True)
    root: dict[str, Any] = {
        "type": "object",
        "description": kind.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": API_VERSION_DESCRIPTION},
            "kind": {"type": "string", "description": KIND_DESCRIPTION},
            # the apiserver refuses anything here but name/generateName; kubectl explain
            # shows Kubernetes' own ObjectMeta documentation
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": structural_schema(kind.status, keep_defaults=False),
        },
    }
    if kind.root_rules:
        root["x-kubernetes-validations"] = kind.root_rules
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name,
            "labels": {
                "app.kubernetes.io/name": "voicevault",
                "app.kubernetes.io/part-of": "voicevault",
            },
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": kind.short_names,
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": kind.columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


HEADER = "# Generated by `voicevault crds` from the models in crds/*.py. Do not edit.\n"


def render(kind: Kind) -> str:
    """YAML text of one CRD, stable byte for byte."""
    body = yaml.safe_dump(crd(kind), sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def render_all() -> str:
    """All CRDs as one multi-document YAML stream."""
    return "---\n".join(render(k) for k in KINDS)


def write(directory: Path = CRD_DIR) -> list[Path]:
    """Write one file per kind; returns the paths written."""
    paths = []
    for kind in KINDS:
        path = directory / kind.filename
        path.write_text(render(kind), encoding="utf-8")
        paths.append(path)
    return paths


def drifted(directory: Path = CRD_DIR) -> list[str]:
    """Files in `directory` that differ from what the models generate."""
    return [
        k.filename
        for k in KINDS
        if not (directory / k.filename).is_file()
        or (directory / k.filename).read_text(encoding="utf-8") != render(k)
    ]
