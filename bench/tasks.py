#!/usr/bin/env python3
"""bench/tasks: GET /runs/{id}/tasks?page_size=100 p50/p99 for a run with 2,000 tasks, beside
GET /runs/{id}/status on the same server; and the cost of one incremental ingest poll while
the bus grows, beside a full re-parse of the same bus. The bus is synthesized in Toil's own
message format (tab-separated, unicode_escape'd fields), as `--writeMessages` writes it."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import QUIET, cores, fmt, host_port, load, start_server, stop_server
from seed import seed_runs

from wes_gateway import store
from wes_gateway.engines import engine_for
from wes_gateway.files.paths import RunPaths
from wes_gateway.runs import tasks


def bus_lines(first: int, count: int) -> list[str]:
    lines = []
    for n in range(first, first + count):
        job = f"kind-CWLJob/instance-{n:08d}"
        lines += [
            f"toil.bus.JobIssuedMessage\tmain.cwl.{n}.tool.cwl\t{job}\t{n}",
            f"toil.bus.ExternalBatchIdMessage\t{n}\t{100000 + n}\tSingleMachineBatchSystem",
            f"toil.bus.JobCompletedMessage\tmain.cwl.{n}.tool.cwl\t{job}\t0",
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        [run_id] = seed_runs(data, 1)
        paths = RunPaths(root=data.resolve() / "runs" / run_id)
        paths.root.mkdir(parents=True)
        paths.outline.write_text('{"steps": [{"name": "work", "run": "tool.cwl", "scatter": true}]}')
        db = store.open_database(f"sqlite:///{data.resolve() / 'wes.sqlite3'}")
        # Grow the bus in polls of 20 jobs, as a busy leader would between two supervisor polls.
        poll_costs = []
        with open(paths.messages, "a") as bus:
            for first in range(0, args.tasks, 20):
                bus.write("\n".join(bus_lines(first, 20)) + "\n")
                bus.write("toil.bus.QueueSizeMessage\t1")  # a truncated last line, mid-write
                bus.flush()
                start = time.perf_counter()
                tasks.ingest(run_id, engine_for("CWL"), "/x/main.cwl", paths, set())
                poll_costs.append(time.perf_counter() - start)
                bus.write("\n")
        assert store.Task.select().where(store.Task.run_id == run_id).count() == args.tasks
        # The alternative we avoid: re-parse the whole bus on every poll.
        store.Task.delete().execute()
        store.Run.update(bus_offset=0).execute()
        start = time.perf_counter()
        tasks.ingest(run_id, engine_for("CWL"), "/x/main.cwl", paths, set())
        full = time.perf_counter() - start
        db.close()
        print(f"cores={cores()} tasks={args.tasks} bus_bytes={paths.messages.stat().st_size}")
        print(
            f"incremental poll (20 new jobs): median {statistics.median(poll_costs) * 1000:.2f} ms, "
            f"max {max(poll_costs) * 1000:.2f} ms; full re-parse of the bus {full * 1000:.1f} ms; "
            f"ratio poll/full = {statistics.median(poll_costs) / full:.3f}"
        )
        server = start_server(data, QUIET, workers=cores())
        host, port = host_port(server)
        try:
            page = load(
                host, port, lambda i: f"/ga4gh/wes/v1/runs/{run_id}/tasks?page_size=100", args.seconds, args.connections
            )
            token = store.encode_token(1900)
            deep = load(
                host,
                port,
                lambda i: f"/ga4gh/wes/v1/runs/{run_id}/tasks?page_size=100&page_token={token}",
                args.seconds,
                args.connections,
            )
            status = load(host, port, lambda i: f"/ga4gh/wes/v1/runs/{run_id}/status", args.seconds, args.connections)
        finally:
            stop_server(server)
        print(f"tasks page 1   {fmt(page)}")
        print(f"tasks page 20  {fmt(deep)}")
        print(f"status         {fmt(status)}")
        print(
            f"ratio p50 tasks-page/status = {page['p50'] / status['p50']:.2f}, deep/first = {deep['p50'] / page['p50']:.2f}"
        )


if __name__ == "__main__":
    main()
