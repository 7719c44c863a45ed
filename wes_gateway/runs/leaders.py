"""A run's leader process as the supervisor sees it: the environment it starts with, a handle
on it (one this supervisor started, or one it adopted), whether the recorded one still lives,
and the two functions the forkserver runs: the leader itself, and the writer of Toil's kill
flag. Both are referenced by name across the forkserver, so the supervisor never imports Toil.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

from wes_gateway import metrics
from wes_gateway.config import Settings
from wes_gateway.engines import LeaderSpec
from wes_gateway.files.paths import RunPaths
from wes_gateway.host import batch, containers, procs, sandbox

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


def run_as_of(identity: sandbox.RunIdentity | None) -> tuple[int, int] | None:
    return None if identity is None else (identity.uid, identity.gid)


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


def leader_main(spec: LeaderSpec, channel: Connection) -> None:
    # In the forkserver's child: the module is already loaded there (and its parsers warmed).
    from wes_gateway.engines.leader import run_leader

    run_leader(spec, channel)


def kill_flag_main(run_root: str, run_as: tuple[int, int] | None) -> None:
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


def noop() -> None:
    """What the supervisor forks first, so that the forkserver (and Toil's import) starts early."""
