"""Absolute URLs that point back at this service, through a trusted reverse proxy if any."""

from __future__ import annotations

import flask

from .config import current_settings

API_BASE = "/ga4gh/wes/v1"


def _from_trusted_proxy(request: flask.Request) -> bool:
    return (request.remote_addr or "unix") in current_settings().trusted_proxies


def external_base() -> str:
    """scheme://host[/prefix]/ga4gh/wes/v1, honouring X-Forwarded-* only from trusted peers."""
    request = flask.request
    scheme = request.scheme
    host = request.host
    prefix = ""
    if _from_trusted_proxy(request):
        scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip() or scheme
        host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip() or host
        prefix = request.headers.get("X-Forwarded-Prefix", "").split(",")[0].strip().rstrip("/")
        if prefix and not prefix.startswith("/"):
            prefix = "/" + prefix
    return f"{scheme}://{host}{prefix}{API_BASE}"


def external_url(path: str) -> str:
    return external_base() + path
