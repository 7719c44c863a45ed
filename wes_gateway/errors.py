"""Exceptions that become an ErrorResponse with their status code."""

from __future__ import annotations


class ApiError(Exception):
    status_code = 500

    def __init__(self, msg: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.headers = headers or {}


class BadRequest(ApiError):
    status_code = 400


class NotFound(ApiError):
    status_code = 404


class PayloadTooLarge(ApiError):
    status_code = 413


class TooManyRequests(ApiError):
    status_code = 429
