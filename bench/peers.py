#!/usr/bin/env python3
"""bench/peers: the gateway against the WES servers a user would pick instead (issue 40, item 1).

Seconds from POST /runs to COMPLETE, one run at a time, the servers taken round robin by one
client (the same workflow and the same form for all, status polled every 50 ms), for three
cases: one echo step (`echo`), a CWL workflow that scatters the echo step over 100 strings
(`scatter100`), both with no container, and a WDL 1.0 workflow that scatters a one-line task
over 20 strings, each task in `debian:stable-slim` (runtime.docker) (`wdl-scatter`,
bench/wdl_scatter.wdl). `--case` picks some of them.

The CWL cases, against:

- wes-service 5.0: `wes-server --backend=wes_service.cwl_runner` with the venv's cwltool,
  `--no-container`;
- sapporo 2.4.0: `sapporo --run-sh` with a copy of its own run.sh whose `run_cwltool` calls
  the venv's `cwltool --no-container` instead of `docker run` (its documented point of
  customisation);
- the gateway as `make run` starts it (Gunicorn with gunicorn.conf.py, every WES_GATEWAY_*
  setting at its default but the data directory, a temporary one, and the port).

The WDL case, with Podman and the tests' stand-in image store (harness.gateway.IMAGE_STORE,
built on first use) on both sides, against miniwdl run directly: not a WES server, the floor
a WDL user compares with.

- the gateway as above, with WES_GATEWAY_CONTAINER_ENGINE=podman and the store as
  WES_GATEWAY_IMAGE_STORE (harness.gateway.container_env): its runs' rootless Podman in
  their sandboxes, through the run's `singularity` shim (Toil's WDL task path);
- miniwdl 1.16.0, `miniwdl run` from its start to its exit, as root and outside any sandbox,
  with its `podman` backend: `[podman] exe` is a wrapper that answers `pull` of an image the
  store holds with `podman image exists`; Podman's configuration is its own (never /etc's),
  set as the gateway's runs have theirs (wes_gateway/host/containers.py): runc (crun
  refuses this host's hybrid cgroups), cgroupfs, the host's network, `default_ulimits = []`,
  events to a file, the store read-only as additionalimagestores over a temporary graphroot.

wes-service, sapporo and miniwdl are installed from PyPI into venvs of their own, kept
between runs under ~/.cache/wes-gateway-bench/ (never the project's .venv). Every server
listens on a free loopback port, is stopped by its own process id (then its process group)
and its directories are removed. Prints each server's median, min and max and the
gateway's ratio to the fastest peer, and appends the table to bench/RESULTS.md (--no-write
to skip), with the load average before and after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, for harness/

from harness.gateway import IMAGE_STORE, container_env, images_unavailable  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wes-gateway-bench"
RESULTS = ROOT / "bench" / "RESULTS.md"
TERMINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"}
POLL = 0.05
# What each cached venv holds: the WES peers', and miniwdl's (the WDL case's floor).
VENVS = {
    "wes-service": ["wes-service==5.0", "cwltool"],
    "sapporo": ["sapporo==2.4.0", "cwltool"],
    "miniwdl": ["miniwdl==1.16.0"],
}
CWL_SERVERS = ["wes-gateway", "wes-service", "sapporo"]
WDL_SERVERS = ["wes-gateway", "miniwdl"]


@dataclass
class Case:
    name: str
    workflow: str
    attachments: list[str]
    params: dict[str, object]
    timeout: float
    language: str = "CWL"  # workflow_type
    version: str = "v1.2"  # workflow_type_version
    source: Path = DATA  # the folder of the workflow and its attachments


CASES = [
    Case("echo", "echo.cwl", ["echo.cwl"], {"message": "bench"}, 120),
    Case("scatter100", "scatter.cwl", ["scatter.cwl", "echo.cwl"], {"messages": [f"m{i}" for i in range(100)]}, 600),
    Case(
        "wdl-scatter",
        "wdl_scatter.wdl",
        ["wdl_scatter.wdl"],
        {"wdl_scatter.messages": [f"m{i}" for i in range(20)]},
        600,
        language="WDL",
        version="1.0",
        source=ROOT / "bench",
    ),
]
# Gateway median / peer median that issue 40 asks for, where it names one.
TARGETS = {"wdl-scatter": 1.5}


@dataclass
class Peer:
    name: str
    api: str  # base URL of the WES API
    process: subprocess.Popen[bytes]
    log: Path
    dirs: list[Path]
    extra_form: dict[str, str] = field(default_factory=dict)
    after_stop: Callable[[], None] | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def venv(name: str) -> Path:
    """The cached venv of a peer, made and installed on first use; its directory."""
    packages = VENVS[name]
    home = CACHE / name
    stamp = home / ".installed"
    if stamp.exists() and stamp.read_text() == "\n".join(packages):
        return home
    shutil.rmtree(home, ignore_errors=True)
    home.parent.mkdir(parents=True, exist_ok=True)
    python = shutil.which("python3") or sys.executable
    print(f"installing {' '.join(packages)} into {home} ...", flush=True)
    subprocess.run([python, "-m", "venv", str(home)], check=True)
    subprocess.run([str(home / "bin" / "pip"), "install", "-q", *packages], check=True, timeout=1200)
    stamp.write_text("\n".join(packages))
    return home


def wait_ready(peer: Peer, path: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if peer.process.poll() is not None:
            raise RuntimeError(f"{peer.name} exited early:\n{tail(peer.log)}")
        try:
            if requests.get(peer.api + path, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{peer.name} did not answer in {timeout:.0f}s:\n{tail(peer.log)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def popen(argv: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def start_wes_service(tmp: Path) -> Peer:
    home = venv("wes-service")
    work = tmp / "wes-service"
    work.mkdir()
    port = free_port()
    argv = [
        str(home / "bin" / "wes-server"),
        "--backend=wes_service.cwl_runner",
        f"--opt=runner={home / 'bin' / 'cwltool'}",
        "--opt=extra=--no-container",
        f"--port={port}",
    ]
    env = {**os.environ, "PATH": f"{home / 'bin'}:/usr/local/bin:/usr/bin:/bin"}
    # Connexion's app.run serves on 127.0.0.1 by default.
    peer = Peer(
        "wes-service",
        f"http://127.0.0.1:{port}/ga4gh/wes/v1",
        popen(argv, work, work / "server.log", env),
        work / "server.log",
        [work],
    )
    wait_ready(peer, "/service-info")
    return peer


SAPPORO_RUN_CWLTOOL = """function run_cwltool() {{
    # bench/peers: the venv's cwltool on this host instead of `docker run` of cwltool's image
    local -a cmd_arr=({cwltool} --no-container --outdir "${{outputs_dir}}")
    _append_engine_params cmd_arr
    cmd_arr+=("${{wf_url}}" "${{wf_params}}")
    cd "${{exe_dir}}" || executor_error 1
    export TMPDIR="${{tmp_dir}}"
    _write_and_run cmd_arr
}}
"""


def sapporo_run_sh(home: Path, dest: Path) -> None:
    """Sapporo's own run.sh, its `run_cwltool` replaced by a local `cwltool --no-container`."""
    (original,) = home.glob("lib/python*/site-packages/sapporo/run.sh")
    text = original.read_text()
    start = text.index("function run_cwltool() {")
    end = text.index("\n}\n", start) + 3
    replacement = SAPPORO_RUN_CWLTOOL.format(cwltool=shlex.quote(str(home / "bin" / "cwltool")))
    dest.write_text(text[:start] + replacement + text[end:])
    dest.chmod(0o755)


def start_sapporo(tmp: Path) -> Peer:
    home = venv("sapporo")
    work = tmp / "sapporo"
    (work / "runs").mkdir(parents=True)  # sapporo wants its run directory to exist
    sapporo_run_sh(home, work / "run.sh")
    port = free_port()
    argv = [
        str(home / "bin" / "sapporo"),
        "--host=127.0.0.1",
        f"--port={port}",
        f"--run-dir={work / 'runs'}",
        f"--run-sh={work / 'run.sh'}",
    ]
    env = {**os.environ, "PATH": f"{home / 'bin'}:/usr/local/bin:/usr/bin:/bin"}
    peer = Peer(
        "sapporo",
        f"http://127.0.0.1:{port}",
        popen(argv, work, work / "server.log", env),
        work / "server.log",
        [work],
        extra_form={"workflow_engine": "cwltool"},
    )
    wait_ready(peer, "/service-info")
    return peer


GATEWAY_SETTINGS: dict[str, str] = {}  # --gateway-setting NAME=VALUE: a setting changed from make run's


def start_gateway(tmp: Path, label: str = "gateway", settings: dict[str, str] | None = None) -> Peer:
    """Gunicorn as `make run` starts it: the project's venv, gunicorn.conf.py, default settings
    (but ``settings``, WES_GATEWAY_* variables, and those given with --gateway-setting), a data
    directory of its own (``tmp``/``label``) and a free port."""
    data = tmp / label
    data.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WES_GATEWAY_")}
    env.update({"WES_GATEWAY_DATA_DIR": str(data), "WES_GATEWAY_BIND": f"127.0.0.1:{port}"})
    env.update(settings or {})
    env.update({f"WES_GATEWAY_{name.upper()}": value for name, value in GATEWAY_SETTINGS.items()})
    gunicorn = Path(sys.executable).parent / "gunicorn"
    log = tmp / f"{label}.log"
    peer = Peer(
        "wes-gateway",
        f"http://127.0.0.1:{port}/ga4gh/wes/v1",
        popen([str(gunicorn), "-c", str(ROOT / "gunicorn.conf.py")], ROOT, log, env),
        log,
        [data],
        after_stop=lambda: clean_gateway(data),
    )
    wait_ready(peer, "/health")
    return peer


def clean_gateway(data: Path) -> None:
    """What a stopped gateway may leave: its runs' leaders (found by their run id, only runs
    of this data directory) and its runs' mounted filesystems."""
    needle = b"WES_GATEWAY_RUN_ID="
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue
        if needle not in environ:
            continue
        run_id = environ.split(needle, 1)[1].split(b"\0", 1)[0].decode(errors="replace")
        if run_id and (data / "runs" / run_id).exists():
            try:
                os.killpg(os.getpgid(int(entry.name)), signal.SIGKILL)
            except OSError:
                pass
    unmount_under(data)


def unmount_under(root: Path) -> None:
    """Lazily unmount whatever is mounted below ``root``, deepest first."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted(mounts, reverse=True):
        if point.startswith(f"{root}/"):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


# miniwdl's `podman`: a `pull` of an image the store already holds is answered from the store,
# as the gateway's pulls answer its runs (no registry is reachable here anyway).
PODMAN_WRAPPER = """#!/bin/sh
if [ "$1" = pull ] && [ "$#" -eq 2 ] && {podman} image exists "$2"; then
    exit 0
fi
exec {podman} "$@"
"""


@dataclass
class Miniwdl:
    """`miniwdl run` on this host, one process per run: not a server, but run as one."""

    name: str
    home: Path
    work: Path
    config: Path
    env: dict[str, str]
    log: Path


def toml_strings(table: dict[str, dict[str, object]]) -> str:
    """The TOML of a table of tables of strings and lists of strings (Podman's files)."""
    lines: list[str] = []
    for section, values in table.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def start_miniwdl(tmp: Path) -> Miniwdl:
    """miniwdl's venv, and a Podman of its own: rootful (miniwdl runs as root), its storage
    under ``tmp`` and the image store read-only, configured as the gateway's runs' Podman is
    where it matters on this host (wes_gateway/host/containers.py)."""
    home = venv("miniwdl")
    work = tmp / "miniwdl"
    (work / "runs").mkdir(parents=True)
    state = work / "podman"
    podman = shutil.which("podman") or "/usr/bin/podman"
    files = {
        "storage.conf": toml_strings(
            {
                "storage": {"driver": "overlay", "graphroot": str(state / "storage"), "runroot": str(state / "run")},
                "storage.options": {"additionalimagestores": [str(IMAGE_STORE)]},
            }
        ),
        "containers.conf": toml_strings(
            {
                # As the gateway's: no ulimits set per container, the host's network.
                "containers": {"default_ulimits": [], "netns": "host"},
                "engine": {
                    # crun refuses this host's hybrid cgroups; no systemd to manage them.
                    "runtime": "runc",
                    "cgroup_manager": "cgroupfs",
                    "events_logger": "file",
                    "events_logfile_path": str(state / "events.log"),
                    "tmp_dir": str(state / "libpod"),
                    "volume_path": str(state / "volumes"),
                },
            }
        ),
        "registries.conf": 'unqualified-search-registries = ["docker.io"]\n',
    }
    for name, text in files.items():
        (work / name).write_text(text)
    wrapper = work / "podman-wrapper"
    wrapper.write_text(PODMAN_WRAPPER.format(podman=shlex.quote(podman)))
    wrapper.chmod(0o755)
    config = work / "miniwdl.cfg"
    config.write_text(f"[scheduler]\ncontainer_backend = podman\n\n[podman]\nexe = {json.dumps([str(wrapper)])}\n")
    env = {
        **os.environ,
        "PATH": f"{home / 'bin'}:/usr/local/bin:/usr/bin:/usr/sbin:/bin:/sbin",
        "CONTAINERS_CONF": str(work / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(work / "storage.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(work / "registries.conf"),
    }
    return Miniwdl("miniwdl", home, work, config, env, work / "miniwdl.log")


def miniwdl_run(runner: Miniwdl, case: Case) -> float:
    """Seconds from starting `miniwdl run` to its exit (0)."""
    inputs = runner.work / f"{case.name}.inputs.json"
    inputs.write_text(json.dumps(case.params))
    argv = [
        str(runner.home / "bin" / "miniwdl"),
        "run",
        str(case.source / case.workflow),
        "--input",
        str(inputs),
        "--dir",
        f"{runner.work / 'runs'}/",  # a directory of its own per run, below this one
        "--cfg",
        str(runner.config),
    ]
    started = time.perf_counter()
    process = popen(argv, runner.work, runner.log, runner.env)
    try:
        code = process.wait(case.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        raise RuntimeError(
            f"miniwdl: {case.name} still running after {case.timeout:.0f}s:\n{tail(runner.log)}"
        ) from None
    seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"miniwdl: {case.name} exited {code}:\n{tail(runner.log)}")
    return seconds


def stop_miniwdl(runner: Miniwdl) -> None:
    """What its runs may leave: Podman's mounts below its directory (containers run --rm)."""
    unmount_under(runner.work)


Runner = Peer | Miniwdl


def timed(runner: Runner, case: Case) -> float:
    return miniwdl_run(runner, case) if isinstance(runner, Miniwdl) else one_run(runner, case)


def stop_runner(runner: Runner) -> None:
    if isinstance(runner, Miniwdl):
        stop_miniwdl(runner)
    else:
        stop(runner)


def stop(peer: Peer) -> None:
    """SIGTERM to the server's own process, then SIGKILL to its process group (it leads a
    session of its own) for whatever is left of it."""
    if peer.process.poll() is None:
        peer.process.send_signal(signal.SIGTERM)
        try:
            peer.process.wait(30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(peer.process.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        peer.process.wait(10)
    except subprocess.TimeoutExpired:
        pass
    if peer.after_stop:
        peer.after_stop()


def one_run(peer: Peer, case: Case) -> float:
    """Seconds from POST /runs to COMPLETE."""
    form = {
        "workflow_url": case.workflow,
        "workflow_type": case.language,
        "workflow_type_version": case.version,
        "workflow_params": json.dumps(case.params),
        **peer.extra_form,
    }
    files = [("workflow_attachment", (name, (case.source / name).read_bytes())) for name in case.attachments]
    started = time.perf_counter()
    response = requests.post(peer.api + "/runs", data=form, files=files, timeout=120)
    if response.status_code != 200:
        raise RuntimeError(f"{peer.name}: POST /runs {response.status_code}: {response.text[:500]}")
    run_id = response.json()["run_id"]
    deadline = time.monotonic() + case.timeout
    state = ""
    while time.monotonic() < deadline:
        state = requests.get(f"{peer.api}/runs/{run_id}/status", timeout=30).json()["state"]
        if state in TERMINAL:
            if state != "COMPLETE":
                raise RuntimeError(f"{peer.name}: run {run_id} of {case.name} ended {state}")
            return time.perf_counter() - started
        time.sleep(POLL)
    raise RuntimeError(f"{peer.name}: run {run_id} of {case.name} still {state} after {case.timeout:.0f}s")


def machine() -> str:
    mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    gib = int(mem.split()[1]) / 1024 / 1024
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"nproc {os.cpu_count()}, {gib:.1f} GiB memory, {model or platform.machine()}, {platform.platform()}"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="counted runs of the echo case per server")
    parser.add_argument("--scatter-repeat", type=int, default=2, help="counted runs of the scatter case per server")
    parser.add_argument("--wdl-repeat", type=int, default=3, help="counted runs of the wdl-scatter case per server")
    names = [case.name for case in CASES]
    parser.add_argument("--case", default="", help=f"comma-separated cases ({','.join(names)}); all by default")
    parser.add_argument(
        "--only", default="", help="comma-separated servers (wes-gateway,wes-service,sapporo for CWL; miniwdl for WDL)"
    )
    parser.add_argument("--no-write", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the servers' directories and logs (path printed)")
    parser.add_argument(
        "--gateway-setting", action="append", default=[], metavar="NAME=VALUE", help="e.g. toil_overcommit=4"
    )
    args = parser.parse_args()
    GATEWAY_SETTINGS.update(item.split("=", 1) for item in args.gateway_setting)
    chosen = [c for c in args.case.split(",") if c] or names
    if set(chosen) - set(names):
        parser.error(f"unknown case {', '.join(sorted(set(chosen) - set(names)))}; cases: {', '.join(names)}")
    repeats = {"echo": args.repeat, "scatter100": args.scatter_repeat, "wdl-scatter": args.wdl_repeat}
    only = [s for s in args.only.split(",") if s]
    # One group of servers per language, started together and stopped before the next group.
    groups: list[tuple[list[str], list[Case]]] = []
    for language, pool in (("CWL", CWL_SERVERS), ("WDL", WDL_SERVERS)):
        cases = [c for c in CASES if c.language == language and c.name in chosen and repeats[c.name]]
        servers = [name for name in pool if not only or name in only]
        if cases and servers:
            groups.append((servers, cases))
    if any(case.language == "WDL" for _, cases in groups for case in cases):
        why = images_unavailable()  # builds the stand-in image store on first use
        if why:
            raise SystemExit(f"wdl-scatter needs the tests' image store {IMAGE_STORE}: {why}")
    starters: dict[tuple[str, str], Callable[[Path], Runner]] = {
        ("CWL", "wes-gateway"): start_gateway,
        ("CWL", "wes-service"): start_wes_service,
        ("CWL", "sapporo"): start_sapporo,
        ("WDL", "wes-gateway"): lambda tmp: start_gateway(tmp, "gateway-podman", container_env(IMAGE_STORE)),
        ("WDL", "miniwdl"): start_miniwdl,
    }
    times: dict[str, dict[str, list[float]]] = {
        case.name: {name: [] for name in servers} for servers, cases in groups for case in cases
    }
    loads = [loadavg()]
    tmp = Path(tempfile.mkdtemp(prefix="wes-gateway-peers-"))
    try:
        for name in dict.fromkeys(name for servers, _ in groups for name in servers):
            if name in VENVS:
                venv(name)  # installed before any server starts, so no server idles while pip runs
        for servers, cases in groups:
            runners: list[Runner] = []
            try:
                for name in servers:
                    runners.append(starters[(cases[0].language, name)](tmp))
                    print(f"{name}: {describe(runners[-1])}", flush=True)
                for case in cases:
                    rounds(runners, case, repeats[case.name], times[case.name])
            finally:
                for runner in runners:
                    stop_runner(runner)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    loads.append(loadavg())
    report = table(times)
    print(report)
    print(f"load average (1, 5, 15 min): {loads[0]} before, {loads[1]} after")
    if not args.no_write:
        command = "bench/peers.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        how = (
            "WES servers: POST /runs to COMPLETE, status polled every 50 ms. "
            if any(name != "miniwdl" for servers, _ in groups for name in servers)
            else ""
        )
        if any("miniwdl" in servers for servers, _ in groups):
            how += (
                f"wdl-scatter: the gateway with its runs' Podman and the image store {IMAGE_STORE} "
                "(WES_GATEWAY_CONTAINER_ENGINE=podman, WES_GATEWAY_IMAGE_STORE); miniwdl 1.16.0: `miniwdl run` "
                "from start to exit, **as root, outside any sandbox**, its own rootful Podman (runc, cgroupfs, "
                "host network, `default_ulimits = []`, the same store read-only, `pull` answered by "
                "`image exists`). "
            )
        section = (
            f"\n## {when}: peers (issue 40)\n\nCommand: `.venv/bin/python {command.strip()}`  \n"
            f"Machine: {machine()}  \n"
            f"Load average (1, 5, 15 min): {loads[0]} before, {loads[1]} after  \n"
            f"{how}One run at a time, servers round robin, one warm-up run per server and case not counted."
            "\n\n" + report + "\n"
        )
        if not RESULTS.exists():
            RESULTS.write_text("# Benchmark results\n\nAppended by the bench scripts, newest last.\n")
        with RESULTS.open("a") as handle:
            handle.write(section)
        print(f"appended to {RESULTS}")


def describe(runner: Runner) -> str:
    if isinstance(runner, Miniwdl):
        return f"`miniwdl run` as root, outside any sandbox, in {runner.work}"
    return f"{runner.api} (pid {runner.process.pid})"


def rounds(runners: list[Runner], case: Case, repeat: int, times: dict[str, list[float]]) -> None:
    """One warm-up run each (not counted: first imports, page cache), then ``repeat`` rounds
    of one run each, one at a time, who goes first rotating."""
    for runner in runners:
        timed(runner, case)
    for i in range(repeat):
        for runner in runners[i % len(runners) :] + runners[: i % len(runners)]:
            seconds = timed(runner, case)
            times[runner.name].append(seconds)
            print(f"{case.name} #{i} {runner.name}: {seconds:.2f}s", flush=True)


def table(times: dict[str, dict[str, list[float]]]) -> str:
    rows = ["| case | server | n | median s | min s | max s | gateway / this |", "|---|---|---|---|---|---|---|"]
    notes = []
    for case, by_server in times.items():
        medians = {name: statistics.median(v) for name, v in by_server.items() if v}
        for name, values in by_server.items():
            if not values:
                continue
            med = medians[name]
            ratio = f"{medians['wes-gateway'] / med:.2f}" if "wes-gateway" in medians and name != "wes-gateway" else ""
            rows.append(
                f"| {case} | {name} | {len(values)} | {med:.2f} | {min(values):.2f} | {max(values):.2f} | {ratio} |"
            )
        peers = {n: m for n, m in medians.items() if n != "wes-gateway"}
        if "wes-gateway" in medians and peers:
            fastest = min(peers, key=peers.__getitem__)
            ratio_value = medians["wes-gateway"] / peers[fastest]
            target = TARGETS.get(case)
            verdict = f" (target ≤ {target}: {'met' if ratio_value <= target else 'not met'})" if target else ""
            notes.append(f"- {case}: gateway median / fastest peer ({fastest}) = **{ratio_value:.2f}**{verdict}")
    return "\n".join(rows) + "\n\n" + "\n".join(notes)


if __name__ == "__main__":
    main()
