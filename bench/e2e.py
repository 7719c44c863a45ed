#!/usr/bin/env python3
"""bench/e2e: seconds from POST /runs to COMPLETE for a trivial CWL tool through the gateway,
against `toil-cwl-runner` run directly on the same tool in the same run. Prints the ratio
(gateway/direct), and the same through a gateway with run_sandbox=none, to price the sandbox.

The container case: the same tool in a container (DockerRequirement, the tests' stand-in
image) through a gateway with Podman, against direct `toil-cwl-runner` with the same Podman
configuration, and what one `podman run` of the image costs alone."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, Server, cores, direct_engine, spread, start_server, stop_server, submit_cwl

TOOL = ROOT / "tests" / "data" / "echo.cwl"
TOOL_IN_IMAGE = ROOT / "tests" / "data" / "echo_in_image.cwl"
IMAGE = "docker.io/debian:stable-slim"


def echo_argv(tmp: Path, i: int, tool: Path = TOOL, container_args: tuple[str, ...] = ("--no-container",)) -> list[str]:
    """toil-cwl-runner's arguments for the echo tool, run ``i`` under ``tmp``."""
    job = tmp / f"job{i}.json"
    job.write_text(json.dumps({"message": "bench"}))
    return [
        str(tool),
        str(job),
        *container_args,
        "--jobStore",
        f"file:{tmp}/js{i}",
        "--outdir",
        str(tmp / f"out{i}"),
        "--workDir",
        str(tmp),
        "--disableProgress",
    ]


def direct(
    tmp: Path, i: int, tool: Path = TOOL, container_args: tuple[str, ...] = ("--no-container",), path: str = ""
) -> float:
    bin_dir = Path(sys.executable).parent
    env = {"PATH": f"{path}{bin_dir}:/usr/bin:/bin", "HOME": str(tmp), "TOIL_HISTORY": "False", "LANG": "C.UTF-8"}
    argv = [str(bin_dir / "toil-cwl-runner"), *echo_argv(tmp, i, tool, container_args)]
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def through_gateway(server: Server, i: int, tool: Path = TOOL) -> float:
    start = time.perf_counter()
    run_id = submit_cwl(server, {tool.name: tool.read_bytes()}, {"message": f"bench {i}"})
    state = server.wait(run_id, timeout=600, interval=0.05)
    assert state == "COMPLETE", state
    return time.perf_counter() - start


def sandbox_cost(tmp: Path, count: int = 20) -> float:
    """Median seconds to build a run's sandbox, fork a process into it and end it: the part of
    the start-up the sandbox adds, measured alone (the e2e difference drowns it in noise)."""
    import os

    from wes_gateway.config import load_settings
    from wes_gateway.files.paths import RunPaths
    from wes_gateway.host.sandbox import Sandbox, hand_over, plan, run_identity

    settings = load_settings({}, data_dir=tmp / "sandbox-bench")
    identity = run_identity(settings)
    times = []
    for i in range(count):
        paths = RunPaths.of(settings, f"bench{i}")
        hand_over(paths, identity)
        began = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # as the leader's launcher does: build, half join, fork the leader, end
            box = Sandbox(plan(settings, paths, [], [], identity))
            child = os.fork()
            if child == 0:
                box.enter()
                os._exit(0)
            os.waitpid(child, 0)
            box.close()
            os._exit(0)
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def container_case(tmp: Path, repeat: int) -> None:
    """The one-step tool in a container, through the gateway and directly, same engine."""
    from harness.gateway import IMAGE_STORE, container_env, images_unavailable

    why = images_unavailable()
    if why:
        print(f"container case skipped: {why}")
        return
    server = start_server(tmp / "gw-podman", {"WES_GATEWAY_ACCESS_LOG": "/dev/null", **container_env(IMAGE_STORE)})
    try:
        through_gateway(server, -1, TOOL_IN_IMAGE)  # warm-up
        gateway = [through_gateway(server, i, TOOL_IN_IMAGE) for i in range(repeat)]
    finally:
        stop_server(server)
    engine_env, container_args = direct_engine(tmp / "direct-podman", IMAGE_STORE)
    path = engine_env["PATH"].split(":", 1)[0] + ":"
    direct(tmp, -2, TOOL_IN_IMAGE, tuple(container_args), path)  # warm-up
    direct_times = [direct(tmp, 100 + i, TOOL_IN_IMAGE, tuple(container_args), path) for i in range(repeat)]
    starts = []
    for _ in range(max(5, repeat)):
        began = time.perf_counter()
        subprocess.run(["docker", "run", "--rm", "--net=none", IMAGE, "true"], env=engine_env, check=True)
        starts.append(time.perf_counter() - began)
    g, d = statistics.median(gateway), statistics.median(direct_times)
    print(f"container: gateway (podman, sandboxed) POST->COMPLETE median {g:.2f}s  all: {_all(gateway)}")
    print(f"container: direct toil-cwl-runner (podman) median {d:.2f}s  all: {_all(direct_times)}")
    print(f"container: one `podman run --rm {IMAGE} true` median {statistics.median(starts):.2f}s  all: {_all(starts)}")
    print(f"container: ratio gateway/direct = {g / d:.2f}  (target <= 0.6)")


def _all(values: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-containers", action="store_true", help="skip the container case")
    args = parser.parse_args()
    # The gateway's defaults (a new run is claimed through the wake-up, not a short poll).
    quick = {"WES_GATEWAY_ACCESS_LOG": "/dev/null"}
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        # Both gateways run at once and take turns, so that drift on the machine hits both alike.
        boxed = start_server(tmp / "gw", quick)
        bare = start_server(tmp / "gw-none", {**quick, "WES_GATEWAY_RUN_SANDBOX": "none"})
        try:
            for server in (boxed, bare):
                through_gateway(server, -1)  # warm-up: forkserver and cwltool import in the web worker
            gateway: list[float] = []
            unsandboxed: list[float] = []
            for i in range(args.repeat):
                gateway.append(through_gateway(boxed, i))
                unsandboxed.append(through_gateway(bare, i))
        finally:
            stop_server(boxed)
            stop_server(bare)
        cost = sandbox_cost(tmp)
        direct(tmp, -1)  # warm-up: the page cache holds Toil and cwltool, as it does for the gateway
        direct_times = [direct(tmp, i) for i in range(args.repeat)]
    g, n, d = statistics.median(gateway), statistics.median(unsandboxed), statistics.median(direct_times)

    print(f"cores={cores()} repeat={args.repeat} (one warm-up run on each side, not counted)")
    print(f"gateway (bwrap sandbox) POST->COMPLETE median {g:.2f}s  {spread(gateway)}")
    print(f"gateway (run_sandbox=none)  POST->COMPLETE median {n:.2f}s  {spread(unsandboxed)}")
    print(f"direct toil-cwl-runner median {d:.2f}s  {spread(direct_times)}")
    print(f"sandbox start-up: {1000 * (g - n):+.0f} ms per run (median difference; target <= 50 ms)")
    print(f"sandbox build + join + teardown alone: median {1000 * cost:.1f} ms")
    print(f"ratio gateway/direct = {g / d:.2f}  (target <= 0.6)")
    if not args.no_containers:
        with tempfile.TemporaryDirectory() as tmp_text:
            container_case(Path(tmp_text), args.repeat)


if __name__ == "__main__":
    main()
