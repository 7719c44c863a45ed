"""Loopback stand-ins for the HTTP services a run or the gateway reaches (an identity
provider's keys, a TRS registry, a DRS server, a plain file server): a server on a free
127.0.0.1 port, each request in a thread of its own, whose GETs a function answers."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message


@dataclass(frozen=True)
class Request:
    path: str  # as sent: with its query
    headers: Message


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str | None = "application/json"  # None: no Content-Type header


Answer = Callable[[Request], Reply]


@contextlib.contextmanager
def serve(answer: Answer) -> Iterator[str]:
    """An HTTP/1.0 server on a free loopback port whose every GET ``answer`` answers; its
    netloc (127.0.0.1:port). Stopped at the end; a request still being answered then is left
    to its (daemon) thread, so an answer that waits must bound its wait."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            reply = answer(Request(path=self.path, headers=self.headers))
            self.send_response(reply.status)
            if reply.content_type is not None:
                self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextlib.contextmanager
def serve_bytes(body: bytes, delay: float = 0.0) -> Iterator[str]:
    """A loopback HTTP service answering every GET with ``body`` (after ``delay`` seconds);
    its base URL."""

    def answer(_: Request) -> Reply:
        time.sleep(delay)
        return Reply(200, body, content_type=None)

    with serve(answer) as netloc:
        yield f"http://{netloc}"
