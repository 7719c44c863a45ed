"""Toil's workers, forked from a warm process instead of started as new interpreters.

Toil's single-machine batch system (the main one, or the local one beside Slurm for a CWL
workflow's plumbing jobs) starts every job as ``_toil_worker ...``: a new Python process
that imports Toil and, for a CWL job, cwltool before it does any work, and
with one Toil job per step (``--disableChaining``) a workflow pays that for every step.

In our leaders that command is started through a small shim instead. The shim (a bare
interpreter, ``-I -S``) hands its argv, environment, working directory and standard
streams over a Unix socket to the run's *worker zygote*: a child the leader forks before
Toil starts any thread, with Toil's worker and the language front ends already imported
(they come warm from the forkserver). For each job the zygote forks a keeper in a session
of its own, like the one Toil gives a worker, and the keeper forks the worker proper, which
enters ``toil.worker.main`` as a new process would (fresh logging, signals, ``atexit`` and
temp directory), and reports its wait status back to the shim, which exits the same way.

What Toil sees is unchanged: a child process per job, in a group of its own, that exits
with the worker's status. Its kills reach the worker: a signal the shim can catch is passed
on to the keeper's group, and when the shim dies (SIGKILL) the keeper kills its group, as it
does once the worker has exited (Toil kills a stock worker's group then). The
socket is in the run's own tmp directory, which only this run's sandbox shows; if it cannot
be reached the shim starts the stock ``_toil_worker`` itself. Nothing of the job's own work
changes: the same Toil code runs the same job from the same job store.
``WES_GATEWAY_TOIL_WARM_WORKERS=false`` turns it off.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import select
import shlex
import signal
import socket
import struct
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wes_gateway.engines.base import exit_code_of
from wes_gateway.host import limits

log = logging.getLogger(__name__)

WORKER_COMMAND = "_toil_worker "
# Signals that Toil or Slurm may send a worker and that the shim passes on (SIGUSR2 is
# toil.worker's wall-time warning).
FORWARDED = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
ACK = b"+"
# Run first by the shell Toil starts each job in: the job, and all it starts, are the OOM
# killer's picks before the leader (limits.TASK_OOM_SCORE_ADJ). The shell's own builtin.
OOM_PREFIX = f"echo {limits.TASK_OOM_SCORE_ADJ} 2>/dev/null >/proc/self/oom_score_adj; "

# The shim: stdlib only, since it starts with -I -S (no site-packages, no environment).
# argv: socket path, then Toil's own worker command.
SHIM = f"""\
import json, os, signal, socket, struct, sys
path, command = sys.argv[1], sys.argv[2:]
cwd = os.getcwd()
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
def stock():
    os.chdir(cwd)
    os.execvp(command[0], command)
try:
    os.chdir(os.path.dirname(path))
    sock.connect(os.path.basename(path))
    os.chdir(cwd)
    body = json.dumps([command, dict(os.environ), cwd]).encode()
    socket.send_fds(sock, [struct.pack("!I", len(body))], [0, 1, 2])
    sock.sendall(body)
    if sock.recv(1) != {ACK!r}:
        stock()
except OSError:
    stock()
def forward(signum, frame):
    try:
        sock.send(bytes([signum]))
    except OSError:
        pass
for signum in {tuple(int(s) for s in FORWARDED)!r}:
    signal.signal(signum, forward)
status = b""
while len(status) < 4:
    chunk = sock.recv(4 - len(status))
    if not chunk:
        os._exit(1)
    status += chunk
status = struct.unpack("!i", status)[0]
if os.WIFSIGNALED(status):
    if os.WTERMSIG(status) != signal.SIGKILL:  # which has no handler to reset
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    os.kill(os.getpid(), os.WTERMSIG(status))
os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)
"""


def _in_directory_of(path: Path, act: Callable[[str], None]) -> None:
    # A Unix socket's path is limited to 107 bytes; a run's tmp directory can be longer.
    here = os.getcwd()
    os.chdir(path.parent)
    try:
        act(path.name)
    finally:
        os.chdir(here)


def start(socket_path: Path) -> bool:
    """In the leader, before Toil starts: fork the zygote and route the single-machine batch
    system's workers through it. False (and Toil left as it is) where that cannot be done."""
    if threading.active_count() != 1:
        # A fork copies only the calling thread; a lock another thread held would stay held.
        log.warning("warm Toil workers off: the leader already runs %d threads", threading.active_count())
        return False
    try:
        import toil.batchSystems.singleMachine
        import toil.worker  # noqa: F401  (imported once here, for every worker forked later)
    except ImportError as exc:
        log.warning("warm Toil workers off: %s", exc)
        return False
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        socket_path.unlink(missing_ok=True)  # a previous leader's, on --restart
        _in_directory_of(socket_path, listener.bind)
        listener.listen(64)
        # The zygote ends when this end closes, i.e. when the leader has gone, however it went.
        leader_alive, leader_end = os.pipe()
    except OSError as exc:
        listener.close()
        log.warning("warm Toil workers off: %s", exc)
        return False

    def zygote() -> None:
        os.close(leader_end)
        _serve(listener, leader_alive)
        socket_path.unlink(missing_ok=True)

    try:
        _fork(zygote)
    except OSError as exc:
        os.close(leader_end)
        log.warning("warm Toil workers off: %s", exc)
        return False
    finally:
        os.close(leader_alive)
        listener.close()
    _route_workers(toil.batchSystems.singleMachine.SingleMachineBatchSystem, str(socket_path))
    return True


def expose_jobs() -> None:
    """In the leader, where its workers are not warm: Toil's stock workers still run with the
    OOM score of jobs (OOM_PREFIX)."""
    import toil.batchSystems.singleMachine

    _route_workers(toil.batchSystems.singleMachine.SingleMachineBatchSystem, None)


def _route_workers(batch_system: Any, socket_path: str | None) -> None:
    stock_start = batch_system._startChild
    shim = ""
    if socket_path is not None:
        shim = f"{shlex.quote(sys.executable)} -I -S -c {shlex.quote(SHIM)} {shlex.quote(socket_path)} "

    def _startChild(self: Any, jobCommand: str, *args: Any, **kwargs: Any) -> Any:  # noqa: N802, N803  (Toil's names)
        if shim and jobCommand.startswith(WORKER_COMMAND):
            jobCommand = shim + jobCommand
        return stock_start(self, OOM_PREFIX + jobCommand, *args, **kwargs)

    batch_system._startChild = _startChild


def _fork(child: Callable[[], None]) -> int:
    """Fork; the child runs ``child`` and exits (1, with the traceback, if it raised)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            child()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


def _readable(*files: int | socket.socket) -> set[int]:
    """Wait until one of ``files`` can be read (or has closed); the descriptors that can."""
    poller = select.poll()
    for file in files:
        poller.register(file, select.POLLIN)
    return {fd for fd, _ in poller.poll()}


def _serve(listener: socket.socket, leader_alive: int) -> None:
    """The zygote's loop: one keeper forked per connection, until the leader has gone."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # keepers are reaped by the kernel
    while True:
        ready = _readable(listener, leader_alive)
        if leader_alive in ready:
            return
        try:
            connection, _ = listener.accept()
        except OSError:
            continue
        try:
            _fork(functools.partial(_keep, connection, listener, leader_alive))
        except OSError:
            pass  # no ack: the shim starts the stock worker
        connection.close()


def _receive(connection: socket.socket) -> tuple[list[str], dict[str, str], str, list[int]]:
    header, fds, _, _ = socket.recv_fds(connection, 4, 3)
    if len(header) != 4 or len(fds) != 3:
        raise OSError("short request from a worker shim")
    (length,) = struct.unpack("!I", header)
    body = b""
    while len(body) < length:
        chunk = connection.recv(length - len(body))
        if not chunk:
            raise OSError("truncated request from a worker shim")
        body += chunk
    command, environment, cwd = json.loads(body)
    return list(command), dict(environment), str(cwd), fds


def _keep(connection: socket.socket, listener: socket.socket, leader_alive: int) -> None:
    """The keeper: start the worker, pass the shim's signals on, report how it ended."""
    listener.close()
    os.close(leader_alive)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()  # a group of its own, as Toil starts its workers
    command, environment, cwd, fds = _receive(connection)
    worker = os.fork()
    if worker == 0:
        connection.close()
        os._exit(_work(command, environment, cwd, fds))
    for fd in fds:
        os.close(fd)
    for forwarded in FORWARDED:
        signal.signal(forwarded, signal.SIG_IGN)  # what the keeper passes on to its group
    connection.sendall(ACK)
    ended = os.pidfd_open(worker)
    while True:
        if ended in _readable(connection, ended):
            _, status = os.waitpid(worker, 0)
            try:
                connection.sendall(struct.pack("!i", status))
            except OSError:
                pass
            # What the job left behind goes with it (and this keeper), as Toil kills a stock
            # worker's group once it has exited: a tool whose worker the OOM killer took must
            # not hold the run's memory on.
            os.killpg(0, signal.SIGKILL)
            return
        try:
            received = connection.recv(64)
        except OSError:
            received = b""
        if not received:
            # The shim is gone (Toil killed its group): so is the job, with all it started.
            os.killpg(0, signal.SIGKILL)
        for signum in received:
            if signum in FORWARDED:
                os.killpg(0, signum)


def _work(command: list[str], environment: dict[str, str], cwd: str, fds: list[int]) -> int:
    """The worker proper: made to look like a process that has just started, then Toil's."""
    limits.expose_to_oom()  # forked from the zygote, which keeps the leader's score
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for signum in (*FORWARDED, signal.SIGCHLD):
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
