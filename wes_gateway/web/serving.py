"""Gunicorn worker classes for the ASGI app, and the HTTP protocol they speak."""

from __future__ import annotations

import asyncio
from functools import cache
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker as _UvicornWorker

from wes_gateway.config import load_settings
from wes_gateway.errors import error_body
from wes_gateway.web.streams import TRANSPORT_KEY


@cache
def header_timeout() -> float:
    """Seconds a connection has to send a request's line and headers (the settings')."""
    return load_settings().header_timeout


class HeaderDeadline(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, with a deadline for each request's headers: a client that
    connects and sends nothing, or trickles its headers a byte at a time (slowloris), is cut
    off instead of holding a connection of the worker for ever. Bodies are not timed here
    (uploads are slow on slow links); idle keep-alive connections are uvicorn's own.

    Each request's scope carries the connection's transport (``streams.TRANSPORT_KEY``): the
    download middleware watches what its client takes, and drops one that takes nothing."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[TRANSPORT_KEY] = self.transport  # type: ignore[literal-required]
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(header_timeout(), self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            body = error_body(408, f"the request's headers did not come within {header_timeout():g} s")
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            self.transport.close()


class UvicornWorker(_UvicornWorker):
    # X-Forwarded-* are interpreted by wes_gateway.web.urls against trusted_proxies; uvicorn
    # rewriting the client address first would hide which peer actually sent them.
    # wes_gateway.web.accesslog writes the access log (with user and request id) instead of uvicorn.
    CONFIG_KWARGS: dict[str, Any] = {
        **_UvicornWorker.CONFIG_KWARGS,
        "proxy_headers": False,
        "access_log": False,
        "http": HeaderDeadline,
    }
