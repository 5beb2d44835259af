"""Freeze the namespace's setting into a new Recording (changes apply to later ones only)."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from voicevault.crds.recording import RecordingSpec, StorageSnapshot
from voicevault.crds.voicestoragesetting import OBJECT_KEY_PLACEHOLDERS
from voicevault.operator.settings import SettingView
from voicevault.uploader.metadata import metadata_enabled, metadata_object_key

_PLACEHOLDER = re.compile(r"\{([A-Za-z]+)\}")


class SnapshotError(ValueError):
    """The setting cannot produce an object key for this recording."""


def render_object_key(template: str, prefix: str, spec: RecordingSpec, sid: str) -> str:
    """`prefix` + the template with the recording's fields filled in."""
    values = {
        "accountSid": spec.account_sid,
        "recordingSid": sid,
        "callSid": spec.call_sid or "none",
        "conferenceSid": spec.conference_sid or "none",
        "startDate": spec.start_time.strftime("%Y-%m-%d"),
        "ext": PurePosixPath(spec.media_path).suffix,
    }

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in OBJECT_KEY_PLACEHOLDERS:
            raise SnapshotError(f"objectKeyTemplate has an unknown placeholder {{{name}}}")
        return values[name]

    key = prefix + _PLACEHOLDER.sub(fill, template)
    if "{" in key or "}" in key or "//" in key or key.startswith("/") or key.endswith("/"):
        raise SnapshotError(f"objectKeyTemplate {template!r} does not give a valid key")
    return key


def take_snapshot(
    view: SettingView, spec: RecordingSpec, sid: str, recording_callback: str | None
) -> StorageSnapshot:
    """The snapshot of a Ready, enabled setting for one recording."""
    setting = view.spec
    location = view.location
    if setting is None or location is None or not view.ready:
        raise SnapshotError("the storage setting is not ready")
    storage = setting.external_storage
    if storage.bucket_url is None or storage.credential_ref is None:
        raise SnapshotError("the storage setting has no bucket URL or credential")
    key = render_object_key(storage.object_key_template, location.prefix, spec, sid)
    callback = setting.status_callback
    signing = callback.signing_key_ref if callback else None
    metadata_key = metadata_object_key(key) if metadata_enabled(setting) else None
    return StorageSnapshot(
        setting_generation=view.generation,
        bucket_url=storage.bucket_url,
        endpoint_url=storage.endpoint_url,
        region=location.region,
        bucket=location.bucket,
        object_key=key,
        media_url=location.object_url(key),
        credential_name=storage.credential_ref.name,
        public_key_sid=view.public_key_sid,
        public_key=setting.encryption.public_key if setting.encryption else None,
        retry_window_seconds=view.retry_window_seconds,
        initial_backoff_seconds=setting.retry.initial_backoff_seconds,
        max_backoff_seconds=setting.retry.max_backoff_seconds,
        callback_url=recording_callback or (callback.url if callback else None),
        callback_signing_secret=signing.name if signing else None,
        callback_signing_key=signing.key if signing else None,
        metadata_key=metadata_key,
        metadata_url=location.object_url(metadata_key) if metadata_key else None,
    )
