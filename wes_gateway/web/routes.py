"""The one map of the HTTP surface: which operation of openapi/wes.yaml a request is, or which
of the service's other pages, and whether it needs credentials.

The spec is read once per process. ``RouteMap`` is the outermost middleware: it folds the
path to one spelling and resolves it once per request, keeping the ``Route`` in the ASGI
scope, where every other middleware reads it (``route_of``) instead of matching paths itself.

Public, that is served without credentials (a caller's valid credentials still count):
- the operations with ``security: []`` in the YAML;
- except where a setting withdraws that: ``SETTING_PROTECTED`` (the one such place);
- and, outside the operations, ``NON_API`` below: the spec documents, the Swagger UI, the run
  browser's login page and static files, ``/`` and ``/metrics`` (which decides for itself).
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wes_gateway.config import Settings

SPEC_DIR = Path(__file__).resolve().parents[2] / "openapi"
SPEC_FILE = "wes.yaml"
ROUTE_KEY = "wes_gateway.route"
HTTP_METHODS = ("get", "post", "put", "patch", "delete")

# Operations the YAML marks public that a setting may put behind credentials.
SETTING_PROTECTED: dict[str, Callable[[Settings], bool]] = {
    "GetServiceInfo": lambda settings: settings.auth_service_info,
}


@functools.cache
def spec() -> dict[str, Any]:
    """openapi/wes.yaml, parsed once per process."""
    loaded: dict[str, Any] = yaml.safe_load((SPEC_DIR / SPEC_FILE).read_text())
    return loaded


def normalise_path(path: str) -> str:
    """Repeated slashes folded and dot segments resolved, a trailing slash kept: one spelling
    for every check and for the router alike ('//ga4gh/...' is held to what '/ga4gh/...' is)."""
    if "//" not in path and "/." not in path:
        return path
    folded = posixpath.normpath("/" + path.lstrip("/"))
    if path.endswith("/") and folded != "/":
        folded += "/"
    return folded


@dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str
    template: str
    public: bool


@dataclass(frozen=True)
class Route:
    """What one request is. ``area``: api (a path of the YAML), spec, docs (Swagger UI), ui,
    ui-static, ui-login, metrics, root, or none (no such page)."""

    path: str
    raw_path: str
    area: str
    # What metrics label the request by: the YAML's template, never the raw path (whose ids
    # would make a label per run).
    label: str
    public: bool
    operation: Operation | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    # The methods the API path takes (with HEAD and OPTIONS), for Allow; None off the API.
    methods: tuple[str, ...] | None = None

    @property
    def operation_id(self) -> str | None:
        return self.operation.operation_id if self.operation is not None else None


@dataclass(frozen=True)
class _Path:
    template: str
    pattern: re.Pattern[str]
    operations: Mapping[str, Operation]
    methods: tuple[str, ...]


def _pattern(base: str, template: str) -> re.Pattern[str]:
    pattern = re.escape(base + template)
    # A parameter is one segment, but for a path inside a run's outputs.
    pattern = re.sub(r"\\\{path\\\}", "(?P<path>.+)", pattern)
    pattern = re.sub(r"\\\{([^}]+)\\\}", r"(?P<\1>[^/]+)", pattern)
    return re.compile(pattern + "/?")


def _paths(document: dict[str, Any], base: str, settings: Settings) -> list[_Path]:
    found = []
    for template, item in document.get("paths", {}).items():
        operations = {}
        for method in HTTP_METHODS:
            if method not in item:
                continue
            operation_id = str(item[method]["operationId"])
            public = item[method].get("security") == []
            if public and operation_id in SETTING_PROTECTED:
                public = not SETTING_PROTECTED[operation_id](settings)
            operations[method.upper()] = Operation(operation_id, method.upper(), template, public)
        methods = list(operations)
        if "GET" in operations:
            methods.append("HEAD")
        found.append(_Path(template, _pattern(base, template), operations, (*methods, "OPTIONS")))
    return found


def _non_api(path: str, base: str) -> tuple[str, str, bool]:
    """(area, label, public) of a path outside the YAML's operations: the rules kept since
    before the map, an exact allowlist (everything else needs credentials)."""
    rest = path[len(base) :] if path.startswith(base + "/") else None
    if rest is not None:
        if rest in ("/openapi.json", "/openapi.yaml"):
            return "spec", "other", True
        if rest == "/ui" or rest.startswith("/ui/"):
            return "docs", "other", True  # Connexion's Swagger UI
        return "none", "other", False
    label = path if path in ("/metrics", "/", "") else "other"
    if path.rstrip("/") == "/ui/login":
        return "ui-login", label, True
    if path.startswith("/ui/static/") and ".." not in path:
        return "ui-static", label, True  # the same stylesheet and script for everyone
    if path == "/ui" or path.startswith("/ui/"):
        return "ui", label, False
    if path.rstrip("/") == "/metrics":
        # /metrics decides for itself (loopback or admin), so it sees anonymous callers.
        return "metrics", label, path == "/metrics"
    if path in ("", "/"):
        return "root", label, True
    return "none", label, False


class RouteTable:
    """The compiled map, for one app's settings."""

    def __init__(self, settings: Settings, base: str) -> None:
        self.base = base
        self.paths = _paths(spec(), base, settings)

    def operations(self) -> list[Operation]:
        return [operation for item in self.paths for operation in item.operations.values()]

    def resolve(self, method: str, raw_path: str) -> Route:
        path = normalise_path(raw_path)
        for item in self.paths:
            found = item.pattern.fullmatch(path)
            if found is None:
                continue
            operation = item.operations.get("GET" if method == "HEAD" else method)
            if operation is not None:
                public = operation.public
            else:  # a method the path does not take (405) or OPTIONS: public if the path is
                public = all(op.public for op in item.operations.values())
            params = {key: value for key, value in found.groupdict().items() if value is not None}
            return Route(path, raw_path, "api", item.template, public, operation, params, item.methods)
        area, label, public = _non_api(path, self.base)
        return Route(path, raw_path, area, label, public)


def route_of(scope: Mapping[str, Any]) -> Route:
    """The route ``RouteMap`` resolved for this request."""
    route = scope[ROUTE_KEY]
    assert isinstance(route, Route)
    return route


class RouteMap:
    """ASGI middleware, outermost: resolves the request once and passes it on with its path
    folded to the one spelling (``normalise_path``) and its ``Route`` in the scope."""

    def __init__(self, app: Any, table: RouteTable) -> None:
        self.app = app
        self.table = table

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.table.resolve(scope["method"], scope["path"])
        scope = {**scope, ROUTE_KEY: route}
        if route.path != route.raw_path:
            scope["path"] = route.path
            scope["raw_path"] = route.path.encode("utf-8", "surrogateescape")
        await self.app(scope, receive, send)
