"""The uploader's API client keeps its connection, and replaces one the server dropped.

A pod's worker threads live as long as the pod, so a thread's kept connection can sit
idle past the API server's idle timeout (a long upload on another thread, a linger for
work). Real HTTPS on loopback: a server that answers each connection's first request as
keep-alive and then closes it, as a server does to an idle one.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from voicevault.operator import webhookcert
from voicevault.uploader.kubeapi import KubeApi, KubeConfig, TokenSource


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0
    requests: list[str]


class _OneRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_PATCH(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append(self.path)
        body = b'{"kind": "Recording"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()  # no "Connection: close": the client keeps the connection
        self.wfile.write(body)
        self.close_connection = True  # ...and the server drops it, as when idle

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[_Server, Path]]:
    pair = webhookcert.plan(None, webhookcert.CertPolicy(hosts=("127.0.0.1",)), datetime.now(UTC))
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(pair.data[webhookcert.TLS_CERT])
    key.write_bytes(pair.data[webhookcert.TLS_KEY])
    ca = tmp_path / "ca.crt"
    ca.write_bytes(pair.data[webhookcert.CA_CERT])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd = _Server(("127.0.0.1", 0), _OneRequestHandler)
    httpd.requests = []
    plain_accept = httpd.get_request

    def accept() -> tuple[object, object]:
        sock, address = plain_accept()
        httpd.connections += 1
        return context.wrap_socket(sock, server_side=True), address

    httpd.get_request = accept  # type: ignore[assignment,method-assign]
    serving = threading.Thread(target=httpd.serve_forever, daemon=True)
    serving.start()
    yield httpd, ca
    httpd.shutdown()
    httpd.server_close()


def test_a_connection_the_server_dropped_is_replaced_and_the_write_sent_once(
    server: tuple[_Server, Path],
) -> None:
    httpd, ca = server
    config = KubeConfig(
        host="127.0.0.1",
        port=httpd.server_address[1],
        token=TokenSource(token="t"),
        ca_file=str(ca),
    )
    api = KubeApi(config)
    assert api.merge_patch("/first", {"status": {}}) == {"kind": "Recording"}
    kept = api._local.connection
    assert kept is not None and kept.sock is not None
    assert kept.sock.recv(1) == b""  # the server's close has arrived
    assert api.merge_patch("/second", {"status": {}}) == {"kind": "Recording"}
    assert httpd.requests == ["/first", "/second"]
    assert httpd.connections == 2
