"""Toil's idle waits at the end of a run, cut short inside our own leader processes.

A short run spends most of its leader's life in three waits of Toil 9.6 at shutdown that do
no work and that no Toil option shortens (measured in bench/profile.py):

- the service manager's thread runs its loop under ``throttle(1.0)``: every pass lasts a
  full second, and ``ServiceManager.shutdown`` joins that thread, so the end of every run
  waits out the current pass (1.2 to 1.4 s measured);
- the stats-and-logging thread sleeps 0.5 s whenever it finds no new log, and its shutdown
  joins it (hidden behind the first wait until that one is gone: 0.4 s measured then);
- the real-time log server is a ``socketserver`` UDP server that Toil always starts (its
  ``--realTimeLogging`` only changes the level) and serves with the default 0.5 s poll,
  and ``shutdown`` waits for that poll to notice (0.49 s measured).

And one in the middle of a run: the leader loop asks its batch system for a finished job with
a 2 s wait even when finishing the last one has left it messages of its own to act on (a
workflow or scatter job whose children are all done, a successor now ready). With no other
job running it waits the whole 2 s, once for every such level of a workflow, and once more
after the last job, with nothing issued at all (three such waits in a scatter over an empty
list: about 5 s of its 10 s).

These are woken here instead of waited out: the two threads sleep on an event that their
own shutdown sets, the log server polls every 50 ms, and the leader loop does not wait on
its batch system while it has messages of its own or nothing issued, nor past a retried
job's backoff. Nothing else changes: what the loops do, and in what order, is Toil's.
This is applied only in a leader process that the gateway forked (never in the web workers,
the supervisor or Toil's own workers), and only to the Toil version it was measured on;
elsewhere ``install`` changes nothing and says so. ``WES_GATEWAY_TOIL_PROMPT_SHUTDOWN=false`` turns it off.
"""

from __future__ import annotations

import logging
import socketserver
import threading
import time
import types
from typing import Any

log = logging.getLogger(__name__)

# The version whose internals this was written against and tested with (tests/test_speed.py).
TOIL_SERIES = "9.6."
LOG_SERVER_POLL = 0.05

_manager_stopping = threading.Event()
_stats_stopping = threading.Event()


class _WakeableThrottle:
    """``toil.lib.throttle.throttle`` (the body lasts at least ``min_interval``), except that
    the remainder is slept on an event that the service manager's shutdown sets."""

    def __init__(self, min_interval: float) -> None:
        self.min_interval = min_interval
        self.start = 0.0

    def __enter__(self) -> None:
        self.start = time.monotonic()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            remainder = self.min_interval - (time.monotonic() - self.start)
            if remainder > 0:
                _manager_stopping.wait(remainder)


class _WakeableTime:
    """The ``time`` module as toil.statsAndLogging sees it: ``sleep`` ends at its shutdown."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        _stats_stopping.wait(seconds)


class _PromptUDPServer(socketserver.ThreadingUDPServer):
    def serve_forever(self, poll_interval: float = LOG_SERVER_POLL) -> None:
        super().serve_forever(min(poll_interval, LOG_SERVER_POLL))


def install() -> bool:
    """Apply all of the above in this process; True if applied. Idempotent."""
    import toil.leader
    import toil.realtimeLogger
    import toil.serviceManager
    import toil.statsAndLogging
    from toil.version import baseVersion

    version = str(baseVersion)
    manager: Any = toil.serviceManager.ServiceManager
    stats: Any = toil.statsAndLogging.StatsAndLogging
    if (
        not version.startswith(TOIL_SERIES)
        or not hasattr(toil.serviceManager, "throttle")
        or not hasattr(toil.leader, "JobUpdatedMessage")
    ):
        log.info("Toil %s: its shutdown waits are left as they are", version)
        return False
    if getattr(manager, "_wes_gateway_prompt", False):
        return True
    _no_wait_with_work_at_hand(toil.leader)
    _wake_on_shutdown(manager, _manager_stopping)
    _wake_on_shutdown(stats, _stats_stopping)
    toil.serviceManager.throttle = _WakeableThrottle
    toil.statsAndLogging.time = _WakeableTime()
    # Only the name toil.realtimeLogger looks the server class up by: stdlib stays as it is.
    toil.realtimeLogger.SocketServer = types.SimpleNamespace(
        ThreadingUDPServer=_PromptUDPServer, BaseRequestHandler=socketserver.BaseRequestHandler
    )
    return True


def _wake_on_shutdown(cls: Any, event: threading.Event) -> None:
    stock_shutdown = cls.shutdown

    def shutdown(self: Any) -> None:
        event.set()
        try:
            stock_shutdown(self)
        finally:
            event.clear()

    cls.shutdown = shutdown
    cls._wes_gateway_prompt = True


def _no_wait_with_work_at_hand(module: Any) -> None:
    """The leader's batch system object answers its leader at once while that leader has
    messages to act on or nothing issued that could end, and by the time a retried job's
    backoff ends. Set on the instance, so isinstance checks (Slurm's grid-engine paths)
    still see its own class."""
    leader_class = module.Leader
    stock_init = leader_class.__init__
    updated = module.JobUpdatedMessage

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        stock_init(self, *args, **kwargs)
        leader = self
        ask = self.batchSystem.getUpdatedBatchJob

        def getUpdatedBatchJob(maxWait: float) -> Any:  # noqa: N802, N803  (Toil's names)
            if leader._messages.count(updated) > 0:
                maxWait = 0  # work at hand: the loop comes back at once
            elif leader._waiting_jobs:
                # A failed job waits out its retry backoff in this heap: come back when the
                # first one is due, neither later (stock) nor sooner (a busy loop).
                maxWait = min(maxWait, max(0.0, leader._waiting_jobs[0][0] - time.time()))
            elif leader.getNumberOfJobsIssued() == 0 and leader.serviceManager.get_job_count() == 0:
                maxWait = 0  # nothing issued can end: the loop is about to stop
            return ask(maxWait)

        self.batchSystem.getUpdatedBatchJob = getUpdatedBatchJob

    leader_class.__init__ = __init__
