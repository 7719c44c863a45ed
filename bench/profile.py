#!/usr/bin/env python3
"""bench/profile: where the seconds of one short run go, POST to COMPLETE.

Two views, in one run:

1. Through a gateway with its default settings (the client polls every 10 ms): the phases
   are read off the run directory's own files (each written once, at a known point) and
   the client's clock, all on this host's wall clock.
2. Inside a leader: the same echo tool run by toil.cwl.cwltoil in a process forked from a
   warm one (as the forkserver does), with Toil's phases timed by wrappers around its
   methods, with the gateway's defaults (Toil's waits woken, its workers forked warm) and
   with stock Toil.

Prints the median of each phase over --repeat runs (one warm-up run first, not counted).

3. ``--scatter N`` (issue 40, per-step cost): only a warm leader, with the gateway's defaults,
   running tests/data/scatter.cwl over N strings (one Toil job per step, --maxCores 2), in
   a cgroup v1 cpuacct group of its own: wall seconds, and CPU seconds of the whole tree
   (leader, zygote, workers and every process they start, however reaped), in total and per
   step. Wall time is noisy on a shared machine; CPU time much less. Program starts per step:
   run it under ``strace -f -qq --seccomp-bpf -e trace=execve,clone,clone3,vfork,fork -c``
   with ``--repeat 1`` (no warm-up is run with --scatter).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from common import ROOT, start_server, stop_server, submit_cwl
from e2e import echo_argv

TOOL = ROOT / "tests" / "data" / "echo.cwl"
TERMINAL = ("COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED")


def _mtime(path: Path) -> float:
    return path.stat().st_mtime


def gateway_run(server: Any, i: int) -> dict[str, float]:
    """One run; the wall-clock moments of its phases, relative to the POST."""
    began = time.time()
    run_id = submit_cwl(server, {"echo.cwl": TOOL.read_bytes()}, {"message": f"profile {i}"})
    posted = time.time()
    deadline = time.monotonic() + 120
    seen_running = None
    while time.monotonic() < deadline:
        state = requests.get(f"{server.api}/runs/{run_id}/status", timeout=10).json()["state"]
        if state == "RUNNING" and seen_running is None:
            seen_running = time.time()
        if state in TERMINAL:
            assert state == "COMPLETE", state
            break
        time.sleep(0.01)
    done = time.time()
    root = server.data_dir / "runs" / run_id
    job_logs = sorted((root / "job-logs").iterdir(), key=_mtime)
    marks = {
        "POST answered": posted,
        "leader process started (claim + fork)": _mtime(root / "control" / "leader.json"),
        "the tool's job log written (job ran)": _mtime(job_logs[-1]) if job_logs else float("nan"),
        "outputs written (Toil's main returned)": _mtime(root / "outputs.json"),
        "leader exited (result written)": _mtime(root / "control" / "result.json"),
        "COMPLETE seen by the client": done,
    }
    return {name: moment - began for name, moment in marks.items()} | {
        "(RUNNING first seen)": (seen_running or done) - began
    }


def _leader_phases(argv: list[str], prompt: bool) -> dict[str, float]:
    """In this (forked) process: run the CWL leader and time Toil's phases."""
    import toil.common
    import toil.cwl.cwltoil
    import toil.leader
    import toil.realtimeLogger
    import toil.serviceManager
    import toil.statsAndLogging

    from wes_gateway.engines import toil_pickles, toil_probes, toil_schemas, toil_waits, toil_workers

    if prompt:
        if os.environ.get("WES_GATEWAY_TOIL_PROBES_IN_PROCESS", "true") != "false":
            toil_probes.install()
        if os.environ.get("WES_GATEWAY_TOIL_PICKLE_SCHEMAS", "true") != "false":
            toil_pickles.install()
        assert toil_workers.start(), "the worker zygote did not start"
        toil_waits.install()
        toil_schemas.keep()
    spans: list[tuple[str, float, float]] = []

    def wrap(owner: Any, name: str, label: str) -> None:
        original: Callable[..., Any] = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spans.append((label, start, time.perf_counter()))

        setattr(owner, name, timed)

    import cwltool.load_tool

    wrap(cwltool.load_tool, "resolve_and_validate_document", "cwltool loads and validates the document")
    wrap(toil.common.Toil, "__enter__", "Toil makes the job store")
    wrap(toil.leader.Leader, "innerLoop", "Toil's leader loop (the job runs)")
    wrap(toil.serviceManager.ServiceManager, "shutdown", "Toil's service manager shuts down")
    wrap(toil.statsAndLogging.StatsAndLogging, "shutdown", "Toil's stats-and-logging thread stops")
    wrap(toil.realtimeLogger.RealtimeLogger, "_stopLeader", "Toil's real-time log server stops")
    wrap(toil.common.Toil, "_shutdownBatchSystem", "Toil's batch system shuts down")
    start = time.perf_counter()
    code = toil.cwl.cwltoil.main(argv, stdout=io.StringIO())
    total = time.perf_counter() - start
    assert code == 0, code
    phases: dict[str, float] = {}
    for label, began, ended in spans:
        phases[label] = phases.get(label, 0.0) + ended - began
    phases["the rest (options, imports of inputs, output collection)"] = total - sum(phases.values())
    phases["total: toil.cwl.cwltoil.main"] = total
    return phases


def leader_run(tmp: Path, i: int, prompt: bool) -> dict[str, float]:
    argv = [*echo_argv(tmp, i), "--disableChaining", "true", "--logCritical"]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # as the forkserver forks a leader: Toil and cwltool are warm already
        os.close(read)
        try:
            result = _leader_phases(argv, prompt)
        except BaseException as exc:  # reported to the parent, which fails
            result = {"error": repr(exc)}  # type: ignore[dict-item]
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as channel:
        text = channel.read()
    os.waitpid(pid, 0)
    result = json.loads(text)
    assert "error" not in result, result
    return result  # type: ignore[no-any-return]


SCATTER = ROOT / "tests" / "data" / "scatter.cwl"
CPUACCT = Path("/sys/fs/cgroup/cpuacct")


def _overcommit(factor: float) -> None:
    """An experiment (issue 40): the single-machine batch system's core pool ``factor`` times
    --maxCores, so that more one-core jobs run at once than there are cores; a job still may
    not ask for more than --maxCores. Not in the gateway: it would need a setting."""
    from toil.batchSystems.abstractBatchSystem import ResourcePool
    from toil.batchSystems.singleMachine import SingleMachineBatchSystem

    stock_init = SingleMachineBatchSystem.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        stock_init(self, *args, **kwargs)
        self.resource_sources[1] = ResourcePool(int(factor * self.maxCores / self.minCores), "cores")

    SingleMachineBatchSystem.__init__ = __init__


def scatter_run(tmp: Path, i: int, steps: int, overcommit: float = 1.0) -> dict[str, float]:
    """One warm leader running the scatter over ``steps`` strings: wall and CPU seconds."""
    job = tmp / f"scatter{i}.json"
    job.write_text(json.dumps({"messages": [f"m{n}" for n in range(steps)]}))
    argv = [str(SCATTER), str(job), "--no-container", "--jobStore", f"file:{tmp}/sjs{i}"]
    argv += ["--outdir", str(tmp / f"sout{i}"), "--workDir", str(tmp), "--disableProgress"]
    argv += ["--disableChaining", "true", "--maxCores", "2", "--logCritical"]
    group = CPUACCT / f"wes-gateway-profile-{os.getpid()}-{i}"
    group.mkdir()
    try:
        began = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # joins the group before it starts anything: the group holds the whole tree
            (group / "cgroup.procs").write_text(str(os.getpid()))
            if overcommit != 1.0:
                _overcommit(overcommit)
            code = 1
            try:
                code = 0 if "error" not in _leader_phases(argv, True) else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        wall = time.perf_counter() - began
        assert status == 0, status
        deadline = time.monotonic() + 30  # the zygote ends after the leader
        while (group / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        cpu = int((group / "cpuacct.usage").read_text()) / 1e9
    finally:
        group.rmdir()
    return {"wall s": wall, "CPU s (whole tree)": cpu, "CPU ms per step": 1000 * cpu / steps}


def report(title: str, runs: list[dict[str, float]], cumulative: bool) -> None:
    print(title)
    previous = 0.0
    for name in runs[0]:
        value = statistics.median(run[name] for run in runs)
        if cumulative and not name.startswith("("):
            print(f"  {value:6.2f} s  (+{value - previous:5.2f})  {name}")
            previous = value
        else:
            print(f"  {value:6.2f} s  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scatter", type=int, default=0, help="only a warm leader's scatter over this many strings")
    parser.add_argument("--overcommit", type=float, default=1.0, help="with --scatter: cores pool x this (experiment)")
    args = parser.parse_args()
    os.environ["TOIL_HISTORY"] = "False"
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    if args.scatter:
        import wes_gateway.engines.leader  # noqa: F401  (warms Toil and cwltool, as the forkserver does)

        with tempfile.TemporaryDirectory() as tmp_text:
            runs = [scatter_run(Path(tmp_text), i, args.scatter, args.overcommit) for i in range(args.repeat)]
        report(f"A warm leader scattering over {args.scatter} strings, gateway defaults; medians:", runs, False)
        print("  each run: " + "; ".join(", ".join(f"{k} {v:.2f}" for k, v in run.items()) for run in runs))
        return
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        server = start_server(tmp / "gw", {"WES_GATEWAY_ACCESS_LOG": "/dev/null", "WES_GATEWAY_POLL_INTERVAL": "0.5"})
        try:
            gateway_run(server, -1)  # warm-up
            through = [gateway_run(server, i) for i in range(args.repeat)]
        finally:
            stop_server(server)
        import wes_gateway.engines.leader  # noqa: F401  (warms Toil and cwltool, as the forkserver does)

        leader_run(tmp, -1, True)  # warm-up
        prompt = [leader_run(tmp, i, True) for i in range(args.repeat)]
        stock = [leader_run(tmp, 100 + i, False) for i in range(args.repeat)]
    print(f"repeat={args.repeat} (one warm-up run not counted); medians")
    report("Through the gateway, seconds after the POST began (cumulative):", through, cumulative=True)
    report("Inside a warm leader, the gateway's defaults (waits woken, workers forked warm):", prompt, False)
    report(
        "Inside a warm leader, stock Toil (WES_GATEWAY_TOIL_PROMPT_SHUTDOWN=false, WES_GATEWAY_TOIL_WARM_WORKERS=false):",
        stock,
        False,
    )


if __name__ == "__main__":
    main()
