#!/usr/bin/env python3
"""bench/slurm: the same 20-way CWL scatter through the gateway on single_machine and on the
tests' private single-node Slurm, in one run; wall times (POST to COMPLETE) and their ratio.
Then the latency to a job's start: POST /runs to the first tool running on Slurm, against
`sbatch --wrap` to its job running, both timed by the job itself (it prints its start time).
Baseline: direct sbatch on the same cluster, in the same run. Needs root and Slurm installed
(scripts/system-deps)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from common import ROOT, cores, start_server, stop_server

# The tests' private cluster (tests/e2e/slurm_cluster.py: harness and the standard library only).
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
slurm = importlib.import_module("slurm_cluster")

STAMP_TOOL = """\
cwlVersion: v1.2
class: CommandLineTool
baseCommand: [python3, -c, 'import time, sys; print(repr(time.time())); print(sys.argv[1])']
inputs:
  label:
    type: string
    inputBinding: {position: 1}
outputs:
  out:
    type: stdout
stdout: stamp.txt
"""
SCATTER = """\
cwlVersion: v1.2
class: Workflow
requirements:
  ScatterFeatureRequirement: {}
inputs:
  labels: string[]
outputs:
  outs:
    type: File[]
    outputSource: stamp/out
steps:
  stamp:
    run: stamp.cwl
    scatter: label
    in: {label: labels}
    out: [out]
"""


def run_scatter(server, width: int) -> tuple[float, float, dict]:  # type: ignore[no-untyped-def]
    """(seconds POST->COMPLETE, seconds POST->first tool start, the run log)."""
    began_wall = time.time()
    began = time.perf_counter()
    response = requests.post(
        server.api + "/runs",
        timeout=60,
        data={
            "workflow_url": "scatter.cwl",
            "workflow_type": "CWL",
            "workflow_type_version": "v1.2",
            "workflow_params": json.dumps({"labels": [f"job{i}" for i in range(width)]}),
        },
        files=[
            ("workflow_attachment", ("scatter.cwl", SCATTER.encode())),
            ("workflow_attachment", ("stamp.cwl", STAMP_TOOL.encode())),
        ],
    )
    response.raise_for_status()
    run_id = response.json()["run_id"]
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        state = requests.get(f"{server.api}/runs/{run_id}/status", timeout=10).json()["state"]
        if state in ("COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"):
            break
        time.sleep(0.1)
    wall = time.perf_counter() - began
    log = requests.get(f"{server.api}/runs/{run_id}", timeout=10).json()
    assert state == "COMPLETE", log
    starts = [float(Path(item["path"]).read_text().split()[0]) for item in log["outputs"]["outs"]]
    return wall, min(starts) - began_wall, log


def direct_sbatch(
    cluster: slurm.Slurm,
    tmp: Path,
    count: int,
) -> list[float]:
    """Seconds from sbatch's invocation to its job's first instruction."""
    latencies = []
    for i in range(count):
        out = tmp / f"sbatch{i}.out"
        began = time.time()
        subprocess.run(
            ["sbatch", "--wrap", "python3 -c 'import time; print(repr(time.time()))'", "-o", str(out)],
            env=cluster.env,
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out.exists() and out.read_text().strip()):
            time.sleep(0.05)
        latencies.append(float(out.read_text().split()[0]) - began)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="direct sbatch samples")
    args = parser.parse_args()
    reason = slurm.available()
    if reason:
        raise SystemExit(f"bench/slurm: {reason}")
    cluster = slurm.start_slurm()
    shared = Path(tempfile.mkdtemp(prefix="wes-gateway-bench-shared-"))
    os.chmod(shared, 0o755)
    tmp = Path(tempfile.mkdtemp(prefix="wes-gateway-bench-slurm-"))
    quiet = {"WES_GATEWAY_ACCESS_LOG": "/dev/null", "WES_GATEWAY_POLL_INTERVAL": "0.1"}
    on_slurm = {
        **quiet,
        "SLURM_CONF": str(cluster.conf),
        "WES_GATEWAY_BATCH_SYSTEM": "slurm",
        "WES_GATEWAY_SHARED_DIR": str(shared),
        "WES_GATEWAY_RUN_USER": "",  # jobs must reach this machine's Python (see tests/test_slurm.py)
    }
    try:
        measured = {}
        for label, env in (("local", quiet), ("slurm", on_slurm)):
            server = start_server(tmp / label, env)
            try:
                run_scatter(server, 2)  # warm-up, not counted
                measured[label] = run_scatter(server, args.width)
            finally:
                stop_server(server)
        (local_wall, local_first, _), (slurm_wall, slurm_first, log) = measured["local"], measured["slurm"]
        direct = direct_sbatch(cluster, tmp, args.repeat)
    finally:
        cluster.stop()
        shutil.rmtree(shared, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    jobs = len(log["outputs"]["outs"])
    d = statistics.median(direct)
    print(f"cores={cores()} width={args.width} (one 2-way warm-up scatter on each side, not counted)")
    print(f"single_machine: POST->COMPLETE {local_wall:.1f}s, POST->first tool {local_first:.2f}s")
    print(f"slurm:          POST->COMPLETE {slurm_wall:.1f}s, POST->first tool {slurm_first:.2f}s ({jobs} tool jobs)")
    print(f"ratio slurm/single_machine wall = {slurm_wall / local_wall:.2f}")
    print(f"direct sbatch->job start: median {d:.2f}s (all: {', '.join(f'{x:.2f}' for x in direct)})")
    print(
        f"gateway's added latency to the first Slurm job's start: {slurm_first - d:+.2f}s "
        f"(POST->first tool {slurm_first:.2f}s minus sbatch->start {d:.2f}s: the gateway's claim, the "
        "leader's start and Toil's own scheduling)"
    )
    print(f"per Slurm job over single_machine: {(slurm_wall - local_wall) / jobs:+.2f}s")


if __name__ == "__main__":
    main()
