"""The contract between the operator and an uploader pod: what to do, and what happened.

The operator writes a `BatchSpec` (plus one credential file per AwsCredential) into a
Secret it owns and mounts into the pod. The pod answers with a `BatchOutcome` in its
termination message, so the operator learns every result even when a status patch
failed or the API was unreachable. The error codes both ends speak and the encryption
details the pod writes into the status are here too. Both ends import this module; it
does no I/O, and no pydantic: the pod's start is paid per pod (#19), so these are
plain dataclasses and `batchfile` reads them, with messages that name the field.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from voicevault.uploader.metadata import MetadataTarget

BATCH_FILE = "batch.json"
HANDOFF_FILE = "handoff.json"  # where a running pod asks the operator for more work
MORE_PATH = "/v1/uploader/more"
SPEC_VERSION = 1
# the kubelet keeps at most 4096 bytes of a termination message
TERMINATION_MESSAGE_LIMIT = 4096
# The most recordings one pod carries: every item's result still fits in the termination
# message when each has an error code (`"T16111",`, 9 bytes) and the messages are dropped.
MAX_BATCH_ITEMS = 400
MORE_LIMIT = 1 << 20  # the results sent with a request for more work keep their messages


class BatchFileError(ValueError):
    """A batch or credential file the pod cannot read: which field, and what is wrong."""

    def __init__(self, message: str, field_name: str = "") -> None:
        super().__init__(message)
        self.field_name = field_name  # the field at fault, without its path; "" if none


@dataclass(frozen=True, kw_only=True)
class BatchItem:
    """One recording of the batch, with everything needed to upload it (no secrets)."""

    namespace: str
    name: str
    uid: str
    sid: str
    action: Literal["upload", "purge"] = "upload"
    media_path: str  # relative to <media root>/<namespace>/
    bucket_url: str
    endpoint_url: str | None = None
    region: str
    bucket: str
    object_key: str
    media_url: str
    public_key: str | None = None
    public_key_sid: str | None = None
    credential: str  # file name of the credential in the batch Secret
    credential_name: str = ""  # the AwsCredential it came from (for a restarted operator)
    metadata: MetadataTarget | None = None  # write the metadata document beside the media
    # the Recording as the operator's Scheduled write left it: its resourceVersion and the
    # status fields the pod's writes build on (`phases.pod_base`), so its first write
    # needs no read; empty (an older operator, a batch read back): read first
    resource_version: str = ""
    status: dict[str, Any] = field(default_factory=dict)
    # a batch handed to a running pod is not marked Scheduled: `status` then already shows
    # the claim, and the pod's first write carries these fields with it (empty: written)
    claim: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: object, where: str = "item") -> BatchItem:
        from voicevault import batchfile

        return batchfile.read_item(data, where)


@dataclass(frozen=True, kw_only=True)
class BatchSpec:
    version: int = SPEC_VERSION
    pod: str
    node: str
    items: list[BatchItem]
    # 0 for the batch the pod starts with; each batch handed to it later counts up
    chunk: int = 0

    def to_json(self) -> str:
        from voicevault import batchfile

        return batchfile.to_json(self)

    @classmethod
    def from_json(cls, text: str | bytes) -> BatchSpec:
        """Raises BatchFileError, naming the first field that is missing or wrong."""
        from voicevault import batchfile

        return batchfile.read_spec(batchfile.load(text, BATCH_FILE))


@dataclass(frozen=True, kw_only=True)
class CredentialFile:
    """Contents of one credential file in the batch Secret. Never logged."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return "CredentialFile(<hidden>)"

    __str__ = __repr__

    def to_json(self) -> str:
        from voicevault import batchfile

        return batchfile.to_json(self)

    @classmethod
    def from_json(cls, text: str | bytes, name: str = "credential file") -> CredentialFile:
        """Raises BatchFileError naming the field, never quoting a value."""
        from voicevault import batchfile

        return batchfile.read_credential(batchfile.load(text, name), name)


@dataclass(frozen=True, kw_only=True)
class HandoffFile:
    """How a running pod asks for its next batch: the operator's URL, the certificate it
    must present (SHA-256 of its DER form, pinned, as the pod cannot resolve a name the
    certificate carries) and the pod's own bearer token. Never logged."""

    url: str
    fingerprint: str
    token: str

    def __repr__(self) -> str:
        return "HandoffFile(<hidden>)"

    __str__ = __repr__

    def to_json(self) -> str:
        from voicevault import batchfile

        return batchfile.to_json(self)

    @classmethod
    def from_json(cls, text: str | bytes) -> HandoffFile:
        from voicevault import batchfile

        return batchfile.read_handoff(batchfile.load(text, HANDOFF_FILE))


@dataclass(frozen=True, kw_only=True)
class MoreRequest:
    """A pod done with batch `chunk` asks for the next one, with that batch's results.

    The answer is the next `BatchSpec` (chunk + 1), empty when there is no more work.
    The results travel with the question, so a pod's termination message only ever
    holds those of the batch it was given last."""

    pod: str
    chunk: int
    outcome: BatchOutcome

    def to_json(self) -> str:
        raw = {"pod": self.pod, "chunk": self.chunk, "outcome": self.outcome.encode(MORE_LIMIT)}
        return json.dumps(raw, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> MoreRequest:
        """Raises BatchFileError when it is not one."""
        try:
            raw = json.loads(text)
        except ValueError:
            raw = None
        if not isinstance(raw, dict):
            raise BatchFileError("a request for more work must be a JSON object")
        pod, chunk, encoded = raw.get("pod"), raw.get("chunk"), raw.get("outcome")
        outcome = BatchOutcome.decode(encoded) if isinstance(encoded, str) else None
        if not isinstance(pod, str) or type(chunk) is not int or outcome is None:
            raise BatchFileError("a request for more work needs pod, chunk and outcome")
        return cls(pod=pod, chunk=chunk, outcome=outcome)


def credential_file_name(index: int) -> str:
    return f"credential-{index}.json"


# -- outcome --------------------------------------------------------------------------------

ResultKind = Literal[
    "completed",  # stored, and Completed written to the Recording
    "completed-unrecorded",  # stored, but the status patch failed: media kept until recorded
    "fatal",  # fatal error, media deleted, Failed written
    "fatal-unrecorded",  # fatal error, media deleted, status patch failed
    "transient",  # transient error: media and resume state kept
    "purged",  # local media and open upload removed (deletion)
    "skipped",  # not attempted (the pod was stopped first) or no longer ours
]

_KIND_CODES: dict[str, str] = {
    "completed": "C",
    "completed-unrecorded": "c",
    "fatal": "F",
    "fatal-unrecorded": "f",
    "transient": "T",
    "purged": "P",
    "skipped": "S",
}
_CODE_KINDS = {v: k for k, v in _KIND_CODES.items()}


@dataclass(frozen=True, kw_only=True)
class ItemResult:
    kind: ResultKind
    error_code: int | None = None
    message: str = ""
    parts_resent: int = 0  # summed into the batch outcome; not sent per item


@dataclass(frozen=True, kw_only=True)
class BatchOutcome:
    """Results in batch order; `None` where the pod never got to the item."""

    results: list[ItemResult | None] = field(default_factory=list)
    parts_resent: int = 0  # bodies the storage rejected as corrupted in transit and re-sent
    chunk: int = 0  # the batch (`BatchSpec.chunk`) these results are of

    def encode(self, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
        """Compact JSON that fits in `limit` bytes; messages are shortened, then dropped.

        Format: {"v":1,"r":["C","T16111:0",...],"m":["message 0",...],"p":N,"n":K} where each
        result is a kind letter, an optional error code and an index into the de-duplicated
        messages, N counts the parts re-sent after a checksum mismatch, and K is the chunk
        (left out when 0).
        """
        for max_message in (200, 80, 30, 0):
            text = self._encode(max_message)
            if len(text.encode()) <= limit:
                return text
        return json.dumps(self._head({"r": [], "m": []}), separators=(",", ":"))

    def _head(self, body: dict[str, Any]) -> dict[str, Any]:
        chunk = {"n": self.chunk} if self.chunk else {}
        return {"v": 1} | body | {"p": self.parts_resent} | chunk

    def _encode(self, max_message: int) -> str:
        messages: list[str] = []
        codes: list[str] = []
        for result in self.results:
            if result is None:
                codes.append("")
                continue
            code = _KIND_CODES[result.kind] + (str(result.error_code) if result.error_code else "")
            text = result.message[:max_message] if max_message else ""
            if text:
                if text not in messages:
                    messages.append(text)
                code += f":{messages.index(text)}"
            codes.append(code)
        return json.dumps(self._head({"r": codes, "m": messages}), separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> BatchOutcome | None:
        """Parse a termination message; None if it is not one of ours."""
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict) or raw.get("v") != 1:
                return None
            messages = [str(m) for m in raw.get("m", [])]
            results: list[ItemResult | None] = []
            for code in raw.get("r", []):
                results.append(_decode_one(str(code), messages))
            return cls(
                results=results, parts_resent=int(raw.get("p", 0)), chunk=int(raw.get("n", 0))
            )
        except (ValueError, TypeError, KeyError, IndexError):
            return None


def _decode_one(code: str, messages: list[str]) -> ItemResult | None:
    if not code:
        return None
    kind = _CODE_KINDS[code[0]]
    rest, _, index = code[1:].partition(":")
    return ItemResult(
        kind=kind,  # type: ignore[arg-type]  # one of _KIND_CODES' keys, all ResultKinds
        error_code=int(rest) if rest else None,
        message=messages[int(index)] if index else "",
    )


# -- errors -----------------------------------------------------------------------------------


class ErrorClass(StrEnum):
    TRANSIENT = "Transient"  # retry later: the configuration worked, the service did not
    FATAL = "Fatal"  # never retried: the media is deleted at once (the seed's rule)


class ErrorCode(IntEnum):
    """Twilio's recording storage error codes, as the product brief maps them."""

    UPLOAD_FAILED = 16111  # S3 upload failed / invalid configuration
    ACCESS_DENIED = 16112  # the bucket refused the credentials
    INVALID_PUBLIC_KEY = 16104  # encryption impossible: the public key is unusable
    ENCRYPTION_FAILED = 16105  # encryption failed while processing the media


# -- encryption details ------------------------------------------------------------------------

IV_SIZE: Final = 12
DETAILS_TYPE: Final = "rsa-aes"
_SID_RE = re.compile(r"CR[0-9a-fA-F]{32}")
# (canonical field, camelCase status key, snake_case Twilio key)
_FIELDS = (
    ("public_key_sid", "publicKeySid", "public_key_sid"),
    ("encrypted_cek", "encryptedCek", "encrypted_cek"),
    ("iv", "iv", "iv"),
)


class DecryptionError(ValueError):
    """An object cannot be opened: wrong key, tampered or truncated data, bad details."""


@dataclass(frozen=True)
class EncryptionDetails:
    """What a key holder needs besides the object: the key SID, wrapped CEK and IV."""

    public_key_sid: str
    encrypted_cek: str
    iv: str

    def to_status(self) -> dict[str, str]:
        """Kubernetes camelCase form for the Recording status."""
        return {"type": DETAILS_TYPE} | {camel: getattr(self, name) for name, camel, _ in _FIELDS}

    def to_twilio(self) -> dict[str, str]:
        """Twilio's snake_case form, for callbacks and Twilio-shaped documents."""
        return {"type": DETAILS_TYPE} | {snake: getattr(self, name) for name, _, snake in _FIELDS}

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> EncryptionDetails:
        """Accept either form, as customers paste whichever they have at hand."""
        kind = data.get("type")
        if kind != DETAILS_TYPE:
            raise DecryptionError(f"encryption details type must be {DETAILS_TYPE!r}")
        values = {name: _pick(data, camel, snake) for name, camel, snake in _FIELDS}
        if not _SID_RE.fullmatch(values["public_key_sid"]):
            raise DecryptionError("publicKeySid must be 'CR' followed by 32 hex digits")
        if not strict_b64decode(values["encrypted_cek"], "encryptedCek"):
            raise DecryptionError("encryptedCek must not be empty")
        if len(strict_b64decode(values["iv"], "iv")) != IV_SIZE:
            raise DecryptionError(f"iv must decode to {IV_SIZE} bytes")
        return cls(**values)


def _pick(data: Mapping[str, object], camel: str, snake: str) -> str:
    """One field from either spelling; both present must agree."""
    found = [data[k] for k in dict.fromkeys((camel, snake)) if k in data]
    if not found:
        raise DecryptionError(f"encryption details lack {camel!r} (or {snake!r})")
    if any(value != found[0] for value in found):
        raise DecryptionError(f"encryption details give {camel!r} and {snake!r} different values")
    value = found[0]
    if not isinstance(value, str):
        raise DecryptionError(f"{camel!r} must be a string")
    return value


def strict_b64decode(value: str, name: str) -> bytes:
    """Canonical base64 only: stray characters or padding would hide a corrupted paste."""
    try:
        decoded = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        decoded = None
    if decoded is None or base64.b64encode(decoded).decode("ascii") != value:
        raise DecryptionError(f"{name} is not valid base64")
    return decoded
