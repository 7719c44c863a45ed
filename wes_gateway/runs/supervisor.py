"""The supervisor: claims queued runs, starts their leaders, watches them, cancels them.

One supervisor process runs per host (started by gunicorn.conf.py, or by
``wes-gateway supervise``). A bounded thread pool drives runs; each run's Toil leader is
a process of its own, forked from a forkserver that has Toil preloaded. Every active run
carries a lease in the store that its supervising thread renews; a run whose lease lapsed
(its supervisor died) is taken over: its leader is adopted if it still lives, or resumed
with Toil's --restart on the persisted job store.

This module holds the claim loop, the slots, the runs' identities and the take-over of a
lapsed run; starting a leader is in ``starting``, watching it in ``watching``, its end in
``finishing``, and the leader process's environment and handle in ``leaders``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from wes_gateway import metrics, store
from wes_gateway.config import Settings
from wes_gateway.files.paths import RunPaths, supervisor_beat
from wes_gateway.host import batch, containers, limits, procs, sandbox, volumes
from wes_gateway.logsetup import setup_logging
from wes_gateway.runs import retention, wakeup
from wes_gateway.runs.finishing import finish
from wes_gateway.runs.leaders import Leader, live_leader, noop, scrub_environment
from wes_gateway.runs.starting import engine_of, refused_for_planted_names, start
from wes_gateway.runs.watching import watch

__all__ = ["Supervisor", "live_leader", "preflight", "serve"]

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, settings: Settings, hidden_files: list[str] | None = None) -> None:
        self.settings = settings
        # Read once, before the environment is scrubbed: the service's own secret files.
        self.hidden_files = hidden_files or []
        self.identity = sandbox.run_identity(settings)
        self.uids: dict[str, int] = {}  # runs' own uids (run_uids), of the runs this supervisor holds
        self.host_id = settings.effective_host_id
        self.worker_id = f"{self.host_id}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stop_event = threading.Event()
        # Sized once: the default reads the host's cores and memory, which the claim loop need not redo.
        self.slots = settings.effective_max_concurrent_runs
        self.pool = ThreadPoolExecutor(self.slots, thread_name_prefix="run")
        self.active: set[str] = set()
        self.lock = threading.Lock()
        self.next_disk_warning = 0.0
        self.waker = wakeup.Waker(wakeup.socket_path(settings), _work_listener())
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(["wes_gateway.engines.leader"])

    # ------------------------------------------------------------ main loop

    def serve(self) -> None:
        log.info(
            "supervisor %s started on host %s, %d slots, batch system %s",
            self.worker_id,
            self.host_id,
            self.slots,
            self.settings.batch_system,
        )
        beat = supervisor_beat(self.settings)
        beat.touch()
        remounted = volumes.remount(self.settings)
        if remounted:
            log.info("mounted the filesystems of %d runs again", remounted)
        threading.Thread(target=self._settle_finished, name="settle", daemon=True).start()
        containers.provide_store_view(self.settings)
        # Start the forkserver now, so Toil's import cost is paid before the first run.
        self.context.Process(target=noop).start()
        next_sweep = 0.0
        while not self.stop_event.is_set():
            try:
                beat.touch()
                self.tick()
                if time.monotonic() >= next_sweep:  # at start, then every retention_interval
                    retention.sweep_job_stores(self.settings)
                    retention.sweep_staging(self.settings)
                    next_sweep = time.monotonic() + self.settings.retention_interval
            except Exception:
                log.exception("supervisor tick failed; retrying")
            if not self.stop_event.is_set():
                self.waker.wait(self.settings.poll_interval)
        log.info("supervisor %s stopping; leaders keep running and will be adopted", self.worker_id)
        # Running sandboxes hold copies of the view; the next supervisor mounts it again.
        containers.release_store_view(self.settings)
        self.waker.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def tick(self) -> None:
        for run in store.take_over_expired(self.worker_id, self.host_id, self.settings.lease_seconds):
            if self._has_slot_for(run.run_id, force=True):
                log.info("run %s: taking over from a lapsed lease", run.run_id)
                self.pool.submit(self._guard, run.run_id, self._recover)
        while self._has_slot_for(None) and self._disk_has_room():
            claimed = store.claim_next(self.worker_id, self.host_id, self.settings.lease_seconds)
            if claimed is None:
                break
            with self.lock:
                self.active.add(claimed.run_id)
            self.pool.submit(self._guard, claimed.run_id, self._start)

    def _has_slot_for(self, run_id: str | None, force: bool = False) -> bool:
        with self.lock:
            if run_id is not None:
                if run_id in self.active:
                    return False
                if force:
                    # Recovered runs already hold a leader (or job store); never strand them.
                    self.active.add(run_id)
                    return True
            return len(self.active) < self.slots

    def _disk_has_room(self) -> bool:
        with self.lock:
            running = set(self.active)
        if volumes.room_for_another(self.settings, running):
            return True
        if time.monotonic() >= self.next_disk_warning:
            log.warning(
                "no run started: the disk could not hold another run's %s and keep %s free",
                self.settings.run_disk_limit,
                self.settings.disk_reserve,
            )
            self.next_disk_warning = time.monotonic() + 60
        return False

    def identity_for(self, run_id: str, paths: RunPaths) -> sandbox.RunIdentity | None:
        """Who the run's leader is: run_user, or a uid of the run's own from run_uids, kept in
        its control directory so that a restart or an adoption finds the same one."""
        uids = self.settings.run_uid_range
        if self.identity is None or uids is None:
            return self.identity
        with self.lock:
            if run_id not in self.uids:
                recorded = paths.read_json(paths.uid_file)
                taken = set(self.uids.values())
                if not (isinstance(recorded, int) and recorded in uids and recorded not in taken):
                    # Nor one that has processes: a run this supervisor has yet to adopt may.
                    taken |= limits.live_uids(uids)
                    recorded = next((uid for uid in uids if uid not in taken), None)
                    if recorded is None:
                        raise RuntimeError(f"every uid of run_uids {self.settings.run_uids} is in use")
                    paths.control.mkdir(mode=0o700, exist_ok=True)
                    paths.uid_file.write_text(json.dumps(recorded))
                self.uids[run_id] = recorded
            return dataclasses.replace(self.identity, uid=self.uids[run_id])

    def _guard(self, run_id: str, step: Callable[[str], None]) -> None:
        try:
            step(run_id)
        except Exception as exc:
            log.exception("run %s: supervision failed", run_id)
            store.append_system_log(run_id, f"supervisor error: {type(exc).__name__}: {exc}")
            store.transition(run_id, store.SYSTEM_ERROR)
        finally:
            with self.lock:
                self.active.discard(run_id)
                self.uids.pop(run_id, None)
            self.waker.wake()  # a slot is free: a queued run need not wait for the next poll

    # ------------------------------------------------------------ one run

    def _start(self, run_id: str) -> None:
        start(self, run_id)

    def _recover(self, run_id: str) -> None:
        """Take over a run whose supervisor died: adopt, finish, resume or fail it."""
        run = store.get_run(run_id)
        if run is None or run.state in store.TERMINAL:
            return
        engine = engine_of(run)
        if engine is None:
            return
        paths = RunPaths.of(self.settings, run_id)
        if run.host_id in (None, self.host_id):
            pid = live_leader(paths)
            if pid is not None:
                log.info("run %s: adopting live leader pid %d", run_id, pid)
                metrics.get().leader_starts.labels("adopt").inc()
                watch(self, run, engine, Leader(pid, None), paths, run.leader_token or "")
                return
            # Its leader is gone; what it started must not race a successor on the same job store.
            procs.kill_run_processes(run_id, {run.leader_pid} if run.leader_pid else None)
        else:
            # Granted only once that host's leader stopped beating: it is dead, or has fenced
            # itself out, and a leader started here now owns the run.
            log.info("run %s: leader on host %s stopped beating; taking the run over", run_id, run.host_id)
        batch.cancel_leftovers(self.settings, run_id, os.environ)
        finished = paths.read_result() is not None
        if not finished and refused_for_planted_names(self.settings, run_id, paths):
            return
        if finished:
            finish(self, run, engine, paths, None, cancelled=run.cancel_requested)
            return
        if run.cancel_requested:
            store.transition(run_id, store.CANCELED)
            return
        if run.state == store.INITIALIZING and not paths.jobstore.exists():
            log.info("run %s: leader never started; starting it now", run_id)
            start(self, run_id)
            return
        if paths.jobstore_began:
            store.append_system_log(run_id, f"{store.utc_now()} leader lost; resumed with --restart")
            start(self, run_id, restart=True)
            return
        if paths.jobstore.exists():
            # Lost while Toil was still setting its job store up: nothing of the workflow ran,
            # and --restart would refuse the half-made store. Start the run afresh.
            shutil.rmtree(paths.jobstore, ignore_errors=True)
            store.append_system_log(run_id, f"{store.utc_now()} leader lost before its workflow began; started again")
            start(self, run_id)
            return
        store.append_system_log(run_id, "leader lost and its job store is gone; cannot resume")
        store.transition(run_id, store.SYSTEM_ERROR)

    def _settle_finished(self) -> None:
        """Settle finished runs that still have an image, a few at a time: those an earlier
        version left mounted, and any whose settle failed or that ended elsewhere than finishing.finish."""
        while not self.stop_event.is_set():
            try:
                left = volumes.settle_finished(self.settings)
            except Exception:
                log.exception("settling finished runs failed; retrying")
                left = 0
            self.stop_event.wait(0.5 if left else 10)


def _work_listener() -> object | None:
    try:
        return store.listen_for_work()
    except Exception as exc:  # the poll still finds the work
        log.warning("cannot LISTEN for new runs (%s); polling only", exc)
        return None


def preflight(settings: Settings) -> None:
    """At start-up, before anything listens or runs: the sandbox and the batch system the
    settings ask for can work here. Raises with advice if not."""
    sandbox.check(settings)
    batch.check(settings)
    limits.check(settings)
    volumes.check(settings)
    containers.check(settings)
    if settings.shared_dir is not None:
        # Batch jobs run as the run user outside any sandbox and reach their own run directory
        # by its (unguessable) name; nobody may list the others.
        os.chmod(settings.runs_dir, 0o711)


def serve(settings: Settings, stop_on_parent_exit: bool = False) -> None:
    """Run a supervisor until SIGTERM/SIGINT (or, optionally, until its parent dies)."""
    setup_logging()
    preflight(settings)
    # Before the environment is scrubbed (prometheus-client reads it once, on import).
    metrics.configure(settings)
    metrics.get()
    store.open_database(settings.effective_database_url)
    store.upgrade(store.database.obj)
    hidden = sandbox.secret_files(settings, os.environ)
    if sandbox.run_identity(settings) is not None:
        # Only the service reads the data directory; a run sees its own directory, in its sandbox.
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(settings.data_dir, 0o700)
    # The forkserver, and so every leader, inherits this process's environment at start-up
    # (and /proc shows it): drop everything but the allowlist before it is spawned.
    scrub_environment(settings)
    supervisor = Supervisor(settings, hidden)
    parent = os.getppid()

    def stop(signum: int, _frame: object) -> None:
        supervisor.stop_event.set()
        supervisor.waker.wake()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if stop_on_parent_exit:

        def watch_parent() -> None:
            while not supervisor.stop_event.wait(1.0):
                if os.getppid() != parent:
                    log.warning("supervisor's parent %d is gone; stopping", parent)
                    supervisor.stop_event.set()
                    supervisor.waker.wake()

        threading.Thread(target=watch_parent, daemon=True).start()
    supervisor.serve()
    logging.shutdown()
    # Not sys.exit: multiprocessing's atexit hook would join every leader still running.
    os._exit(0)
