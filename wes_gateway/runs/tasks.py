"""Tasks from Toil's own records: the message bus (``--writeMessages``) and per-job logs
(``--writeLogs``), ingested incrementally into the store by the run's supervising thread.

Reading is cheap and safe while the leader writes: each run keeps the byte offset of what
it has parsed, a truncated last line is left for the next pass, and web requests only
ever read the ``task`` table.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from wes_gateway import store
from wes_gateway.engines import Engine
from wes_gateway.files import beneath
from wes_gateway.files.paths import RunPaths
from wes_gateway.host import batch, containers

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"(kind-[\w.-]+/instance-[\w-]+)")
_LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)[+-]\d{4}\]", re.MULTILINE)
_CWL_CMD = re.compile(r"\[job [^\]]+\] \S*\$ (.*?)(?=\n\[\d{4}-|\Z)", re.DOTALL)
LOG_HEAD_BYTES = 64 * 1024
# The bus is read in bites: the run writes it and could make it any size.
MAX_BUS_READ = 4 * 1024 * 1024


def task_id_for(job_id: str) -> str:
    # Job store ids contain '/', which cannot travel in a URL path segment.
    return job_id.replace("/", ":")


def _iso(stamp: str) -> str:
    # Toil's log times are the host's UTC clock without a zone.
    return store.stamp(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC))


def _parse_fields(raw: bytes) -> list[str]:
    return [part.decode("unicode_escape") for part in raw.split(b"\t")]


def load_outline(paths: RunPaths) -> dict[str, Any]:
    outline = paths.read_json(paths.outline)
    return outline if isinstance(outline, dict) else {}


def ingest(
    run_id: str,
    engine: Engine,
    workflow_file: str,
    paths: RunPaths,
    known_logs: set[str],
    image_store: Path | None = None,
) -> int:
    """Read what the leader appended to its bus and job logs since last time. Returns the
    number of bus lines consumed. ``image_store`` is where images that the run did not pull
    are recorded (their ids and digests)."""
    offset = store.bus_offset(run_id)
    if offset is None:
        return 0
    consumed = 0
    chunk = b""
    bus = paths.open_file(paths.messages)
    if bus is not None:
        with bus:
            bus.seek(offset)
            chunk = bus.read(MAX_BUS_READ)
    end = chunk.rfind(b"\n")
    if end >= 0:
        lines = chunk[: end + 1].splitlines()
        now = store.utc_now()
        outline = load_outline(paths)
        with store.write_transaction():
            for line in lines:
                topic, _, rest = line.partition(b"\t")
                try:
                    _apply(
                        run_id,
                        engine,
                        workflow_file,
                        outline,
                        topic.decode("ascii", "replace"),
                        _parse_fields(rest),
                        now,
                    )
                except (ValueError, IndexError):
                    # The run can write its bus: a line that is not Toil's is skipped, never
                    # allowed to stop every line after it from being read.
                    log.warning("run %s: a malformed message bus line was skipped", run_id)
            store.set_bus_offset(run_id, offset + end + 1)
        consumed = len(lines)
    elif len(chunk) == MAX_BUS_READ:
        # No line end in a whole read: not Toil's, which writes short lines. Skipped.
        store.set_bus_offset(run_id, offset + len(chunk))
    _attach_logs(run_id, paths, known_logs, image_store)
    return consumed


def _apply(
    run_id: str, engine: Engine, workflow_file: str, outline: dict[str, Any], topic: str, fields: list[str], now: str
) -> None:
    if topic == "toil.bus.JobIssuedMessage" and len(fields) >= 3:
        job_type, job_id, batch_id = fields[0], fields[1], int(fields[2])
        if engine.is_task(job_id):
            name = engine.task_name(job_type, workflow_file, outline)
            store.task_issued(run_id, task_id_for(job_id), job_id, name, batch_id, now)
            store.record_event(
                run_id, "task", {"id": task_id_for(job_id), "name": name, "status": "started", "time": now}
            )
    elif topic == "toil.bus.JobCompletedMessage" and len(fields) >= 3:
        task_id = task_id_for(fields[1])
        updates: dict[str, Any] = {"exit_code": int(fields[2]), "end_time": now}
        task = store.get_task(run_id, task_id)
        if task is not None and task.batch_system and task.external_id:
            # Asked now, while the scheduler still remembers the job.
            node = batch.node_of(task.batch_system, task.external_id, os.environ)
            if node:
                updates["node"] = node
        store.update_task(run_id, task_id, **updates)
        if task is not None:
            store.record_event(
                run_id,
                "task",
                {"id": task_id, "name": task.name, "status": "ended", "exit_code": int(fields[2]), "time": now},
            )
    elif topic == "toil.bus.JobFailedMessage" and len(fields) >= 2:
        store.update_task(run_id, task_id_for(fields[1]), failed=True)
    elif topic == "toil.bus.ExternalBatchIdMessage" and len(fields) >= 3:
        store.update_task_by_batch_id(run_id, int(fields[0]), external_id=fields[1], batch_system=fields[2])


def _attach_logs(run_id: str, paths: RunPaths, known_logs: set[str], image_store: Path | None) -> None:
    """Match new per-job log files to their tasks by the job id written in their first lines."""
    # Listed through beneath: a run that made job-logs a link must not have a host directory read.
    for name in beneath.names(paths.root, paths.job_logs.name):
        if name in known_logs:
            continue
        path = paths.job_logs / name
        handle = paths.open_file(path)
        if handle is None:
            continue
        with handle:
            head = handle.read(LOG_HEAD_BYTES).decode("utf-8", "replace")
            tail = _tail(handle)
        match = _JOB_ID.search(head)
        known_logs.add(name)
        if not match:
            continue
        times = _LOG_TIME.findall(tail)
        starts = _LOG_TIME.findall(head[:4096])
        command = _CWL_CMD.search(head)
        updates: dict[str, Any] = {"log_path": str(path)}
        if starts:
            updates["start_time"] = _iso(starts[0])
        if times:
            updates["end_time"] = _iso(times[-1])
        if command:
            text = command.group(1).replace("\\\n", " ")
            try:
                updates["cmd"] = shlex.split(text)
            except ValueError:
                updates["cmd"] = [text.strip()]
        image = containers.image_of_command(updates.get("cmd") or []) or containers.image_of_log(head, paths)
        if image:
            updates["container"] = containers.image_record(image, image_store)
        store.update_task(run_id, task_id_for(match.group(1)), **updates)


def _tail(handle: BinaryIO, size: int = 8192) -> str:
    handle.seek(0, os.SEEK_END)
    handle.seek(max(0, handle.tell() - size))
    return handle.read().decode("utf-8", "replace")


def known_log_names(run_id: str) -> set[str]:
    """Log files already attached, so a restarted supervisor does not re-read them."""
    return {os.path.basename(path) for path in store.task_log_paths(run_id)}


def system_logs(task: store.Task) -> list[str]:
    lines = [f"toil_job_id: {task.job_id}", f"attempts: {task.attempts}"]
    if task.batch_system:
        lines.append(f"batch_system: {task.batch_system}")
    if task.external_id:
        lines.append(f"batch_job_id: {task.external_id}")
    if task.node:
        lines.append(f"node: {task.node}")
    if task.failed:
        lines.append("failed: Toil gave up on this job after its retries")
    container: dict[str, Any] = task.container if isinstance(task.container, dict) else {}
    for key, label in (
        ("image", "container_image"),
        ("id", "container_image_id"),
        ("digest", "container_image_digest"),
    ):
        if container.get(key):
            lines.append(f"{label}: {container[key]}")
    if container.get("source") == "claimed":
        lines.append("container_image_source: claimed (named by the run's own log; not in the service's image store)")
    elif container.get("source"):
        lines.append(f"container_image_source: {container['source']}")
    return lines
