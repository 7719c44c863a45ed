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

And one for every job: the single-machine batch system's thread that starts and reaps the
workers sleeps 10 ms between rounds, and each round starts jobs before it reaps: a finished
worker held its booked core for 5 ms on average (and a worker's exit itself takes about
5 ms), the core it freed waited out a whole sleep before the next job got it, and a job
issued meanwhile waited as long to start. In a 100-way scatter of short steps each step
booked its core for about 40 ms and worked for 25, and a freed core was booked again 10.4 ms
later (median), so that for half the scatter only one of the two cores was booked (issue 40).

These are woken here instead of waited out: the two threads sleep on an event that their
own shutdown sets, the log server polls every 50 ms, the leader loop does not wait on
its batch system while it has messages of its own or nothing issued, nor past a retried
job's backoff, and the batch system's thread does not sleep after a round that reaped a
worker, and otherwise sleeps until one of its workers exits (a pidfd of each), a job is
issued or it is shut down, 1 s at most: its round has nothing else to do. Nothing else changes: what the loops do, and in
what order, is Toil's.
This is applied only in a leader process that the gateway forked (never in the web workers,
the supervisor or Toil's own workers), and only to the Toil version it was measured on;
elsewhere ``install`` changes nothing and says so. ``WES_GATEWAY_TOIL_PROMPT_SHUTDOWN=false`` turns it off.
"""

from __future__ import annotations

import logging
import os
import select
import socketserver
import subprocess
import threading
import time
import types
from typing import Any

log = logging.getLogger(__name__)

# The version whose internals this was written against and tested with (tests/test_speed.py).
TOIL_SERIES = "9.6."
LOG_SERVER_POLL = 0.05
DADDY_ROUND = 0.01  # the single-machine batch system's sleep between its rounds
# What that sleep may last instead, woken by whatever gives its next round work: a worker's
# exit, an issued job, the batch system's shutdown. Toil's 100 rounds a second cost a leader
# 17 ms of CPU per second of its run, mostly with nothing to do (issue 40).
DADDY_IDLE = 1.0

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


class _Reaper:
    """One single-machine batch system's round sleep: until a worker of its own has exited,
    a job was issued or the batch system shuts down, ``seconds`` at most."""

    def __init__(self) -> None:
        self.woken, self.wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.exits: dict[int, int] = {}  # a running worker's pid: a pidfd of it
        self.seen: set[int] = set()  # exited, reported, not reaped yet: no busy loop on them
        self.freed = False  # a worker was reaped in this round: its booking is free for the next

    def started(self, pid: object) -> None:
        if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
            try:
                self.exits[pid] = os.pidfd_open(pid)
            except OSError:
                pass  # not ours to watch (gone already): Toil's own round finds it

    def reaped(self, pid: int) -> None:
        fd = self.exits.pop(pid, None)
        self.seen.discard(pid)
        self.freed = True
        if fd is not None:
            os.close(fd)

    def issued(self) -> None:
        try:
            os.write(self.wake, b"!")
        except BlockingIOError:
            pass  # woken already

    def sleep(self, seconds: float) -> None:
        if self.freed:
            # Toil's round starts jobs before it reaps: a booking just freed would wait out a
            # whole sleep before the next round fills it. The next round comes at once.
            self.freed = False
            return
        poller = select.poll()
        poller.register(self.woken, select.POLLIN)
        # A worker already reported stays readable until Toil's round reaps it: not watched
        # again, or the sleep would be a busy loop; an issue or a shutdown still wakes it.
        by_fd = {fd: pid for pid, fd in self.exits.items() if pid not in self.seen}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(seconds * 1000)}
        if self.woken in ready:
            try:
                os.read(self.woken, 4096)
            except BlockingIOError:
                pass
        self.seen.update(by_fd[fd] for fd in ready if fd in by_fd)


class _ReapingTime:
    """The ``time`` module as toil.batchSystems.singleMachine sees it: the 10 ms sleep of a
    batch system's own thread is that batch system's _Reaper.sleep."""

    def __init__(self) -> None:
        self.local = threading.local()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        reaper = getattr(self.local, "reaper", None)
        if reaper is None or seconds > DADDY_ROUND:
            time.sleep(seconds)
        else:
            reaper.sleep(DADDY_IDLE)


def install() -> bool:
    """Apply all of the above in this process; True if applied. Idempotent."""
    import toil.batchSystems.singleMachine
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
    _reap_promptly(toil.batchSystems.singleMachine)
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


def _reap_promptly(module: Any) -> None:
    """Each single-machine batch system's own thread sleeps on a _Reaper of its own."""
    system = module.SingleMachineBatchSystem
    clock = _ReapingTime()
    stock_daddy, stock_start, stock_handle = system.daddy, system._startChild, system._handleChild
    stock_issue, stock_shutdown = system.issueBatchJob, system.shutdown

    def reaper_of(self: Any) -> _Reaper:
        reaper = self.__dict__.get("_wes_gateway_reaper")
        if reaper is None:
            reaper = self.__dict__["_wes_gateway_reaper"] = _Reaper()
        return reaper  # type: ignore[no-any-return]

    def daddy(self: Any) -> Any:
        clock.local.reaper = reaper_of(self)
        return stock_daddy(self)

    def _startChild(self: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N802  (Toil's name)
        pid = stock_start(self, *args, **kwargs)
        reaper_of(self).started(pid)
        return pid

    def _handleChild(self: Any, pid: int) -> None:  # noqa: N802  (Toil's name)
        try:
            stock_handle(self, pid)
        finally:
            reaper_of(self).reaped(pid)

    def issueBatchJob(self: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N802  (Toil's name)
        try:
            return stock_issue(self, *args, **kwargs)
        finally:
            reaper_of(self).issued()

    def shutdown(self: Any) -> None:
        self.shuttingDown.set()  # as Toil's own shutdown does first; then its thread is woken to see it
        reaper_of(self).issued()
        stock_shutdown(self)

    system.daddy, system._startChild, system._handleChild = daddy, _startChild, _handleChild
    system.issueBatchJob, system.shutdown = issueBatchJob, shutdown
    module.time = clock


def wake_process_waits() -> None:
    """In a leader, before its worker zygote forks (so in every worker too): ``Popen.wait``
    with a timeout returns when the process exits, not at CPython's next poll. CPython polls
    with sleeps that double up to 50 ms, and miniwdl waits on each WDL task's container
    process in one-second ``wait(1)`` calls, so a task's end was seen up to 50 ms late while
    its worker held the task's booked core. Same answers and exceptions as CPython's."""
    stock_wait = subprocess.Popen._wait  # type: ignore[attr-defined]
    if getattr(stock_wait, "_wes_gateway_prompt", False):
        return

    def _wait(self: subprocess.Popen[Any], timeout: float | None) -> int | None:
        if timeout is None or self.returncode is not None or timeout <= 0:
            return stock_wait(self, timeout)  # type: ignore[no-any-return]
        try:
            exits = os.pidfd_open(self.pid)
        except OSError:
            return stock_wait(self, timeout)  # type: ignore[no-any-return]
        try:
            poller = select.poll()
            poller.register(exits, select.POLLIN)
            exited = bool(poller.poll(timeout * 1000))
        finally:
            os.close(exits)
        if not exited:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return stock_wait(self, None)  # type: ignore[no-any-return]  # it has exited: reaped at once

    _wait._wes_gateway_prompt = True  # type: ignore[attr-defined]
    subprocess.Popen._wait = _wait  # type: ignore[attr-defined]
