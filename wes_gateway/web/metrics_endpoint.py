"""GET /metrics: the scrape endpoint beside the WES API, and what a scrape reads (the samples
the processes wrote, and the store's run counts)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Container
from typing import Any

from wes_gateway import store
from wes_gateway.config import Settings
from wes_gateway.errors import send_error
from wes_gateway.host.sandbox import SandboxUnavailable, run_identity
from wes_gateway.metrics import ENV
from wes_gateway.web.identity import current_user
from wes_gateway.web.routes import route_of


class _RunsByState:
    """Read at scrape time from the store's counts (kept by triggers), not from any process."""

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("wes_gateway_runs", "Runs in the store, by state", labels=["state"])
        for state, count in sorted(store.state_counts().items()):
            family.add_metric([state], count)
        yield family


class _Process:
    """One process's own samples (no multiprocess directory: an app made by hand)."""

    def collect(self) -> Any:
        from prometheus_client import REGISTRY

        yield from REGISTRY.collect()


def exposition() -> tuple[bytes, str]:
    """The text a scrape gets, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Process())
    registry.register(_RunsByState())
    return generate_latest(registry), CONTENT_TYPE_LATEST


_LOOPBACK = ("127.", "::1", "::ffff:127.")


def _tcp_address(host: str, port: int) -> tuple[str, str]:
    """How /proc/net/tcp{,6} spells an address: (file, hex address:port)."""
    packed = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    # The kernel prints the address as 32-bit words in host (little-endian) order.
    words = "".join(f"{int.from_bytes(packed[i : i + 4], 'little'):08X}" for i in range(0, len(packed), 4))
    return ("/proc/net/tcp6" if len(packed) == 16 else "/proc/net/tcp"), f"{words}:{port:04X}"


def peer_uid(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The user owning the client's end of a loopback TCP connection (it is on this host), or None."""
    try:
        table, local = _tcp_address(*client)
        _table, remote = _tcp_address(*server)
        with open(table) as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                if fields[1] == local and fields[2] == remote:
                    return int(fields[7])
    except (OSError, ValueError, StopIteration):
        pass
    return None


class MetricsEndpoint:
    """GET /metrics, beside the WES API: to admins, and to a direct peer on loopback (a local
    Prometheus or its agent) unless that peer is a run's process: the runs share the host's
    network, so the kernel's record of who owns the peer's socket tells them apart (the run
    user, or the service's own user where runs are not dropped to another). A request that
    came through a proxy (X-Forwarded-For) is not local, whatever address the proxy has."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        try:
            identity = run_identity(settings)
        except SandboxUnavailable:
            identity = None
        # Who the runs are: run_user, each run's own uid from run_uids, or the service itself.
        self.run_uids: Container[int] = {identity.uid} if identity is not None else {os.geteuid()}
        if identity is not None and settings.run_uid_range is not None:
            self.run_uids = settings.run_uid_range

    def _local(self, scope: dict[str, Any], headers: dict[str, str]) -> bool:
        client, server = scope.get("client"), scope.get("server")
        if not client or not server or "x-forwarded-for" in headers or not str(client[0]).startswith(_LOOPBACK):
            return False
        owner = peer_uid((str(client[0]), int(client[1])), (str(server[0]), int(server[1])))
        return owner is not None and owner not in self.run_uids

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or route_of(scope).area != "metrics":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope.get("headers", [])}
        if not (self._local(scope, headers) or current_user(headers).admin):
            await send_error(send, 403, "metrics are served to admins, and to loopback clients that are not runs, only")
            return
        if scope["method"] not in ("GET", "HEAD"):
            await send_error(send, 405, f"{scope['method']} is not allowed here; use GET", [(b"allow", b"GET, HEAD")])
            return
        body, content_type = await asyncio.get_running_loop().run_in_executor(None, exposition)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
