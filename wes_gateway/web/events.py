"""GET /runs/{run_id}/events: a run's state changes, task starts and ends and new lines of its
leader's log, as Server-Sent Events, resumable with Last-Event-ID.

Served in the worker's event loop, as ASGI, before Connexion: a listener costs a coroutine
and a short store query now and then (on a small pool of its own), never a thread for the
stream's lifetime. Each event's id is ``<events of the run so far>.<log offset>``, the
position to resume from: numbered within the run, so that it says nothing of other runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from wes_gateway import store
from wes_gateway.config import Settings
from wes_gateway.errors import send_error
from wes_gateway.files.paths import RunPaths
from wes_gateway.web.identity import current_user
from wes_gateway.web.routes import route_of

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
LOG_CHUNK = 64 * 1024
_ID = re.compile(r"^(\d{1,18})\.(\d{1,18})$")


@dataclass
class Cursor:
    event: int = 0
    log_offset: int = 0

    def text(self) -> str:
        return f"{self.event}.{self.log_offset}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        found = _ID.match(text.strip())
        return cls(int(found.group(1)), int(found.group(2))) if found else cls()


def frame(kind: str, data: dict[str, Any], cursor: Cursor) -> bytes:
    body = json.dumps(data, separators=(",", ":"))
    return f"id: {cursor.text()}\nevent: {kind}\ndata: {body}\n\n".encode()


class EventStream:
    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        # The store is synchronous: its brief calls go to two threads of their own, so that
        # hundreds of listeners never queue ahead of the worker's ordinary requests.
        self.pool = ThreadPoolExecutor(2, thread_name_prefix="events")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        route = route_of(scope) if scope["type"] == "http" else None
        if route is None or route.operation_id != "get_run_events":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope.get("headers", [])}
        run_id = route.params["run_id"]
        caller = current_user(headers)
        run = await self._call(store.get_run, run_id)
        if run is None or not caller.sees(run.owner):
            await send_error(send, 404, f"run {run_id} not found")
            return
        # Last-Event-ID, as EventSource sends it on reconnecting; or ?after=, for a page that
        # already shows everything up to a position (EventSource cannot set headers itself).
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        cursor = Cursor.parse(headers.get("last-event-id") or (query.get("after") or [""])[0])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),  # nor may a proxy buffer it
                ],
            }
        )
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        disconnected = asyncio.ensure_future(self._disconnect(receive))
        try:
            await self._stream(run_id, cursor, send, disconnected)
        except OSError:  # the client went away mid-write
            pass
        finally:
            disconnected.cancel()

    async def _call(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, function, *args)

    @staticmethod
    async def _disconnect(receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _stream(self, run_id: str, cursor: Cursor, send: Any, disconnected: asyncio.Future[None]) -> None:
        paths = RunPaths.of(self.settings, run_id)
        idle = 0.0
        # The stream closes only once the run has ended and all it wrote has been sent.
        while not disconnected.done():
            events, lines, ended = await self._call(self._poll, run_id, paths, cursor)
            chunks = []
            for event in events:
                cursor.event += 1  # its number within the run (store.events_after)
                chunks.append(frame(event.kind, event.data, cursor))
            if lines is not None:
                offset, text = lines
                cursor.log_offset = offset
                chunks.append(frame("log", {"stream": "stderr", "text": text}, cursor))
            if chunks:
                await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": True})
                idle = 0.0
                continue  # there may be more right away
            if ended:
                await send({"type": "http.response.body", "body": frame("end", {}, cursor), "more_body": False})
                return
            if idle >= KEEPALIVE_SECONDS:
                await send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
                idle = 0.0
            await asyncio.wait([disconnected], timeout=POLL_SECONDS)
            idle += POLL_SECONDS

    @staticmethod
    def _poll(
        run_id: str, paths: RunPaths, cursor: Cursor
    ) -> tuple[list[store.RunEvent], tuple[int, str] | None, bool]:
        """New events, new complete log lines, and whether the run has ended (asked first, so
        that nothing it wrote before ending can be missed)."""
        state = store.get_run_state(run_id)
        ended = state is None or state[1] in store.TERMINAL
        events = store.events_after(run_id, cursor.event)
        lines = None
        handle = paths.open_file(paths.stderr)
        if handle is not None:
            with handle:
                handle.seek(cursor.log_offset)
                chunk = handle.read(LOG_CHUNK)
            end = chunk.rfind(b"\n")
            if ended and end < 0 and chunk:
                end = len(chunk) - 1  # the last line, unterminated: nothing more will come
            if end >= 0:
                lines = (cursor.log_offset + end + 1, chunk[: end + 1].decode("utf-8", "replace"))
        return events, lines, ended and not events and lines is None
