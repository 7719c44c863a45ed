"""Tasks: the Toil jobs of a run, as ingested from its message bus."""

from __future__ import annotations

from typing import Any, cast

from wes_gateway.store.schema import Run, Task


def bus_offset(run_id: str) -> int | None:
    """Bytes of the run's message bus already ingested, or None for an unknown run."""
    value = Run.select(Run.bus_offset).where(Run.run_id == run_id).scalar()
    return None if value is None else int(value)


def set_bus_offset(run_id: str, offset: int) -> None:
    Run.update(bus_offset=offset).where(Run.run_id == run_id).execute()


def task_issued(run_id: str, task_id: str, job_id: str, name: str, batch_id: int, now: str) -> None:
    existing = Task.get_or_none((Task.run_id == run_id) & (Task.task_id == task_id))
    if existing is None:
        Task.create(
            run_id=run_id,
            task_id=task_id,
            job_id=job_id,
            name=name[:255],
            start_time=now,
            batch_id=batch_id,
            attempts=1,
        )
    else:
        # A retry: same job, new attempt. The latest attempt's outcome is what counts.
        Task.update(batch_id=batch_id, attempts=Task.attempts + 1, end_time=None, exit_code=None, failed=False).where(
            Task.id == existing.id
        ).execute()


def update_task(run_id: str, task_id: str, **fields: Any) -> None:
    Task.update(**fields).where((Task.run_id == run_id) & (Task.task_id == task_id)).execute()


def update_task_by_batch_id(run_id: str, batch_id: int, **fields: Any) -> None:
    Task.update(**fields).where((Task.run_id == run_id) & (Task.batch_id == batch_id)).execute()


def task_log_paths(run_id: str) -> list[str]:
    rows = Task.select(Task.log_path).where((Task.run_id == run_id) & Task.log_path.is_null(False))
    return [str(row.log_path) for row in rows]


def all_tasks(run_id: str) -> list[Task]:
    return list(Task.select().where(Task.run_id == run_id).order_by(Task.id))


def get_task(run_id: str, task_id: str) -> Task | None:
    return cast("Task | None", Task.get_or_none((Task.run_id == run_id) & (Task.task_id == task_id)))
