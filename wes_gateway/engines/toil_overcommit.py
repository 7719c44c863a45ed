"""More short steps of a run at once than Toil's booking allows (``toil_overcommit``), on the
leader's own host.

Toil's single-machine batch system books each job's cores and disk against pools the size of
the run's cores and of the free space of its work directory. A 100-way scatter of echo steps
therefore ran two or three at a time (2 cores; a CWL job books 2–3 GiB of a 10 GiB run
filesystem) although each step spends most of its time starting and waiting, not computing
or writing (issue 40: 0.17 s wall, 0.05 s CPU per job). Larger cores and disk pools let more
of them overlap, while what they use together stays bounded where it is enforced: the run's
CPU quota (limits.py) and its own filesystem (volumes.py). A job may still not ask for more
than --maxCores or the disk there is, and memory keeps its pool: it is the one resource whose
overuse kills (the run's memory limit). Off (1.0) by default: CPU-bound steps would only be
slowed by sharing, and a workflow that fills its disk fails later rather than waiting.
"""

from __future__ import annotations

from typing import Any

# The pools stretched, as SingleMachineBatchSystem.resource_sources lists them: (index, kind).
STRETCHED = ((1, "cores"), (3, "disk"))


def overcommit(factor: float) -> None:
    """In the leader, before Toil makes its batch system: the cores and disk pools ``factor``
    times what Toil books them at."""
    if factor <= 1.0:
        return
    from toil.batchSystems.abstractBatchSystem import ResourcePool
    from toil.batchSystems.singleMachine import SingleMachineBatchSystem

    stock_init = SingleMachineBatchSystem.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        stock_init(self, *args, **kwargs)
        for index, kind in STRETCHED:
            pool = self.resource_sources[index]
            if getattr(pool, "resource_type", None) == kind:  # the layout this was written for
                self.resource_sources[index] = ResourcePool(int(pool.value * factor), kind)

    SingleMachineBatchSystem.__init__ = __init__
