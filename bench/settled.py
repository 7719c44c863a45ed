#!/usr/bin/env python3
"""bench/settled: what the finished runs a service keeps cost the next run (issue 37).

One gateway (Gunicorn, supervisor, Toil, bwrap, RUN_DISK=loop), in one run of this script:
at 0, then 1,000, then 5,000 finished runs, the start of the issue's bubblewrap sandbox (which
copies the mount table; the smallest of 3 medians of 15) and POST -> COMPLETE of a trivial CWL
tool (the median of --posts). Prints each level and the ratios last/first, the target being flat
(<= 1.1x).

The finished runs are seeded cheaply: records straight into the store (bench/seed.py) and
their directories. As this version leaves them, a settled run is a plain directory; with
--old, as the version before left them, each is an ext4 image (a small one: the mount is what
costs, not its size) loop-mounted over its directory. Run --old from a work tree of that
version (its supervisor would otherwise settle them), as root.

    .venv/bin/python bench/settled.py [--counts 0,1000,5000] [--old] [--posts 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import requests  # noqa: E402
from seed import seed_runs  # noqa: E402

TOOL = ROOT / "tests" / "data" / "echo.cwl"
BWRAP = ["bwrap", "--unshare-pid", "--unshare-user", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "true"]
SETTLED = "trusted.wes-gateway.settled"


def sandbox_start(times: int = 15, rounds: int = 3) -> float:
    medians = []
    for _ in range(rounds):
        taken = []
        for _ in range(times):
            began = time.perf_counter()
            subprocess.run(BWRAP, check=True)
            taken.append(time.perf_counter() - began)
        medians.append(statistics.median(taken))
    return min(medians)


def mounts() -> int:
    return len(Path("/proc/self/mounts").read_text().splitlines())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("WES_GATEWAY_")}
    env.update(
        {
            "WES_GATEWAY_DATA_DIR": str(data_dir),
            "WES_GATEWAY_BIND": f"127.0.0.1:{port}",
            "WES_GATEWAY_WORKERS": "2",
            "WES_GATEWAY_POLL_INTERVAL": "0.2",
            "WES_GATEWAY_RUN_DISK": "loop",
            "WES_GATEWAY_RUN_DISK_LIMIT": "4G",
            "WES_GATEWAY_CONTAINER_ENGINE": "none",
            "WES_GATEWAY_ACCESS_LOG": "/dev/null",
        }
    )
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")],
        cwd=ROOT,
        env=env,
        stdout=(data_dir / "gunicorn.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/ga4gh/wes/v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/health", timeout=5).status_code == 200:
                return process, base
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError("the gateway did not answer")


def post_to_complete(base: str) -> float:
    began = time.perf_counter()
    response = requests.post(
        f"{base}/runs",
        data={
            "workflow_url": TOOL.name,
            "workflow_type": "CWL",
            "workflow_type_version": "v1.2",
            "workflow_params": json.dumps({"message": "bench"}),
        },
        files=[("workflow_attachment", (TOOL.name, TOOL.read_bytes()))],
        timeout=60,
    )
    response.raise_for_status()
    run_id = response.json()["run_id"]
    while True:
        state = requests.get(f"{base}/runs/{run_id}/status", timeout=10).json()["state"]
        if state == "COMPLETE":
            return time.perf_counter() - began
        if state in ("EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"):
            raise RuntimeError(f"run {run_id} ended {state}")
        time.sleep(0.05)


def seed_directories(data_dir: Path, run_ids: list[str], old: bool) -> None:
    """A finished run's directory: its outputs and logs; settled, or (``old``) an image
    mounted over it, copied from one made once."""
    runs = data_dir / "runs"
    volumes = runs / ".volumes"
    volumes.mkdir(mode=0o700, parents=True, exist_ok=True)
    template = volumes / "template.ext4"
    for run_id in run_ids:
        root = runs / run_id
        (root / "outputs").mkdir(parents=True)
        (root / "outputs" / "out.txt").write_text("hi\n")
        (root / "stdout.log").write_text("{}\n")
        (root / "stderr.log").write_text("done\n")
        (root / "outputs.json").write_text(
            json.dumps({"out": {"class": "File", "path": str(root / "outputs/out.txt")}})
        )
        if not old:
            os.setxattr(root, SETTLED, b"1")
            continue
        if not template.exists():
            with open(template, "wb") as handle:
                handle.truncate(16 << 20)
            subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-d", str(root), str(template)], check=True)
        image = volumes / f"{run_id}.img"
        subprocess.run(["cp", "--sparse=always", str(template), str(image)], check=True)
        subprocess.run(["mount", "-o", "loop,nosuid,nodev", str(image), str(root)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="0,1000,5000", help="finished runs at each level, ascending")
    parser.add_argument("--old", action="store_true", help="seed finished runs as mounted images")
    parser.add_argument("--posts", type=int, default=3, help="POST -> COMPLETE runs at each level (median)")
    args = parser.parse_args()
    counts = [int(count) for count in args.counts.split(",")]
    data_dir = Path(tempfile.mkdtemp(prefix="bench-settled-"))
    process = None
    rows = []
    try:
        seed_runs(data_dir, 0)  # the store, before the gateway opens it
        process, base = start(data_dir)
        post_to_complete(base)  # warm: the forkserver, the first leader
        seeded = 0
        for count in counts:
            if count > seeded:
                seed_directories(data_dir, seed_runs(data_dir, count - seeded), args.old)
                seeded = count
            time.sleep(2)  # the seeding's writes settle
            sandbox = sandbox_start()
            e2e = statistics.median(post_to_complete(base) for _ in range(args.posts))
            rows.append((count, mounts(), sandbox, e2e))
            print(
                f"{count:>6} finished runs  {rows[-1][1]:>6} mounts  sandbox start {sandbox * 1000:7.1f} ms"
                f"  POST->COMPLETE {e2e:6.2f} s",
                flush=True,
            )
        first, last = rows[0], rows[-1]
        print(
            f"ratio {last[0]}/{first[0]}: sandbox start {last[2] / first[2]:.2f}x, POST->COMPLETE {last[3] / first[3]:.2f}x"
            f" ({'mounted images' if args.old else 'settled directories'})"
        )
    finally:
        if process is not None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(60)
        points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for point in points:
            if point.startswith(f"{data_dir}/"):
                subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
