"""A real HTTP server that receives status callbacks, for end-to-end tests."""

from __future__ import annotations

import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    params: dict[str, str]


@dataclass
class CallbackReceiver:
    """Collects POSTs; answers `script` in order first, then `status` (200 by default;
    set it to make deliveries fail). `latency` is how long each answer takes, as a
    receiver across the internet would."""

    status: int = 200
    latency: float = 0.0
    host: str = "127.0.0.1"  # the real node's pods reach the bridge address
    script: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> CallbackReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length).decode()
                params = dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
                with receiver._lock:
                    receiver.received.append(Received(self.path, dict(self.headers), params))
                    status = receiver.script.pop(0) if receiver.script else receiver.status
                if receiver.latency:
                    time.sleep(receiver.latency)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def url(self, path: str = "/callbacks") -> str:
        assert self._server is not None
        return f"http://{self.host}:{self._server.server_address[1]}{path}"

    def for_recording(self, sid: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.params.get("RecordingSid") == sid]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
