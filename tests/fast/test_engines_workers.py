"""Warm Toil workers in process (engines/toil_workers.py): a zygote forks a worker as its
requester's own child, in a session of its own, the OOM killer's pick, running Toil's
worker; and where the zygote cannot answer, Toil's own Popen runs the command (cold)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from wes_gateway.engines import toil_workers
from wes_gateway.engines.toil_workers import OOM_PREFIX, _ForkedWorker, _worker_argv, _Zygote, _ZygoteSubprocess
from wes_gateway.host import limits

NO_JOB_STORE = 76  # toil.worker's exit code when the job store named is not there


@pytest.fixture
def zygote() -> Iterator[_Zygote]:
    """A zygote forked from this process, as a leader forks its own."""
    leader_end, zygote_end = socket.socketpair()
    captured = sys.stderr
    sys.stderr = sys.__stderr__  # as in a leader, where it writes to fd 2 (pytest's writes elsewhere)
    try:
        pid = toil_workers._fork(lambda: (leader_end.close(), toil_workers._serve(zygote_end)) and None)
    finally:
        sys.stderr = captured
    zygote_end.close()
    yield _Zygote(leader_end)
    leader_end.close()  # the zygote ends with its leader's end
    os.waitpid(pid, 0)


def _stat_of(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def test_the_worker_is_this_process_s_child_in_its_own_session_running_toil(zygote: _Zygote, tmp_path: Path) -> None:
    argv = ["_toil_worker", "job", f"file:{tmp_path}/no-such-jobstore", "kind-x/instance-y"]
    saved = os.dup(2)
    with open(tmp_path / "stderr", "w") as stderr:  # the worker gets the requester's streams
        os.dup2(stderr.fileno(), 2)
        try:
            pid = zygote.fork(argv, {"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path)})
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    assert pid > 0
    # Ours to wait for (ChildProcessError otherwise): seen once exited, before it is reaped.
    assert os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT) is not None
    fields = _stat_of(pid)
    assert fields[0] == "Z" and int(fields[1]) == os.getpid()  # a zombie whose parent is this process
    assert int(fields[2]) == pid and int(fields[3]) == pid  # its own group and session, as Toil's Popen makes
    _, status = os.waitpid(pid, 0)
    # Toil's worker ran, with this argv: it found no job store and said so on our stderr.
    assert os.waitstatus_to_exitcode(status) == NO_JOB_STORE
    assert "no-such-jobstore" in (tmp_path / "stderr").read_text()


def test_the_worker_raises_its_oom_score(zygote: _Zygote, tmp_path: Path) -> None:
    argv = ["_toil_worker", "job", f"file:{tmp_path}/no-such-jobstore", "kind-x/instance-y"]
    pid = zygote.fork(argv, {"PATH": os.environ["PATH"]})
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    seen = int(Path(f"/proc/{pid}/oom_score_adj").read_text())
    os.waitpid(pid, 0)
    assert seen == limits.TASK_OOM_SCORE_ADJ
    assert int(Path("/proc/self/oom_score_adj").read_text()) != limits.TASK_OOM_SCORE_ADJ  # not inherited from us


def test_a_forked_worker_is_waited_polled_and_killed_as_a_popen() -> None:
    ready, ready_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        signal.alarm(30)  # bounded, whatever the test does
        os.write(ready_end, b"+")
        signal.pause()
        os._exit(0)
    os.close(ready_end)
    assert os.read(ready, 1) == b"+"  # in its own group now
    os.close(ready)
    child = _ForkedWorker(pid, "the command")
    assert child.poll() is None
    os.killpg(pid, signal.SIGKILL)  # as Toil ends a job: its group
    assert child.wait(timeout=10) == -signal.SIGKILL
    assert child.returncode == -signal.SIGKILL and child.poll() == -signal.SIGKILL


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        (OOM_PREFIX + "_toil_worker a file:/js kind-x/y", ["_toil_worker", "a", "file:/js", "kind-x/y"]),
        (OOM_PREFIX + "_toil_worker  a\tb --context Zm9v+/=", ["_toil_worker", "a", "b", "--context", "Zm9v+/="]),
        (OOM_PREFIX + "_toil_worker a file:/js#main x", None),  # '#': left to the shell
        (OOM_PREFIX + "_toil_worker a 'b c' x", None),
        (OOM_PREFIX + "_toil_worker a $HOME x", None),
        (OOM_PREFIX + "_toil_worker a; rm x", None),
        ("_toil_worker a file:/js kind-x/y", None),  # not through our _startChild
        (OOM_PREFIX + "cwltool x", None),  # not a worker
    ],
)
def test_only_a_plain_worker_command_is_forked(command: str, argv: list[str] | None) -> None:
    assert _worker_argv(command) == argv


def test_a_zygote_that_is_gone_leaves_the_command_to_toil_s_popen(tmp_path: Path) -> None:
    # A stand-in for the worker's entry point, which the shell finds on PATH.
    worker = tmp_path / "_toil_worker"
    worker.write_text('#!/bin/sh\necho "cold $1 $(cat /proc/self/oom_score_adj)"\nexit 3\n')
    worker.chmod(worker.stat().st_mode | stat.S_IXUSR)
    leader_end, zygote_end = socket.socketpair()
    zygote_end.close()
    modules = _ZygoteSubprocess(_Zygote(leader_end))
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    process = modules.Popen(
        OOM_PREFIX + "_toil_worker job", shell=True, env=env, start_new_session=True, stdout=modules.PIPE
    )
    out, _ = process.communicate(timeout=30)
    assert not isinstance(process, _ForkedWorker)
    assert (process.returncode, out) == (3, f"cold job {limits.TASK_OOM_SCORE_ADJ}\n".encode())
    leader_end.close()


def test_the_zygote_s_worker_parser_reads_argv_as_toil_s_own() -> None:
    probe = """
import json, sys
import toil.worker
argv = ["_toil_worker", "CWLJob", "file:/js", "kind-x/instance-1", "--context", "YQ==", "--context", "Yg=="]
stock = vars(toil.worker.parse_args(argv))
from wes_gateway.engines import toil_workers
toil_workers._reuse_worker_parser()
reused = toil.worker.parse_args
print(json.dumps({"stock": stock, "reused": vars(reused(argv)), "again": vars(reused(argv[:4])),
                  "replaced": reused.__name__ != "parse_args"}))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["replaced"] and answer["reused"] == answer["stock"]
    assert answer["stock"]["context"] == ["YQ==", "Yg=="]
    assert answer["again"]["context"] == []  # nothing of one job's argv stays for the next


def test_a_primed_zygote_s_workers_end_up_with_toil_s_own_logging() -> None:
    """Each worker still runs Toil's whole logging set-up; in a primed zygote it finds the
    levels set and the patterns compiled, and a level set to what it is clears no caches."""
    probe = """
import json, logging, re, sys
import toil.statsAndLogging as sal
from wes_gateway.engines import toil_workers
import cwltool.main, schema_salad.ref_resolver  # noqa: F401  (libraries whose loggers Toil quiets)
if sys.argv[1] == "primed":
    toil_workers._prime_logging()
clears = []
stock_clear = logging.Logger.manager._clear_cache
logging.Logger.manager._clear_cache = lambda: (clears.append(1), stock_clear())[1]
compiled = len(re._cache)
child = logging.getLogger("salad.child")
child.isEnabledFor(logging.DEBUG)  # cached: not enabled
sal.configure_root_logger(); sal.set_log_level("INFO"); sal.install_log_color()  # as toil.worker does
levels = {name: logging.getLogger(name).level for name in sorted(logging.Logger.manager.loggerDict)}
logging.getLogger("salad").setLevel(logging.DEBUG)  # a real change: the cache is cleared
print(json.dumps({"levels": levels, "root": logging.getLogger().level, "clears": len(clears),
                  "new patterns": len(re._cache) - compiled, "child sees it": child.isEnabledFor(logging.DEBUG)}))
"""

    def run(mode: str) -> dict[str, object]:
        done = subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    primed, stock = run("primed"), run("stock")
    assert primed["levels"] == stock["levels"] and primed["root"] == stock["root"] == 20  # INFO
    assert primed["child sees it"] and stock["child sees it"]
    assert int(stock["clears"]) > 10 * int(primed["clears"]) > 0  # type: ignore[call-overload]
    assert primed["new patterns"] == 0 < int(stock["new patterns"])  # type: ignore[call-overload]
