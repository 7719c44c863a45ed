#!/usr/bin/env python3
"""bench/peers: the gateway against the WES servers a user would pick instead (issue 40, item 1).

Seconds from POST /runs to COMPLETE, one run at a time, the servers taken round robin by one
client (the same workflow and the same form for all, status polled every 50 ms), for two
cases: one echo step, and a workflow that scatters the echo step over 100 strings.

- wes-service 5.0: `wes-server --backend=wes_service.cwl_runner` with the venv's cwltool,
  `--no-container`;
- sapporo 2.4.0: `sapporo --run-sh` with a copy of its own run.sh whose `run_cwltool` calls
  the venv's `cwltool --no-container` instead of `docker run` (its documented point of
  customisation);
- the gateway as `make run` starts it (Gunicorn with gunicorn.conf.py, every WES_GATEWAY_*
  setting at its default but the data directory, a temporary one, and the port).

wes-service and sapporo are installed from PyPI into venvs of their own, kept between runs
under ~/.cache/wes-gateway-bench/ (never the project's .venv). Every server listens on a
free loopback port, is stopped by its own process id (then its process group) and its
directories are removed. Prints each server's median, min and max and the gateway's ratio
to the fastest peer, and appends the table to bench/RESULTS.md (--no-write to skip).

The WDL case of the issue (miniwdl with Podman) is not here yet.
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

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wes-gateway-bench"
RESULTS = ROOT / "bench" / "RESULTS.md"
TERMINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"}
POLL = 0.05
PEERS = {
    "wes-service": ["wes-service==5.0", "cwltool"],
    "sapporo": ["sapporo==2.4.0", "cwltool"],
}


@dataclass
class Case:
    name: str
    workflow: str
    attachments: list[str]
    params: dict[str, object]
    timeout: float


CASES = [
    Case("echo", "echo.cwl", ["echo.cwl"], {"message": "bench"}, 120),
    Case("scatter100", "scatter.cwl", ["scatter.cwl", "echo.cwl"], {"messages": [f"m{i}" for i in range(100)]}, 600),
]


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
    packages = PEERS[name]
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


def start_gateway(tmp: Path) -> Peer:
    """Gunicorn as `make run` starts it: the project's venv, gunicorn.conf.py, default settings
    (but those given with --gateway-setting), a data directory of its own and a free port."""
    data = tmp / "gateway"
    data.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WES_GATEWAY_")}
    env.update({"WES_GATEWAY_DATA_DIR": str(data), "WES_GATEWAY_BIND": f"127.0.0.1:{port}"})
    env.update({f"WES_GATEWAY_{name.upper()}": value for name, value in GATEWAY_SETTINGS.items()})
    gunicorn = Path(sys.executable).parent / "gunicorn"
    peer = Peer(
        "wes-gateway",
        f"http://127.0.0.1:{port}/ga4gh/wes/v1",
        popen([str(gunicorn), "-c", str(ROOT / "gunicorn.conf.py")], ROOT, tmp / "gateway.log", env),
        tmp / "gateway.log",
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
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted(mounts, reverse=True):
        if point.startswith(f"{data}/"):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


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
        "workflow_type": "CWL",
        "workflow_type_version": "v1.2",
        "workflow_params": json.dumps(case.params),
        **peer.extra_form,
    }
    files = [("workflow_attachment", (name, (DATA / name).read_bytes())) for name in case.attachments]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="counted runs of the echo case per server")
    parser.add_argument("--scatter-repeat", type=int, default=2, help="counted runs of the scatter case per server")
    parser.add_argument("--only", default="", help="comma-separated servers (wes-gateway,wes-service,sapporo)")
    parser.add_argument("--no-write", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument(
        "--gateway-setting", action="append", default=[], metavar="NAME=VALUE", help="e.g. toil_overcommit=4"
    )
    args = parser.parse_args()
    GATEWAY_SETTINGS.update(item.split("=", 1) for item in args.gateway_setting)
    wanted = [s for s in args.only.split(",") if s] or ["wes-gateway", "wes-service", "sapporo"]
    starters = {"wes-gateway": start_gateway, "wes-service": start_wes_service, "sapporo": start_sapporo}
    repeats = {"echo": args.repeat, "scatter100": args.scatter_repeat}
    times: dict[str, dict[str, list[float]]] = {case.name: {name: [] for name in wanted} for case in CASES}
    peers: list[Peer] = []
    tmp = Path(tempfile.mkdtemp(prefix="wes-gateway-peers-"))
    try:
        for name in wanted:
            for home_name in PEERS:
                if home_name == name:
                    venv(name)  # installed before any server starts, so no server idles while pip runs
        for name in wanted:
            peers.append(starters[name](tmp))
            print(f"{name}: {peers[-1].api} (pid {peers[-1].process.pid})", flush=True)
        for case in CASES:
            if not repeats[case.name]:
                continue
            for peer in peers:  # warm-up, not counted: first imports, page cache
                one_run(peer, case)
            for i in range(repeats[case.name]):
                for peer in peers[i % len(peers) :] + peers[: i % len(peers)]:  # rotate who goes first
                    seconds = one_run(peer, case)
                    times[case.name][peer.name].append(seconds)
                    print(f"{case.name} #{i} {peer.name}: {seconds:.2f}s", flush=True)
    finally:
        for peer in peers:
            stop(peer)
        shutil.rmtree(tmp, ignore_errors=True)
    report = table(times, wanted)
    print(report)
    if not args.no_write:
        command = "bench/peers.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        section = (
            f"\n## {when}: peers (issue 40)\n\nCommand: `.venv/bin/python {command.strip()}`  \n"
            f"Machine: {machine()}  \n"
            "POST /runs to COMPLETE, one run at a time, servers round robin, status polled every 50 ms, "
            "one warm-up run per server and case not counted.\n\n" + report + "\n"
        )
        if not RESULTS.exists():
            RESULTS.write_text("# Benchmark results\n\nAppended by the bench scripts, newest last.\n")
        with RESULTS.open("a") as handle:
            handle.write(section)
        print(f"appended to {RESULTS}")


def table(times: dict[str, dict[str, list[float]]], wanted: list[str]) -> str:
    rows = ["| case | server | n | median s | min s | max s | gateway / this |", "|---|---|---|---|---|---|---|"]
    notes = []
    for case, by_server in times.items():
        medians = {name: statistics.median(v) for name, v in by_server.items() if v}
        for name in wanted:
            values = by_server[name]
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
            notes.append(
                f"- {case}: gateway median / fastest peer ({fastest}) = "
                f"**{medians['wes-gateway'] / peers[fastest]:.2f}**"
            )
    return "\n".join(rows) + "\n\n" + "\n".join(notes)


if __name__ == "__main__":
    main()
