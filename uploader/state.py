"""Node-local resume state of one upload, so a killed uploader continues where it stopped.

For an encrypted recording the state holds the raw content key and IV: a resumed upload
must re-create byte-identical parts, and S3 cannot give the bytes back (no GetObject in
the seed policy). The file is therefore readable by its owner only (0600 in a 0700
folder), lives on the node next to the media, and is wiped once the upload is recorded.
"""

from __future__ import annotations

import base64
import contextlib
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from voicevault.uploader.atomicfile import replacing

STATE_VERSION = 1


class StatePhase(StrEnum):
    UPLOADING = "uploading"  # parts may be in the bucket; uploadId may be set
    COMPLETING = "completing"  # CompleteMultipartUpload was sent
    COMPLETED = "completed"  # the object exists; waiting for the result to be recorded


@dataclass
class SourceFingerprint:
    """Identifies the media file, so a changed file never resumes an old upload."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> SourceFingerprint:
        st = path.stat()
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)


@dataclass
class EncryptionState:
    content_key: str  # base64 raw AES key: never leaves this file
    iv: str  # base64
    public_key_sid: str
    encrypted_cek: str  # base64, as published in encryptionDetails

    def __repr__(self) -> str:
        return f"EncryptionState(public_key_sid={self.public_key_sid!r}, content_key=<hidden>)"


@dataclass
class MetadataState:
    """The metadata document of a stored object, kept until it is in the bucket too.

    Built once and saved before its PutObject, so a run that resumes after a crash sends
    exactly these bytes, and a document already stored is not sent again.
    """

    key: str
    document: str
    stored: bool = False


@dataclass
class UploadState:
    bucket: str
    key: str
    source: SourceFingerprint
    part_size: int
    object_size: int
    phase: StatePhase = StatePhase.UPLOADING
    upload_id: str | None = None
    encryption: EncryptionState | None = None
    media_url: str | None = None
    # hex SHA-256 of the object's bytes, saved before completing (metadata documents only)
    sha256: str | None = None
    metadata: MetadataState | None = None
    version: int = STATE_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def matches(self, bucket: str, key: str, source: SourceFingerprint) -> bool:
        return (
            self.version == STATE_VERSION
            and self.bucket == bucket
            and self.key == key
            and self.source == source
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> UploadState:
        raw = json.loads(text)
        enc = raw.get("encryption")
        meta = raw.get("metadata")
        return cls(
            bucket=raw["bucket"],
            key=raw["key"],
            source=SourceFingerprint(**raw["source"]),
            part_size=int(raw["part_size"]),
            object_size=int(raw["object_size"]),
            phase=StatePhase(raw.get("phase", StatePhase.UPLOADING)),
            upload_id=raw.get("upload_id"),
            encryption=EncryptionState(**enc) if enc else None,
            media_url=raw.get("media_url"),
            sha256=raw.get("sha256"),
            metadata=MetadataState(**meta) if meta else None,
            version=int(raw.get("version", 0)),
            extra=dict(raw.get("extra", {})),
        )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class StateStore:
    """A folder of state files, one per upload, named by a caller-chosen id."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, upload_name: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in upload_name)
        return self.directory / f"{safe}.json"

    def load(self, upload_name: str) -> UploadState | None:
        """The saved state, or None if absent or unreadable (a fresh upload then starts)."""
        try:
            text = self.path(upload_name).read_text(encoding="utf-8")
            return UploadState.from_json(text)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, upload_name: str, state: UploadState) -> None:
        """Atomically replace the state file (write, fsync, rename), owner-only."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.path(upload_name)
        with replacing(target, prefix=".tmp-", suffix=".json", mode=0o600) as handle:
            handle.write(state.to_json().encode("utf-8"))

    def wipe(self, upload_name: str) -> None:
        """Remove the state file (and with it the content key)."""
        with contextlib.suppress(FileNotFoundError):
            self.path(upload_name).unlink()
