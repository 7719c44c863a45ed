"""Finishing a run once its leader has exited: whatever of it still runs is stopped, its exit
code (the leader's recorded result, else its exit status) becomes a WES state, a full disk or
the memory limit is named as the run's own doing, its outputs are hashed for its RO-Crate,
its container shims' problems are told to the user, and, once its end is recorded, its
directory is settled out of its filesystem."""

from __future__ import annotations

import logging
import os
import signal
from datetime import UTC, datetime
from functools import partial

from wes_gateway import metrics, store
from wes_gateway.config import Settings
from wes_gateway.engines import Engine
from wes_gateway.files import checksums
from wes_gateway.files.paths import RunPaths
from wes_gateway.host import batch, containers, limits, procs, volumes
from wes_gateway.runs.context import Holder

log = logging.getLogger(__name__)


def finish(
    supervisor: Holder,
    run: store.Run,
    engine: Engine,
    paths: RunPaths,
    exitcode: int | None,
    cancelled: bool,
    groups: set[int] | None = None,
    over_limit: str = "",
    ran_out: bool = False,
) -> None:
    settings = supervisor.settings
    run_id = run.run_id
    oom_kills = _stop_everything(supervisor, run_id, paths, groups)
    batch.cancel_leftovers(settings, run_id, os.environ)
    recorded = paths.read_result()
    code = recorded if recorded is not None else exitcode
    end = partial(_end, run_id, (store.get_run(run_id) or run).start_time or store.utc_now())
    if cancelled:
        try:
            end(store.CANCELED, exit_code=code)
        finally:
            settle(settings, paths, run_id, keep_jobstore=True)
        return
    if not over_limit and code != 0 and (ran_out or volumes.ran_out(paths)):
        # Its own filesystem, and no other, is full: the run's doing, not the service's.
        over_limit = f"the run filled its disk space (run_disk_limit = {settings.run_disk_limit})"
    try:
        if over_limit:
            store.append_system_log(run_id, over_limit)
            end(store.EXECUTOR_ERROR, exit_code=code)
        elif code == 0:
            _record_checksums(settings, paths, run_id)
            end(store.COMPLETE, exit_code=0, outputs=engine.present_outputs(paths.read_outputs(), paths))
        elif recorded is not None:
            # What the run's container shims said (an image it could not have), named for the user.
            for problem in containers.problems(paths):
                store.append_system_log(run_id, problem)
            end(store.EXECUTOR_ERROR, exit_code=code)
        else:
            store.append_system_log(run_id, death_message(exitcode))
            if killed_at_memory_limit(exitcode, oom_kills):
                end(store.EXECUTOR_ERROR, exit_code=exitcode)
            else:
                store.transition(run_id, store.SYSTEM_ERROR, exit_code=exitcode)
    finally:
        # After its end is recorded, not before: the copy out of the run's filesystem took
        # 0.25 s of a 100-way scatter's 2.9 (issue 40), and the client waited for it. Until it
        # is done the outputs are served from the mount, and a settle that fails or is cut
        # short (a restart) is done again by the supervisor's settling thread.
        settle(settings, paths, run_id, keep_jobstore=bool(over_limit) or code != 0)


def _end(run_id: str, started: str, state: str, **fields: object) -> None:
    if store.transition(run_id, state, **fields):
        metrics.get().run_duration.labels(state).observe(seconds_since(started))


def _stop_everything(supervisor: Holder, run_id: str, paths: RunPaths, groups: set[int] | None) -> int:
    """Kill what is left of the run and remove its cgroup: how many of its processes the
    kernel killed at its memory limit."""
    settings = supervisor.settings
    procs.kill_run_processes(run_id, groups)
    group = limits.group_of(settings, run_id)
    identity = supervisor.identity_for(run_id, paths)
    if group is None and identity is not None and settings.run_uid_range is not None:
        limits.kill_uid(identity.uid)  # everything of a run's own uid is the run's
    if group is None:
        return 0
    group.kill_all()
    memory, processes = group.peaks()
    log.info("run %s: at most %d MB of memory and %d processes at once", run_id, memory >> 20, processes)
    oom_kills = group.oom_kills()
    if oom_kills:
        store.append_system_log(
            run_id,
            f"the run reached its memory limit (run_memory_limit = {settings.effective_run_memory_limit} "
            f"bytes): the kernel killed {oom_kills} of its processes",
        )
    group.remove()
    return oom_kills


def death_message(exitcode: int | None) -> str:
    """What the run's log says of a leader that exited without recording a result."""
    if exitcode is not None and exitcode < 0:
        name = next((each.name for each in signal.Signals if each == -exitcode), "?")
        return f"the leader was killed by signal {-exitcode} ({name}) before it had a result"
    detail = f"exit status {exitcode}" if exitcode is not None else "unknown exit status"
    return f"leader died without a result ({detail})"


def killed_at_memory_limit(exitcode: int | None, oom_kills: int) -> bool:
    """Whether a leader that left no result was killed by the kernel at the run's own memory
    limit (tasks go first: limits.py), which is the run's doing rather than the service's."""
    return bool(oom_kills) and exitcode in (None, -signal.SIGKILL)


def _record_checksums(settings: Settings, paths: RunPaths, run_id: str) -> None:
    # Hashed here, within what could be served, so that no request for the RO-Crate does.
    try:
        hashed = checksums.record_checksums(paths, settings.max_served_file_bytes, settings.max_served_run_bytes)
        log.info("run %s: %d output bytes hashed for its RO-Crate", run_id, hashed)
    except OSError:
        log.exception("run %s: output checksums not recorded; its RO-Crate will lack them", run_id)


def settle(settings: Settings, paths: RunPaths, run_id: str, keep_jobstore: bool) -> None:
    try:
        volumes.settle(settings, paths, run_id, keep_jobstore)
    except Exception:
        # Its mount stays, and is served; the supervisor's settling thread tries again.
        log.exception("run %s: not settled; its filesystem stays mounted for now", run_id)


def seconds_since(stamp: str) -> float:
    then = store.parse_stamp(stamp)
    return 0.0 if then is None else max(0.0, (datetime.now(UTC) - then).total_seconds())
