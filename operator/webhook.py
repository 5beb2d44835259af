"""Serve the admission webhooks over HTTPS, and keep their certificate current.

Runs in threads of its own, beside kopf's event loop, so a busy operator never delays
an apply. The decisions are in `admission` (pure, one function per path); the
certificate rules in `webhookcert` (pure). Here: the Secret holding the certificate, the
caBundle of the Validating- and MutatingWebhookConfiguration, and a TLS server that
picks up a new certificate for the next connection without a restart.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from voicevault.contract import MORE_PATH
from voicevault.operator import admission, metrics, webhookcert
from voicevault.operator.config import WebhookConfig
from voicevault.operator.handoff import HandoffDesk

log = logging.getLogger("voicevault.operator.webhook")

MAX_BODY = 3 * 1024 * 1024  # the API server's own request limit is about this
RETRY_SECONDS = 5.0  # after a failed look, instead of the check interval
STRATEGIC = "application/strategic-merge-patch+json"
VALIDATING = "ValidatingWebhookConfiguration"
MUTATING = "MutatingWebhookConfiguration"


class ReloadingContext:
    """The TLS context for the next handshake; `load` swaps in a new certificate."""

    def __init__(self) -> None:
        self._current: ssl.SSLContext | None = None
        self._cert = b""
        self._lock = threading.Lock()
        self.listening = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.listening.minimum_version = ssl.TLSVersion.TLSv1_2
        # called on every ClientHello, with or without SNI: hand over the newest context
        self.listening.sni_callback = self._pick

    @property
    def cert(self) -> bytes:
        return self._cert

    def load(self, cert_pem: bytes, key_pem: bytes) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # ssl loads key pairs from files only: a private directory, removed at once
        with tempfile.TemporaryDirectory(prefix="vv-webhook-") as tmp:
            path = os.path.join(tmp, "pair.pem")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as out:
                out.write(cert_pem + b"\n" + key_pem)
            context.load_cert_chain(path)
            if self._current is None:
                self.listening.load_cert_chain(path)
        with self._lock:
            self._current, self._cert = context, cert_pem

    def _pick(self, sock: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        with self._lock:
            if self._current is not None:
                sock.context = self._current


class _Handler(BaseHTTPRequestHandler):
    server_version = "voicevault-webhook"
    protocol_version = "HTTP/1.1"  # keep-alive: the API server reuses its connections
    # headers and body go out as two writes: without this, Nagle's algorithm and the
    # client's delayed ACK add about 40 ms to every review
    disable_nagle_algorithm = True
    timeout = 10  # per connection: an idle or stalled client never holds a thread long

    server: AdmissionServer

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        desk = self.server.desk
        route = admission.ROUTES.get(path)
        asking = desk if path == MORE_PATH else None  # an uploader pod, for more work
        if route is None and asking is None:
            self._reply(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "bad length"})
            return
        body = self.rfile.read(length)
        if route is None:
            assert asking is not None  # the 404 above
            self._send(*asking.serve(body, self.headers.get("Authorization", "")))
            return
        try:
            review = json.loads(body)
            if not isinstance(review, dict):
                raise ValueError("not an object")
        except ValueError:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": "expected an AdmissionReview"})
            return
        try:
            answer = route(review)
        except Exception:  # a bug, not the user's mistake: the configuration's policy decides
            log.exception("webhook could not judge a review")
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})
            return
        response = answer["response"]
        about = admission.summary(review)
        metrics.WEBHOOK_REVIEWS.labels(
            kind=about["kind"], allowed=str(response["allowed"]).lower()
        ).inc()
        if not response["allowed"]:
            log.info(
                "refused at admission", extra=about | {"reason": response["status"]["message"]}
            )
        self._reply(HTTPStatus.OK, answer)

    def do_GET(self) -> None:
        self._reply(HTTPStatus.OK if self.path == "/healthz" else HTTPStatus.NOT_FOUND, {})

    def _reply(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode())

    def _send(self, status: HTTPStatus, data: bytes) -> None:
        self.send_response(status)
        if status != HTTPStatus.OK:
            self.send_header("Connection", "close")  # an unread body is no next request
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("webhook http: " + format, *args)


class AdmissionServer(ThreadingHTTPServer):
    """One thread per connection, at most `max_connections` at once (more wait to be
    accepted): anyone who can reach the port can connect, not only the API server."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        tls: ReloadingContext,
        max_connections: int = 64,
        desk: HandoffDesk | None = None,
    ) -> None:
        self.tls = tls
        self.desk = desk  # uploader pods asking for more work (`handoff`), if they may
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        # the handshake runs in the connection's own thread, on its first read
        wrapped = self.tls.listening.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("webhook connection failed", exc_info=True)


class CertKeeper:
    """Keep the Secret's certificate current, the caBundle matching, the server loaded."""

    def __init__(
        self, api_client: k8s.ApiClient, config: WebhookConfig, tls: ReloadingContext
    ) -> None:
        self.config = config
        self.tls = tls
        self.core = k8s.CoreV1Api(api_client)
        self.admission = k8s.AdmissionregistrationV1Api(api_client)
        self._last: dict[str, bytes] = {}  # what was last served: restores a deleted Secret
        self._missing_logged: set[str] = set()  # configuration kinds found missing
        hosts = webhookcert.service_hosts(config.service, config.namespace) + config.extra_hosts
        self.policy = webhookcert.CertPolicy(
            hosts=tuple(dict.fromkeys(hosts)),
            renew_before=timedelta(days=config.renew_before_days),
        )

    def reconcile(self, now: datetime | None = None) -> None:
        """One look: renew if due, then make the caBundle and the server agree with it."""
        secret = self._read_secret()
        data = _decoded(secret.data if secret is not None else None)
        if secret is None and self.config.manage_cert:
            data = dict(self._last)  # deleted: put the CA the API server trusts back
        if self.config.manage_cert:
            plan = webhookcert.plan(data, self.policy, now or datetime.now(UTC))
            if plan.changed:
                log.info("webhook certificate renewed", extra={"reason": plan.reason})
            elif secret is None:
                log.info("webhook certificate Secret restored", extra={"reason": "it was deleted"})
            if plan.changed or secret is None:
                self._write_secret(secret, plan.data)
            data = plan.data
            self._patch_ca_bundle(webhookcert.ca_bundle(data))
        cert, key = data.get(webhookcert.TLS_CERT), data.get(webhookcert.TLS_KEY)
        if not cert or not key:
            raise RuntimeError(
                f"Secret {self.config.namespace}/{self.config.cert_secret} has no "
                f"{webhookcert.TLS_CERT} and {webhookcert.TLS_KEY} yet"
            )
        self._last = dict(data)
        if cert != self.tls.cert:
            self.tls.load(cert, key)
            expiry = webhookcert.not_after(cert)
            metrics.WEBHOOK_CERT_EXPIRY.set(expiry.timestamp())
            log.info("webhook serving certificate loaded", extra={"not_after": expiry.isoformat()})

    def _read_secret(self) -> k8s.V1Secret | None:
        try:
            secret: k8s.V1Secret = self.core.read_namespaced_secret(
                self.config.cert_secret, self.config.namespace
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return secret

    def _write_secret(self, current: k8s.V1Secret | None, data: Mapping[str, bytes]) -> None:
        encoded = {k: base64.b64encode(v).decode() for k, v in data.items()}
        if current is None:
            body = k8s.V1Secret(
                metadata=k8s.V1ObjectMeta(
                    name=self.config.cert_secret,
                    namespace=self.config.namespace,
                    labels={
                        "app.kubernetes.io/name": "voicevault",
                        "voicevault.io/webhook": "cert",
                    },
                ),
                type="kubernetes.io/tls",
                data=encoded,
            )
            self.core.create_namespaced_secret(self.config.namespace, body)
            return
        # resourceVersion guards against a concurrent writer: a 409 retries next time
        current.data = dict(encoded)
        self.core.replace_namespaced_secret(self.config.cert_secret, self.config.namespace, current)

    def _patch_ca_bundle(self, bundle: bytes) -> None:
        """Both configurations trust `bundle` before a certificate it signs is served."""
        wanted = base64.b64encode(bundle).decode()
        api = self.admission
        self._patch_one(
            VALIDATING,
            wanted,
            api.read_validating_webhook_configuration,
            api.patch_validating_webhook_configuration,
        )
        self._patch_one(
            MUTATING,
            wanted,
            api.read_mutating_webhook_configuration,
            api.patch_mutating_webhook_configuration,
        )

    def _patch_one(
        self, kind: str, wanted: str, read: Callable[..., Any], patch: Callable[..., Any]
    ) -> None:
        name = self.config.configuration
        try:
            config = read(name)
        except ApiException as exc:
            # nobody calls a webhook that is not registered: serving is harmless. The
            # mutating one is optional (the chart's webhook.recordingFinalizer): without it,
            # or without the right to read it, the operator writes the finalizer itself
            optional = kind == MUTATING and exc.status == 403
            if exc.status != 404 and not optional:
                raise
            if kind not in self._missing_logged:
                level = logging.WARNING if kind == VALIDATING or optional else logging.INFO
                what = "not readable" if optional else "not found"
                log.log(
                    level,
                    f"webhook configuration {what}; nothing to patch",
                    extra={"configuration": name, "kind": kind},
                )
                self._missing_logged.add(kind)
            return
        self._missing_logged.discard(kind)
        stale = [
            hook.name for hook in config.webhooks or [] if hook.client_config.ca_bundle != wanted
        ]
        if not stale:
            return
        body = {"webhooks": [{"name": n, "clientConfig": {"caBundle": wanted}} for n in stale]}
        patch(name, body, _content_type=STRATEGIC)
        log.info(
            "webhook caBundle patched",
            extra={"configuration": name, "kind": kind, "webhooks": stale},
        )


class Webhook:
    """The server and its certificate keeper; `start` returns once it tried once."""

    def __init__(
        self, api_client: k8s.ApiClient, config: WebhookConfig, desk: HandoffDesk | None = None
    ) -> None:
        self.config = config
        self.desk = desk
        self.tls = ReloadingContext()
        self.keeper = CertKeeper(api_client, config, tls=self.tls)
        self._stop = threading.Event()
        self._server: AdmissionServer | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._look()
        keeper = threading.Thread(target=self._keep, name="webhook-cert", daemon=True)
        keeper.start()
        self._threads.append(keeper)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _keep(self) -> None:
        ok = True
        while not self._stop.wait(self.config.cert_check_interval if ok else RETRY_SECONDS):
            ok = self._look()

    def _look(self) -> bool:
        ok = True
        try:
            try:
                self.keeper.reconcile()
            except ApiException as exc:
                if exc.status != 409:
                    raise
                # another replica wrote the Secret first: serve what it wrote, now
                self.keeper.reconcile()
        except Exception as exc:  # logged and retried soon: the API server may be away
            reason = f"{exc.status} {exc.reason}" if isinstance(exc, ApiException) else str(exc)
            log.warning("webhook certificate not reconciled", extra={"reason": reason})
            ok = False
        if self._server is None and self.tls.cert:
            address = (self.config.bind_address, self.config.port)
            try:
                self._server = AdmissionServer(address, self.tls, desk=self.desk)
            except OSError as exc:
                log.error(
                    "webhook cannot listen",
                    extra={"address": f"{address[0]}:{address[1]}", "reason": exc.strerror},
                )
                return False
            serve = threading.Thread(
                target=self._server.serve_forever, name="webhook-http", daemon=True
            )
            serve.start()
            self._threads.append(serve)
            log.info(
                "webhook serving",
                extra={
                    "address": f"https://{self.config.bind_address}:{self.config.port}",
                    "paths": sorted(admission.ROUTES),
                },
            )
        return ok


def _decoded(data: Mapping[str, str | bytes] | None) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (data or {}).items()}
