"""SIDs in Twilio's shape: two letters and 32 hex digits.

A SID is derived from the object's UID, which Kubernetes assigns once and never changes:
re-applying the same manifest (GitOps) keeps the SID, and a status lost in a restore
is rebuilt to the same value, so the object key of a half-finished upload stays put.
"""

from __future__ import annotations

import re

_UID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)


def sid_from_uid(prefix: str, uid: str) -> str:
    """`prefix` + the UID's 32 hex digits, lower case."""
    if len(prefix) != 2 or not prefix.isalpha() or not prefix.isupper():
        raise ValueError(f"SID prefix must be two capital letters, got {prefix!r}")
    if not _UID.match(uid):
        raise ValueError(f"not a Kubernetes UID: {uid!r}")
    return prefix + uid.replace("-", "").lower()


def recording_sid(uid: str) -> str:
    return sid_from_uid("RE", uid)


def credential_sid(uid: str) -> str:
    return sid_from_uid("CR", uid)
