"""What is kept, and for how long: job stores by policy, run directories until an admin purges."""

from __future__ import annotations

import logging
import re
import shutil
from datetime import datetime, timedelta, timezone

from . import store
from .config import Settings
from .engines import RunPaths

log = logging.getLogger(__name__)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration such as 90s, 12h or 30d")
    number, unit = match.groups()
    return timedelta(seconds=float(number) * _UNIT_SECONDS[unit])


def _cutoff(age: timedelta) -> str:
    return (datetime.now(timezone.utc) - age).strftime("%Y-%m-%dT%H:%M:%SZ")


def sweep_job_stores(settings: Settings) -> int:
    """Delete job stores of finished runs: COMPLETE ones at once (Toil usually has already),
    failed or cancelled ones once they are older than the configured retention."""
    failed_cutoff = _cutoff(parse_duration(settings.failed_jobstore_retention))
    rows = store.Run.select(store.Run.run_id, store.Run.state, store.Run.end_time).where(
        store.Run.state.in_(list(store.TERMINAL))
        & (store.Run.end_time.is_null(False))
        & ((store.Run.state == store.COMPLETE) | (store.Run.end_time < failed_cutoff))
    )
    removed = 0
    for row in rows:
        jobstore = RunPaths(root=settings.runs_dir / row.run_id).jobstore
        if jobstore.exists():
            shutil.rmtree(jobstore, ignore_errors=True)
            log.info("run %s: job store removed by retention policy (%s)", row.run_id, row.state)
            removed += 1
    return removed


def purge_runs(settings: Settings, older_than: timedelta, dry_run: bool = False) -> list[str]:
    """Delete the records and directories of finished runs that ended before the cutoff."""
    cutoff = _cutoff(older_than)
    rows = list(store.Run.select(store.Run.run_id).where(
        store.Run.state.in_(list(store.TERMINAL)) & store.Run.end_time.is_null(False)
        & (store.Run.end_time < cutoff)))
    purged = []
    for row in rows:
        if dry_run:
            purged.append(row.run_id)
            continue
        # Record first: a half-purged run must never look alive to the service.
        with store.write_transaction():
            store.Task.delete().where(store.Task.run_id == row.run_id).execute()
            store.Run.delete().where(store.Run.run_id == row.run_id).execute()
        shutil.rmtree(settings.runs_dir / row.run_id, ignore_errors=True)
        log.info("run %s purged", row.run_id)
        purged.append(row.run_id)
    return purged
