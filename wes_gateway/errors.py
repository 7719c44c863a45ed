"""Exceptions that become an ErrorResponse with their status code."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]


def error_body(status: int, msg: str) -> bytes:
    """The one ErrorResponse body every refusal carries."""
    return json.dumps({"msg": msg, "status_code": status}).encode()


async def send_error(send: Send, status: int, msg: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """An ErrorResponse sent straight from ASGI middleware, before Connexion is involved."""
    body = error_body(status, msg)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ApiError(Exception):
    status_code = 500

    def __init__(self, msg: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.headers = headers or {}


class BadRequest(ApiError):
    status_code = 400


class Unavailable(ApiError):
    status_code = 503


class Forbidden(ApiError):
    status_code = 403


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    status_code = 409


class PayloadTooLarge(ApiError):
    status_code = 413


class TooManyRequests(ApiError):
    status_code = 429
