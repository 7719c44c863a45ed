"""Toil's workers, forked from a warm process instead of started as new interpreters.

Toil's single-machine batch system (the main one, or the local one beside Slurm for a CWL
workflow's plumbing jobs) starts every job as ``_toil_worker ...``: a new Python process
that imports Toil and, for a CWL job, cwltool before it does any work, and
with one Toil job per step (``--disableChaining``) a workflow pays that for every step.

In our leaders that process is forked instead, from the run's *worker zygote*: a child the
leader forks before Toil starts any thread, with Toil's worker and the language front ends
already imported (they come warm from the forkserver). Where Toil would start the command
(``subprocess.Popen(command, shell=True, start_new_session=True)``), the leader hands the
command's argv, its environment, working directory and standard streams over a Unix socket
to the zygote, which forks the worker *as the leader's own child* (``clone`` with
``CLONE_PARENT``) and answers with its pid. The worker starts a session of its own, makes
itself the OOM killer's pick (limits.TASK_OOM_SCORE_ADJ), and enters ``toil.worker.main`` as
a new process would (fresh logging, signals, ``atexit`` and temp directory).

What Toil sees is what it would have started: a child process per job, the leader of its own
group, that exits with the worker's status, which Toil waits for, signals and kills (with its
group) itself. No program is started per job: no ``/bin/sh``, no interpreter. The socket is
an unnamed pair that only the leader and its zygote hold; where the zygote cannot be
reached, cannot fork, or the command is not a plain ``_toil_worker`` argv, Toil's own
``Popen`` starts the stock worker, through a shell that first raises its OOM score
(OOM_PREFIX), as it does for every job when warm workers are off. Nothing of the job's own
work changes: the same Toil code runs the same job from the same job store.
``WES_GATEWAY_TOIL_WARM_WORKERS=false`` turns it off.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import json
import logging
import os
import platform
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from typing import Any

from wes_gateway.engines.base import exit_code_of
from wes_gateway.host import limits

log = logging.getLogger(__name__)

WORKER_COMMAND = "_toil_worker "
# Run first by the shell Toil starts a stock worker in: the job, and all it starts, are the OOM
# killer's picks before the leader (limits.TASK_OOM_SCORE_ADJ). The shell's own builtin.
OOM_PREFIX = f"echo {limits.TASK_OOM_SCORE_ADJ} 2>/dev/null >/proc/self/oom_score_adj; "
# What /bin/sh would read as more than words split on blanks: such a command is left to it.
SHELL_SYNTAX = frozenset("\\'\"`$&|;<>(){}[]*?~!#\n")
# What a worker may have inherited other than the default, set back as a new process has it.
RESET_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD)
# clone(2), whose arguments after the flags are all 0 here (a fork's: the same stack).
SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(platform.machine())
CLONE_PARENT = 0x00008000


def start() -> bool:
    """In the leader, before Toil starts: fork the zygote and route the single-machine batch
    system's workers through it. False (and Toil left as it is) where that cannot be done."""
    if threading.active_count() != 1:
        # A fork copies only the calling thread; a lock another thread held would stay held.
        log.warning("warm Toil workers off: the leader already runs %d threads", threading.active_count())
        return False
    if SYS_CLONE is None:
        log.warning("warm Toil workers off: no clone(2) number known for %s", platform.machine())
        return False
    try:
        import toil.batchSystems.singleMachine
        import toil.worker  # noqa: F401  (imported once here, for every worker forked later)
    except ImportError as exc:
        log.warning("warm Toil workers off: %s", exc)
        return False
    try:
        import toil.lib.accelerators

        # Memoized, but only once Toil's batch system asks, after the zygote has forked: every
        # WDL task's worker probed again (nvidia-smi, amd-smi, rocm-smi, each a fork of a large
        # process). Asked here, the workers inherit the answer, and the batch system reuses it.
        toil.lib.accelerators.get_individual_local_accelerators()
    except Exception:  # the probe is Toil's to make again, as stock, wherever it fails here
        pass
    # A pair, not a named socket: nothing but this leader can ask the zygote for a fork, and
    # the zygote ends when the leader's end closes, i.e. when the leader has gone, however.
    leader_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def zygote() -> None:
        leader_end.close()
        _reuse_worker_parser()
        _prime_logging()
        _serve(zygote_end)

    try:
        _fork(zygote)
    except OSError as exc:
        leader_end.close()
        log.warning("warm Toil workers off: %s", exc)
        return False
    finally:
        zygote_end.close()
    _route_workers(toil.batchSystems.singleMachine.SingleMachineBatchSystem, _Zygote(leader_end))
    return True


def expose_jobs() -> None:
    """In the leader, where its workers are not warm: Toil's stock workers still run with the
    OOM score of jobs (OOM_PREFIX)."""
    import toil.batchSystems.singleMachine

    _route_workers(toil.batchSystems.singleMachine.SingleMachineBatchSystem, None)


def _route_workers(batch_system: Any, zygote: _Zygote | None) -> None:
    """Every job Toil starts gets the OOM prefix; with a ``zygote``, Toil's ``Popen`` of a
    worker forks it from there instead (Toil's module sees our ``subprocess``)."""
    stock_start = batch_system._startChild

    def _startChild(self: Any, jobCommand: str, *args: Any, **kwargs: Any) -> Any:  # noqa: N802, N803  (Toil's names)
        return stock_start(self, OOM_PREFIX + jobCommand, *args, **kwargs)

    batch_system._startChild = _startChild
    if zygote is not None:
        module: Any = sys.modules[batch_system.__module__]
        module.subprocess = _ZygoteSubprocess(zygote)


class _ZygoteSubprocess:
    """The ``subprocess`` module as Toil's single-machine batch system sees it: its ``Popen``
    of a worker's command is a fork of the zygote; anything else is the module's own."""

    def __init__(self, zygote: _Zygote) -> None:
        self.zygote = zygote

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def Popen(self, args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:  # noqa: N802  (the module's name)
        argv = _worker_argv(args)
        if argv is not None and kwargs.get("shell") and kwargs.get("start_new_session"):
            if set(kwargs) <= {"shell", "start_new_session", "env"}:
                pid = self.zygote.fork(argv, dict(kwargs.get("env") or os.environ))
                if pid:
                    return _ForkedWorker(pid, args)
        return subprocess.Popen(args, **kwargs)


def _worker_argv(command: object) -> list[str] | None:
    """The argv /bin/sh would run for ``command`` if it is OOM_PREFIX and a plain worker
    command (words and blanks only); else None."""
    if not isinstance(command, str) or not command.startswith(OOM_PREFIX + WORKER_COMMAND):
        return None
    words = command[len(OOM_PREFIX) :]
    if SHELL_SYNTAX.intersection(words):
        return None
    return words.split()


class _Zygote:
    """The leader's end of the zygote's socket."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.lock = threading.Lock()  # one request at a time, whichever thread asks
        self.broken = False

    def fork(self, argv: list[str], environment: dict[str, str]) -> int:
        """The pid of a worker running ``argv``, forked as this process's child; 0 if none was."""
        body = json.dumps([argv, environment, os.getcwd()]).encode()
        with self.lock:
            if self.broken:
                return 0
            try:
                socket.send_fds(self.connection, [struct.pack("!I", len(body))], [0, 1, 2])
                self.connection.sendall(body)
                (pid,) = struct.unpack("!i", _read_exactly(self.connection, 4))
            except OSError as exc:
                # Its answer may still come: the stream is out of step, so every later job starts cold.
                self.broken = True
                log.warning("Toil workers start cold from now on: the zygote did not answer: %s", exc)
                return 0
        return max(int(pid), 0)


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the other end closed")
        data += chunk
    return data


class _ForkedWorker(subprocess.Popen[bytes]):
    """A ``Popen`` for a child that exists already: Toil waits for it, polls it and signals
    it through the methods Popen has, which need only these attributes."""

    def __init__(self, pid: int, args: Any) -> None:  # not Popen's: nothing is started here
        self.args = args
        self.pid = pid
        self.returncode: Any = None
        self.stdin = self.stdout = self.stderr = None
        self.encoding = self.errors = None
        self.text_mode = False
        self._waitpid_lock = threading.Lock()
        self._input = None
        self._communication_started = False
        self._sigint_wait_secs = 0.25
        self._closed_child_pipe_fds = True
        self._child_created = True


def _fork(child: Callable[[], None]) -> int:
    """Fork; the child runs ``child`` and exits (1, with the traceback, if it raised)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _run_and_exit(child)
    return pid


def _run_and_exit(child: Callable[[], None]) -> None:
    code = 0
    try:
        child()
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _reuse_worker_parser() -> None:
    """In the zygote: Toil's worker builds its argument parser (configargparse) anew for every
    job; it is built here once, by Toil's own parse_args, and every worker forked later parses
    its argv with it."""
    import toil.worker

    stock_parser, stock_parse_args = toil.worker.ArgParser, toil.worker.parse_args
    built: list[Any] = []

    class Capturing(stock_parser):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    toil.worker.ArgParser = Capturing
    try:
        stock_parse_args(["_toil_worker", "job", "file:/nonexistent", "id"])
    except (SystemExit, Exception):  # a Toil whose worker takes other arguments: left as it is
        return
    finally:
        toil.worker.ArgParser = stock_parser
    if len(built) == 1:
        parser = built[0]
        toil.worker.parse_args = lambda args: parser.parse_args(args[1:])


def _prime_logging() -> None:
    """In the zygote: Toil's worker sets up its logging anew for every job, setting the level of
    every library's logger (each ``setLevel`` clears the caches of all 126 loggers) and having
    coloredlogs compile its patterns; 2 ms of a step's 30 under the profiler. Here the levels are
    set once, the patterns compiled once, and a level set again to what it is clears nothing
    (the caches it would clear are still right)."""
    import toil.statsAndLogging

    stock_set_level = logging.Logger.setLevel

    def setLevel(self: logging.Logger, level: int | str) -> None:  # noqa: N802  (logging's name)
        if not isinstance(level, (int, str)) or self.level != logging._checkLevel(level):  # type: ignore[attr-defined]
            stock_set_level(self, level)

    try:
        toil.statsAndLogging.suppress_exotic_logging(toil.statsAndLogging.__name__)
        scratch = logging.Logger("wes-gateway-zygote")  # not in the manager: no worker sees it
        toil.statsAndLogging.install_log_color(scratch)
    except Exception:  # a Toil whose logging set-up differs: each worker does it all, as stock
        return
    logging.Logger.setLevel = setLevel  # type: ignore[method-assign]


def _serve(connection: socket.socket) -> None:
    """The zygote's loop: a worker forked per request, until the leader has gone."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # nothing of its own to reap
    connection.settimeout(None)
    while True:
        try:
            command, environment, cwd, fds = _receive(connection)
        except (OSError, ValueError):
            return  # the leader has gone (or sent nothing a leader would)
        try:
            pid = _fork_for_parent(functools.partial(_start_worker, connection, command, environment, cwd, fds))
        except OSError as exc:
            print(f"wes-gateway: the worker zygote could not fork: {exc}", file=sys.stderr, flush=True)
            pid = 0  # the leader starts this job cold
        finally:
            for fd in fds:
                os.close(fd)
        connection.sendall(struct.pack("!i", pid))


def _receive(connection: socket.socket) -> tuple[list[str], dict[str, str], str, list[int]]:
    header, fds, _, _ = socket.recv_fds(connection, 4, 3)
    if len(header) != 4 or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise OSError("the leader has gone" if not header else "a short request")
    (length,) = struct.unpack("!I", header)
    try:
        command, environment, cwd = json.loads(_read_exactly(connection, length))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return list(command), dict(environment), str(cwd), fds


def _fork_for_parent(child: Callable[[], None]) -> int:
    """Fork a child of this process's parent (the leader), which alone waits for it: what
    ``os.fork`` does, with ``CLONE_PARENT``. Python's own fork hooks run on both sides."""
    api = ctypes.pythonapi
    libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL is held across the call
    libc.syscall.restype = ctypes.c_long
    sys.stdout.flush()
    sys.stderr.flush()
    api.PyOS_BeforeFork()
    pid = libc.syscall(
        ctypes.c_long(SYS_CLONE or -1), ctypes.c_ulong(CLONE_PARENT | signal.SIGCHLD), *[ctypes.c_ulong(0)] * 4
    )
    if pid == 0:
        api.PyOS_AfterFork_Child()
        _run_and_exit(child)
    errno = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(errno, os.strerror(errno))
    return int(pid)


def _start_worker(
    connection: socket.socket, command: list[str], environment: dict[str, str], cwd: str, fds: list[int]
) -> None:
    """In the worker, a child of the leader: a session of its own (as Toil starts a worker),
    then the worker proper."""
    connection.close()
    os.setsid()
    os._exit(_work(command, environment, cwd, fds))


def _work(command: list[str], environment: dict[str, str], cwd: str, fds: list[int]) -> int:
    """The worker proper: made to look like a process that has just started, then Toil's."""
    limits.expose_to_oom()  # forked from the zygote, which keeps the leader's score
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for signum in RESET_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environment)
    tempfile.tempdir = None  # chosen again from this environment's TMPDIR
    sys.argv = command
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    import toil.lib.threading
    import toil.worker

    # Only what Toil registers: the hooks inherited from the forkserver are not this process's.
    atexit._clear()
    atexit.register(toil.lib.threading.destroy_all_process_names)
    code = exit_code_of(functools.partial(toil.worker.main, command))
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code & 0xFF
