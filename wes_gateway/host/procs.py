"""Processes of this host as /proc shows them: liveness, identity, and the processes of a run.

The supervisor, the leader and the tests all ask these questions; they are answered here only.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

# Set in every leader's environment (and so its Toil workers'): names the run it belongs to.
MARKER = "WES_GATEWAY_RUN_ID"


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state is [0], parent [1], pgrp [2],
    starttime [19]); rsplit, because the name itself may contain ") "."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None


def marked_pids(run_id: str) -> list[int]:
    needle = f"{MARKER}={run_id}".encode()
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                if needle in handle.read().split(b"\0"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def _processes() -> dict[int, tuple[str, int, int]]:
    """Every process of this host: its state, parent and group."""
    table: dict[int, tuple[str, int, int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                table[int(entry.name)] = (fields[0], int(fields[1]), int(fields[2]))
    return table


def run_process_groups(run_id: str, groups: set[int] | None = None) -> set[int]:
    """Process groups of the run: the leader's and each Toil worker's (Toil starts workers in
    sessions of their own). Tools inherit their worker's group even where cwltool has cleared
    their environment, so the groups reach processes that the marker does not."""
    table = _processes()
    own = os.getpgrp()
    return {table[pid][2] for pid in processes_of_run(run_id, groups, table) if pid in table} - {own}


def processes_of_run(
    run_id: str, groups: set[int] | None = None, table: dict[int, tuple[str, int, int]] | None = None
) -> list[int]:
    """PIDs of the run: everything carrying its marker, every member of its groups (pass the
    leader's, whose forked processes carry no marker), and everything these started (the
    workers forked warm from the leader's zygote, engines/toil_workers.py, carry no marker
    and have groups of their own)."""
    table = _processes() if table is None else table
    marked = marked_pids(run_id)
    wanted = {table[pid][2] for pid in marked if pid in table} | (groups or set())
    wanted.discard(os.getpgrp())
    found = set(marked) | {pid for pid, (_, _, group) in table.items() if group in wanted}
    children: dict[int, list[int]] = {}
    for pid, (_, parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    pending = list(found)
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    found.discard(os.getpid())
    # Zombies have exited already; only their parent (or init) can clear them.
    return sorted(pid for pid in found if pid in table and table[pid][0] != "Z")


def kill_run_processes(run_id: str, groups: set[int] | None = None) -> int:
    pids = processes_of_run(run_id, groups)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if pids:
        log.info("run %s: killed %d leftover processes", run_id, len(pids))
    return len(pids)


def owners() -> dict[int, tuple[int, int]]:
    """Every process of this host: its real user and its number of threads (what RLIMIT_NPROC
    counts for that user)."""
    found: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle.read().splitlines() if ":" in line)
            found[int(entry.name)] = (int(fields["Uid"].split()[0]), int(fields.get("Threads", "1").strip() or 1))
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return found


def parent_pid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def pid_alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"
