"""Prometheus metrics, with prometheus-client in its multiprocess mode: every Gunicorn worker
and the supervisor write their samples to files in one directory, and GET /metrics (served
by any worker) adds them up, with the runs by state read from the store at scrape time.

prometheus-client chooses its mode when it is first imported, from PROMETHEUS_MULTIPROC_DIR,
so ``configure`` runs first in every process (Gunicorn's config, the supervisor), and the
metrics themselves are made on first use.
"""

from __future__ import annotations

import os
import shutil
from functools import cache
from pathlib import Path

from wes_gateway.config import Settings

ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds: from sub-second API calls to day-long runs.
_RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400, float("inf"))
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf"))


def directory(settings: Settings) -> Path:
    return settings.data_dir.resolve() / "metrics"


def configure(settings: Settings, fresh: bool = False) -> None:
    """Before prometheus-client is imported: where this process writes its samples. ``fresh``
    (the service's start) empties the directory: counts start again with the service."""
    path = Path(os.environ.get(ENV) or directory(settings))
    if fresh and path == directory(settings):
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ[ENV] = str(path)


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.requests = Histogram(
            "wes_gateway_http_request_duration_seconds",
            "HTTP request latency, by route template",
            ["method", "route", "status"],
            buckets=_HTTP_BUCKETS,
        )
        self.submissions = Counter(
            "wes_gateway_submissions", "POST /runs, accepted (200) and refused, by status code", ["status"]
        )
        self.run_duration = Histogram(
            "wes_gateway_run_duration_seconds",
            "Runs from start to end, by final state",
            ["state"],
            buckets=_RUN_BUCKETS,
        )
        self.queue_wait = Histogram(
            "wes_gateway_queue_wait_seconds", "Runs from QUEUED (submission) to RUNNING", buckets=_RUN_BUCKETS
        )
        self.lease_renewals = Counter("wes_gateway_lease_renewals", "Supervisor lease renewals", ["outcome"])
        self.leader_starts = Counter(
            "wes_gateway_leader_starts", "Leaders started, resumed with --restart, or adopted", ["kind"]
        )


@cache
def get() -> _Metrics:
    return _Metrics()


def worker_exited(pid: int) -> None:
    """Gunicorn's child_exit: a dead worker's live gauges stop counting."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
