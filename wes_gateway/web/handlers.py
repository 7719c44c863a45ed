"""The WES operations (and the extension routes): parse, call, build the model."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import flask

from wes_gateway import engines, store
from wes_gateway.config import current_settings
from wes_gateway.errors import ApiError, BadRequest, Conflict, Forbidden, NotFound, TooManyRequests, Unavailable
from wes_gateway.files import outputs
from wes_gateway.files.paths import RunPaths, supervisor_beat
from wes_gateway.intake import staging, trs
from wes_gateway.intake.form import run_form_of
from wes_gateway.runs import retention, tasks, wakeup
from wes_gateway.web import downloads, provenance, service_info, streams
from wes_gateway.web.identity import User, current_user
from wes_gateway.web.models import (
    Log,
    RunId,
    RunListResponse,
    RunLog,
    RunRequest,
    RunStatus,
    RunSummary,
    TaskListResponse,
    TaskLog,
)
from wes_gateway.web.urls import external_base, external_url

Json = dict[str, Any]
# Seconds a user with every download slot taken is told to wait.
DOWNLOAD_RETRY_AFTER = 5


def _page_size(page_size: int | None) -> int:
    settings = current_settings()
    # WES leaves page_size to the server; 0 (and anything below) asks for no particular size.
    if page_size is None or page_size < 1:
        return settings.default_page_size
    return min(page_size, settings.max_page_size)


def _caller() -> User:
    return current_user(flask.request.headers)


def _visible_run(run_id: str) -> store.Run:
    run = store.get_run(run_id)
    caller = _caller()
    # Another user's run is "not found", exactly like a run that does not exist.
    if run is None or not caller.sees(run.owner):
        raise NotFound(f"run {run_id} not found")
    return run


def get_service_info() -> Json:
    settings = current_settings()
    caller = _caller()
    owner = None if settings.state_counts_scope == "all" or caller.admin else caller.name
    return service_info.build(settings, service_info.state_counts(owner)).to_json()


def _timestamp(name: str, text: str | None) -> str | None:
    """An RFC 3339 time as the store keeps submission times (UTC, whole seconds)."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise BadRequest(f"{name}: {text!r} is not an RFC 3339 date-time such as 2026-12-01T09:30:00Z") from None
    if moment.tzinfo is None:
        raise BadRequest(f"{name}: {text!r} needs a time zone (Z or an offset such as +01:00)")
    return store.stamp(moment)


# Where create_app keeps the spec's limit on `tag` filters (tag_filter_limit).
TAG_FILTERS_KEY = "wes_gateway.tag_filters"


def tag_filter_limit(spec: dict[str, Any]) -> int:
    """How many `tag` filters a list may have: ListRuns' maxItems in the spec, which Connexion
    holds the API to (each filter is a join, and SQLite allows 64); _run_filter holds the run
    browser to the same number."""
    [tag] = [param for param in spec["paths"]["/runs"]["get"]["parameters"] if param.get("name") == "tag"]
    return int(tag["schema"]["maxItems"])


def _run_filter(
    state: list[str] | None,
    tag: list[str] | None,
    workflow_type: str | None,
    since: str | None,
    until: str | None,
) -> store.RunFilter:
    caller = _caller()
    limit = int(flask.current_app.config[TAG_FILTERS_KEY])
    if len(tag or []) > limit:
        raise BadRequest(f"tag: at most {limit} tag filters (given {len(tag or [])})")
    pairs = []
    for item in tag or []:
        key, colon, value = item.partition(":")
        if not colon or not key:
            raise BadRequest(f"tag: {item!r} is not key:value")
        pairs.append((key, value))
    return store.RunFilter(
        owner=None if caller.admin else caller.name,
        states=tuple(dict.fromkeys(state or [])),
        tags=tuple(dict.fromkeys(pairs)),
        workflow_type=workflow_type.upper() if workflow_type else None,
        since=_timestamp("since", since),
        until=_timestamp("until", until),
    )


def list_runs(
    page_size: int | None = None,
    page_token: str | None = None,
    state: list[str] | None = None,
    tag: list[str] | None = None,
    workflow_type: str | None = None,
    since: str | None = None,
    until: str | None = None,
    sort_order: str = "desc",
    count: bool = False,
) -> Json:
    where = _run_filter(state, tag, workflow_type, since, until)
    try:
        rows, next_token = store.list_runs(_page_size(page_size), page_token, where, ascending=sort_order == "asc")
    except store.BadPageToken as exc:
        raise BadRequest(str(exc)) from None
    runs = [
        RunSummary(
            run_id=row.run_id,
            state=row.state,
            start_time=row.start_time,
            end_time=row.end_time,
            tags=row.tags,
        )
        for row in rows
    ]
    total = store.count_runs(where) if count else None
    return RunListResponse(runs=runs, next_page_token=next_token, total_runs=total).to_json()


def run_workflow(context_: Mapping[str, Any]) -> Json:
    # The form as the upload middleware parsed it (form.RunForm); Connexion has held its copy
    # of the body to the contract, and binds nothing else here.
    form = run_form_of(context_)
    if form is None:  # the upload middleware reads every POST /runs: this is a wiring fault
        raise ApiError("the submission was not read by the upload middleware")
    settings = current_settings()
    caller = _caller()
    limit = settings.max_active_runs_per_user
    too_many = TooManyRequests(
        f"{caller.name or 'you'} already have {limit} queued or running runs",
        headers={"Retry-After": str(int(max(settings.poll_interval * 20, 30)))},
    )
    # Early, so an over-limit user does not upload for nothing; create_run enforces it.
    if limit and store.active_runs(caller.name) >= limit:
        raise too_many
    staged = staging.stage(form, settings, owner=caller.name)
    try:
        store.create_run(staged.new_run, max_active=limit)
    except BaseException as exc:
        shutil.rmtree(staged.paths.root, ignore_errors=True)
        if isinstance(exc, store.LimitReached):
            raise too_many from None
        raise
    wakeup.poke(wakeup.socket_path(settings))  # claimed now, not at the supervisor's next poll
    return RunId(run_id=staged.new_run.run_id).to_json()


def get_run_log(run_id: str) -> Json:
    run = _visible_run(run_id)
    pinned = trs.system_logs(RunPaths.of(current_settings(), run_id))
    log = Log(
        name=run.workflow_type.lower() + ":" + run.request["workflow_url"],
        cmd=run.cmd or None,
        start_time=run.start_time,
        end_time=run.end_time,
        stdout=external_url(f"/runs/{run_id}/logs/stdout"),
        stderr=external_url(f"/runs/{run_id}/logs/stderr"),
        exit_code=run.exit_code,
        # A workflow from a TRS server: its id, version, descriptor URL and files' sha-256 first.
        system_logs=(pinned + (run.system_logs or [])) if pinned else run.system_logs,
    )
    return RunLog(
        run_id=run.run_id,
        request=RunRequest(**run.request),
        state=run.state,
        run_log=log,
        task_logs_url=external_url(f"/runs/{run_id}/tasks"),
        outputs=outputs.with_urls(run.outputs or {}, RunPaths.of(current_settings(), run_id), _outputs_base(run_id)),
        deleted_at=run.deleted_at,
    ).to_json()


def delete_run(run_id: str) -> Json:
    run = _visible_run(run_id)
    if run.state not in store.TERMINAL:
        raise Conflict(f"run {run_id} is {run.state}: cancel it, and delete it once it has ended")
    retention.delete_run(current_settings(), run_id)
    return RunId(run_id=run_id).to_json()


def get_run_status(run_id: str) -> Json:
    found = store.get_run_state(run_id)
    caller = _caller()
    if found is None or not caller.sees(found[0]):
        raise NotFound(f"run {run_id} not found")
    return RunStatus(run_id=run_id, state=found[1]).to_json()


def cancel_run(run_id: str) -> Json:
    _visible_run(run_id)
    store.request_cancel(run_id)
    return RunId(run_id=run_id).to_json()


def _task_log(run_id: str, task: store.Task, api: str) -> TaskLog:
    base = f"{api}/runs/{run_id}/tasks/{task.task_id}/logs"
    return TaskLog(
        id=task.task_id,
        name=task.name,
        cmd=task.cmd or None,
        start_time=task.start_time,
        end_time=task.end_time,
        exit_code=task.exit_code,
        stdout=base + "/stdout",
        stderr=base + "/stderr",
        system_logs=tasks.system_logs(task),
    )


def _visible_task(run_id: str, task_id: str) -> store.Task:
    _visible_run(run_id)
    task = store.get_task(run_id, task_id)
    if task is None:
        raise NotFound(f"task {task_id} not found in run {run_id}")
    return task


INT64 = range(-(2**63), 2**63)


def list_tasks(run_id: str, page_size: int | None = None, page_token: str | None = None) -> Json:
    _visible_run(run_id)
    if page_size is not None and page_size not in INT64:
        raise NotFound(f"run {run_id} has no task page of page_size {page_size} (outside int64)")
    try:
        rows, next_token = store.list_tasks(run_id, _page_size(page_size), page_token)
    except store.BadPageToken:
        # WES documents no 400 for the task routes: an unknown page is "not found".
        raise NotFound(f"run {run_id} has no task page for that page_token") from None
    api = external_base()  # once per page, not twice per task
    return TaskListResponse(
        task_logs=[_task_log(run_id, row, api) for row in rows], next_page_token=next_token
    ).to_json()


def get_task(run_id: str, task_id: str) -> Json:
    return _task_log(run_id, _visible_task(run_id, task_id), external_base()).to_json()


def _outputs_base(run_id: str) -> str:
    return external_url(f"/runs/{run_id}/outputs")


def _finished_outputs(run_id: str) -> RunPaths:
    run = _visible_run(run_id)
    if run.deleted_at:
        raise NotFound(f"run {run_id} has no outputs (it was deleted at {run.deleted_at})")
    if run.state != store.COMPLETE:
        raise NotFound(f"run {run_id} has no outputs (it is {run.state})")
    return RunPaths.of(current_settings(), run_id)


def get_run_outputs(run_id: str) -> flask.Response:
    return get_run_output(run_id, "")


def get_run_output(run_id: str, path: str) -> flask.Response:
    paths = _finished_outputs(run_id)
    found = outputs.open_output(paths, path)
    if isinstance(found, list):
        # Explicitly JSON: the route's first media type is the file's.
        return flask.jsonify(outputs.listing(path, found, _outputs_base(run_id)))
    handle, info = found
    return _send_file(
        handle,
        "application/octet-stream",
        path,
        etag=outputs.etag(info),
        modified=datetime.fromtimestamp(info.st_mtime, UTC),
        attachment=Path(path).name,
    )


def _send_file(
    handle: IO[bytes],
    mimetype: str,
    name: str,
    etag: str | None = None,
    modified: datetime | None = None,
    attachment: str | None = None,
) -> flask.Response:
    """An open file as the response: conditional and Range requests answered, at most
    max_served_file_bytes sent, and the body sent from the event loop (streams.Offload) in
    one of the caller's download slots. The file is closed whatever happens."""
    try:
        size = os.fstat(handle.fileno()).st_size
        response = flask.Response(iter(()), mimetype=mimetype, direct_passthrough=True)
        response.content_length = size
        response.cache_control.no_cache = True
        if etag:
            response.set_etag(etag)
        if modified:
            response.last_modified = modified
        if attachment:
            response.headers.set("Content-Disposition", "attachment", filename=attachment)
        response.make_conditional(flask.request.environ, accept_ranges=True, complete_length=size)
        _within_file_cap(response, name)
        length = response.content_length or 0
        if response.status_code not in (200, 206) or flask.request.method == "HEAD" or not length:
            handle.close()
            response.response = iter(())
            return response
        start = response.content_range.start if response.status_code == 206 and response.content_range else 0
        release = _download_slot()
    except BaseException:
        handle.close()
        raise
    response.response = streams.Offload(streams.file_chunks(handle, start or 0, length), release)
    return response


def _within_file_cap(response: flask.Response, name: str) -> None:
    """Refuse a body (the whole file, or the Range asked for) larger than one response may send."""
    cap = current_settings().max_served_file_bytes
    if (response.content_length or 0) > cap:
        raise Forbidden(
            f"{name!r} is {response.content_length} bytes, more than one response sends "
            f"(max_served_file_bytes = {cap}): ask for it in byte ranges (Range: bytes=FROM-TO)"
        )


def _download_slot() -> Callable[[], None]:
    """One of the caller's download slots (downloads.take), as what gives it back; 429 when
    they have max_downloads_per_user going."""
    settings = current_settings()
    caller = _caller()
    release = downloads.take(settings, caller.name)
    if release is None:
        raise TooManyRequests(
            f"{caller.name or 'you'} already have {settings.max_downloads_per_user} downloads going "
            "(max_downloads_per_user): finish one first",
            headers={"Retry-After": str(DOWNLOAD_RETRY_AFTER)},
        )
    return release


def get_run_outputs_zip(run_id: str) -> flask.Response:
    paths = _finished_outputs(run_id)
    listed = outputs.files_under(paths, paths.outdir)
    _within_run_cap(run_id, sum(info.st_size for _name, info in listed), "outputs.zip")
    return _zip_response(outputs.all_outputs(paths, listed), f"{run_id}-outputs.zip")


def _within_run_cap(run_id: str, size: int, what: str) -> None:
    cap = current_settings().max_served_run_bytes
    if size > cap:
        raise Forbidden(
            f"run {run_id}'s {what} would hold {size} bytes of files, more than one response sends "
            f"(max_served_run_bytes = {cap}): fetch the outputs one by one"
        )


def _zip_response(items: Iterable[tuple[str, Any]], filename: str) -> flask.Response:
    """A zip built as it is sent (outputs.zip_stream) from the event loop (streams.Offload),
    as a download, in one of the caller's download slots."""
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if flask.request.method == "HEAD":
        return flask.Response(iter(()), mimetype="application/zip", headers=headers, direct_passthrough=True)
    body = streams.Offload(outputs.zip_stream(items), _download_slot())
    return flask.Response(body, mimetype="application/zip", headers=headers, direct_passthrough=True)


def get_run_events(run_id: str) -> flask.Response:
    # Served by the events middleware in the event loop; reached only if it was bypassed.
    raise NotFound(f"run {run_id} events are served as a stream only")


def get_run_ro_crate(run_id: str) -> flask.Response:
    run = _visible_run(run_id)
    if run.state not in store.TERMINAL:
        raise NotFound(f"run {run_id} has no RO-Crate until it ends (it is {run.state})")
    if run.deleted_at:
        raise NotFound(f"run {run_id} has no RO-Crate (it was deleted at {run.deleted_at})")
    paths = RunPaths.of(current_settings(), run_id)
    _within_run_cap(run_id, provenance.size(paths), "RO-Crate")
    metadata = provenance.build(run, store.all_tasks(run_id), paths, engines.toil_version())
    return _zip_response(provenance.zip_items(paths, metadata), f"{run_id}-ro-crate.zip")


def get_run_log_file(run_id: str, stream: str) -> flask.Response:
    _visible_run(run_id)
    paths = RunPaths.of(current_settings(), run_id)
    return _send_log(paths, paths.stdout if stream == "stdout" else paths.stderr)


def _send_log(paths: RunPaths, path: Path | None) -> flask.Response:
    # Through open_file: the run owns these names and could point them anywhere.
    handle = paths.open_file(path) if path is not None else None
    if handle is None or path is None:
        return flask.Response("", mimetype="text/plain")
    # Range, so that a client can tail a growing log from an offset. A text/* mimetype gets
    # Werkzeug's "; charset=utf-8": naming it here too sent it twice.
    return _send_file(handle, "text/plain", path.name)


def get_task_log_file(run_id: str, task_id: str, stream: str) -> flask.Response:
    # Toil merges a job's stdout and stderr into its worker log; both streams serve it.
    task = _visible_task(run_id, task_id)
    paths = RunPaths.of(current_settings(), run_id)
    return _send_log(paths, Path(task.log_path) if task.log_path else None)


def get_health() -> Json:
    try:
        store.ping()
    except Exception as exc:
        raise ApiError(f"store unreachable: {type(exc).__name__}") from None
    # A supervisor that has beaten on this host must go on beating: one that stopped (killed,
    # stuck) claims no run, and the runs it holds stay QUEUED or RUNNING.
    settings = current_settings()
    try:
        silent = time.time() - supervisor_beat(settings).stat().st_mtime
    except FileNotFoundError:
        silent = 0.0  # none on this host (yet): `wes-gateway supervise` may run elsewhere
    if silent > settings.lease_seconds:
        raise Unavailable(f"the run supervisor on this host has been silent for {silent:.0f} s", {"Retry-After": "10"})
    return {"status": "ok"}
