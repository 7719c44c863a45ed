"""Absolute URLs that point back at this service, through a trusted reverse proxy if any."""

from __future__ import annotations

import re

import flask

from wes_gateway.config import current_settings

API_BASE = "/ga4gh/wes/v1"
# What a Host (or X-Forwarded-Host) may be: a name or an address, and a port.
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?$")
# What X-Forwarded-Prefix may be: path segments, none empty ('//evil.example' is a host).
_PREFIX = re.compile(r"^(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*$")


def _from_trusted_proxy(request: flask.Request) -> bool:
    return (request.remote_addr or "unix") in current_settings().trusted_proxies


def external_base() -> str:
    """scheme://host[/prefix]/ga4gh/wes/v1: from ``public_url`` where it is set; else from the
    request, honouring X-Forwarded-* only from trusted peers, and only what is well formed (a
    URL a response carries, or a redirect, must never lead off to a host a header named)."""
    public = current_settings().public_url
    if public:
        return public.rstrip("/") + API_BASE
    request = flask.request
    scheme = request.scheme if request.scheme in ("http", "https") else "http"
    host = request.host if _HOST.match(request.host) else "localhost"
    prefix = ""
    if _from_trusted_proxy(request):
        forwarded_scheme = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        if forwarded_scheme in ("http", "https"):
            scheme = forwarded_scheme
        forwarded_host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
        if _HOST.match(forwarded_host):
            host = forwarded_host
        forwarded_prefix = request.headers.get("X-Forwarded-Prefix", "").split(",")[0].strip().rstrip("/")
        if forwarded_prefix and not forwarded_prefix.startswith("/"):
            forwarded_prefix = "/" + forwarded_prefix
        if _PREFIX.match(forwarded_prefix):
            prefix = forwarded_prefix
    return f"{scheme}://{host}{prefix}{API_BASE}"


def external_url(path: str) -> str:
    return external_base() + path
