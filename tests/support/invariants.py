"""What must hold after any fault: nothing lost, nothing corrupt, nothing left open."""

from __future__ import annotations

import io
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bed.stack import Account, Stack
from voicevault.uploader import envelope

SETTLED = {"Completed", "Cached", "Failed"}


@dataclass
class Outcome:
    phases: Counter[str] = field(default_factory=Counter)
    corrupt: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    open_uploads: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert not self.lost, f"lost: {self.lost}"
        assert not self.corrupt, f"corrupt: {self.corrupt}"
        assert not self.open_uploads, (
            f"open multipart uploads of finished recordings: {self.open_uploads}"
        )


def check(
    stack: Stack, account: Account, data: dict[str, bytes], node_of: dict[str, str]
) -> Outcome:
    """Every recording Completed (object exact), Cached (media on its node) or Failed fatal."""
    out = Outcome()
    open_keys = {u["Key"] for u in stack.open_uploads(account)}
    for name, payload in data.items():
        status: dict[str, Any] = (
            stack.get(account.namespace, "recordings", name).get("status") or {}
        )
        phase = status.get("phase", "none")
        out.phases[phase] += 1
        media = stack.media_file(node_of[name], account.namespace, f"2026/11/{name}.wav")
        key = (status.get("storage") or {}).get("objectKey", "")
        if phase == "Completed":
            stored = stack.object_bytes(account, key)
            if _plain(stored, status, account) != payload:
                out.corrupt.append(name)
            if not _gone_soon(media):
                out.lost.append(f"{name}: Completed but the media is still on the node")
        elif phase == "Cached":
            if not media.exists():
                out.lost.append(f"{name}: Cached but the media is gone")
        elif phase == "Failed":
            if status.get("errorClass") != "Fatal":
                out.lost.append(f"{name}: Failed without a fatal cause")
        else:
            out.lost.append(f"{name}: ended {phase}")
        if phase in ("Completed", "Failed") and key in open_keys:
            out.open_uploads.append(name)
    return out


def _gone_soon(path: Path, timeout: float = 15) -> bool:
    """The uploader deletes the media just after writing Completed: allow it a moment."""
    deadline = time.monotonic() + timeout
    while path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _plain(stored: bytes, status: dict[str, Any], account: Account) -> bytes:
    details = status.get("encryptionDetails")
    if not details:
        return stored
    assert account.keys is not None
    content_key = envelope.open_content_key(
        account.keys.private_pem, envelope.EncryptionDetails.from_mapping(details)
    )
    out = io.BytesIO()
    envelope.decrypt_stream(content_key, io.BytesIO(stored), out, len(stored))
    return out.getvalue()


def settled(stack: Stack, namespace: str, names: list[str]) -> bool:
    for name in names:
        phase = (stack.get(namespace, "recordings", name).get("status") or {}).get("phase")
        if phase not in SETTLED:
            return False
    return True
