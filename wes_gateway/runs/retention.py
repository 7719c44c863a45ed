"""What is kept, and for how long: job stores by policy, run directories until an admin purges."""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from datetime import UTC, datetime, timedelta

from wes_gateway import store
from wes_gateway.config import Settings
from wes_gateway.files.paths import RunPaths, staging_dir
from wes_gateway.host import volumes

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
    return store.stamp(datetime.now(UTC) - age)


def sweep_job_stores(settings: Settings) -> int:
    """Delete job stores of finished runs: COMPLETE ones at once (Toil usually has already),
    failed or cancelled ones once they are older than the configured retention."""
    failed_cutoff = _cutoff(parse_duration(settings.failed_jobstore_retention))
    removed = 0
    for run_id, state in store.finished_runs(failed_cutoff, complete_any_time=True):
        jobstore = RunPaths.of(settings, run_id).jobstore
        if jobstore.exists():
            shutil.rmtree(jobstore, ignore_errors=True)
            log.info("run %s: job store removed by retention policy (%s)", run_id, state)
            removed += 1
    return removed


# A submission being written or an upload being spooled touches its files at least this often;
# one untouched for longer was left by a web worker that died mid-request.
STALE_STAGING = timedelta(hours=6)


def sweep_staging(settings: Settings, older_than: timedelta = STALE_STAGING) -> int:
    """Delete what dead web workers left in the staging directory (half-spooled uploads,
    half-staged submissions), and the run-directory links that pointed at them."""
    staging = staging_dir(settings)
    cutoff = time.time() - older_than.total_seconds()
    removed = 0
    for entry in os.scandir(staging):
        if _newest_mtime(entry.path) < cutoff:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            log.info("staging: removed %s, untouched since a web worker left it", entry.name)
            removed += 1
    for entry in os.scandir(settings.runs_dir):
        # A submission's run directory is a link into staging until it is complete.
        if entry.is_symlink() and not os.path.exists(entry.path) and os.readlink(entry.path).startswith(str(staging)):
            os.unlink(entry.path)
    return removed


def _newest_mtime(path: str) -> float:
    newest = os.lstat(path).st_mtime
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            try:
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except OSError:
                pass
    return newest


def delete_run(settings: Settings, run_id: str, keep_tombstone: bool = True) -> bool:
    """Remove a finished run's files (job store included). With ``keep_tombstone`` (DELETE
    /runs/{id}) its record stays, with ``deleted_at`` and no outputs, so that a client polling
    it sees no 404 appear; without (``runs purge``), the record goes too. The record changes
    first: a half-deleted run must never look intact. Idempotent: files a first attempt left
    are removed by the next. False if the run is not finished."""
    run = store.get_run(run_id)
    if run is None or run.state not in store.TERMINAL:
        return False
    if keep_tombstone:
        if store.mark_deleted(run_id):
            log.info("run %s deleted (tombstone kept)", run_id)
    else:
        store.delete_run(run_id)
        log.info("run %s purged", run_id)
    paths = RunPaths.of(settings, run_id)
    volumes.release(settings, paths, run_id)
    shutil.rmtree(paths.root, ignore_errors=True)
    return True


def purge_runs(settings: Settings, older_than: timedelta, dry_run: bool = False) -> list[str]:
    """Delete the records and directories of finished runs that ended before the cutoff."""
    purged = []
    for run_id, _state in store.finished_runs(_cutoff(older_than)):
        if not dry_run:
            delete_run(settings, run_id, keep_tombstone=False)
        purged.append(run_id)
    return purged
