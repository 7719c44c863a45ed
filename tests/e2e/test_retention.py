"""Job-store retention and `wes-gateway runs purge`, on a real store and real directories."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.records import record_run
from wes_gateway import store
from wes_gateway.config import load_settings
from wes_gateway.runs import retention


def finished_run(settings, state: str, end_time: str) -> str:
    run_id = record_run(state=state, end_time=end_time)
    (settings.runs_dir / run_id / "jobstore").mkdir(parents=True)
    (settings.runs_dir / run_id / "stdout.log").write_text("x")
    store.Task.create(run_id=run_id, task_id="t", job_id="j", name="n")
    return run_id


@pytest.fixture
def settings(tmp_path: Path):
    s = load_settings({}, data_dir=tmp_path, failed_jobstore_retention="1d")
    store.upgrade(store.open_database(s.effective_database_url))
    return s


def test_parse_duration() -> None:
    assert retention.parse_duration("30d").days == 30
    assert retention.parse_duration("90s").total_seconds() == 90
    with pytest.raises(ValueError):
        retention.parse_duration("soon")


def test_job_stores_go_by_policy(settings) -> None:
    complete = finished_run(settings, store.COMPLETE, store.utc_now())
    fresh_failure = finished_run(settings, store.EXECUTOR_ERROR, store.utc_now())
    old_failure = finished_run(settings, store.CANCELED, "2020-01-01T00:00:00Z")
    assert retention.sweep_job_stores(settings) == 2
    runs = settings.runs_dir
    assert not (runs / complete / "jobstore").exists()
    assert (runs / fresh_failure / "jobstore").exists()  # kept for debugging
    assert not (runs / old_failure / "jobstore").exists()
    assert (runs / old_failure / "stdout.log").exists()  # run directories stay until purged


def test_purge_cli(settings) -> None:
    old = finished_run(settings, store.COMPLETE, "2020-01-01T00:00:00Z")
    recent = finished_run(settings, store.COMPLETE, store.utc_now())
    queued = record_run()
    env = {**os.environ, "WES_GATEWAY_DATA_DIR": str(settings.data_dir)}
    cli = [sys.executable, "-m", "wes_gateway.cli", "runs", "purge"]
    dry = subprocess.run(cli + ["--older-than", "30d", "--dry-run"], env=env, capture_output=True, text=True)
    assert dry.returncode == 0 and old in dry.stdout and recent not in dry.stdout
    assert store.get_run(old) is not None
    done = subprocess.run(cli + ["--older-than", "30d"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "purged 1 finished runs" in done.stdout
    assert store.get_run(old) is None and not (settings.runs_dir / old).exists()
    assert store.Task.select().where(store.Task.run_id == old).count() == 0
    assert store.get_run(recent) is not None and store.get_run(queued) is not None
    bad = subprocess.run(cli + ["--older-than", "whenever"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "not a duration" in bad.stderr
