"""Media files on the node: where a recording's file is, and removing it safely.

A Recording names its file relative to its namespace's folder in the node's recordings
directory, so one account (namespace) can never point the uploader at another account's
media: the resolved path, symlinks included, must stay inside that folder.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path, PurePosixPath

CONTENT_TYPES = {".wav": "audio/x-wav", ".mp3": "audio/mpeg"}
ENCRYPTED_CONTENT_TYPE = "application/octet-stream"


class MediaPathError(ValueError):
    """The media path is unusable: it leads out of the namespace's folder, or is no file."""


def content_type_for(extension: str, *, encrypted: bool) -> str:
    if encrypted:
        return ENCRYPTED_CONTENT_TYPE
    return CONTENT_TYPES.get(extension.lower(), "application/octet-stream")


def namespace_dir(root: Path, namespace: str) -> Path:
    if not namespace or "/" in namespace or namespace in (".", ".."):
        raise MediaPathError(f"invalid namespace {namespace!r}")
    return root / namespace


def resolve_media(root: Path, namespace: str, relative: str) -> Path:
    """The file of a recording, guaranteed to be inside `root/namespace`."""
    rel = PurePosixPath(relative)
    if rel.is_absolute() or any(part in ("", ".", "..") for part in relative.split("/")):
        raise MediaPathError(f"media path {relative!r} must be relative, without '.' or '..'")
    base = namespace_dir(root, namespace)
    candidate = base.joinpath(*rel.parts)
    real_base = Path(os.path.realpath(base))
    real = Path(os.path.realpath(candidate))
    if real != real_base and real_base not in real.parents:
        raise MediaPathError(f"media path {relative!r} leads outside the namespace's folder")
    if real.exists() and not real.is_file():
        # a folder (or a link to one) or a FIFO: retrying would not help, and a FIFO would
        # block the uploader on open
        raise MediaPathError(f"media path {relative!r} is not a regular file")
    return real


def delete_media(path: Path) -> bool:
    """Remove the file; True if it was there. Empty parent folders are left alone."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    with contextlib.suppress(OSError):
        # make the deletion durable: the platform must keep no copy after success
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return True


def ownership_problem(path: Path, uid: int | None = None) -> str | None:
    """Why this UID could not read ``path`` or delete it after the upload, else None.

    The uploader runs as ``uploader.runAsUser``, which must own the media (the recording
    service's user); a mismatch found only after the upload would leave the file behind.
    """
    uid = os.getuid() if uid is None else uid
    for target, mode, need in ((path, os.R_OK, "read"), (path.parent, os.W_OK | os.X_OK, "delete")):
        try:
            owner = target.stat().st_uid
        except OSError:
            return None  # a missing file or folder is reported elsewhere
        if not os.access(target, mode):
            return (
                f"the uploader runs as UID {uid} and may not {need} the media: "
                f"{target} is owned by UID {owner} (set uploader.runAsUser to the UID "
                "of the recording service that writes the files)"
            )
    return None
