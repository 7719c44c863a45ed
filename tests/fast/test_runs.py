"""runs/, in process: retention (durations, what a purge and the sweeps select, against a real
SQLite store), the wake-up socket, and the supervisor's parts that need no leader: the
leader's environment, a run's end from its exit code, the refusal of a run that planted a
link, the adoption check, the process limit and the runs' own uids."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from harness.records import record_run
from wes_gateway import store
from wes_gateway.config import Settings, load_settings
from wes_gateway.engines import engine_for
from wes_gateway.files.paths import RUN_OWNED_DIRS, RunPaths
from wes_gateway.host import limits, procs, sandbox
from wes_gateway.runs import finishing, leaders, retention, starting, wakeup, watching
from wes_gateway.runs.supervisor import Supervisor


def tuned(settings: Settings, **changes: Any) -> Settings:
    return load_settings({}, **{**settings.model_dump(exclude_unset=True), **changes})


def record(state: str = store.QUEUED, ended: timedelta | None = None, workflow_type: str = "CWL") -> str:
    """A run in the store as a submission records it, then put in ``state`` (ended ``ended`` ago)."""
    ended_at = {} if ended is None else {"end_time": store.stamp(datetime.now(UTC) - ended)}
    return record_run("alice", workflow_type=workflow_type, state=state, **ended_at)


def made(settings: Settings, run_id: str) -> RunPaths:
    """The run's directory as the service makes it."""
    paths = RunPaths.of(settings, run_id)
    for name in RUN_OWNED_DIRS:
        (paths.root / name).mkdir(parents=True, exist_ok=True)
    paths.control.mkdir(mode=0o700, exist_ok=True)
    return paths


# ------------------------------------------------------------ retention


def test_durations_are_read_in_their_units_and_nonsense_is_refused() -> None:
    assert retention.parse_duration("90") == timedelta(seconds=90)
    assert retention.parse_duration(" 90s ") == timedelta(seconds=90)
    assert retention.parse_duration("1.5h") == timedelta(minutes=90)
    assert retention.parse_duration("30d") == timedelta(days=30)
    assert retention.parse_duration("2w") == timedelta(weeks=2)
    for bad in ("", "-1d", "3 days", "1y", "d", "1e3s"):
        with pytest.raises(ValueError, match="not a duration"):
            retention.parse_duration(bad)


def test_a_purge_takes_only_runs_that_ended_before_the_cutoff(settings: Settings, db: Any) -> None:
    old = record(store.COMPLETE, ended=timedelta(days=40))
    old_failed = record(store.EXECUTOR_ERROR, ended=timedelta(days=31))
    recent = record(store.COMPLETE, ended=timedelta(days=2))
    active = record(store.RUNNING)
    for run_id in (old, old_failed, recent, active):
        made(settings, run_id)
    dry = retention.purge_runs(settings, timedelta(days=30), dry_run=True)
    assert sorted(dry) == sorted([old, old_failed])
    assert store.get_run(old) is not None and RunPaths.of(settings, old).root.exists()  # a dry run keeps all
    assert sorted(retention.purge_runs(settings, timedelta(days=30))) == sorted([old, old_failed])
    assert store.get_run(old) is None and not RunPaths.of(settings, old).root.exists()
    for kept in (recent, active):
        assert store.get_run(kept) is not None and RunPaths.of(settings, kept).root.exists()
    assert retention.purge_runs(settings, timedelta(days=30)) == []


def test_deleting_a_run_keeps_a_tombstone_and_refuses_an_active_run(settings: Settings, db: Any) -> None:
    done = record(store.COMPLETE, ended=timedelta(hours=1))
    running = record(store.RUNNING)
    made(settings, done)
    made(settings, running)
    assert retention.delete_run(settings, done)
    tomb = store.get_run(done)
    assert tomb is not None and tomb.deleted_at is not None and not RunPaths.of(settings, done).root.exists()
    assert not retention.delete_run(settings, running)
    assert RunPaths.of(settings, running).root.exists()


def test_job_stores_go_at_once_for_complete_runs_and_after_the_retention_for_failed(
    settings: Settings, db: Any
) -> None:
    settings = tuned(settings, failed_jobstore_retention="7d")
    complete = record(store.COMPLETE, ended=timedelta(minutes=1))
    failed_recent = record(store.EXECUTOR_ERROR, ended=timedelta(days=1))
    failed_old = record(store.SYSTEM_ERROR, ended=timedelta(days=8))
    running = record(store.RUNNING)
    for run_id in (complete, failed_recent, failed_old, running):
        made(settings, run_id)
    assert retention.sweep_job_stores(settings) == 2
    assert not RunPaths.of(settings, complete).jobstore.exists()
    assert not RunPaths.of(settings, failed_old).jobstore.exists()
    assert RunPaths.of(settings, failed_recent).jobstore.exists()  # kept for a look (or a resume)
    assert RunPaths.of(settings, running).jobstore.exists()


def test_stale_staging_and_the_links_to_it_are_swept(settings: Settings) -> None:
    from wes_gateway.files.paths import staging_dir

    staging = staging_dir(settings)
    stale = staging / "stale-upload"
    stale.mkdir()
    (stale / "part").write_text("x")
    old = time.time() - 7 * 3600
    os.utime(stale / "part", (old, old))
    os.utime(stale, (old, old))
    fresh = staging / "fresh-upload"
    fresh.mkdir()
    (settings.runs_dir / "half-made").symlink_to(stale)
    assert retention.sweep_staging(settings) == 1
    assert not stale.exists() and fresh.exists()
    assert not os.path.lexists(settings.runs_dir / "half-made")
    # Something touched an hour ago is a web worker's, still at work.
    os.utime(fresh, (time.time() - 3600,) * 2)
    assert retention.sweep_staging(settings) == 0 and fresh.exists()


# ------------------------------------------------------------ wake-up


@pytest.fixture
def waker(tmp_path: Path) -> Iterator[wakeup.Waker]:
    listening = wakeup.Waker(tmp_path / "wake")
    yield listening
    listening.close()


def test_a_poke_wakes_the_supervisor_before_its_poll(waker: wakeup.Waker) -> None:
    assert waker.sock is not None and waker.path.stat().st_mode & 0o777 == 0o600
    threading.Timer(0.1, wakeup.poke, args=(waker.path,)).start()
    began = time.monotonic()
    waker.wait(10)
    assert time.monotonic() - began < 5
    # The poke was drained: without another, the wait lasts its whole timeout.
    began = time.monotonic()
    waker.wait(0.3)
    assert time.monotonic() - began >= 0.25


def test_several_pokes_wake_once_and_a_poke_with_nobody_listening_is_harmless(
    waker: wakeup.Waker, tmp_path: Path
) -> None:
    for _ in range(5):
        waker.wake()
    waker.wait(5)
    began = time.monotonic()
    waker.wait(0.2)
    assert time.monotonic() - began >= 0.15
    wakeup.poke(tmp_path / "nobody")  # no error, no block
    waker.close()
    assert not waker.path.exists()


def test_a_waker_without_a_socket_still_polls(tmp_path: Path) -> None:
    too_long = tmp_path / ("x" * 200)  # past a unix socket's 108 bytes
    polling = wakeup.Waker(too_long)
    assert polling.sock is None
    began = time.monotonic()
    polling.wait(0.2)
    assert time.monotonic() - began >= 0.15
    polling.close()


def test_the_socket_is_in_the_data_directory(settings: Settings) -> None:
    assert wakeup.socket_path(settings).parent == settings.data_dir.resolve()
    assert isinstance(socket.AF_UNIX, int)


# ------------------------------------------------------------ the leader's environment


def test_a_leader_inherits_only_the_allowlist(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WES_GATEWAY_JWT_SECRET", "do-not-leak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nor-this")
    monkeypatch.setenv("TZ", "Europe/Paris")
    paths = RunPaths.of(settings, "r1")
    env = leaders.leader_env(settings, "r1", paths)
    assert "do-not-leak" not in env.values() and "nor-this" not in env.values()
    assert env["TZ"] == "Europe/Paris"
    assert env["HOME"] == str(paths.home) and env["TMPDIR"] == str(paths.tmp)
    assert env[procs.MARKER] == "r1" and env["TOIL_HISTORY"] == "False"
    assert env["PATH"].split(os.pathsep)[-3:] == ["/usr/local/bin", "/usr/bin", "/bin"]
    assert str(Path(sys.executable).parent) in env["PATH"].split(os.pathsep)
    dropped = leaders.leader_env(tuned(settings, run_user="nobody"), "r1", paths, dropped=True)
    assert dropped["USER"] == dropped["LOGNAME"] == "nobody"


def test_the_supervisors_environment_is_scrubbed_to_the_allowlist(settings: Settings) -> None:
    saved = dict(os.environ)
    try:
        os.environ["WES_GATEWAY_DATABASE_URL"] = "postgresql://secret"
        os.environ["LANG"] = "C.UTF-8"
        leaders.scrub_environment(settings)
        assert "WES_GATEWAY_DATABASE_URL" not in os.environ
        assert os.environ["LANG"] == "C.UTF-8"
        assert set(os.environ) <= {*leaders.ENV_ALLOWLIST, "PATH", "HOME", "TMPDIR", "PROMETHEUS_MULTIPROC_DIR"}
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_a_recorded_leader_is_live_only_if_it_is_that_very_process(settings: Settings) -> None:
    paths = RunPaths.of(settings, "r1")
    paths.control.mkdir(parents=True)
    assert leaders.live_leader(paths) is None
    me = os.getpid()
    paths.leader_file.write_text(json.dumps({"pid": me, "start": procs.start_time(me)}))
    assert leaders.live_leader(paths) == me
    # The same pid, reused by another process (another start time): not the leader.
    paths.leader_file.write_text(json.dumps({"pid": me, "start": (procs.start_time(me) or 0) + 1}))
    assert leaders.live_leader(paths) is None
    paths.leader_file.write_text("not json")
    assert leaders.live_leader(paths) is None


def test_an_adopted_leader_is_waited_for_and_signalled_by_its_pid() -> None:
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        adopted = leaders.Leader(child.pid, None)
        assert not adopted.wait(0.2) and adopted.exitcode is None
        adopted.signal_group(signal.SIGKILL)
        child.wait(10)  # reaped here: for the handle, as for a leader's real parent, it is gone
        assert adopted.wait(5)
    finally:
        child.kill()
        child.wait(10)


# ------------------------------------------------------------ a run's end


def test_a_leader_without_a_result_is_described_by_its_exit() -> None:
    assert finishing.death_message(-9) == "the leader was killed by signal 9 (SIGKILL) before it had a result"
    assert finishing.death_message(3) == "leader died without a result (exit status 3)"
    assert finishing.death_message(None) == "leader died without a result (unknown exit status)"
    assert finishing.killed_at_memory_limit(-signal.SIGKILL, oom_kills=2)
    assert finishing.killed_at_memory_limit(None, oom_kills=1)
    assert not finishing.killed_at_memory_limit(-signal.SIGKILL, oom_kills=0)  # killed, not by the kernel
    assert not finishing.killed_at_memory_limit(1, oom_kills=3)


def test_seconds_since_a_stamp(db: Any) -> None:
    assert 59 <= finishing.seconds_since(store.stamp(datetime.now(UTC) - timedelta(minutes=1))) < 120
    assert finishing.seconds_since("not a time") == 0.0


@pytest.fixture
def supervisor(settings: Settings, db: Any) -> Iterator[Supervisor]:
    held = Supervisor(settings)
    yield held
    held.waker.close()
    held.pool.shutdown(wait=False)


@pytest.mark.parametrize(
    ("result", "exitcode", "cancelled", "state", "logged"),
    [
        (0, 0, False, store.COMPLETE, ""),
        (1, 1, False, store.EXECUTOR_ERROR, ""),
        (None, -9, False, store.SYSTEM_ERROR, "killed by signal 9 (SIGKILL)"),
        (None, 0, True, store.CANCELED, ""),
    ],
)
def test_a_runs_end_follows_its_recorded_result_then_its_exit(
    supervisor: Supervisor,
    settings: Settings,
    result: int | None,
    exitcode: int,
    cancelled: bool,
    state: str,
    logged: str,
) -> None:
    run_id = record(store.RUNNING)
    paths = made(settings, run_id)
    if result is not None:
        paths.result.write_text(json.dumps({"exit_code": result}))
        paths.outputs_json.write_text(json.dumps({"out": {"class": "File", "path": "/x"}}))
    run = store.get_run(run_id)
    engine = engine_for("CWL")
    assert run is not None and engine is not None
    finishing.finish(supervisor, run, engine, paths, exitcode, cancelled=cancelled)
    ended = store.get_run(run_id)
    assert ended is not None and ended.state == state
    assert logged in "\n".join(ended.system_logs or [])
    if state == store.COMPLETE:
        assert ended.outputs == {"out": {"class": "File", "path": "/x"}}
        assert (paths.control / "checksums.json").exists()  # hashed for its RO-Crate


def test_a_run_that_planted_a_link_is_refused_and_one_that_did_not_is_not(settings: Settings, db: Any) -> None:
    clean = record(store.INITIALIZING)
    made(settings, clean)
    assert not starting.refused_for_planted_names(settings, clean, RunPaths.of(settings, clean))
    assert store.get_run(clean).state == store.INITIALIZING  # type: ignore[union-attr]
    planted = record(store.INITIALIZING)
    paths = made(settings, planted)
    paths.work.rmdir()
    paths.work.symlink_to("/etc")
    assert starting.refused_for_planted_names(settings, planted, paths)
    refused = store.get_run(planted)
    assert refused is not None and refused.state == store.EXECUTOR_ERROR
    assert any("replaced its own work" in line for line in refused.system_logs or [])
    assert not os.path.lexists(paths.work)  # taken away; /etc untouched
    assert Path("/etc/passwd").exists()


def test_a_run_of_no_known_engine_is_a_system_error(db: Any) -> None:
    run_id = record(store.INITIALIZING, workflow_type="NEXTFLOW")
    run = store.get_run(run_id)
    assert run is not None and starting.engine_of(run) is None
    failed = store.get_run(run_id)
    assert failed is not None and failed.state == store.SYSTEM_ERROR
    assert any("no engine" in line for line in failed.system_logs or [])
    cwl = store.get_run(record(store.INITIALIZING))
    assert cwl is not None and starting.engine_of(cwl) is not None


def test_the_process_limit_reads_the_groups_counter(settings: Settings, tmp_path: Path) -> None:
    held = tuned(settings, run_limits="cgroup", run_cgroup_parent=str(tmp_path / "cg"))
    group = limits.group_of(held, "r")
    assert group is not None
    group.create(0, 10)
    limit = watching.ProcessLimit(held, group, None)
    assert limit.due() and not limit.reached()
    (group.pids / "pids.events").write_text("max 1\n")
    assert limit.due() and limit.reached()
    # No group and no uid of the run's own: nothing is counted.
    unheld = watching.ProcessLimit(settings, None, sandbox.RunIdentity(uid=70001, gid=70001, shared_gid=0))
    assert unheld.uid == 0 and not unheld.due()


def test_runs_get_uids_of_their_own_kept_across_a_restart(settings: Settings, db: Any) -> None:
    if os.geteuid() != 0:
        pytest.skip("runs get uids of their own only from a root supervisor")
    own = tuned(settings, run_user="nobody", run_sandbox="bwrap", run_uids="70100-70101")
    first = Supervisor(own)
    try:
        one, two, three = (RunPaths.of(own, name) for name in ("a", "b", "c"))
        for paths in (one, two, three):
            paths.root.mkdir(parents=True)
        uid_a = first.identity_for("a", one)
        two.control.mkdir()
        two.uid_file.write_text(json.dumps(uid_a.uid if uid_a else 0))  # a record naming a uid in use
        uid_b = first.identity_for("b", two)
        assert uid_a is not None and uid_b is not None and {uid_a.uid, uid_b.uid} == {70100, 70101}
        assert json.loads(one.uid_file.read_text()) == uid_a.uid
        with pytest.raises(RuntimeError, match="every uid"):
            first.identity_for("c", three)
    finally:
        first.waker.close()
        first.pool.shutdown(wait=False)
    second = Supervisor(own)  # a restart: the run's recorded uid is taken up again
    try:
        again = second.identity_for("b", two)
        assert again is not None and again.uid == uid_b.uid
    finally:
        second.waker.close()
        second.pool.shutdown(wait=False)
    # Without run_uids every run is run_user.
    plain = Supervisor(tuned(own, run_uids=""))
    try:
        assert plain.identity_for("a", one) == plain.identity
    finally:
        plain.waker.close()
        plain.pool.shutdown(wait=False)
