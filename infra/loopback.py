"""Loopback servers for runs against the emulated stack: an image server and a
webhook receiver, each on 127.0.0.1 in a thread of the caller.

ImageServer answers every GET with one real photo (examples/photos), except:
  /missing/...           404
  /text/...              200 text/html, not an image
  /slow/<ms>/...         the photo after <ms> milliseconds
  /fail-first/<n>/...    503 for the first <n> requests of that exact path, then the photo

WebhookReceiver accepts every POST with 200 and records it, except under
  /refuse/<n>/...        503 for the first <n> deliveries to that exact path
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PHOTO = REPO / "examples" / "photos" / "coffee.jpg"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


class ImageServer:
    def __init__(self, photo: Path = DEFAULT_PHOTO) -> None:
        self.photo = photo.read_bytes()
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                with outer._lock:
                    outer.hits[path] += 1
                    seen = outer.hits[path]
                parts = path.strip("/").split("/")
                if parts[0] == "missing":
                    return self._send(404, "text/plain", b"no such image")
                if parts[0] == "text":
                    return self._send(200, "text/html", b"<html><body>this is not an image</body></html>")
                if parts[0] == "slow" and len(parts) > 1 and parts[1].isdigit():
                    time.sleep(int(parts[1]) / 1000)
                if parts[0] == "fail-first" and len(parts) > 1 and parts[1].isdigit() and seen <= int(parts[1]):
                    return self._send(503, "text/plain", b"try again")
                self._send(200, "image/jpeg", outer.photo)

            do_HEAD = do_GET  # noqa: N815

        self.server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def total_hits(self) -> int:
        with self._lock:
            return sum(self.hits.values())

    def close(self) -> None:
        self.server.shutdown()


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._attempts: Counter[str] = Counter()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                path = self.path
                parts = path.strip("/").split("/")
                with outer._lock:
                    outer._attempts[path] += 1
                    attempt = outer._attempts[path]
                status = 200
                if parts[0] == "refuse" and len(parts) > 1 and parts[1].isdigit() and attempt <= int(parts[1]):
                    status = 503
                with outer._lock:
                    outer.deliveries.append(
                        Delivery(path, {k.lower(): v for k, v in self.headers.items()}, body, status, time.time())
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def accepted(self, path: str) -> list[Delivery]:
        """The 2xx deliveries to this path."""
        with self._lock:
            return [d for d in self.deliveries if d.path == path and d.status < 300]

    def attempts(self, path: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.path == path]

    def close(self) -> None:
        self.server.shutdown()
