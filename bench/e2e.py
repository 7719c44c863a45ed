#!/usr/bin/env python3
"""bench/e2e: seconds from POST /runs to COMPLETE for a trivial CWL tool through the gateway,
against `toil-cwl-runner` run directly on the same tool in the same run. Prints the ratio
(gateway/direct), and the same through a gateway with run_sandbox=none, to price the sandbox.

The container case: the same tool in a container (DockerRequirement, the tests' stand-in
image) through a gateway with Podman, against direct `toil-cwl-runner` with the same Podman
configuration, and what one `podman run` of the image costs alone.

The pull case (``--case pull``; issue 35): the same tool naming an image in a loopback registry
(harness/registry.py: TLS from a test CA, htpasswd auth), through a gateway whose image store
starts empty, against direct `toil-cwl-runner --podman` whose Podman storage starts empty, both
pulling from the same registry in the same run: the first run (it pulls) and further runs (the
image is stored), with the registry's blob fetches and manifest requests on each side."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common import ROOT, Server, cores, direct_engine, spread, start_server, stop_server, submit_cwl

if TYPE_CHECKING:
    from harness.registry import Registry

TOOL = ROOT / "tests" / "data" / "echo.cwl"
TOOL_IN_IMAGE = ROOT / "tests" / "data" / "echo_in_image.cwl"
IMAGE = "docker.io/debian:stable-slim"
# The same stand-in image as IMAGE, as harness/registry.py copies it into the loopback registry.
REGISTRY_IMAGE = "library/debian:stable-slim"
CASES = ("plain", "container", "pull")


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
    tmp: Path,
    i: int,
    tool: Path = TOOL,
    container_args: tuple[str, ...] = ("--no-container",),
    path: str = "",
    extra_env: Mapping[str, str] | None = None,
    wrap: Sequence[str] = (),
) -> float:
    """Seconds of one `toil-cwl-runner` of ``tool`` (run ``i``), started through ``wrap``."""
    bin_dir = Path(sys.executable).parent
    env = {"PATH": f"{path}{bin_dir}:/usr/bin:/bin", "HOME": str(tmp), "TOIL_HISTORY": "False", "LANG": "C.UTF-8"}
    env.update(extra_env or {})
    argv = [*wrap, str(bin_dir / "toil-cwl-runner"), *echo_argv(tmp, i, tool, container_args)]
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - start
    if done.returncode != 0:
        # The cause is often far above the tail (Toil prints the worker's log after it).
        causes = [line for line in done.stderr.splitlines() if "Error:" in line or "refused" in line][:10]
        raise RuntimeError(f"toil-cwl-runner failed ({done.returncode}): {causes} ... {done.stderr[-1500:]}")
    return took


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


# Rootful Podman refuses the --userns=keep-id that cwltool adds for --podman ("keep-id is only
# supported in rootless mode"); this `podman` drops that one argument and runs the real one.
PODMAN_WRAPPER = """#!/bin/sh
for arg do
  shift
  [ "$arg" = --userns=keep-id ] || set -- "$@" "$arg"
done
exec PODMAN "$@"
"""
# c/image keeps root's blob-info cache in /var/lib/containers/cache whatever the environment
# says; where that exists, the direct runs see a directory of their own there instead.
PRIVATE_CACHE = (
    'if [ -d /var/lib/containers/cache ]; then mount --bind "$0" /var/lib/containers/cache || exit 1; fi; exec "$@"'
)


@dataclass
class DirectPodman:
    """Podman for a direct `toil-cwl-runner --podman`, configured by environment only."""

    root: Path
    env: dict[str, str]
    path: str  # the wrapper's PATH entry, ending in ":"
    wrap: list[str]  # what the runner is started through: a mount namespace of its own


def direct_podman(root: Path, registry: Registry) -> DirectPodman:
    """Storage under ``root``, empty (so that the first run pulls), nothing of the host's /etc
    changed: the registry's CA is trusted through $HOME/.config/containers/certs.d, which rootful
    Podman reads as well as /etc/containers/certs.d (c/image 5.23), and its credentials come from
    REGISTRY_AUTH_FILE. The engine settings are those the gateway's runs have and this host
    needs (runc, cgroupfs: no systemd here; no default ulimits). Every podman runs in a private
    mount namespace (the runner's), so the overlay mounts end with it."""
    home, config, run = root / "home", root / "config", root / "run"
    for made in (home / ".config" / "containers", config, run, root / "bin", root / "blob-cache"):
        made.mkdir(parents=True, exist_ok=True)
    shutil.copytree(registry.certs_dir, home / ".config" / "containers" / "certs.d")
    (config / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "storage"}"\nrunroot = "{run / "storage"}"\n'
    )
    (config / "containers.conf").write_text(
        # Podman's default nofile limit is above this host's hard limit (runc: "error setting rlimit").
        "[containers]\n"
        "default_ulimits = []\n"
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f'events_logfile_path = "{run / "events.log"}"\n'
        f'tmp_dir = "{run / "libpod"}"\n'
        f'volume_path = "{root / "storage" / "volumes"}"\n'
        "[network]\n"
        f'network_config_dir = "{root / "networks"}"\n'
    )
    (config / "registries.conf").write_text('unqualified-search-registries = ["docker.io"]\n')
    wrapper = root / "bin" / "podman"
    wrapper.write_text(PODMAN_WRAPPER.replace("PODMAN", shutil.which("podman") or "/usr/bin/podman"))
    wrapper.chmod(0o755)
    env = {
        "HOME": str(home),
        "CONTAINERS_CONF": str(config / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(config / "storage.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(config / "registries.conf"),
        "REGISTRY_AUTH_FILE": str(registry.auth_file),
    }
    wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c", PRIVATE_CACHE, str(root / "blob-cache")]
    return DirectPodman(root, env, f"{root / 'bin'}:", wrap)


def remove_below(root: Path) -> None:
    """Unmount whatever is still mounted below ``root`` (deepest first), then remove it."""
    mounted = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted((p for p in mounted if p.startswith(f"{root}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True, timeout=60)
    shutil.rmtree(root, ignore_errors=True)


@dataclass
class Traffic:
    """What the registry served, from its access log: layer and config blobs sent in full, and
    manifest requests (a pull, or a check of a tag)."""

    blobs: int = 0
    manifests: int = 0

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(self.blobs + other.blobs, self.manifests + other.manifests)

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(self.blobs - other.blobs, self.manifests - other.manifests)

    def __str__(self) -> str:
        return f"{self.blobs} blob fetches, {self.manifests} manifest requests"


def traffic(registry: Registry) -> Traffic:
    manifests = sum(
        1
        for line in registry.log.read_text(errors="replace").splitlines()
        if ('"GET /v2/' in line or '"HEAD /v2/' in line) and "/manifests/" in line
    )
    return Traffic(sum(registry.blob_fetches().values()), manifests)


@dataclass
class Side:
    """One side's timings and registry traffic: first runs (one per fresh store) and cached runs."""

    first: list[float]
    cached: list[float]
    first_traffic: Traffic
    cached_traffic: Traffic


def measured(registry: Registry, run: Callable[[], float]) -> tuple[float, Traffic]:
    """Seconds of one run and the registry traffic it caused (the log is read after the run:
    the registry logs a request once it has answered it)."""
    before = traffic(registry)
    seconds = run()
    return seconds, traffic(registry) - before


def pull_case(tmp: Path, rounds: int, repeat: int) -> None:
    """First pull and cached runs, gateway and direct Podman, taking turns, one registry."""
    from harness import registry as loopback
    from harness.gateway import IMAGE_STORE, images_unavailable

    why = loopback.unavailable() or images_unavailable()
    if why:
        print(f"pull case skipped: {why}")
        return
    with contextlib.contextmanager(loopback.running)(tmp / "registry", IMAGE_STORE) as registry:
        tool = tmp / "echo_from_registry.cwl"
        tool.write_text(TOOL_IN_IMAGE.read_text().replace(IMAGE, registry.ref(REGISTRY_IMAGE)))
        assert registry.ref(REGISTRY_IMAGE) in tool.read_text()
        gateway = Side([], [], Traffic(), Traffic())
        direct_side = Side([], [], Traffic(), Traffic())
        direct(tmp, -1)  # warm-up: the page cache holds Toil and cwltool, as it does for the gateway
        for r in range(rounds):
            pull_round(tmp, r, repeat, registry, tool, gateway, direct_side)
    report_pull(gateway, direct_side, rounds, repeat)


def pull_round(
    tmp: Path, r: int, repeat: int, registry: Registry, tool: Path, gateway: Side, direct_side: Side
) -> None:
    """Round ``r``: a gateway and a direct Podman, both with empty stores, one first run each,
    then ``repeat`` cached runs each, taking turns so that drift on the machine hits both alike."""
    from harness.gateway import container_env

    store = tmp / f"gw-store-{r}"
    store.mkdir(mode=0o755)
    env = {
        "WES_GATEWAY_ACCESS_LOG": "/dev/null",
        **container_env(store),
        "WES_GATEWAY_ALLOWED_REGISTRIES": registry.host,
        "WES_GATEWAY_REGISTRY_CERTS_DIR": str(registry.certs_dir),
        "WES_GATEWAY_REGISTRY_AUTH_FILE": str(registry.auth_file),
    }
    server = start_server(tmp / f"gw-pull-{r}", env)
    podman = direct_podman(tmp / f"direct-pull-{r}", registry)
    try:
        through_gateway(server, 1000 * r - 1)  # warm-up without the image: forkserver, cwltool import

        def on_gateway(i: int) -> tuple[float, Traffic]:
            return measured(registry, lambda: through_gateway(server, i, tool))

        def on_direct(i: int) -> tuple[float, Traffic]:
            return measured(registry, lambda: direct(tmp, i, tool, ("--podman",), podman.path, podman.env, podman.wrap))

        # Who goes first alternates between rounds, so that neither always meets a colder machine.
        turns = [(gateway, on_gateway), (direct_side, on_direct)][:: 1 if r % 2 == 0 else -1]
        for side, on in turns:
            seconds, moved = on(1000 * r)
            side.first.append(seconds)
            side.first_traffic += moved
        for i in range(1, repeat + 1):
            for side, on in turns:
                seconds, moved = on(1000 * r + i)
                side.cached.append(seconds)
                side.cached_traffic += moved
    finally:
        stop_server(server)
        remove_below(server.data_dir)
        remove_below(store)
        remove_below(podman.root)


def report_pull(gateway: Side, direct_side: Side, rounds: int, repeat: int) -> None:
    gf, df = statistics.median(gateway.first), statistics.median(direct_side.first)
    gc, dc = statistics.median(gateway.cached), statistics.median(direct_side.cached)
    print(
        f"pull: image {REGISTRY_IMAGE} from a loopback registry (TLS test CA, htpasswd); {rounds} round(s), "
        f"each with an empty store on both sides: 1 first run + {repeat} cached runs per side, taking turns"
    )
    print(f"pull: gateway first pull POST->COMPLETE median {gf:.2f}s  all: {_all(gateway.first)}")
    print(f"pull: direct  first pull toil-cwl-runner --podman median {df:.2f}s  all: {_all(direct_side.first)}")
    print(f"pull: gateway cached POST->COMPLETE median {gc:.2f}s  {spread(gateway.cached)}")
    print(f"pull: direct  cached toil-cwl-runner --podman median {dc:.2f}s  {spread(direct_side.cached)}")
    print(f"pull: registry, gateway first runs: {gateway.first_traffic}; cached runs: {gateway.cached_traffic}")
    print(f"pull: registry, direct  first runs: {direct_side.first_traffic}; cached runs: {direct_side.cached_traffic}")
    checks = direct_side.cached_traffic.manifests
    print(
        "pull: direct cached runs "
        + (f"checked the registry ({checks} manifest requests)" if checks else "did not contact the registry")
        + "; gateway cached runs "
        + ("checked it" if gateway.cached_traffic.manifests else "did not contact it")
    )
    print(f"pull: ratio first pull gateway/direct = {gf / df:.2f}")
    met = "met" if gc <= 0.5 * dc else "NOT met"
    print(f"pull: ratio cached gateway/direct = {gc / dc:.2f}  (target <= 0.5: {met})")
    print(
        "pull: direct Podman is rootful, configured by environment only (temporary storage, CA through "
        "$HOME/.config/containers/certs.d, not insecure), through a wrapper dropping --userns=keep-id"
    )


def _all(values: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in values)


def plain_case(repeat: int) -> None:
    """The tool with no container: through a gateway with and without its sandbox, and directly."""
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
            for i in range(repeat):
                gateway.append(through_gateway(boxed, i))
                unsandboxed.append(through_gateway(bare, i))
        finally:
            stop_server(boxed)
            stop_server(bare)
        cost = sandbox_cost(tmp)
        direct(tmp, -1)  # warm-up: the page cache holds Toil and cwltool, as it does for the gateway
        direct_times = [direct(tmp, i) for i in range(repeat)]
    g, n, d = statistics.median(gateway), statistics.median(unsandboxed), statistics.median(direct_times)

    print(f"cores={cores()} repeat={repeat} (one warm-up run on each side, not counted)")
    print(f"gateway (bwrap sandbox) POST->COMPLETE median {g:.2f}s  {spread(gateway)}")
    print(f"gateway (run_sandbox=none)  POST->COMPLETE median {n:.2f}s  {spread(unsandboxed)}")
    print(f"direct toil-cwl-runner median {d:.2f}s  {spread(direct_times)}")
    print(f"sandbox start-up: {1000 * (g - n):+.0f} ms per run (median difference; target <= 50 ms)")
    print(f"sandbox build + join + teardown alone: median {1000 * cost:.1f} ms")
    print(f"ratio gateway/direct = {g / d:.2f}  (target <= 0.6)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5, help="measured runs per side (per round, in the pull case)")
    parser.add_argument(
        "--case", action="append", choices=CASES, help=f"run only this case (repeatable; default: {', '.join(CASES)})"
    )
    parser.add_argument("--pull-rounds", type=int, default=2, help="pull case: rounds, each from empty stores")
    parser.add_argument("--no-containers", action="store_true", help="skip the container and pull cases")
    args = parser.parse_args()
    cases = [case for case in args.case or CASES if not (args.no_containers and case != "plain")]
    print(f"load average at start: {Path('/proc/loadavg').read_text().strip()}")
    if "plain" in cases:
        plain_case(args.repeat)
    if "container" in cases:
        with tempfile.TemporaryDirectory() as tmp_text:
            container_case(Path(tmp_text), args.repeat)
    if "pull" in cases:
        with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp_text:
            pull_case(Path(tmp_text), args.pull_rounds, args.repeat)
    print(f"load average at end: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
