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
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import ROOT, Server, start_server, stop_server
from seed import seed_runs

from harness.measure import mount_count, sandbox_start

TOOL = ROOT / "tests" / "data" / "echo.cwl"
SETTLED = "trusted.wes-gateway.settled"
# The gateway's own defaults but for these (its access log off, no containers).
ENV = {
    "WES_GATEWAY_POLL_INTERVAL": "0.2",
    "WES_GATEWAY_RUN_DISK": "loop",
    "WES_GATEWAY_RUN_DISK_LIMIT": "4G",
    "WES_GATEWAY_CONTAINER_ENGINE": "none",
    "WES_GATEWAY_ACCESS_LOG": "/dev/null",
}


def post_to_complete(server: Server) -> float:
    began = time.perf_counter()
    run_id = server.submit_cwl(TOOL, {"message": "bench"})
    state = server.wait(run_id, timeout=600, interval=0.05)
    if state != "COMPLETE":
        raise RuntimeError(f"run {run_id} ended {state}")
    return time.perf_counter() - began


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
    server = None
    rows = []
    try:
        seed_runs(data_dir, 0)  # the store, before the gateway opens it
        server = start_server(data_dir, ENV, workers=2, defaults={})
        post_to_complete(server)  # warm: the forkserver, the first leader
        seeded = 0
        for count in counts:
            if count > seeded:
                seed_directories(data_dir, seed_runs(data_dir, count - seeded), args.old)
                seeded = count
            time.sleep(2)  # the seeding's writes settle
            sandbox = sandbox_start()
            e2e = statistics.median(post_to_complete(server) for _ in range(args.posts))
            rows.append((count, mount_count(), sandbox, e2e))
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
        if server is not None:
            stop_server(server)  # and the runs' filesystems unmounted
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
