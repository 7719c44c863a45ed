"""Download bodies, sent from the event loop: a client that reads slowly, or not at all, holds
no thread, and one that takes nothing for ``send_timeout`` seconds is dropped.

Flask runs in a thread of Connexion's WSGI bridge (a2wsgi: ten a web worker), and a body
iterated there holds its thread for as long as the client takes to read it: 50 connections
that read one byte of an output and stopped froze every request of the worker, /health too.
So a handler does every check (who, where, caps, Range) and returns an ``Offload`` as the
body. When the bridge's thread comes to iterate it, it hands itself to ``Downloads``, the
ASGI middleware around the bridge, and yields nothing: the thread is free. The middleware
then sends the body itself, pulling one chunk at a time (a file read, a piece of a zip) in a
small pool of its own.

uvicorn silently drops what is sent after a client has gone, so the middleware also reads the
ASGI receive channel for ``http.disconnect`` and stops at once: a dropped download of a
sparse terabyte kept a web worker's core busy for hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import struct
import termios
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import IO, Any

from wes_gateway.files.outputs import CHUNK

log = logging.getLogger(__name__)

# Where serving.HeaderDeadline puts the connection's transport in each request's scope.
TRANSPORT_KEY = "wes_gateway.transport"
# Chunks are read (and zips built) here, never in the event loop: a read may wait on a disk.
PUMP_THREADS = 4
# How often a send that waits on its client looks for progress.
_STEP = 1.0

_GONE: ContextVar[threading.Event | None] = ContextVar("wes_gateway_client_gone", default=None)
_HANDOFF: ContextVar[_Handoff | None] = ContextVar("wes_gateway_handoff", default=None)
_POOL = ThreadPoolExecutor(PUMP_THREADS, thread_name_prefix="download")


def client_gone() -> bool:
    """Whether the client of the request being answered has closed its connection."""
    event = _GONE.get()
    return event is not None and event.is_set()


class _Handoff:
    """Where an ``Offload`` leaves itself for the middleware of its request."""

    body: Offload | None = None


class Offload:
    """A download's body: ``chunks`` (each ``next`` may block: a read, a piece of a zip), and
    what to call when it is over (``release``: the user's download slot).

    Iterated in the bridge under ``Downloads``, it hands itself over and yields nothing.
    Anywhere else (a WSGI host without the middleware, Flask's test client) it yields its
    chunks in the caller's thread, until the client goes."""

    def __init__(self, chunks: Iterator[bytes], release: Callable[[], None] | None = None) -> None:
        self._chunks = chunks
        self._release = release
        self._handed = False
        self._done = False
        # One chunk at a time, and no close while a chunk is read (in another thread).
        self._lock = threading.Lock()

    def __iter__(self) -> Offload:
        return self

    def __next__(self) -> bytes:
        handoff = _HANDOFF.get()
        if handoff is not None and handoff.body is None and not self._handed:
            self._handed = True
            handoff.body = self
            raise StopIteration
        if client_gone():
            raise StopIteration
        chunk = self.next_chunk()
        if not chunk:
            raise StopIteration
        return chunk

    def next_chunk(self) -> bytes:
        """The next chunk, or b"" at the end (a source's empty chunks are skipped)."""
        with self._lock:
            if self._done:
                return b""
            for chunk in self._chunks:
                if chunk:
                    return chunk
            return b""

    def close(self) -> None:
        """The WSGI close: the end, unless the body was handed over (the middleware ends it)."""
        if not self._handed:
            self.finish()

    def finish(self) -> None:
        """Close the source and give back the slot; once, whoever calls."""
        with self._lock:
            if self._done:
                return
            self._done = True
            try:
                close = getattr(self._chunks, "close", None)
                if close is not None:
                    close()
            finally:
                if self._release is not None:
                    self._release()

    def finish_later(self) -> None:
        """``finish`` in the pool: closing a zip writes its directory, a file may be remote."""
        try:
            _POOL.submit(self.finish)
        except RuntimeError:  # the pool is shut down: the interpreter is exiting
            self.finish()


def file_chunks(handle: IO[bytes], start: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of an open file from ``start`` (fewer if it shrinks); it is closed at
    the end, or when the generator is closed."""
    with handle:
        fd = handle.fileno()
        offset, end = start, start + length
        while offset < end:
            block = os.pread(fd, min(CHUNK, end - offset), offset)
            if not block:
                return
            offset += len(block)
            yield block


class _Backlog:
    """Bytes sent on a connection that its client has not taken yet: the transport's buffer
    and, for a socket, its send queue (TIOCOUTQ: unsent or unacknowledged). While one send
    waits, nothing else writes to the connection, so a change is the client taking bytes."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.fd = -1
        sock = transport.get_extra_info("socket") if transport is not None else None
        with contextlib.suppress(AttributeError, OSError, ValueError):
            self.fd = sock.fileno() if sock is not None else -1

    def __call__(self) -> int | None:
        if self.transport is None:
            return None
        try:
            pending = int(self.transport.get_write_buffer_size())
        except (AttributeError, RuntimeError):
            return None
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                pending += struct.unpack("i", fcntl.ioctl(self.fd, termios.TIOCOUTQ, b"\0" * 4))[0]
        return pending


async def _send_in_time(send: Any, message: dict[str, Any], timeout: float, backlog: _Backlog) -> bool:
    """Send ``message``; False if the client took nothing for ``timeout`` seconds meanwhile
    (the send is then abandoned). Without a transport to watch, the send must end in time."""
    loop = asyncio.get_running_loop()
    sending = asyncio.ensure_future(send(message))
    try:
        last, quiet_since = backlog(), loop.time()
        while True:
            left = timeout - (loop.time() - quiet_since)
            if left <= 0:
                return False
            done, _ = await asyncio.wait({sending}, timeout=min(_STEP, left))
            if done:
                sending.result()
                return True
            now = backlog()
            if now is not None and now != last:
                last, quiet_since = now, loop.time()
    finally:
        if not sending.done():
            sending.cancel()


def _drop(transport: Any) -> None:
    """Cut the connection at once: a reset (no linger), so that neither the buffer of this
    worker nor the kernel's waits on a client that takes nothing."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    with contextlib.suppress(AttributeError, OSError, ValueError):
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class Downloads:
    """ASGI middleware around the WSGI bridge, for GET and HEAD (no request body the app
    would read): watches the receive channel for ``http.disconnect`` while the app answers
    (the app's thread sees it through ``client_gone``, in the context that the bridge copies
    into it), and sends an ``Offload`` that the app handed over from the event loop."""

    def __init__(self, app: Any, send_timeout: float) -> None:
        self.app = app
        self.send_timeout = send_timeout

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        gone = threading.Event()
        disconnected = asyncio.Event()
        handoff = _Handoff()
        gone_token, handoff_token = _GONE.set(gone), _HANDOFF.set(handoff)
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def watch() -> None:
            while True:
                message = await receive()
                inbox.put_nowait(message)
                if message.get("type") == "http.disconnect":
                    gone.set()
                    disconnected.set()
                    return

        async def send_until_handed(message: dict[str, Any]) -> None:
            # The bridge ends its (empty) response once the body is handed over: the body
            # and its end are sent from here instead.
            if handoff.body is not None and message["type"] == "http.response.body" and not message.get("more_body"):
                return
            await send(message)

        watcher = asyncio.create_task(watch())
        try:
            await self.app(scope, inbox.get, send_until_handed)
            if handoff.body is not None:
                await self._pump(scope, handoff.body, send, gone, disconnected)
        finally:
            watcher.cancel()
            if handoff.body is not None:
                handoff.body.finish_later()
            _HANDOFF.reset(handoff_token)
            _GONE.reset(gone_token)

    async def _pump(
        self, scope: dict[str, Any], body: Offload, send: Any, gone: threading.Event, disconnected: asyncio.Event
    ) -> None:
        loop = asyncio.get_running_loop()
        transport = scope.get(TRANSPORT_KEY)
        backlog = _Backlog(transport)
        while not gone.is_set():
            chunk = await loop.run_in_executor(_POOL, body.next_chunk)
            if not chunk:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            message = {"type": "http.response.body", "body": chunk, "more_body": True}
            if not await _send_in_time(send, message, self.send_timeout, backlog):
                log.info(
                    "dropped %s %s: its client took nothing for %g s (send_timeout)",
                    scope["method"],
                    scope["path"],
                    self.send_timeout,
                )
                _drop(transport)
                # The server learns of it on the next turn of the loop; until then it
                # would take the unfinished response for a fault of the app's.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(disconnected.wait(), 1.0)
                return
