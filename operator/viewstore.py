"""What the controllers know of each namespace's credentials and setting, shared.

The credentials and settings controllers write their views here; the recordings
controller and the scheduler read them. Settings and credentials are few: their latest
bodies are kept too, so a change in one re-evaluates the others.
"""

from __future__ import annotations

import hashlib
from typing import Any

from voicevault import logs
from voicevault.contract import CredentialFile
from voicevault.operator.kube import Kube
from voicevault.operator.queues import QueueEntry
from voicevault.operator.settings import CredentialView, SettingView


class ViewStore:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.credential_bodies: dict[tuple[str, str], dict[str, Any]] = {}
        self.credentials: dict[tuple[str, str], CredentialView] = {}
        self.setting_bodies: dict[str, dict[str, Any]] = {}
        self.settings: dict[str, SettingView] = {}
        self.signing_secrets: dict[str, str] = {}  # namespace -> its setting's signing Secret
        # (namespace, credential) -> digest of the keys the bucket last accepted in a
        # validation: an upload with other keys waits for their validation (a Secret
        # just edited to a wrong key must not fail an upload fatally and delete media)
        self.validated_keys: dict[tuple[str, str], str] = {}
        # changes the Secret watch has seen to any Secret these views read: keys read
        # before the count moved are read again
        self.secret_changes = 0

    def keys_unvalidated(self, namespace: str, credential: str, keys: CredentialFile) -> bool:
        """These keys differ from the ones the bucket last accepted (known ones only)."""
        known = self.validated_keys.get((namespace, credential))
        return known is not None and known != keys_digest(keys)

    def uses_secret(self, namespace: str, name: str) -> bool:
        """A credential or the namespace's setting reads this Secret."""
        return self.signing_secrets.get(namespace) == name or any(
            ns == namespace and view.secret_name == name
            for (ns, _), view in self.credentials.items()
        )

    def refuses(self, entry: QueueEntry) -> bool:
        """An upload into a configuration the bucket has refused since it was queued: not
        to be made (it would fail fatally and delete the media)."""
        setting = self.settings.get(entry.namespace)
        return entry.action == "upload" and setting is not None and setting.refuses(entry.snapshot)

    async def credential_keys(self, namespace: str, name: str) -> CredentialFile | str:
        """The keys of a ready credential, or why it cannot be used."""
        view = self.credentials.get((namespace, name))
        if view is None:
            return f"AwsCredential {name!r} not found in {namespace!r}"
        if not view.ready:
            return f"AwsCredential {name!r} is not ready: {view.message}"
        found = await self.kube.secret_data(namespace, view.secret_name)
        if found is None:
            return f"Secret {view.secret_name!r} of AwsCredential {name!r} not found"
        data = found[1]

        def text(key: str | None) -> str:
            return data.get(key or "", b"").decode("utf-8", errors="replace").strip()

        key_id, secret = text(view.access_key_id_key), text(view.secret_access_key_key)
        token = text(view.session_token_key) or None
        if not key_id or not secret:
            return f"Secret {view.secret_name!r} lacks the access key"
        for value in (key_id, secret, token):
            logs.register_secret(value)
        return CredentialFile(access_key_id=key_id, secret_access_key=secret, session_token=token)


def keys_digest(keys: CredentialFile) -> str:
    """A digest to compare keys by, never the keys themselves (kept in memory only)."""
    text = "\0".join((keys.access_key_id, keys.secret_access_key, keys.session_token or ""))
    return hashlib.sha256(text.encode()).hexdigest()
