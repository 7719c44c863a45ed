"""The run browser: server-rendered pages (Flask's Jinja2) for the people who submit and
watch workflows. It reads the store through the same functions, and with the same per-user
visibility, as the API; the live parts are a few lines of JavaScript over the API's own
routes (status, events), and every asset is served from here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import flask

from wes_gateway import store
from wes_gateway.config import current_settings
from wes_gateway.errors import BadRequest
from wes_gateway.files import outputs
from wes_gateway.files.paths import RunPaths
from wes_gateway.web import service_info
from wes_gateway.web.identity import User, current_user
from wes_gateway.web.urls import API_BASE, external_base

bp = flask.Blueprint(
    "ui", __name__, url_prefix="/ui", template_folder="templates", static_folder="static/ui", static_url_path="/static"
)

STATE_CLASS = {
    store.State.QUEUED: "waiting",
    store.State.INITIALIZING: "waiting",
    store.State.RUNNING: "running",
    store.State.CANCELING: "waiting",
    store.State.COMPLETE: "ok",
    store.State.EXECUTOR_ERROR: "failed",
    store.State.SYSTEM_ERROR: "failed",
    store.State.CANCELED: "canceled",
}
LOG_TAIL = 64 * 1024
PAGE = 50


def _caller() -> User:
    return current_user(flask.request.headers)


def _site() -> dict[str, str]:
    """Where the pages and the API are, as the browser sees them (through a proxy prefix)."""
    api = external_base()
    root = urlsplit(api).path.removesuffix(API_BASE)
    return {"ui": f"{root}/ui", "api": urlsplit(api).path, "static": f"{root}/ui/static"}


def _render(template: str, status: int = 200, **context: Any) -> flask.Response:
    html = flask.render_template(f"ui/{template}", site=_site(), user=_caller(), state_class=STATE_CLASS, **context)
    response = flask.make_response(html, status)
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _visible(run_id: str) -> store.Run | None:
    run = store.get_run(run_id)
    caller = _caller()
    if run is None or not caller.sees(run.owner):
        return None
    return run


@bp.get("/")
def run_list() -> flask.Response:
    from wes_gateway.web.handlers import _run_filter  # one reading of the filters, for the API and the pages

    args = flask.request.args
    states = [state for state in args.getlist("state") if state]
    tags = [tag for item in args.getlist("tag") for tag in item.split()]
    try:
        where = _run_filter(states, tags, args.get("workflow_type") or None, args.get("since") or None, None)
        rows, next_token = store.list_runs(PAGE, args.get("page_token") or None, where, full=True)
        error = ""
    except (BadRequest, store.BadPageToken) as exc:
        rows, next_token, error = [], "", getattr(exc, "msg", str(exc))
    caller = _caller()
    counts = store.state_counts(None if caller.admin else caller.name)
    kept = {key: value for key, value in args.items(multi=True) if key != "page_token" and value}
    next_url = f"?{urlencode([*kept.items(), ('page_token', next_token)])}" if next_token else ""
    return _render(
        "list.html",
        rows=rows,
        counts=counts,
        states=list(STATE_CLASS),
        chosen_states=states,
        tags=" ".join(tags),
        workflow_type=args.get("workflow_type", ""),
        since=args.get("since", ""),
        next_url=next_url,
        error=error,
        status=400 if error else 200,
    )


def _gantt(tasks: list[store.Task], started: str | None, ended: str | None) -> dict[str, Any]:
    """Bars of a timeline: one per task, in seconds from the run's start."""

    def seconds(stamp: str | None) -> float | None:
        if not stamp:
            return None
        moment = store.parse_stamp(stamp)
        return None if moment is None else moment.timestamp()

    now = datetime.now(UTC).timestamp()
    origin = seconds(started) or min((seconds(t.start_time) or now for t in tasks), default=now)
    finish = seconds(ended) or now
    bars: list[dict[str, Any]] = []
    for task in tasks:
        begin = seconds(task.start_time) or origin
        end = seconds(task.end_time) or finish
        if task.end_time is None:
            state = "canceled" if ended else "running"  # the run ended without it
        else:
            state = "ok" if task.exit_code == 0 else "failed"
        bars.append({"task": task, "start": max(0.0, begin - origin), "length": max(0.0, end - begin), "state": state})
    span = max([finish - origin, *(float(bar["start"]) + float(bar["length"]) for bar in bars), 1.0])
    row = 18 if len(bars) <= 60 else 6  # 500 tasks stay one screen tall and readable by tooltip
    return {"bars": bars, "span": span, "row": row, "height": max(1, len(bars)) * row + 24}


def _files(value: Any, found: list[dict[str, Any]], name: str = "") -> list[dict[str, Any]]:
    if isinstance(value, list):
        for item in value:
            _files(item, found, name)
    elif isinstance(value, dict):
        if value.get("class") == "File" and value.get("url"):
            found.append(
                {"name": name, "basename": value.get("basename", ""), "size": value.get("size"), "url": value["url"]}
            )
        elif value.get("class") == "Directory":
            for item in value.get("listing") or []:
                _files(item, found, name)
        else:
            for key, item in value.items():
                _files(item, found, key)
    return found


@bp.get("/runs/<run_id>")
def run_page(run_id: str) -> flask.Response:
    run = _visible(run_id)
    if run is None:
        return _render("missing.html", 404, run_id=run_id)
    paths = RunPaths.of(current_settings(), run_id)
    transitions = [e.data for e in store.events_after(run_id, 0, limit=100) if e.kind == "state"]
    last_event = store.event_count(run_id)
    log_text, log_offset = "", 0
    handle = paths.open_file(paths.stderr)
    if handle is not None:
        with handle:
            size = handle.seek(0, 2)
            start = max(0, size - LOG_TAIL)
            handle.seek(start)
            log_text, log_offset = handle.read(LOG_TAIL).decode("utf-8", "replace"), size
            if start:
                log_text = "…\n" + log_text.split("\n", 1)[-1]
    api = external_base()
    shown = outputs.with_urls(run.outputs or {}, paths, f"{api}/runs/{run_id}/outputs")
    tasks = store.all_tasks(run_id)
    request = dict(run.request)
    return _render(
        "run.html",
        run=run,
        request=request,
        params=json.dumps(request.get("workflow_params") or {}, indent=2),
        transitions=transitions,
        gantt=_gantt(tasks, run.start_time, run.end_time),
        log_text=log_text,
        after=f"{last_event}.{log_offset}",
        files=_files(shown, []),
        terminal=run.state in store.TERMINAL,
    )


@bp.post("/runs/<run_id>/cancel")
def cancel(run_id: str) -> Any:
    # Cross-site requests were refused before this (Origin and Sec-Fetch-Site checks).
    if _visible(run_id) is None:
        return _render("missing.html", 404, run_id=run_id)
    store.request_cancel(run_id)
    return flask.redirect(f"{_site()['ui']}/runs/{run_id}", code=303)


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """For token and JWT modes: the credential is kept in an HttpOnly, SameSite=Strict cookie
    that the pages (and their calls to the API) send; scripts cannot read it."""
    from wes_gateway.web.auth import UI_COOKIE, Authenticator, Unauthorized

    settings = current_settings()
    if flask.request.method == "GET":
        return _render("login.html", error="", modes=settings.auth_modes)
    token = flask.request.form.get("token", "").strip()
    try:
        Authenticator(settings).authenticate_here(
            "", {b"authorization": f"Bearer {token}".encode("latin-1", "replace")}
        )
    except (Unauthorized, UnicodeError) as exc:
        return _render(
            "login.html", 401, error=getattr(exc, "msg", "not a valid credential"), modes=settings.auth_modes
        )
    response = flask.redirect(f"{_site()['ui']}/", code=303)
    secure = flask.request.headers.get("X-Forwarded-Proto", flask.request.scheme) == "https"
    response.set_cookie(UI_COOKIE, token, httponly=True, samesite="Strict", secure=secure, path="/")
    return response


@bp.post("/logout")
def logout() -> Any:
    from wes_gateway.web.auth import UI_COOKIE

    response = flask.redirect(f"{_site()['ui']}/login", code=303)
    response.delete_cookie(UI_COOKIE, path="/")
    return response


@bp.get("/submit")
def submit_page() -> flask.Response:
    types = service_info.build(current_settings(), {}).workflow_type_versions
    choices = {name: version.workflow_type_version for name, version in types.items()}
    return _render("submit.html", choices=choices)
