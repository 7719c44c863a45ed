"""toil_waits' prompt reaping: the single-machine batch system's round sleep ends when one of
its workers exits, a job is issued or the batch system shuts down, not 10 ms later, is
skipped after a round that reaped one, and with nothing to do lasts up to a second instead of
Toil's 10 ms; a worker already reported does not turn it into a busy loop. The batch system itself runs in a fresh interpreter, as a leader is,
so that the patch never reaches this test process's Toil."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from wes_gateway.engines.toil_waits import _Reaper


def _took(reaper: _Reaper, seconds: float) -> float:
    """How long the reaper's round sleep of ``seconds`` lasted."""
    began = time.monotonic()
    reaper.sleep(seconds)
    return time.monotonic() - began


def test_a_worker_s_exit_ends_the_round_sleep() -> None:
    reaper = _Reaper()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    try:
        reaper.started(child.pid)
        assert _took(reaper, 20.0) < 10.0  # the exit, at about 0.2 s, ended it
        assert child.poll() is not None
        # Reported once and not reaped yet: the next sleep is a plain one, not a busy loop.
        assert _took(reaper, 0.3) >= 0.25
    finally:
        child.wait()
        reaper.reaped(child.pid)
    assert reaper.exits == {} and reaper.seen == set()
    # Toil's round starts jobs before it reaps: after a reap the next round comes at once,
    # to give the freed booking to a waiting job; the round after that sleeps again.
    assert _took(reaper, 20.0) < 10.0
    assert _took(reaper, 0.3) >= 0.25


def test_an_issued_job_ends_the_round_sleep() -> None:
    reaper = _Reaper()
    threading.Timer(0.2, reaper.issued).start()
    assert _took(reaper, 20.0) < 10.0
    assert _took(reaper, 0.3) >= 0.25  # the wake was used up


def test_what_is_not_a_started_worker_is_not_watched() -> None:
    reaper = _Reaper()
    for result in (None, False, 0, -1, 2**22 + 12345):  # no start, a refusal, a pid that is none
        reaper.started(result)
    assert reaper.exits == {}


PROBE = """
import json, sys, tempfile, time
from toil.batchSystems.singleMachine import SingleMachineBatchSystem
from toil.common import Config
from toil.job import JobDescription
from wes_gateway.engines import toil_waits
if sys.argv[1] == "prompt":
    assert toil_waits.install()
import toil.batchSystems.singleMachine as module
inner, rounds = module.time, {"all": 0, "woken": 0}
class Counting:  # the batch system's rounds, counted by their sleeps
    def __getattr__(self, name):
        return getattr(inner, name)
    def sleep(self, seconds):
        began = time.monotonic()
        inner.sleep(seconds)
        if seconds == 0.01:
            rounds["all"] += 1
            rounds["woken"] += time.monotonic() - began < 0.5
module.time = Counting()
config = Config()
config.workDir, config.workflowID = tempfile.mkdtemp(), "probe"
batch = SingleMachineBatchSystem(config, 2, 2**30, 2**30)
codes = []
for n in range(5):
    job = JobDescription(requirements={"cores": 1, "memory": 2**20, "disk": 2**20}, jobName="probe")
    job.assignConfig(config)
    job_id = batch.issueBatchJob(f"exit {n}", job)
    update = None
    while update is None:
        update = batch.getUpdatedBatchJob(5)
    codes.append(update.exitStatus)
before = rounds["all"]
time.sleep(0.5)  # nothing to do
idle = rounds["all"] - before
began = time.monotonic()
batch.shutdown()
print(json.dumps({"codes": codes, "woken": rounds["woken"], "idle rounds": idle,
                  "shutdown": time.monotonic() - began, "time": type(inner).__name__}))
"""


def _probe(mode: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_toil_s_batch_system_runs_jobs_as_before_with_its_rounds_woken() -> None:
    prompt = _probe("prompt")
    assert prompt["codes"] == [0, 1, 2, 3, 4] and prompt["time"] == "_ReapingTime"
    assert int(prompt["woken"]) >= 5  # type: ignore[call-overload]  # each issue and each exit
    # With nothing to do its thread sleeps on (Toil's: 100 rounds a second), and its shutdown
    # wakes it.
    assert int(prompt["idle rounds"]) <= 2 and float(prompt["shutdown"]) < 0.5  # type: ignore[call-overload,arg-type]
    stock = _probe("stock")
    assert stock["codes"] == [0, 1, 2, 3, 4] and stock["time"] == "module"
    assert int(stock["idle rounds"]) >= 10  # type: ignore[call-overload]


WAIT_PROBE = """
import json, subprocess, sys, time
from wes_gateway.engines import toil_waits
if sys.argv[1] == "prompt":
    toil_waits.wake_process_waits()
sleeps = []
real_sleep = time.sleep
subprocess.time = type("T", (), {"sleep": staticmethod(lambda s: (sleeps.append(s), real_sleep(s))),
                                 "monotonic": staticmethod(time.monotonic)})
quick = subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(0.3); sys.exit(3)"])
code = quick.wait(10)
slow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
try:
    slow.wait(0.3)
    timed_out = None
except subprocess.TimeoutExpired as exc:
    timed_out = str(exc)
slow.kill()
print(json.dumps({"code": code, "timed out": timed_out, "killed": slow.wait(10), "sleeps": len(sleeps)}))
"""


def test_a_process_wait_ends_when_the_process_does_not_at_the_next_poll() -> None:
    def run(mode: str) -> dict[str, object]:
        done = subprocess.run([sys.executable, "-c", WAIT_PROBE, mode], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    prompt, stock = run("prompt"), run("stock")
    for answer in (prompt, stock):  # the same answers and exception
        assert answer["code"] == 3 and answer["killed"] == -9
        assert (
            answer["timed out"]
            == "Command '['" + sys.executable + "', '-c', 'import time; time.sleep(30)']' timed out after 0.3 seconds"
        )
    assert prompt["sleeps"] == 0  # woken by the exit
    assert int(stock["sleeps"]) > 5  # type: ignore[call-overload]  # CPython's polls, up to 50 ms apart
