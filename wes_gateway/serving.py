"""Gunicorn worker classes for the ASGI app."""

from uvicorn_worker import UvicornWorker as _UvicornWorker


class UvicornWorker(_UvicornWorker):
    # X-Forwarded-* are interpreted by wes_gateway.urls against trusted_proxies; uvicorn
    # rewriting the client address first would hide which peer actually sent them.
    # wes_gateway.accesslog writes the access log (with user and request id) instead of uvicorn.
    CONFIG_KWARGS = {**_UvicornWorker.CONFIG_KWARGS, "proxy_headers": False, "access_log": False}
