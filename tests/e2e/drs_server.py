"""A small GA4GH DRS 1.x server on loopback, for the tests: an object by ``access_url``, one by
``access_id`` that needs a bearer token (for its object and access endpoints, never for its
bytes), one whose checksum is wrong, one bundle, 404s for anything else. Its bytes are served
under ``/data/``; it remembers every request's path and Authorization header."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

ROOT_PATH = "/ga4gh/drs/v1"
TOKEN = "s3cr3t-drs-token-7f1e2d"
BYTES = {
    "obj1": b"bytes of object one\n",
    "secret": b"bytes behind a token\n",
    "wrongsum": b"these bytes do not match\n",
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class DrsServer:
    root: str  # the DRS API base URL
    netloc: str
    data: str  # where its bytes are served (the access URLs' prefix)
    seen: list[tuple[str, str]]  # (path, Authorization header or "")


@contextlib.contextmanager
def drs_server() -> Iterator[DrsServer]:
    seen: list[tuple[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: object) -> None:
            pass

        def send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def object(self, object_id: str) -> dict[str, object] | None:
            base = {"id": object_id, "self_uri": f"drs://{netloc}/{object_id}", "created_time": "2026-01-01T00:00:00Z"}
            if object_id in ("obj1", "wrongsum"):
                data = BYTES[object_id]
                digest = sha256(data) if object_id == "obj1" else sha256(b"something else")
                return {
                    **base,
                    "name": f"{object_id}.txt",
                    "size": len(data),
                    "checksums": [{"type": "sha-256", "checksum": digest}],
                    "access_methods": [{"type": "https", "access_url": {"url": f"{data_url}/{object_id}"}}],
                }
            if object_id == "secret":
                data = BYTES[object_id]
                return {
                    **base,
                    "name": "secret.txt",
                    "size": len(data),
                    "checksums": [{"type": "md5", "checksum": hashlib.md5(data).hexdigest()}],
                    "access_methods": [{"type": "https", "access_id": "tok"}],
                }
            if object_id == "bundle":
                return {**base, "size": 0, "checksums": [], "contents": [{"name": "a", "id": "obj1"}]}
            return None

        def do_GET(self) -> None:
            authorization = self.headers.get("Authorization", "")
            seen.append((self.path, authorization))
            path = urlparse(self.path).path
            if path.startswith("/data/"):
                name = unquote(path[len("/data/") :])
                if name in BYTES:
                    return self.send(200, BYTES[name], "application/octet-stream")
                return self.send(404, b"no such bytes", "text/plain")
            if not path.startswith(ROOT_PATH + "/objects/"):
                return self.send(404, b'{"msg": "no such route", "status_code": 404}')
            parts = [unquote(part) for part in path[len(ROOT_PATH + "/objects/") :].split("/")]
            found = self.object(parts[0])
            if found is None:
                return self.send(404, b'{"msg": "no such object", "status_code": 404}')
            if parts[0] == "secret" and authorization != f"Bearer {TOKEN}":
                return self.send(401, b'{"msg": "a bearer token is needed", "status_code": 401}')
            if len(parts) == 1:
                return self.send(200, json.dumps(found).encode())
            if parts[0] == "secret" and parts[1:] == ["access", "tok"]:
                return self.send(200, json.dumps({"url": f"{data_url}/secret"}).encode())
            return self.send(404, b'{"msg": "no such access id", "status_code": 404}')

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    netloc = f"127.0.0.1:{httpd.server_address[1]}"
    data_url = f"http://{netloc}/data"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield DrsServer(root=f"http://{netloc}{ROOT_PATH}", netloc=netloc, data=data_url + "/", seen=seen)
    finally:
        httpd.shutdown()
        httpd.server_close()
