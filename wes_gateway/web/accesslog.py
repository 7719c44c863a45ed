"""One access-log line per request, with the authenticated user and a request id.

The request id is the proxy's (``X-Request-ID``, e.g. Apache's mod_unique_id) or a new one,
and is echoed back in the response, so a line in Apache's log, ours and a client's report
can be matched up.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from wes_gateway import metrics
from wes_gateway.web.identity import ACCESS_RECORD
from wes_gateway.web.routes import route_of

log = logging.getLogger("wes_gateway.access")


class AccessLog:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        request_id = printable(headers.get(b"x-request-id", b"").decode("latin-1")[:128]) or uuid.uuid4().hex
        record: dict[str, Any] = {"user": "-", "status": 0, "bytes": 0}
        scope[ACCESS_RECORD] = record  # the auth middleware fills in the user

        async def send_logged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode("latin-1"))],
                }
            elif message["type"] == "http.response.body":
                record["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            elapsed = time.perf_counter() - started
            route = route_of(scope)
            measured = metrics.get()
            measured.requests.labels(scope["method"], route.label, str(record["status"])).observe(elapsed)
            if route.operation_id == "RunWorkflow":
                measured.submissions.labels(str(record["status"])).inc()
            peer = (scope.get("client") or ("-", 0))[0]
            query = scope.get("query_string", b"").decode("latin-1")
            target = printable(route.raw_path + (f"?{query}" if query else ""))
            log.info(
                '%s %s "%s %s" %s %d %.1fms rid=%s',
                peer,
                printable(record["user"] or "-"),
                scope["method"],
                target,
                record["status"],
                record["bytes"],
                elapsed * 1000,
                request_id,
            )


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Control characters as escapes: a request cannot write lines of its own into the log."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)
