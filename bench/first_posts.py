#!/usr/bin/env python3
"""bench/first_posts: the first submissions a freshly started gateway takes, as a new user meets
them. Starts the gateway as `make run` does (its default worker count, the embedded supervisor,
the run sandbox; only the port and the data directory are the bench's own), sends --posts
POST /runs of a one-step CWL tool back to back, each on a new connection and to each web
worker in turn, and prints each POST's latency, the slowest, how many web workers served them,
and the memory of the service's processes (PSS summed over the master and everything under it)
when it was ready, after the POSTs and after the runs ended. Target: every POST <= 0.2 s."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

from common import host_port, start_server, stop_server

API = "/ga4gh/wes/v1"
TOOL = b"""cwlVersion: v1.2
class: CommandLineTool
baseCommand: echo
inputs:
  message:
    type: string
    inputBinding: {position: 1}
outputs:
  out:
    type: stdout
stdout: out.txt
"""


def request(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, API + path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        return response.read() if response.status == 200 else b""
    finally:
        conn.close()


def parents() -> dict[int, int]:
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def tree(root: int) -> list[int]:
    """The master and every process under it (workers, supervisor, forkserver, leaders...)."""
    ppid = parents()
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in ppid.items() if parent in frontier]
        found += frontier
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def workers(master: int) -> list[int]:
    """Gunicorn's web workers: the master's children forked without exec (same command line),
    or so titled where setproctitle is installed."""
    own = cmdline(master)
    return [
        pid
        for pid, parent in parents().items()
        if parent == master and (cmdline(pid) == own or cmdline(pid).startswith(b"gunicorn: worker"))
    ]


def cpu_seconds(pid: int) -> float:
    """CPU time of all of a process's threads (contention from other processes does not count)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def pss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def socket_owners(pids: list[int]) -> dict[int, int]:
    """Socket inode -> the worker holding it."""
    owners = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    owners[int(target[8:-1])] = pid
        except OSError:
            continue
    return owners


def served_by(port: int, client_ports: list[int], pids: list[int]) -> dict[int, int]:
    """Client port -> the web worker that accepted that connection (from /proc/net/tcp)."""
    owners = socket_owners(pids)
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16), int(fields[9])
        if local == port and remote in client_ports and inode in owners:
            found[remote] = owners[inode]
    return found


def connect_to(port: int, worker: int, pids: list[int]) -> http.client.HTTPConnection:
    """A new connection that ``worker`` accepted: which worker accepts a connection is the
    kernel's choice, so connect until it is that one (closing the others, unused)."""
    for _ in range(1000):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.connect()
        client = conn.sock.getsockname()[1]
        for _ in range(200):
            owner = served_by(port, [client], pids).get(client, 0)
            if owner:
                break
            time.sleep(0.005)
        if owner == worker:
            return conn
        conn.close()
        time.sleep(0.01)
    raise SystemExit(f"web worker {worker} accepted none of 1000 connections")


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, content in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="workflow_attachment"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post_one(port: int, owner: int, web: list[int], i: int) -> tuple[float, float, str]:
    """One POST /runs on a new connection that ``owner`` (a web worker) accepted: its latency,
    the worker's CPU time for it, the run id."""
    body, content_type = multipart(
        {
            "workflow_url": "echo.cwl",
            "workflow_type": "CWL",
            "workflow_type_version": "v1.2",
            "workflow_params": json.dumps({"message": f"hello {i}"}),
        },
        {"echo.cwl": TOOL},
    )
    conn = connect_to(port, owner, web[1:])
    cpu_before = cpu_seconds(owner)
    started = time.perf_counter()
    conn.request("POST", API + "/runs", body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    answer = response.read()
    latency = time.perf_counter() - started
    cpu = cpu_seconds(owner) - cpu_before
    conn.close()
    if response.status != 200:
        raise SystemExit(f"POST /runs {response.status}: {answer[:300]!r}")
    return latency, cpu, str(json.loads(answer)["run_id"])


def post_all(port: int, web: list[int], posts: int) -> tuple[list[float], list[float], list[str], set[int]]:
    """``posts`` POSTs, each to the next web worker (``web``: the master, then its workers):
    latencies, CPU times, run ids and the workers that served them."""
    latencies, cpu, run_ids, used = [], [], [], set()
    for i in range(posts):
        # A new user's connection, to each worker in turn: every worker's first POST is
        # among the first few (the kernel alone may hand most connections to one).
        owner = web[1 + i % (len(web) - 1)]
        latency, seconds, run_id = post_one(port, owner, web, i)
        latencies.append(latency)
        cpu.append(seconds)
        run_ids.append(run_id)
        used.add(owner)
    return latencies, cpu, run_ids, used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--posts", type=int, default=20)
    parser.add_argument("--settle", type=float, default=0, help="seconds to wait after /health first answers")
    parser.add_argument("--data-dir", type=Path, help="default: a temporary directory, removed afterwards")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wes-first-posts-") as tmp:
        data = args.data_dir or Path(tmp) / "data"
        # As `make run` starts it: none of the tests' settings, the gateway's own worker count.
        server = start_server(data, workers=None, defaults={}, ready_within=120)
        process, port = server.process, host_port(server)[1]
        try:
            time.sleep(args.settle)
            web = [process.pid, *workers(process.pid)]
            ready = (pss_mib(web), pss_mib(tree(process.pid)))
            latencies, cpu, run_ids, used = post_all(port, web, args.posts)
            posted = (pss_mib(web), pss_mib(tree(process.pid)))
            deadline = time.monotonic() + 600
            states: dict[str, str] = {}
            while time.monotonic() < deadline:
                states = {
                    run_id: json.loads(request(port, "GET", f"/runs/{run_id}/status") or b"{}").get("state", "?")
                    for run_id in run_ids
                }
                if all(
                    state in ("COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED") for state in states.values()
                ):
                    break
                time.sleep(1)
            time.sleep(2)  # the leaders' launchers gone
            done = (pss_mib(web), pss_mib(tree(process.pid)))
            n_workers = len(web) - 1
            print(
                f"cores={os.cpu_count()} web workers={n_workers} posts={args.posts} (a new connection each, to each worker in turn)"
            )
            print("POST /runs latencies (s): " + " ".join(f"{t:.3f}" for t in latencies))
            print("the serving worker's CPU time (s): " + " ".join(f"{t:.3f}" for t in cpu))
            print(
                f"max {max(latencies):.3f} s; > 0.2 s: {sum(t > 0.2 for t in latencies)}; "
                f"served by {len(used - {0})} of {n_workers} web workers"
            )
            print(f"run states: {sorted(set(states.values()))}")
            for label, (web_mib, all_mib) in (("ready", ready), ("after the POSTs", posted), ("after the runs", done)):
                print(f"PSS {label:16s}: web (master + workers) {web_mib:7.1f} MiB   all processes {all_mib:7.1f} MiB")
        finally:
            stop_server(server)  # and the runs' filesystems unmounted


if __name__ == "__main__":
    main()
