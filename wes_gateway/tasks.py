"""Tasks from Toil's own records: the message bus (``--writeMessages``) and per-job logs
(``--writeLogs``), ingested incrementally into the store by the run's supervising thread.

Reading is cheap and safe while the leader writes: each run keeps the byte offset of what
it has parsed, a truncated last line is left for the next pass, and web requests only
ever read the ``task`` table.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
from datetime import datetime
from pathlib import Path

from . import store
from .engines import RunPaths

log = logging.getLogger(__name__)

# Toil job kinds that run a workflow step; the rest (workflow bodies, scatter/gather
# bookkeeping, promise resolution) are Toil's plumbing and not shown as tasks.
TASK_KINDS = {"CWL": ("kind-CWLJob/",), "WDL": ("kind-WDLTaskJob/",)}
_JOB_ID = re.compile(r"(kind-[\w.-]+/instance-[\w-]+)")
_LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)[+-]\d{4}\]", re.MULTILINE)
_CWL_CMD = re.compile(r"\[job [^\]]+\] \S*\$ (.*?)(?=\n\[\d{4}-|\Z)", re.DOTALL)
LOG_HEAD_BYTES = 64 * 1024


def task_id_for(job_id: str) -> str:
    # Job store ids contain '/', which cannot travel in a URL path segment.
    return job_id.replace("/", ":")


def is_task(workflow_type: str, job_id: str) -> bool:
    return job_id.startswith(TASK_KINDS.get(workflow_type, ()))


_SEGMENT = re.compile(r"^([^.]+)\.(.+?\.(?:cwl|yml|yaml|json)(?:#[^.]*)?)(?:\.(.+))?$")


def step_name(job_type: str, workflow_file: str, steps: list[dict[str, object]] | None = None) -> str:
    """Toil's job type as the CWL step name: 'main.cwl.align.bwa.cwl' -> 'align'; a scatter
    element 'main.cwl.3.bwa.cwl' -> 'align[3]'; nested steps are joined with '/'."""
    prefix = os.path.basename(workflow_file.split("#", 1)[0]) + "."
    if not job_type.startswith(prefix):
        return job_type
    rest = job_type[len(prefix):]
    names: list[str] = []
    while rest:
        match = _SEGMENT.match(rest)
        if not match:
            names.append(rest)
            break
        segment, run = match.group(1), os.path.basename(match.group(2).split("#", 1)[0])
        if segment.isdigit() and not names:
            scattered = [s["name"] for s in steps or [] if s.get("scatter") and s.get("run") == run]
            segment = f"{scattered[0]}[{segment}]" if len(scattered) == 1 else segment
        names.append(segment)
        rest = match.group(3) or ""
    return "/".join(names) or job_type


def _iso(stamp: str) -> str:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_fields(raw: bytes) -> list[str]:
    return [part.decode("unicode_escape") for part in raw.split(b"\t")]


def wdl_call_name(job_type: str, workflow_name: str) -> str:
    """'chain.shout.command' -> 'shout'; a scatter element 'chain.0.greet.command' -> 'greet[0]'."""
    core = job_type.removesuffix(".command")
    if workflow_name and core.startswith(workflow_name + "."):
        core = core[len(workflow_name) + 1:]
    parts = core.split(".")
    indices = "".join(f"[{part}]" for part in parts if part.isdigit())
    names = "/".join(part for part in parts if not part.isdigit())
    return (names + indices) or job_type


def task_name(workflow_type: str, job_type: str, workflow_file: str, outline: dict[str, object]) -> str:
    if workflow_type == "WDL":
        return wdl_call_name(job_type, str(outline.get("name", "")))
    steps = outline.get("steps")
    return step_name(job_type, workflow_file, steps if isinstance(steps, list) else [])


def load_outline(paths: RunPaths) -> dict[str, object]:
    try:
        outline = json.loads(paths.outline.read_text())
    except (OSError, ValueError):
        return {}
    return outline if isinstance(outline, dict) else {}


def ingest(run_id: str, workflow_type: str, workflow_file: str, paths: RunPaths,
           known_logs: set[str]) -> int:
    """Read what the leader appended to its bus and job logs since last time. Returns the
    number of bus lines consumed."""
    run = store.Run.select(store.Run.bus_offset).where(store.Run.run_id == run_id).first()
    if run is None:
        return 0
    offset = int(run.bus_offset)
    consumed = 0
    try:
        with open(paths.messages, "rb") as bus:
            bus.seek(offset)
            chunk = bus.read()
    except FileNotFoundError:
        chunk = b""
    end = chunk.rfind(b"\n")
    if end >= 0:
        lines = chunk[: end + 1].splitlines()
        now = store.utc_now()
        outline = load_outline(paths)
        with store.write_transaction():
            for line in lines:
                topic, _, rest = line.partition(b"\t")
                _apply(run_id, workflow_type, workflow_file, outline, topic.decode("ascii", "replace"),
                       _parse_fields(rest), now)
            store.Run.update(bus_offset=offset + end + 1).where(store.Run.run_id == run_id).execute()
        consumed = len(lines)
    _attach_logs(run_id, paths, known_logs)
    return consumed


def _apply(run_id: str, workflow_type: str, workflow_file: str, outline: dict[str, object],
           topic: str, fields: list[str], now: str) -> None:
    Task = store.Task
    if topic == "toil.bus.JobIssuedMessage" and len(fields) >= 3:
        job_type, job_id, batch_id = fields[0], fields[1], int(fields[2])
        if not is_task(workflow_type, job_id):
            return
        task_id = task_id_for(job_id)
        existing = Task.get_or_none((Task.run_id == run_id) & (Task.task_id == task_id))
        if existing is None:
            Task.create(run_id=run_id, task_id=task_id, job_id=job_id,
                        name=task_name(workflow_type, job_type, workflow_file, outline)[:255], start_time=now,
                        batch_id=batch_id, attempts=1)
        else:
            # A retry: same job, new attempt. The latest attempt's outcome is what counts.
            Task.update(batch_id=batch_id, attempts=Task.attempts + 1, end_time=None, exit_code=None,
                        failed=False).where(Task.id == existing.id).execute()
    elif topic == "toil.bus.JobCompletedMessage" and len(fields) >= 3:
        job_id, exit_code = fields[1], int(fields[2])
        Task.update(exit_code=exit_code, end_time=now).where(
            (Task.run_id == run_id) & (Task.task_id == task_id_for(job_id))).execute()
    elif topic == "toil.bus.JobFailedMessage" and len(fields) >= 2:
        Task.update(failed=True).where(
            (Task.run_id == run_id) & (Task.task_id == task_id_for(fields[1]))).execute()
    elif topic == "toil.bus.ExternalBatchIdMessage" and len(fields) >= 3:
        Task.update(external_id=fields[1], batch_system=fields[2]).where(
            (Task.run_id == run_id) & (Task.batch_id == int(fields[0]))).execute()


def _attach_logs(run_id: str, paths: RunPaths, known_logs: set[str]) -> None:
    """Match new per-job log files to their tasks by the job id written in their first lines."""
    try:
        names = sorted(os.listdir(paths.job_logs))
    except FileNotFoundError:
        return
    for name in names:
        if name in known_logs:
            continue
        path = paths.job_logs / name
        try:
            with open(path, "rb") as handle:
                head = handle.read(LOG_HEAD_BYTES).decode("utf-8", "replace")
        except OSError:
            continue
        match = _JOB_ID.search(head)
        known_logs.add(name)
        if not match:
            continue
        times = _LOG_TIME.findall(_tail(path))
        starts = _LOG_TIME.findall(head[:4096])
        command = _CWL_CMD.search(head)
        updates: dict[str, object] = {"log_path": str(path)}
        if starts:
            updates["start_time"] = _iso(starts[0])
        if times:
            updates["end_time"] = _iso(times[-1])
        if command:
            text = command.group(1).replace("\\\n", " ")
            try:
                updates["cmd"] = json.dumps(shlex.split(text))
            except ValueError:
                updates["cmd"] = json.dumps([text.strip()])
        store.Task.update(**updates).where(
            (store.Task.run_id == run_id) & (store.Task.task_id == task_id_for(match.group(1)))
        ).execute()


def _tail(path: Path, size: int = 8192) -> str:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - size))
        return handle.read().decode("utf-8", "replace")


def known_log_names(run_id: str) -> set[str]:
    """Log files already attached, so a restarted supervisor does not re-read them."""
    rows = store.Task.select(store.Task.log_path).where(
        (store.Task.run_id == run_id) & store.Task.log_path.is_null(False))
    return {os.path.basename(row.log_path) for row in rows}


def list_tasks(run_id: str, page_size: int, page_token: str | None) -> tuple[list[store.Task], str]:
    query = store.Task.select().where(store.Task.run_id == run_id)
    if page_token:
        query = query.where(store.Task.id > store.decode_token(page_token))
    rows = list(query.order_by(store.Task.id).limit(page_size + 1))
    next_token = store.encode_token(rows[page_size - 1].id) if len(rows) > page_size else ""
    return rows[:page_size], next_token


def get_task(run_id: str, task_id: str) -> store.Task | None:
    return store.Task.get_or_none((store.Task.run_id == run_id) & (store.Task.task_id == task_id))


def system_logs(task: store.Task) -> list[str]:
    lines = [f"toil_job_id: {task.job_id}", f"attempts: {task.attempts}"]
    if task.batch_system:
        lines.append(f"batch_system: {task.batch_system}")
    if task.external_id:
        lines.append(f"batch_job_id: {task.external_id}")
    if task.failed:
        lines.append("failed: Toil gave up on this job after its retries")
    return lines

