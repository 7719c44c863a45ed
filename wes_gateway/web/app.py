"""The application factory and the error handlers that turn every failure into ErrorResponse."""

from __future__ import annotations

import copy
import json
import logging
import re
from typing import Any

import connexion
import peewee
from connexion.exceptions import ProblemException
from connexion.jsonifier import Jsonifier
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from connexion.middleware import MiddlewarePosition
from connexion.resolver import Resolver
from connexion.validators import ParameterValidator
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from wes_gateway import store
from wes_gateway.config import SETTINGS_KEY, Settings, load_settings
from wes_gateway.errors import ApiError, error_body, send_error
from wes_gateway.host import volumes
from wes_gateway.intake.uploads import HandedOver, UploadMiddleware
from wes_gateway.logsetup import setup_logging
from wes_gateway.web import routes
from wes_gateway.web.accesslog import AccessLog
from wes_gateway.web.auth import AuthMiddleware, check_settings
from wes_gateway.web.events import EventStream
from wes_gateway.web.handlers import TAG_FILTERS_KEY, tag_filter_limit
from wes_gateway.web.metrics_endpoint import MetricsEndpoint
from wes_gateway.web.routes import route_of
from wes_gateway.web.streams import Downloads
from wes_gateway.web.urls import API_BASE

log = logging.getLogger(__name__)

_REASONS = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    406: "not acceptable",
    413: "payload too large",
    415: "unsupported media type",
    429: "too many requests",
    500: "internal error",
    503: "unavailable",
    507: "insufficient storage",
}


class OperationResolver(Resolver):
    """Bind operationIds (GetServiceInfo, ...) to snake_case functions in handlers.py."""

    def resolve_operation_id(self, operation: Any) -> str:
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", operation.operation_id).lower()
        return f"wes_gateway.web.handlers.{name}"


def error_response(status: int, msg: str, headers: dict[str, str] | None = None) -> ConnexionResponse:
    return ConnexionResponse(
        status_code=status,
        mimetype="application/json",
        content_type="application/json",
        body=error_body(status, msg),
        headers=headers or {},
    )


# WES documents no 400 for the task routes: a request there that names no page of tasks is
# "not found" (a 404 that those routes do document).
_TASK_OPERATIONS = frozenset({"ListTasks", "GetTask"})


def _problem(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, ProblemException)
    detail = str(exc.detail or exc.title or _REASONS.get(exc.status, "error"))
    status = exc.status
    if status == 400 and route_of(request.scope).operation_id in _TASK_OPERATIONS:
        status = 404
    # jsonschema appends the whole schema and instance; the first paragraph says it all.
    return error_response(status, detail.split("\n\n")[0], dict(exc.headers or {}))


def _http(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if exc.detail and exc.detail != "Not Found" else None
    msg = detail or _REASONS.get(exc.status_code, "error")
    if exc.status_code == 404 and detail is None:
        msg = "no such route"
    return error_response(exc.status_code, str(msg), dict(exc.headers or {}))


def _api(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.msg, exc.headers)


def _unexpected(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    if isinstance(exc, peewee.OperationalError):
        # The store is busy (SQLite locked past its busy timeout) or out of reach: the request
        # was not carried out, and the same request later may well be.
        log.warning("store unavailable on %s %s: %s", request.method, request.url.path, exc)
        return error_response(503, "the service's database is busy or unavailable; try again", {"Retry-After": "30"})
    if isinstance(exc, OSError) and exc.errno in volumes.NO_SPACE:
        log.error("out of disk space on %s %s: %s", request.method, request.url.path, exc)
        return error_response(507, "the service is out of disk space; try again later", {"Retry-After": "300"})
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error; the server log has the details")


class NoSniff:
    """Every response says what it is and nothing else: browsers must not guess a run's log
    or output, which the run wrote, to be HTML or script."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-content-type-options"]
                message = {**message, "headers": [*headers, (b"x-content-type-options", b"nosniff")]}
            await send(message)

        await self.app(scope, receive, send_nosniff)


class RequestGuard:
    """Refuse, as ErrorResponses, requests that Connexion itself would turn into 500s:
    a form POST without a usable multipart Content-Type (its form parser raises KeyError),
    and paths with control characters (Flask routes them where Connexion's router does not,
    and the handler then runs without an operation context). Answers OPTIONS, and a method
    the path does not take, from the route map."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in scope["path"]):
            await send_error(send, 404, "no such route")
            return
        route = route_of(scope)
        allowed = route.methods
        if allowed is not None and (scope["method"] == "OPTIONS" or route.operation is None):
            allow = [(b"allow", ", ".join(allowed).encode())]
            if scope["method"] == "OPTIONS":
                await send({"type": "http.response.start", "status": 204, "headers": allow})
                await send({"type": "http.response.body", "body": b""})
            else:
                await send_error(send, 405, f"{scope['method']} is not allowed here; use {', '.join(allowed)}", allow)
            return
        if route.operation_id == "RunWorkflow" and not _run_body(scope):
            await send_error(
                send,
                400,
                "POST /runs takes a multipart/form-data body (RunRequest fields and workflow_attachment "
                "files) or an application/json RunRequest object",
            )
            return
        await self.app(scope, receive, send)


def _run_body(scope: dict[str, Any]) -> bool:
    """Whether a POST /runs body is of a type the service reads: multipart with a boundary,
    or the json-run-request extension's RunRequest object (no attachments)."""
    headers = dict(scope.get("headers") or [])
    content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
    multipart = content_type.startswith("multipart/form-data") and "boundary=" in content_type
    return multipart or content_type.split(";")[0].strip() == "application/json"


def _bad_form(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    return error_response(400, f"malformed multipart/form-data body: {exc}")


class NamedParameterValidator(ParameterValidator):
    """Connexion's parameter checks, with the parameter's name in the message: "state:
    'FINISHED' is not one of [...]" says what to fix, the bare message does not."""

    @staticmethod
    def validate_parameter(
        parameter_type: str, value: Any, param: dict[str, Any], param_name: str | None = None
    ) -> str | None:
        error = ParameterValidator.validate_parameter(parameter_type, value, param, param_name)
        if not error:
            return None
        return f"{param.get('name', param_name)}: {error}" if value is not None else str(error)


def _is_submission(scope: dict[str, Any]) -> bool:
    return route_of(scope).operation_id == "RunWorkflow"


class _OneBodyTypeNote(logging.Filter):
    """POST /runs takes a form or a JSON RunRequest by design; Connexion warns of that on every
    request it validates, which buried the lines that matter in the service's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("this operation accepts multiple content types")


def create_app(settings: Settings | None = None, validate_responses: bool | None = None) -> connexion.FlaskApp:
    """Build the app. Opens (and if needed migrates) the store; starts no threads or processes."""
    settings = settings or load_settings()
    setup_logging()
    note = logging.getLogger("connexion.operations.openapi3")
    if not any(isinstance(existing, _OneBodyTypeNote) for existing in note.filters):
        note.addFilter(_OneBodyTypeNote())
    check_settings(settings)
    settings.runs_dir.mkdir(parents=True, exist_ok=True)
    db = store.open_database(settings.effective_database_url)
    if store.current_version(db) != store.SCHEMA_VERSION:
        store.upgrade(db)
    db.close()

    # Compact JSON: Connexion's default indents every response, which costs bytes and time.
    app = connexion.FlaskApp(__name__, specification_dir=str(routes.SPEC_DIR), jsonifier=Jsonifier(json))
    app.app.config[SETTINGS_KEY] = settings
    app.add_api(
        # A copy of the one parsed spec: Connexion resolves its references in place.
        copy.deepcopy(routes.spec()),
        resolver=OperationResolver(),
        # WES clients may send parameters this version does not know: ignored, not refused.
        strict_validation=False,
        validator_map={"parameter": NamedParameterValidator},
        validate_responses=settings.response_validation if validate_responses is None else validate_responses,
    )
    app.app.config[TAG_FILTERS_KEY] = tag_filter_limit(routes.spec())
    # Outermost: every later middleware reads the request's route from the scope.
    table = routes.RouteTable(settings, API_BASE)
    app.add_middleware(routes.RouteMap, position=MiddlewarePosition.BEFORE_EXCEPTION, table=table)
    app.add_middleware(AccessLog, position=MiddlewarePosition.BEFORE_EXCEPTION)
    app.add_middleware(NoSniff, position=MiddlewarePosition.BEFORE_EXCEPTION)
    app.add_middleware(AuthMiddleware, position=MiddlewarePosition.BEFORE_SWAGGER, settings=settings)
    app.add_middleware(MetricsEndpoint, position=MiddlewarePosition.BEFORE_SWAGGER, settings=settings)
    app.add_middleware(RequestGuard, position=MiddlewarePosition.BEFORE_SWAGGER)
    app.add_middleware(
        UploadMiddleware, position=MiddlewarePosition.BEFORE_SWAGGER, settings=settings, applies=_is_submission
    )
    app.add_middleware(EventStream, position=MiddlewarePosition.BEFORE_SWAGGER, settings=settings)
    # Watches for clients going away, and sends downloads (streams.Offload) from the event loop.
    app.add_middleware(Downloads, position=MiddlewarePosition.BEFORE_SWAGGER, send_timeout=settings.send_timeout)
    app.add_middleware(HandedOver, position=MiddlewarePosition.BEFORE_CONTEXT)
    from wes_gateway.web.ui import bp as ui_pages

    app.app.register_blueprint(ui_pages)
    app.add_error_handler(ProblemException, _problem)
    app.add_error_handler(HTTPException, _http)
    app.add_error_handler(ApiError, _api)
    app.add_error_handler(MultiPartException, _bad_form)
    app.add_error_handler(Exception, _unexpected)
    return app
