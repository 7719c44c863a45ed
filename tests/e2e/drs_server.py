"""A small GA4GH DRS 1.x server on loopback, for the tests: an object by ``access_url``, one by
``access_id`` that needs a bearer token (for its object and access endpoints, never for its
bytes), one whose checksum is wrong, one bundle, 404s for anything else. Its bytes are served
under ``/data/``; it remembers every request's path and Authorization header."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from harness.loopback import Reply, Request, serve

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


def _object(object_id: str, netloc: str) -> dict[str, object] | None:
    """The DRS object ``object_id`` of the server at ``netloc``, or None."""
    data_url = f"http://{netloc}/data"
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


@contextlib.contextmanager
def drs_server() -> Iterator[DrsServer]:
    seen: list[tuple[str, str]] = []

    def answer(request: Request) -> Reply:
        authorization = request.headers.get("Authorization", "")
        seen.append((request.path, authorization))
        path = urlparse(request.path).path
        if path.startswith("/data/"):
            name = unquote(path[len("/data/") :])
            if name in BYTES:
                return Reply(200, BYTES[name], "application/octet-stream")
            return Reply(404, b"no such bytes", "text/plain")
        if not path.startswith(ROOT_PATH + "/objects/"):
            return Reply(404, b'{"msg": "no such route", "status_code": 404}')
        parts = [unquote(part) for part in path[len(ROOT_PATH + "/objects/") :].split("/")]
        found = _object(parts[0], netloc)
        if found is None:
            return Reply(404, b'{"msg": "no such object", "status_code": 404}')
        if parts[0] == "secret" and authorization != f"Bearer {TOKEN}":
            return Reply(401, b'{"msg": "a bearer token is needed", "status_code": 401}')
        if len(parts) == 1:
            return Reply(200, json.dumps(found).encode())
        if parts[0] == "secret" and parts[1:] == ["access", "tok"]:
            return Reply(200, json.dumps({"url": f"http://{netloc}/data/secret"}).encode())
        return Reply(404, b'{"msg": "no such access id", "status_code": 404}')

    with serve(answer) as netloc:  # what answer() names: bound before any request comes
        yield DrsServer(root=f"http://{netloc}{ROOT_PATH}", netloc=netloc, data=f"http://{netloc}/data/", seen=seen)
