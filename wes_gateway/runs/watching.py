"""Watching a run's leader until it exits: the run's lease renewed (and the run let go if
another supervisor holds it), its task records read as they come, a cancel carried out
(Toil's kill flag, then SIGTERM, then SIGKILL), a run at its process limit stopped, and a
full filesystem noted. Then, unless a successor's leader fenced this one out, the run is
finished."""

from __future__ import annotations

import dataclasses
import logging
import signal
import time

from wes_gateway import metrics, store
from wes_gateway.config import Settings
from wes_gateway.engines import Engine
from wes_gateway.files.paths import RunPaths
from wes_gateway.host import limits, procs, sandbox, volumes
from wes_gateway.runs import finishing, tasks
from wes_gateway.runs.context import Holder
from wes_gateway.runs.leaders import Leader, kill_flag_main, run_as_of

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Seen:
    """What the watch learnt of the run on the way, for its finish."""

    groups: set[int]
    cancelled: bool = False
    over_limit: str = ""
    ran_out: bool = False  # its own filesystem was seen full (what fills it may be gone at the end)


def watch(supervisor: Holder, run: store.Run, engine: Engine, leader: Leader, paths: RunPaths, token: str) -> None:
    settings = supervisor.settings
    run_id = run.run_id
    next_renew = 0.0
    known_logs = tasks.known_log_names(run_id)
    limit = ProcessLimit(settings, limits.group_of(settings, run_id), supervisor.identity_for(run_id, paths))
    seen = _Seen(groups={leader.pid})  # the leader called setsid: its group is its pid
    while not leader.wait(settings.poll_interval):
        # Remember every group the run ever had: a tool can outlive its worker.
        seen.groups |= procs.run_process_groups(run_id, seen.groups)
        ingest_tasks(supervisor, run, engine, paths, known_logs)
        if supervisor.stop_event.is_set():
            # Shutting down: the leader lives on; whoever holds the next lease adopts it.
            return
        now = time.monotonic()
        if now >= next_renew:
            if not _renew(supervisor, run_id):
                return
            next_renew = now + settings.lease_seconds / 3
        if store.cancel_requested(run_id):
            seen.cancelled = True
            seen.groups |= procs.run_process_groups(run_id, seen.groups)
            cancel(supervisor, run_id, leader, paths)
            break
        seen.ran_out = seen.ran_out or volumes.filled(paths)
        if limit.due() and limit.reached():
            seen.over_limit = limit.stop(run_id, leader)
            break
    ingest_tasks(supervisor, run, engine, paths, known_logs)
    if token and not store.leader_owns(run_id, token):
        log.warning("run %s: its leader was fenced out by a successor; letting go", run_id)
        return
    finishing.finish(
        supervisor,
        run,
        engine,
        paths,
        leader.exitcode,
        cancelled=seen.cancelled or store.cancel_requested(run_id),
        groups=seen.groups,
        over_limit=seen.over_limit,
        ran_out=seen.ran_out,
    )


def _renew(supervisor: Holder, run_id: str) -> bool:
    """Renew the run's lease: False once another supervisor holds the run."""
    renewed = store.renew_lease(run_id, supervisor.worker_id, supervisor.settings.lease_seconds)
    metrics.get().lease_renewals.labels("renewed" if renewed else "refused").inc()
    if not renewed:
        current = store.get_run(run_id)
        if current is None or current.claimed_by != supervisor.worker_id:
            log.warning("run %s: lease lost to another supervisor; letting go", run_id)
            return False
    return True


class ProcessLimit:
    """A run's process limit as its watch sees it: its group's count of refusals, or (held by
    rlimits) the tasks of a uid of the run's own."""

    def __init__(self, settings: Settings, group: limits.RunGroup | None, identity: sandbox.RunIdentity | None) -> None:
        self.settings = settings
        self.group = group
        # A uid of the run's own, held by rlimits: what to count and, at the limit, kill.
        self.uid = identity.uid if identity and limits.rlimits_for(settings)[1] and group is None else 0
        self.next_count = 0.0

    def due(self) -> bool:
        """A cgroup's counter costs a read; a uid's tasks a look at every process: every 2 s."""
        if self.group is None and not (self.uid and time.monotonic() >= self.next_count):
            return False
        self.next_count = time.monotonic() + 2.0
        return True

    def reached(self) -> bool:
        if self.group is not None:
            return self.group.process_limit_hits() > 0
        return bool(self.uid) and limits.tasks_of_uid(self.uid)[0] >= self.settings.run_max_processes - 1

    def stop(self, run_id: str, leader: Leader) -> str:
        """End the run, which is stuck or a fork bomb, now and once: why, for its log."""
        why = (
            f"the run reached its process limit (run_max_processes = {self.settings.run_max_processes}) and was stopped"
        )
        log.warning("run %s: %s", run_id, why)
        if self.group is not None:
            self.group.kill_all()
        else:
            limits.kill_uid(self.uid)
        leader.signal_group(signal.SIGKILL)
        leader.wait(self.settings.cancel_grace_seconds)
        return why


def ingest_tasks(supervisor: Holder, run: store.Run, engine: Engine, paths: RunPaths, known_logs: set[str]) -> None:
    try:
        tasks.ingest(run.run_id, engine, run.workflow_path, paths, known_logs, supervisor.settings.image_store)
    except Exception:
        # Task records are best effort; they must never take the run down with them.
        log.exception("run %s: reading task records failed", run.run_id)


def cancel(supervisor: Holder, run_id: str, leader: Leader, paths: RunPaths) -> None:
    grace = supervisor.settings.cancel_grace_seconds
    log.info("run %s: cancelling leader pid %d", run_id, leader.pid)
    _write_kill_flag(supervisor, paths, run_id)
    if not leader.wait(grace):
        log.info("run %s: leader still up after kill flag; SIGTERM", run_id)
        leader.signal_group(signal.SIGTERM)
        if not leader.wait(grace):
            log.info("run %s: leader still up after SIGTERM; SIGKILL", run_id)
            leader.signal_group(signal.SIGKILL)
            leader.wait(grace)


def _write_kill_flag(supervisor: Holder, paths: RunPaths, run_id: str) -> None:
    """Ask the leader to stop through its job store, as `toil kill` does for remote leaders."""
    if not paths.jobstore.exists():
        return
    run_as = run_as_of(supervisor.identity_for(run_id, paths))
    writer = supervisor.context.Process(target=kill_flag_main, args=(str(paths.root), run_as))
    writer.start()
    writer.join(30)
    if writer.exitcode == 0:
        log.info("run %s: kill flag written", run_id)
    else:  # the leader may not have initialised its job store yet
        log.info("run %s: kill flag not written (exit status %s)", run_id, writer.exitcode)
        if writer.exitcode is None:
            writer.kill()
