"""The few Kubernetes API requests an uploader pod makes, with the standard library only.

The pod reads one Recording, merge-patches its status and posts an Event: three kinds of
HTTPS request with the pod's token. The kubernetes client package would cost more to
import (about 0.2 CPU-s, with oauthlib, requests, yaml and dateutil) than the pod's
whole batch spends on the API, so this module speaks HTTP itself.

Where it connects:
- in a pod: ``KUBERNETES_SERVICE_HOST``/``_PORT``, the projected token (read again
  whenever the kubelet replaces the file) and the cluster's CA;
- elsewhere (the test bed's stand-in kubelet, a developer's shell): the kubeconfig named
  by ``KUBECONFIG`` (or ``~/.kube/config``), its current context's server, CA and token
  or token file. JSON is read at no cost; YAML only imports PyYAML when the file is not
  JSON. Client certificates and exec plugins are not supported: a pod never has them.

The token never appears in an error, a log line or a repr.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"
# how a kept-alive connection the server had closed (idle) fails the next request: sent
# again once on a fresh connection
STALE_CONNECTION = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


class KubeConfigError(Exception):
    """No usable API server configuration (outside a pod, a kubeconfig problem)."""


class KubeApiError(Exception):
    """An answer other than 2xx; `status` is its HTTP status (0: no answer at all)."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"HTTP {status} {reason}" + (f": {message}" if message else ""))


@dataclass(frozen=True)
class TokenSource:
    """A bearer token: fixed, or a file read again when it changes (projected tokens)."""

    token: str | None = field(default=None, repr=False)
    path: Path | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def current(self) -> str:
        if self.path is None:
            return self.token or ""
        try:
            stat = self.path.stat()
        except OSError as exc:
            raise KubeConfigError(f"cannot read the token file: {exc.strerror}") from None
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if self._cache.get("stamp") != stamp:
            self._cache["token"] = self.path.read_text().strip()
            self._cache["stamp"] = stamp
        return str(self._cache["token"])


@dataclass(frozen=True)
class KubeConfig:
    host: str
    port: int
    token: TokenSource
    ca_file: str | None = None  # neither file nor data: the system's trust store
    ca_data: str | None = None  # PEM, from certificate-authority-data
    insecure: bool = False
    timeout: float = 30.0


def from_environment(environ: dict[str, str] | None = None) -> KubeConfig:
    """In-cluster configuration if this runs in a pod, else the kubeconfig."""
    env = dict(os.environ if environ is None else environ)
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if host and port and (SERVICE_ACCOUNT / "token").exists():
        return KubeConfig(
            host=host,
            port=int(port),
            token=TokenSource(path=SERVICE_ACCOUNT / "token"),
            ca_file=str(SERVICE_ACCOUNT / "ca.crt"),
        )
    first = (env.get("KUBECONFIG") or "").split(os.pathsep)[0]
    path = Path(first) if first else Path.home() / ".kube" / "config"
    return from_kubeconfig(path)


def from_kubeconfig(path: Path) -> KubeConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise KubeConfigError(f"not in a pod, and no kubeconfig: {exc.strerror}") from None
    data = _parse(text)
    try:
        contexts = {c["name"]: c["context"] for c in data.get("contexts") or []}
        clusters = {c["name"]: c["cluster"] for c in data.get("clusters") or []}
        users = {u["name"]: u.get("user") or {} for u in data.get("users") or []}
        current = data.get("current-context") or next(iter(contexts))
        context = contexts[current]
        cluster = clusters[context["cluster"]]
        user = users.get(context.get("user", ""), {})
    except (KeyError, TypeError, StopIteration, AttributeError):
        raise KubeConfigError("the kubeconfig has no usable current context") from None
    url = urlsplit(str(cluster.get("server", "")))
    if url.scheme != "https" or not url.hostname:
        raise KubeConfigError("the kubeconfig's server must be an https:// URL")
    ca_file, ca_data = None, None
    if cluster.get("certificate-authority"):
        ca_file = str(_relative(Path(cluster["certificate-authority"]), path.parent))
    elif cluster.get("certificate-authority-data"):
        ca_data = base64.b64decode(cluster["certificate-authority-data"]).decode("ascii")
    if "token" in user:
        token = TokenSource(token=str(user["token"]))
    elif "tokenFile" in user:
        token = TokenSource(path=_relative(Path(user["tokenFile"]), path.parent))
    else:
        raise KubeConfigError("the kubeconfig's user has neither a token nor a tokenFile")
    return KubeConfig(
        host=url.hostname,
        port=url.port or 443,
        token=token,
        ca_file=ca_file,
        ca_data=ca_data,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
    )


def _parse(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        import yaml  # only for a kubeconfig that is not JSON

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            raise KubeConfigError("the kubeconfig is neither JSON nor YAML") from None
    if not isinstance(data, dict):
        raise KubeConfigError("the kubeconfig is not a mapping")
    return data


def _relative(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path


class KubeApi:
    """JSON requests to one API server; a keep-alive connection per thread."""

    def __init__(self, config: KubeConfig) -> None:
        self.config = config
        self._local = threading.local()
        self._context = ssl.create_default_context(cafile=config.ca_file, cadata=config.ca_data)
        if config.insecure:
            self._context.check_hostname = False
            self._context.verify_mode = ssl.CERT_NONE

    def get(self, path: str) -> dict[str, Any]:
        return self.request("GET", path)

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, body, MERGE_PATCH)

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, body)

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """The decoded answer; KubeApiError for any other status (and 0 for no answer)."""
        payload = json.dumps(body).encode() if body is not None else None
        headers = {
            "Authorization": f"Bearer {self.config.token.current()}",
            "Accept": "application/json",
            "User-Agent": "voicevault-uploader",
        }
        if payload is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            connection, reused = self._connection()
            try:
                connection.request(method, path, payload, headers)
                response = connection.getresponse()
                data = response.read()
            except STALE_CONNECTION as e:
                connection.close()
                self._local.connection = None
                if reused and attempt == 1:
                    continue  # the server closed an idle connection: once on a fresh one
                raise KubeApiError(0, type(e).__name__) from None
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                self._local.connection = None
                raise KubeApiError(0, type(exc).__name__) from None
            if response.will_close:
                connection.close()
                self._local.connection = None
            return _answer(response.status, response.reason, data)
        raise AssertionError("unreachable")  # pragma: no cover

    def _connection(self) -> tuple[http.client.HTTPSConnection, bool]:
        connection: http.client.HTTPSConnection | None = getattr(self._local, "connection", None)
        if connection is not None:
            return connection, True
        connection = http.client.HTTPSConnection(
            self.config.host, self.config.port, timeout=self.config.timeout, context=self._context
        )
        self._local.connection = connection
        return connection, False


def _answer(status: int, reason: str, data: bytes) -> dict[str, Any]:
    try:
        decoded = json.loads(data) if data else {}
    except ValueError:
        decoded = {}
    if 200 <= status < 300:
        if not isinstance(decoded, dict):
            raise KubeApiError(status, reason, "the answer is not a JSON object")
        return decoded
    message = decoded.get("message", "") if isinstance(decoded, dict) else ""
    raise KubeApiError(status, reason, str(message)[:300])


def custom_object_path(
    group: str, version: str, namespace: str, plural: str, name: str, subresource: str = ""
) -> str:
    path = f"/apis/{group}/{version}/namespaces/{quote(namespace)}/{plural}/{quote(name)}"
    return f"{path}/{subresource}" if subresource else path


def events_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace)}/events"
