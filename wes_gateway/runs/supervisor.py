"""The supervisor: claims queued runs, starts their leaders, watches them, cancels them.

One supervisor process runs per host (started by gunicorn.conf.py, or by
``wes-gateway supervise``). A bounded thread pool drives runs; each run's Toil leader is
a process of its own, forked from a forkserver that has Toil preloaded. Every active run
carries a lease in the store that its supervising thread renews; a run whose lease lapsed
(its supervisor died) is taken over: its leader is adopted if it still lives, or resumed
with Toil's --restart on the persisted job store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path

from wes_gateway import metrics, store
from wes_gateway.config import Settings
from wes_gateway.engines import Engine, LeaderSpec, engine_for, toil_argv
from wes_gateway.files import checksums
from wes_gateway.files.paths import RunPaths, supervisor_beat
from wes_gateway.host import batch, containers, limits, procs, sandbox, volumes
from wes_gateway.logsetup import setup_logging
from wes_gateway.runs import retention, tasks, wakeup

log = logging.getLogger(__name__)

# The variables a leader inherits from the supervisor; everything else is dropped so that
# the gateway's secrets never reach a job store.
ENV_ALLOWLIST = ("LANG", "LC_ALL", "TZ", "USER", "LOGNAME")


def scrub_environment(settings: Settings) -> None:
    # prometheus-client finds its directory in the environment whenever a sample is first made.
    names = (*ENV_ALLOWLIST, *batch.client_env_names(settings), metrics.ENV, "PATH", "HOME", "TMPDIR")
    keep = {key: os.environ[key] for key in names if key in os.environ}
    os.environ.clear()
    os.environ.update(keep)


def leader_env(settings: Settings, run_id: str, paths: RunPaths, dropped: bool = False) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    path = [*containers.path_dirs(paths, settings), *settings.extra_path, bin_dir, "/usr/local/bin", "/usr/bin", "/bin"]
    env = {key: os.environ[key] for key in ENV_ALLOWLIST if key in os.environ}
    env.update(
        {
            "PATH": os.pathsep.join(path),
            "HOME": str(paths.home),
            "TMPDIR": str(paths.tmp),
            "LANG": env.get("LANG", "C.UTF-8"),
            # Concurrent leaders otherwise fight over ~/.toil/history.sqlite.
            "TOIL_HISTORY": "False",
            "SINGULARITY_CACHEDIR": str(paths.root / "image-cache"),
            "MINIWDL__SINGULARITY__IMAGE_CACHE": str(paths.root / "image-cache"),
            procs.MARKER: run_id,
        }
    )
    env.update(batch.leader_env(settings, run_id, os.environ))
    if dropped:
        # Who the leader is once it has dropped root (getpass and friends read these first).
        env["USER"] = env["LOGNAME"] = settings.run_user
    return env


def live_leader(paths: RunPaths) -> int | None:
    """The pid of this run's leader if that very process (not a reuse of its pid) still runs."""
    for path in paths.leader_files:
        recorded = paths.read_json(path)
        try:
            pid, start = int(recorded["pid"]), int(recorded["start"])
        except (ValueError, KeyError, TypeError):
            continue
        return pid if procs.pid_alive(pid) and procs.start_time(pid) == start else None
    return None


def _write_kill_flag(run_root: str, run_as: tuple[int, int] | None) -> None:
    # In a process of its own, forked from the forkserver (Toil is loaded there). The job store
    # is the run's to change: a link planted in it must not make a root process write outside
    # it, so with a run user this process shuts itself in the run directory (chroot) and drops
    # to that user first.
    from toil.common import Toil
    from toil.jobStores.fileJobStore import FileJobStore  # noqa: F401  (loaded before the chroot)

    locator = f"file:{run_root}/jobstore"
    if run_as is not None:
        os.chroot(run_root)
        os.chdir("/")
        locator = "file:/jobstore"
    sandbox.become(run_as)
    try:
        Toil.resumeJobStore(locator).write_kill_flag(kill=True)
    except Exception as exc:  # the leader may not have initialised its job store yet
        print(f"kill flag: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)


class Leader:
    """A handle on one leader process, whether we started it or adopted it."""

    def __init__(self, pid: int, process: multiprocessing.process.BaseProcess | None) -> None:
        self.pid = pid
        self.process = process

    def wait(self, timeout: float) -> bool:
        """True once the leader has exited."""
        if self.process is not None:
            self.process.join(timeout)
            return self.process.exitcode is not None
        deadline = time.monotonic() + timeout
        while procs.pid_alive(self.pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.2, timeout))
        return True

    @property
    def exitcode(self) -> int | None:
        return None if self.process is None else self.process.exitcode

    def signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except OSError:
            try:
                os.kill(self.pid, signum)
            except OSError:
                pass


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
        self.context.Process(target=_noop).start()
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

    def _identity(self, run_id: str, paths: RunPaths) -> sandbox.RunIdentity | None:
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

    @staticmethod
    def _run_as(identity: sandbox.RunIdentity | None) -> tuple[int, int] | None:
        return None if identity is None else (identity.uid, identity.gid)

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

    def _start(self, run_id: str, restart: bool = False) -> None:
        run = store.get_run(run_id)
        if run is None:
            return
        if run.cancel_requested or run.state == store.CANCELING:
            store.transition(run_id, store.CANCELED)
            return
        engine = _engine_of(run)
        if engine is None:
            return
        paths = RunPaths.of(self.settings, run_id)
        volumes.provide(self.settings, paths, run_id)
        if self._refused_for_planted_names(run_id, paths):
            return
        identity = self._identity(run_id, paths)
        # A sandbox whose leader never is root cannot give containers a /proc of their own.
        # Jobs a cluster runs elsewhere are in no sandbox, even when the leader is.
        sandboxed = self.settings.run_sandbox != "none" and self.settings.batch_system == "single_machine"
        containers.prepare(paths, self.settings, sandboxed, own_pid_namespace=not sandboxed or bool(identity))
        sandbox.hand_over(paths, identity)
        group = limits.group_of(self.settings, run_id)
        if group is not None:
            group.create(self.settings.effective_run_memory_limit, self.settings.run_max_processes)
        argv = toil_argv(
            run.workflow_path,
            paths,
            self.settings,
            engine.language_args(paths, self.settings),
            run.engine_args,
            restart,
        )
        spec = LeaderSpec(
            run_id=run_id,
            workflow_type=run.workflow_type,
            argv=argv,
            env=leader_env(self.settings, run_id, paths, dropped=self.identity is not None),
            root=str(paths.root),
            sandbox=self._sandbox_of(paths),
            run_as=self._run_as(identity),
            token=uuid.uuid4().hex,
            heartbeat_seconds=self.settings.lease_seconds / 3,
            fence_seconds=self.settings.lease_seconds * 2 / 3,
            prompt_shutdown=self.settings.toil_prompt_shutdown,
            warm_workers=self.settings.toil_warm_workers,
            cgroup_procs=group.procs_files if group is not None else (),
            rlimits=limits.rlimits_for(self.settings) if group is None else (0, 0),
        )
        paths.result.unlink(missing_ok=True)
        paths.leader_file.unlink(missing_ok=True)
        # From here this leader, and no earlier one on any host, owns the run.
        store.leader_started(run_id, spec.token, self.host_id)
        receiver, sender = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_run_leader, args=(spec, receiver), name=f"leader-{run_id}")
        process.start()
        receiver.close()
        sender.send(self.settings.effective_database_url)
        sender.close()
        assert process.pid is not None
        fields: dict[str, object] = {"leader_pid": process.pid, "cmd": [engine.program, *argv]}
        if run.start_time is None:
            fields["start_time"] = store.utc_now()
        log.info("run %s: leader pid %d started%s", run_id, process.pid, " (restart)" if restart else "")
        metrics.get().leader_starts.labels("restart" if restart else "start").inc()
        if store.transition(run_id, store.RUNNING, **fields):
            if not restart:
                metrics.get().queue_wait.observe(_seconds_since(run.submitted_at))
        else:
            # Cancelled while we were starting it: record the pid so the cancel can find it.
            store.update_run(run_id, **fields)
        self._watch(run, engine, Leader(process.pid, process), paths, spec.token)

    def _refused_for_planted_names(self, run_id: str, paths: RunPaths) -> bool:
        """End a run that put a link or a file where one of its directories was (found when it
        is started again: its leader is gone, nothing of it runs). Root would otherwise bind,
        create in or hand over what the link names; the run is not resumed, and the planted
        names are taken away so that nothing later (delete, retention) meets them."""
        planted = paths.replaced()
        if not planted:
            return False
        names = ", ".join(planted)
        log.warning("run %s: not started: it replaced %s of its own directory with a link or file", run_id, names)
        paths.remove_replaced(planted)
        group = limits.group_of(self.settings, run_id)
        if group is not None:
            with contextlib.suppress(OSError):
                group.remove()  # an earlier life's, now empty
        store.append_system_log(
            run_id,
            f"{store.utc_now()} not started again: the run replaced its own {names} with a link or a file, "
            "which the service does not follow",
        )
        if not store.transition(run_id, store.EXECUTOR_ERROR):
            store.transition(run_id, store.CANCELED)  # a cancel was asked for meanwhile
        return True

    def _sandbox_of(self, paths: RunPaths) -> sandbox.SandboxSpec | None:
        if self.settings.run_sandbox == "none":
            return None
        services = [*batch.sandbox_paths(self.settings, os.environ), *containers.sandbox_paths(self.settings)]
        return sandbox.plan(
            self.settings,
            paths,
            paths.read_inputs(),
            self.hidden_files,
            self.identity,
            services,
            fresh_proc=containers.engine(self.settings) == "podman",
        )

    def _recover(self, run_id: str) -> None:
        """Take over a run whose supervisor died: adopt, finish, resume or fail it."""
        run = store.get_run(run_id)
        if run is None or run.state in store.TERMINAL:
            return
        engine = _engine_of(run)
        if engine is None:
            return
        paths = RunPaths.of(self.settings, run_id)
        if run.host_id in (None, self.host_id):
            pid = live_leader(paths)
            if pid is not None:
                log.info("run %s: adopting live leader pid %d", run_id, pid)
                metrics.get().leader_starts.labels("adopt").inc()
                self._watch(run, engine, Leader(pid, None), paths, run.leader_token or "")
                return
            # Its leader is gone; what it started must not race a successor on the same job store.
            procs.kill_run_processes(run_id, {run.leader_pid} if run.leader_pid else None)
        else:
            # Granted only once that host's leader stopped beating: it is dead, or has fenced
            # itself out, and a leader started here now owns the run.
            log.info("run %s: leader on host %s stopped beating; taking the run over", run_id, run.host_id)
        batch.cancel_leftovers(self.settings, run_id, os.environ)
        finished = paths.read_result() is not None
        if not finished and self._refused_for_planted_names(run_id, paths):
            return
        if finished:
            self._finish(run, engine, paths, None, cancelled=run.cancel_requested)
            return
        if run.cancel_requested:
            store.transition(run_id, store.CANCELED)
            return
        if run.state == store.INITIALIZING and not paths.jobstore.exists():
            log.info("run %s: leader never started; starting it now", run_id)
            self._start(run_id)
            return
        if paths.jobstore_began:
            store.append_system_log(run_id, f"{store.utc_now()} leader lost; resumed with --restart")
            self._start(run_id, restart=True)
            return
        if paths.jobstore.exists():
            # Lost while Toil was still setting its job store up: nothing of the workflow ran,
            # and --restart would refuse the half-made store. Start the run afresh.
            shutil.rmtree(paths.jobstore, ignore_errors=True)
            store.append_system_log(run_id, f"{store.utc_now()} leader lost before its workflow began; started again")
            self._start(run_id)
            return
        store.append_system_log(run_id, "leader lost and its job store is gone; cannot resume")
        store.transition(run_id, store.SYSTEM_ERROR)

    def _ingest_tasks(self, run: store.Run, engine: Engine, paths: RunPaths, known_logs: set[str]) -> None:
        try:
            tasks.ingest(run.run_id, engine, run.workflow_path, paths, known_logs, self.settings.image_store)
        except Exception:
            # Task records are best effort; they must never take the run down with them.
            log.exception("run %s: reading task records failed", run.run_id)

    def _watch(self, run: store.Run, engine: Engine, leader: Leader, paths: RunPaths, token: str) -> None:
        settings = self.settings
        run_id = run.run_id
        renew_every = settings.lease_seconds / 3
        next_renew = 0.0
        cancelled = False
        known_logs = tasks.known_log_names(run_id)
        group = limits.group_of(settings, run_id)
        over_limit = ""
        identity = self._identity(run_id, paths)
        # A uid of the run's own, held by rlimits: what to count and, at the limit, kill.
        rlimited = identity.uid if identity and limits.rlimits_for(settings)[1] and group is None else 0
        next_count = 0.0
        ran_out = False  # whether its own filesystem was seen full (what fills it may be gone at the end)
        groups: set[int] = {leader.pid}  # the leader called setsid: its group is its pid
        while True:
            if leader.wait(settings.poll_interval):
                break
            # Remember every group the run ever had: a tool can outlive its worker.
            groups |= procs.run_process_groups(run_id, groups)
            self._ingest_tasks(run, engine, paths, known_logs)
            if self.stop_event.is_set():
                # Shutting down: the leader lives on; whoever holds the next lease adopts it.
                return
            now = time.monotonic()
            if now >= next_renew:
                renewed = store.renew_lease(run_id, self.worker_id, settings.lease_seconds)
                metrics.get().lease_renewals.labels("renewed" if renewed else "refused").inc()
                if not renewed:
                    current = store.get_run(run_id)
                    if current is None or current.claimed_by != self.worker_id:
                        log.warning("run %s: lease lost to another supervisor; letting go", run_id)
                        return
                next_renew = now + renew_every
            if not cancelled and store.cancel_requested(run_id):
                cancelled = True
                groups |= procs.run_process_groups(run_id, groups)
                self._cancel(run_id, leader, paths)
                break
            ran_out = ran_out or volumes.filled(paths)
            # A cgroup's counter costs a read; a uid's tasks a look at every process: every 2 s.
            if group is not None or (rlimited and time.monotonic() >= next_count):
                next_count = time.monotonic() + 2.0
                if self._at_process_limit(group, rlimited):
                    # A run at its process limit is stuck or a fork bomb: it ends now, once.
                    over_limit = (
                        f"the run reached its process limit (run_max_processes = {settings.run_max_processes}) "
                        "and was stopped"
                    )
                    log.warning("run %s: %s", run_id, over_limit)
                    if group is not None:
                        group.kill_all()
                    else:
                        limits.kill_uid(rlimited)
                    leader.signal_group(signal.SIGKILL)
                    leader.wait(settings.cancel_grace_seconds)
                    break
        self._ingest_tasks(run, engine, paths, known_logs)
        if token and not store.leader_owns(run_id, token):
            log.warning("run %s: its leader was fenced out by a successor; letting go", run_id)
            return
        self._finish(
            run,
            engine,
            paths,
            leader.exitcode,
            cancelled=cancelled or store.cancel_requested(run_id),
            groups=groups,
            over_limit=over_limit,
            ran_out=ran_out,
        )

    def _at_process_limit(self, group: limits.RunGroup | None, uid: int) -> bool:
        """Whether the run holds its process limit: its group's count of refusals, or (held
        by rlimits) the tasks of its own uid."""
        if group is not None:
            return group.process_limit_hits() > 0
        return bool(uid) and limits.tasks_of_uid(uid)[0] >= self.settings.run_max_processes - 1

    def _cancel(self, run_id: str, leader: Leader, paths: RunPaths) -> None:
        grace = self.settings.cancel_grace_seconds
        log.info("run %s: cancelling leader pid %d", run_id, leader.pid)
        self._write_kill_flag(paths, run_id)
        if not leader.wait(grace):
            log.info("run %s: leader still up after kill flag; SIGTERM", run_id)
            leader.signal_group(signal.SIGTERM)
            if not leader.wait(grace):
                log.info("run %s: leader still up after SIGTERM; SIGKILL", run_id)
                leader.signal_group(signal.SIGKILL)
                leader.wait(grace)

    def _write_kill_flag(self, paths: RunPaths, run_id: str) -> None:
        """Ask the leader to stop through its job store, as `toil kill` does for remote leaders."""
        if not paths.jobstore.exists():
            return
        run_as = self._run_as(self._identity(run_id, paths))
        writer = self.context.Process(target=_write_kill_flag, args=(str(paths.root), run_as))
        writer.start()
        writer.join(30)
        if writer.exitcode == 0:
            log.info("run %s: kill flag written", run_id)
        else:  # the leader may not have initialised its job store yet
            log.info("run %s: kill flag not written (exit status %s)", run_id, writer.exitcode)
            if writer.exitcode is None:
                writer.kill()

    def _settle(self, paths: RunPaths, run_id: str, keep_jobstore: bool) -> None:
        try:
            volumes.settle(self.settings, paths, run_id, keep_jobstore)
        except Exception:
            # Its mount stays, and is served; _settle_finished tries again.
            log.exception("run %s: not settled; its filesystem stays mounted for now", run_id)

    def _settle_finished(self) -> None:
        """Settle finished runs that still have an image, a few at a time: those an earlier
        version left mounted, and any whose settle failed or that ended elsewhere than _finish."""
        while not self.stop_event.is_set():
            try:
                left = volumes.settle_finished(self.settings)
            except Exception:
                log.exception("settling finished runs failed; retrying")
                left = 0
            self.stop_event.wait(0.5 if left else 10)

    def _finish(
        self,
        run: store.Run,
        engine: Engine,
        paths: RunPaths,
        exitcode: int | None,
        cancelled: bool,
        groups: set[int] | None = None,
        over_limit: str = "",
        ran_out: bool = False,
    ) -> None:
        run_id = run.run_id
        procs.kill_run_processes(run_id, groups)
        group = limits.group_of(self.settings, run_id)
        identity = self._identity(run_id, paths)
        if group is None and identity is not None and self.settings.run_uid_range is not None:
            limits.kill_uid(identity.uid)  # everything of a run's own uid is the run's
        oom_kills = 0
        if group is not None:
            group.kill_all()
            memory, processes = group.peaks()
            log.info("run %s: at most %d MB of memory and %d processes at once", run_id, memory >> 20, processes)
            oom_kills = group.oom_kills()
            if oom_kills:
                limit = self.settings.effective_run_memory_limit
                store.append_system_log(
                    run_id,
                    f"the run reached its memory limit (run_memory_limit = {limit} bytes): the kernel "
                    f"killed {oom_kills} of its processes",
                )
            group.remove()
        batch.cancel_leftovers(self.settings, run_id, os.environ)
        recorded = paths.read_result()
        code = recorded if recorded is not None else exitcode
        started = (store.get_run(run_id) or run).start_time or store.utc_now()

        def end(state: str, **fields: object) -> None:
            if store.transition(run_id, state, **fields):
                metrics.get().run_duration.labels(state).observe(_seconds_since(started))

        if cancelled:
            self._settle(paths, run_id, keep_jobstore=True)
            end(store.CANCELED, exit_code=code)
            return
        if not over_limit and code != 0 and (ran_out or volumes.ran_out(paths)):
            # Its own filesystem, and no other, is full: the run's doing, not the service's.
            over_limit = f"the run filled its disk space (run_disk_limit = {self.settings.run_disk_limit})"
        # Before its end is recorded: a finished run holds no mount (retention removes a
        # complete run's job store anyway).
        self._settle(paths, run_id, keep_jobstore=bool(over_limit) or code != 0)
        if over_limit:
            store.append_system_log(run_id, over_limit)
            end(store.EXECUTOR_ERROR, exit_code=code)
            return
        if code == 0:
            # Hashed here, within what could be served, so that no request for the RO-Crate does.
            try:
                hashed = checksums.record_checksums(
                    paths, self.settings.max_served_file_bytes, self.settings.max_served_run_bytes
                )
                log.info("run %s: %d output bytes hashed for its RO-Crate", run_id, hashed)
            except OSError:
                log.exception("run %s: output checksums not recorded; its RO-Crate will lack them", run_id)
            end(store.COMPLETE, exit_code=0, outputs=engine.present_outputs(paths.read_outputs(), paths))
        elif recorded is not None:
            # What the run's container shims said (an image it could not have), named for the user.
            for problem in containers.problems(paths):
                store.append_system_log(run_id, problem)
            end(store.EXECUTOR_ERROR, exit_code=code)
        else:
            detail = f"exit status {exitcode}" if exitcode is not None else "unknown exit status"
            message = f"leader died without a result ({detail})"
            if exitcode is not None and exitcode < 0:
                name = next((each.name for each in signal.Signals if each == -exitcode), "?")
                message = f"the leader was killed by signal {-exitcode} ({name}) before it had a result"
            store.append_system_log(run_id, message)
            if oom_kills and exitcode in (None, -signal.SIGKILL):
                # The kernel killed it at the run's own memory limit (tasks go first: limits.py).
                end(store.EXECUTOR_ERROR, exit_code=exitcode)
                return
            store.transition(run_id, store.SYSTEM_ERROR, exit_code=exitcode)


def _seconds_since(stamp: str) -> float:
    then = store.parse_stamp(stamp)
    return 0.0 if then is None else max(0.0, (datetime.now(UTC) - then).total_seconds())


def _engine_of(run: store.Run) -> Engine | None:
    engine = engine_for(run.workflow_type)
    if engine is None:
        store.append_system_log(run.run_id, f"no engine for workflow type {run.workflow_type}")
        store.transition(run.run_id, store.SYSTEM_ERROR)
    return engine


def _work_listener() -> object | None:
    try:
        return store.listen_for_work()
    except Exception as exc:  # the poll still finds the work
        log.warning("cannot LISTEN for new runs (%s); polling only", exc)
        return None


def _noop() -> None:
    pass


def _run_leader(spec: LeaderSpec, channel: Connection) -> None:
    # Referenced by name across the forkserver, so the supervisor itself never imports Toil:
    # the module is already loaded (and its parsers warmed) in the forkserver.
    from wes_gateway.engines.leader import run_leader

    run_leader(spec, channel)


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
