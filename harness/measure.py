"""What the mounts a service holds cost every later run (issue 37), measured alike by the test
of settled runs and bench/settled.py."""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

# The bubblewrap sandbox: its start copies the mount table, so it slows as mounts grow.
BWRAP = ["bwrap", "--unshare-pid", "--unshare-user", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "true"]


def sandbox_start(times: int = 15, rounds: int = 3) -> float:
    """Seconds the issue's bubblewrap sandbox takes to start: the smallest of ``rounds``
    medians of ``times``, since others share this machine."""
    medians = []
    for _ in range(rounds):
        taken = []
        for _ in range(times):
            began = time.perf_counter()
            subprocess.run(BWRAP, check=True)
            taken.append(time.perf_counter() - began)
        medians.append(statistics.median(taken))
    return min(medians)


def mount_count() -> int:
    """Mounts in this process's namespace."""
    return len(Path("/proc/self/mounts").read_text().splitlines())
