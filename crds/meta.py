"""Building blocks shared by the three resources: base model, conditions, references."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from voicevault import API_GROUP, API_VERSION

API = f"{API_GROUP}/{API_VERSION}"

# Kubernetes object names: RFC 1123 DNS subdomain (Secrets, Nodes) and label (namespaces).
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"  # noqa: S105 - a pattern, not a secret

ConditionStatus = Literal["True", "False", "Unknown"]


class KubeModel(BaseModel):
    """Base for every spec and status model: camelCase on the wire, snake_case in Python.

    Unknown fields are ignored, never an error: the apiserver prunes them anyway, and an
    operator must keep working while a newer CRD adds fields it does not know yet.
    """

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=False
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict the apiserver stores (camelCase, unset fields omitted)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Condition(KubeModel):
    """A condition in the style of Kubernetes API conventions and cert-manager."""

    type: str = Field(
        min_length=1,
        max_length=316,
        pattern=r"^[A-Za-z][A-Za-z0-9]*$",
        description="What the condition is about, in CamelCase (Ready, Validated, Stored...).",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Why the status is what it is, as one CamelCase word (for tools and alerts).",
    )
    message: str = Field(
        default="", max_length=32768, description="The same, in a sentence for people."
    )
    last_transition_time: datetime = Field(description="When status last changed.")
    observed_generation: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="metadata.generation of the resource when this was decided."
    )


def cel_rule(
    rule: str,
    message: str,
    *,
    shows: str | None = None,
    limit: int = 80,
    field_path: str | None = None,
) -> dict[str, Any]:
    """An x-kubernetes-validations rule whose message quotes the value the user wrote.

    The apiserver prints a failed rule as `Invalid value: "string": <message>`: the type,
    not the value. `shows` (a CEL expression, usually `self`) puts the value, cut to
    `limit` characters, into the message; `message` stays the fallback. `field_path`
    (".child") names the field at fault when the rule sits on its parent.
    """
    out: dict[str, Any] = {"rule": rule, "message": message}
    if shows is not None:
        cut = f"({shows}.size() > {limit} ? {shows}.substring(0, {limit}) + '...' : {shows})"
        out["messageExpression"] = f'{json.dumps(message + ", got ")} + "\'" + {cut} + "\'"'
    if field_path is not None:
        out["fieldPath"] = field_path
    return out


def conditions_field(description: str) -> Any:
    """A `conditions` list that server-side apply merges by `type`."""
    return Field(
        default_factory=list,
        description=description,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )


class LocalSecretKeyRef(KubeModel):
    """A key of a Secret in the same namespace as the resource that names it."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the Secret.")
    key: str = Field(max_length=253, pattern=SECRET_KEY, description="Key inside the Secret.")
    namespace: str | None = Field(
        default=None,
        max_length=63,
        description=(
            "Accepted only so that a cross-namespace reference is refused with a clear "
            "condition: a Secret must live in the same namespace as the resource."
        ),
    )
