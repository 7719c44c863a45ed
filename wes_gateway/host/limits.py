"""Per-run memory and process limits, in a control group of each run's own.

Every process a run's leader starts on this host (Toil, its workers, the tools, a rootless
Podman's containers) is in the run's group, so the kernel holds the run, and only the run, to
``run_memory_limit`` (its OOM killer picks within the group) and ``run_max_processes``
(tasks: a fork bomb meets EAGAIN inside its own run). The supervisor reads the group's event
counters to name what was hit, and ends a run that reached its process limit.

cgroup v1 (the memory and pids hierarchies, below the service's own group) is found by
itself; cgroup v2 needs a delegated parent (``run_cgroup_parent``), since a v2 group with
processes of its own cannot hand controllers to children. Jobs a cluster batch system runs
are held by the cluster's own limits, not these.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from wes_gateway.config import Settings
from wes_gateway.files.paths import hidden_name
from wes_gateway.host import procs

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Below the service's own group, so that what the host gave the service bounds its runs too.
PARENT_NAME = "wes-gateway-runs"


# At a run's memory limit the kernel kills the group's process with the largest resident size
# (weighted by its OOM score adjustment). The leader's is mostly pages shared with the
# forkserver (charged to the service, not the run): it was the pick, and its kill ended the run
# unreported. So the processes that run the jobs (Toil's workers and all they start) raise
# their score to the most, which needs no privilege and holds wherever the leader could not
# lower its own; and the leader, in a run's group, lowers its own while still root. That
# second part is for a job process that sets its own score back down, as Podman does for its
# containers (to 0, by default): a container holding memory with little resident would
# otherwise be weighed below the leader. Lowered only in a group, which bounds what the leader
# holds: elsewhere it would outlast the service's own processes under the host's OOM killer.
# Not -1000: a leader that alone outgrows the limit stays killable, the last pick, rather
# than hang its group. Its descendants inherit the floor it sets: a job may set its own score
# as low again, and at worst then competes with its own leader, within its own run.
TASK_OOM_SCORE_ADJ = 1000
LEADER_OOM_SCORE_ADJ = -900
_PR_SET_DUMPABLE = 4


def expose_to_oom() -> None:
    """In a process that runs a job: become the OOM killer's pick before the run's leader."""
    # A process forked (not exec'd) from one that dropped root is not dumpable, so its /proc
    # files are root's and it could not write its own score: make it dumpable again, as a job
    # that Toil starts by exec is.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
    _set_oom_score_adj(TASK_OOM_SCORE_ADJ)


def shield_leader() -> None:
    """In a leader that has joined its run's group, before it drops root: be the OOM killer's
    last pick there. Without CAP_SYS_RESOURCE (not root, or root in a container that lacks
    it) it keeps the service's score: jobs still go first, unless one sets its own back."""
    _set_oom_score_adj(LEADER_OOM_SCORE_ADJ)


def _set_oom_score_adj(value: int) -> None:
    try:
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write(str(value))
    except OSError:  # no /proc, or (lowering) no CAP_SYS_RESOURCE
        pass


class LimitsUnavailable(RuntimeError):
    """``run_limits = "cgroup"`` was asked for and this host gives no usable group."""


@dataclass(frozen=True)
class RunGroup:
    """One run's group: a directory in each hierarchy that holds a controller we use."""

    version: int
    memory: Path  # v1: in the memory hierarchy; v2: the group itself
    pids: Path  # v1: in the pids hierarchy; v2: the same directory as memory

    @property
    def directories(self) -> tuple[Path, ...]:
        return (self.memory,) if self.memory == self.pids else (self.memory, self.pids)

    @property
    def procs_files(self) -> tuple[str, ...]:
        return tuple(str(directory / "cgroup.procs") for directory in self.directories)

    def create(self, memory_bytes: int, processes: int) -> None:
        for directory in self.directories:
            directory.mkdir(parents=True, exist_ok=True)
        if self.version == 1:
            _write(self.memory / "memory.limit_in_bytes", str(memory_bytes) if memory_bytes else "-1")
            _write(self.pids / "pids.max", str(processes) if processes else "max")
        else:
            _write(self.memory / "memory.max", str(memory_bytes) if memory_bytes else "max")
            _write(self.memory / "memory.swap.max", "0" if memory_bytes else "max", missing_ok=True)
            _write(self.pids / "pids.max", str(processes) if processes else "max")

    def members(self) -> set[int]:
        found: set[int] = set()
        for directory in self.directories:
            try:
                found |= {int(line) for line in (directory / "cgroup.procs").read_text().split()}
            except OSError:
                pass
        return found

    def oom_kills(self) -> int:
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        return _counter(self.memory / name, "oom_kill")

    def process_limit_hits(self) -> int:
        return _counter(self.pids / "pids.events", "max")

    def peaks(self) -> tuple[int, int]:
        """The most memory (bytes) and processes the run has held at once (0 where unknown)."""
        memory_file = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        return _number(self.memory / memory_file), _number(self.pids / "pids.peak")

    def kill_all(self) -> None:
        """SIGKILL every process in the group until none is left (a forking one may add more)."""
        _kill_until_gone(self.members)

    def remove(self) -> None:
        for directory in self.directories:
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:  # still populated: the next run end or start retries
                log.warning("cgroup %s not removed: %s", directory, exc)


def set_rlimits(memory_bytes: int, processes: int) -> None:
    """In the leader, after it dropped to the run's own uid, where the host gives no cgroup:
    each process may map ``memory_bytes`` (a process, not the run: RLIMIT_AS), and the uid may
    have ``processes`` processes and threads (the run's, since the uid is the run's alone)."""
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    if processes:
        resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))


def rlimits_for(settings: Settings) -> tuple[int, int]:
    """The fallback limits a leader sets on itself: only with a uid of the run's own
    (run_uids), without which RLIMIT_NPROC would count every run of the shared user."""
    if settings.run_limits == "none" or settings.run_uid_range is None:
        return (0, 0)
    return settings.effective_run_memory_limit, settings.run_max_processes


def live_uids(among: range) -> set[int]:
    """The real uids in ``among`` that have a process on this host."""
    return {uid for uid, _threads in procs.owners().values() if uid in among}


def tasks_of_uid(uid: int) -> tuple[int, list[int]]:
    """The processes whose real user is ``uid``, and their threads: what RLIMIT_NPROC counts."""
    mine = {pid: threads for pid, (owner, threads) in procs.owners().items() if owner == uid}
    return sum(mine.values()), list(mine)


def kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (a uid of one run's own) until none is left."""
    _kill_until_gone(lambda: tasks_of_uid(uid)[1])


def _kill_until_gone(find: Callable[[], Iterable[int]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (pids := list(find())) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)


def join(procs_files: tuple[str, ...]) -> None:
    """Move the calling process into the run's group (before it starts anything)."""
    for path in procs_files:
        _write(Path(path), str(os.getpid()))


def group_of(settings: Settings, run_id: str) -> RunGroup | None:
    """The run's group on this host, or None where runs are not held in one."""
    if settings.run_limits in ("none", "rlimit") or settings.batch_system != "single_machine":
        return None
    parents = _parents(settings)
    if parents is None:
        return None
    version, memory, pids = parents
    name = f"run-{hidden_name(settings, run_id)}"
    if (memory / f"run-{run_id}").is_dir():
        name = f"run-{run_id}"  # made by a version that named groups by the run's id
    return RunGroup(version, memory / name, pids / name)


def check(settings: Settings) -> str:
    """What holds runs here ("cgroup v1", "cgroup v2", "rlimit" or "none"), trying a group
    once; raises LimitsUnavailable where what ``run_limits`` asks for cannot be had."""
    if settings.run_limits == "none" or settings.batch_system != "single_machine":
        return "none"
    problem = "no writable memory and pids cgroup controllers (cgroup v1), nor run_cgroup_parent (v2)"
    if settings.run_limits != "rlimit":
        probe = group_of(settings, f"probe-{os.getpid()}")
        if probe is not None:
            try:
                probe.create(settings.effective_run_memory_limit, settings.run_max_processes)
                probe.remove()
                return f"cgroup v{probe.version}"
            except OSError as exc:
                problem = f"cannot make a run cgroup: {exc}"
                probe.remove()
        if settings.run_limits == "cgroup":
            raise LimitsUnavailable(problem)
    if rlimits_for(settings) != (0, 0):
        if settings.run_limits == "auto":
            log.warning("runs are held by rlimits (memory per process, processes per run uid): %s", problem)
        return "rlimit"
    if settings.run_limits == "rlimit":
        raise LimitsUnavailable("run_limits = rlimit needs run_uids (a uid of each run's own) and root")
    log.warning("runs have no memory or process limits (run_uids would give them rlimits): %s", problem)
    return "none"


def _parents(settings: Settings) -> tuple[int, Path, Path] | None:
    if settings.run_cgroup_parent is not None:
        parent = settings.run_cgroup_parent
        return 2, parent, parent
    if os.geteuid() != 0:
        return None
    mounts = _v1_mounts()
    if "memory" not in mounts or "pids" not in mounts:
        return None
    own = _own_groups()
    memory = mounts["memory"] / own.get("memory", "/").lstrip("/") / PARENT_NAME
    pids = mounts["pids"] / own.get("pids", "/").lstrip("/") / PARENT_NAME
    return 1, memory, pids


@cache
def _v1_mounts() -> dict[str, Path]:
    found: dict[str, Path] = {}
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "cgroup":
            for option in fields[3].split(","):
                if option in ("memory", "pids"):
                    found[option] = Path(fields[1])
    return found


@cache
def _own_groups() -> dict[str, str]:
    groups: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _number, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            groups[controller] = path
    return groups


def _counter(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _number(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _write(path: Path, value: str, missing_ok: bool = False) -> None:
    try:
        with open(path, "w") as handle:
            handle.write(value)
    except FileNotFoundError:
        if not missing_ok:
            raise
