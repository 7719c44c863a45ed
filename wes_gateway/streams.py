"""Response bodies that stop when their client goes away.

Flask runs in a thread of Connexion's WSGI bridge, and uvicorn silently drops what is sent
after a client has gone, so a body generator would otherwise read a file (or zip a run's
outputs) to its end for nobody: a dropped download of a sparse terabyte kept a web worker's
core busy for hours. ``WatchDisconnect`` reads the ASGI receive channel beside the app and
marks the request's context; bodies made here check that mark at every chunk.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import IO, Any

from werkzeug.wsgi import FileWrapper

CHUNK = 256 * 1024

_GONE: ContextVar[threading.Event | None] = ContextVar("wes_gateway_client_gone", default=None)


def client_gone() -> bool:
    """Whether the client of the request being answered has closed its connection."""
    event = _GONE.get()
    return event is not None and event.is_set()


class WatchDisconnect:
    """ASGI middleware: for GET and HEAD (no request body the app would read), watch the
    receive channel for ``http.disconnect`` while the app answers. The app's thread sees the
    mark through the context that Connexion's WSGI bridge copies into it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        gone = threading.Event()
        token = _GONE.set(gone)
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def watch() -> None:
            while True:
                message = await receive()
                inbox.put_nowait(message)
                if message.get("type") == "http.disconnect":
                    gone.set()
                    return

        watcher = asyncio.create_task(watch())
        try:
            await self.app(scope, inbox.get, send)
        finally:
            watcher.cancel()
            _GONE.reset(token)


class FileStream(FileWrapper):
    """An open file as a WSGI body (seekable, so that Range is served by seeking), ended early
    when the client has gone."""

    def __init__(self, handle: IO[bytes]) -> None:
        super().__init__(handle, CHUNK)

    def __next__(self) -> bytes:
        if client_gone():
            raise StopIteration
        return super().__next__()


def while_connected(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """``chunks`` until the client goes away; the source is closed either way."""
    source = iter(chunks)
    try:
        for chunk in source:
            if client_gone():
                return
            yield chunk
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
