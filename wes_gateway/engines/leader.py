"""The code that runs inside each run's leader process.

This module is preloaded into the multiprocessing forkserver, so importing each language's
Toil front end and warming its parser is paid once, not per run. Each leader is forked from
there and owns the process-global state Toil insists on (signal handlers, root logger,
sys.argv, environ).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import stat
import sys
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

from wes_gateway import store
from wes_gateway.engines import (
    ENGINES,
    engine_for,
    toil_overcommit,
    toil_pickles,
    toil_probes,
    toil_realtime,
    toil_schemas,
    toil_waits,
    toil_workers,
)
from wes_gateway.engines.base import LeaderSpec, exit_code_of
from wes_gateway.files.paths import RunPaths
from wes_gateway.host import limits, procs
from wes_gateway.host.sandbox import Sandbox, become


def _warm_engines() -> None:
    """Preload here, in the forkserver: the first load of cwltool's schema-salad loaders alone
    takes over a second, and every leader forked afterwards inherits the warm state."""
    quiet = [logging.getLogger(name) for name in ("cwltool", "salad", "toil")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        for engine in ENGINES.values():
            try:
                engine.warm()
            except Exception:  # warming is an optimisation; a leader still works without it
                pass
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def _warm_toil() -> None:
    """Preload here too what every leader imported on its way, whatever the language: Toil's
    leader loop (with its progress bar's terminal libraries), every batch system (Toil's option
    parser lists them all), the worker and file stores its zygote forks from, and Toil's scan for
    plugins, which it memoizes. Each leader paid about 0.1 s of CPU for it (188 modules, measured
    with cProfile in a warm leader: bench/profile.py)."""
    import toil.batchSystems.registry
    import toil.fileStores.cachingFileStore
    import toil.fileStores.nonCachingFileStore
    import toil.leader
    import toil.lib.plugins
    import toil.worker  # noqa: F401
    import yaml  # noqa: F401  (configargparse reads Toil's default configuration with it)

    for name in toil.batchSystems.registry.get_batch_systems():
        try:
            toil.batchSystems.registry.get_batch_system(name)
        except ImportError:  # one whose optional dependencies are absent: as Toil itself copes
            pass
    for kind in toil.lib.plugins.plugin_types:
        toil.lib.plugins.get_plugin_names(kind)


_warm_engines()
try:
    _warm_toil()
except Exception:  # as _warm_engines: an optimisation, a leader still works without it
    pass


def _redirect(fd: int, path: str) -> None:
    # Never through a link or into a FIFO: a resumed run's directory is the run's own, and this
    # process (outside the sandbox, maybe root) would write wherever a planted name pointed.
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK, 0o640)
    if not stat.S_ISREG(os.fstat(target).st_mode):
        raise OSError(f"{path} is not a regular file")
    os.set_blocking(target, True)
    os.dup2(target, fd)
    os.close(target)


def _write_result(paths: RunPaths, exit_code: int) -> None:
    temporary = paths.result.with_suffix(".tmp")
    temporary.write_text(json.dumps({"exit_code": exit_code}))
    os.replace(temporary, paths.result)


class Heartbeat:
    """The leader's own proof of life in the store, renewed by its launcher whatever its
    supervisor does. Another gateway host resumes the run only once this has lapsed; and a
    leader that finds itself fenced out (a successor holds the run, or the store has been out
    of reach for ``fence_seconds``) is stopped before it writes anything more.

    Driven from the launcher's one thread: a process that has joined a PID namespace for its
    children cannot start threads, and one that joins a user namespace must have none."""

    def __init__(self, spec: LeaderSpec, leader_pid: int) -> None:
        self.spec = spec
        self.leader_pid = leader_pid
        self.fenced = False
        self.last_renewed = time.monotonic()
        self.due = self.last_renewed + spec.heartbeat_seconds

    def beat(self) -> None:
        self.due = time.monotonic() + self.spec.heartbeat_seconds
        try:
            owned: bool | None = store.beat(self.spec.run_id, self.spec.token)
        except Exception as exc:  # the store is out of reach: keep trying until the fence
            print(f"wes-gateway: heartbeat failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            owned = None
        if owned:
            self.last_renewed = time.monotonic()
        elif owned is False or time.monotonic() - self.last_renewed > self.spec.fence_seconds:
            self._fence("another leader owns this run" if owned is False else "the store is out of reach")

    def _fence(self, why: str) -> None:
        self.fenced = True
        print(f"wes-gateway: stopping this leader: {why}", file=sys.stderr, flush=True)
        try:
            os.kill(self.leader_pid, signal.SIGKILL)
        except OSError:
            pass

    def still_owner(self) -> bool:
        """Checked once more before the result is written: a late leader writes nothing."""
        if self.fenced:
            return False
        try:
            return store.leader_owns(self.spec.run_id, self.spec.token)
        except Exception:
            return time.monotonic() - self.last_renewed <= self.spec.fence_seconds


def _wait_beating(pid: int, heartbeat: Heartbeat | None) -> int:
    """Wait for the leader to exit, renewing its heartbeat meanwhile; its wait status."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if heartbeat is None:
            signal.sigtimedwait([signal.SIGCHLD], 3600)
            continue
        remaining = heartbeat.due - time.monotonic()
        if remaining > 0:
            # Woken at once by any child's exit (SIGCHLD is blocked, so it waits here).
            signal.sigtimedwait([signal.SIGCHLD], remaining)
        else:
            heartbeat.beat()


def run_leader(spec: LeaderSpec, channel: Connection | None = None) -> None:
    """Entry point in the child (the run's launcher). Never returns: it exits with the
    leader's exit code, or dies of the signal that killed the leader.

    ``channel`` brings the database URL for the heartbeat, read only after the leader proper
    is forked: the leader, which runs the workflow's code, never holds the credentials."""
    # Own process group, so cancel can signal the leader and everything it started.
    os.setsid()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    paths = RunPaths(root=Path(spec.root))
    os.chdir(spec.root)
    # Who the leader is, for a supervisor that must adopt it after a crash: pid and start time
    # (a forked process's /proc environ still shows the forkserver's, so no marker is visible).
    # In the control directory, which the sandbox hides: no workflow can point it elsewhere.
    paths.leader_file.write_text(json.dumps({"pid": os.getpid(), "start": procs.start_time(os.getpid())}))
    sys.stdout.flush()
    sys.stderr.flush()
    _redirect(1, str(paths.stdout))
    _redirect(2, str(paths.stderr))
    box = None
    if spec.sandbox is not None:
        try:
            box = Sandbox(spec.sandbox)
        except Exception:
            traceback.print_exc()
            os._exit(1)
    # The leader proper is a child: the first process of the sandbox's PID namespace that
    # runs Toil. This launcher stays outside and alone records the result.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    pid = os.fork()
    if pid == 0:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        if channel is not None:
            channel.close()
        os._exit(_lead(spec, paths, box))
    heartbeat = None
    if channel is not None:
        try:
            store.open_database(channel.recv())
            channel.close()
            heartbeat = Heartbeat(spec, pid)
            heartbeat.beat()
        except Exception:
            traceback.print_exc()  # the leader runs on; a supervisor on this host still adopts it
    status = _wait_beating(pid, heartbeat)
    if box is not None:
        box.close()
    if heartbeat is not None and not heartbeat.still_owner():
        if box is None:  # nothing else ends what the fenced leader started
            os.killpg(0, signal.SIGKILL)
        os._exit(75)
    _end_as(status, paths)


def _end_as(status: int, paths: RunPaths) -> None:
    """End the launcher as the leader ended (wait status ``status``), its result written if it
    exited."""
    if os.WIFEXITED(status):
        _write_result(paths, os.WEXITSTATUS(status))
        os._exit(os.WEXITSTATUS(status))
    # Killed: no result, and the supervisor sees the same signal as its exit status.
    killed_by = os.WTERMSIG(status)
    if killed_by != signal.SIGKILL:  # the OOM killer's or a kill -9: no handler to reset
        signal.signal(killed_by, signal.SIG_DFL)
    os.kill(os.getpid(), killed_by)
    os._exit(128 + killed_by)  # a signal whose default is to be ignored


def _lead(spec: LeaderSpec, paths: RunPaths, box: Sandbox | None) -> int:
    """In the leader: join the run's group, enter the sandbox, drop root, run the language's
    Toil front end."""
    try:
        limits.join(spec.cgroup_procs)
    except OSError:
        traceback.print_exc()  # never run unlimited where limits were planned
        return 1
    if spec.cgroup_procs:
        limits.shield_leader()  # and Toil's jobs expose themselves (_run_engine)
    exit_code = exit_code_of(functools.partial(_run_engine, spec, paths, box))
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: Toil leaves threads and atexit hooks behind.
    return exit_code & 0xFF if exit_code >= 0 else 1


def _run_engine(spec: LeaderSpec, paths: RunPaths, box: Sandbox | None) -> int:
    if box is not None:
        box.enter()
    become(spec.run_as)
    limits.set_rlimits(*spec.rlimits)
    # Toil pickles the leader's environment into the job store: give it only what we chose.
    os.environ.clear()
    os.environ.update(spec.env)
    engine = engine_for(spec.workflow_type)
    if engine is None:
        raise RuntimeError(f"no engine for workflow type {spec.workflow_type}")
    sys.argv = [engine.program, *spec.argv]
    if spec.probes_in_process:
        toil_probes.install()  # before the zygote forks: its workers inherit it
    if spec.prompt_shutdown:
        toil_waits.wake_process_waits()  # likewise
    by_name = spec.pickle_schemas and spec.workflow_type == "CWL"
    if by_name:
        toil_pickles.install()  # likewise; taken back below if the zygote does not start
    if spec.warm_workers:
        try:
            engine.warm_workers()
        except Exception:  # an optimisation: each worker still loads what it needs itself
            print(f"wes-gateway: run {spec.run_id}: its workers start less warm:", file=sys.stderr)
            traceback.print_exc()
    # Before anything below starts a thread: the zygote is a fork of this process. Either way
    # Toil's jobs, not this leader, are the OOM killer's picks at the run's memory limit.
    if not (spec.warm_workers and toil_workers.start()):
        toil_workers.expose_jobs()
        if by_name:
            toil_pickles.uninstall()  # workers started cold would parse the schema
    if spec.prompt_shutdown:
        toil_waits.install()
    toil_overcommit.overcommit(spec.overcommit)
    if spec.keep_schemas and spec.workflow_type == "CWL":
        toil_schemas.keep()
    toil_realtime.disable()
    return engine.run_leader(spec.argv, paths)
