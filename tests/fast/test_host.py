"""host/, the parts that need no root-only mount: the sandbox a run is planned, its limits
(a cgroup v2 group under a parent directory of the test's own, whose control files are plain
files here), /proc as procs reads it, the batch system's settings, and the run volumes'
sizing and names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from wes_gateway.config import Settings, load_settings, parse_memory
from wes_gateway.files.paths import RunPaths, hidden_name
from wes_gateway.host import batch, limits, procs, sandbox, volumes


def tuned(settings: Settings, **changes: Any) -> Settings:
    """The test's settings with some values changed, validated as a deployment's would be."""
    return load_settings({}, **{**settings.model_dump(exclude_unset=True), **changes})


# ------------------------------------------------------------ sandbox planning


def test_a_sandbox_plan_binds_the_system_read_only_and_hides_the_data_directory(
    settings: Settings, tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "input.txt").write_text("x")
    # The data directory is under an allowed root too: it is refused for being the service's.
    settings = tuned(settings, run_sandbox="bwrap", allowed_file_roots=[str(allowed), str(tmp_path)])
    paths = RunPaths.of(settings, "r1")
    (settings.data_dir / "elsewhere").mkdir(parents=True)
    inputs = [str(allowed / "input.txt"), "/etc/shadow", str(settings.data_dir / "elsewhere"), "/no/such/file"]
    spec = sandbox.plan(settings, paths, inputs, hidden=[], identity=None)
    assert "/usr" in spec.read_only
    assert str(allowed / "input.txt") in spec.read_only
    # Not under allowed_file_roots (the policy may have narrowed since), or the service's data.
    assert "/etc/shadow" not in spec.read_only
    assert not any(path.startswith(os.path.realpath(settings.data_dir)) for path in spec.read_only)
    assert spec.run_root == str(paths.root) and spec.control == str(paths.control)
    assert len(spec.read_only) == len(set(spec.read_only))


def test_a_leader_with_no_uid_to_drop_to_gets_a_user_namespace(settings: Settings) -> None:
    paths = RunPaths.of(settings, "r1")
    identity = sandbox.RunIdentity(uid=12345, gid=12345, shared_gid=0)
    alone = sandbox.plan(settings, paths, [], [], None, fresh_proc=True)
    dropped = sandbox.plan(settings, paths, [], [], identity, fresh_proc=True)
    assert alone.user_namespace and not dropped.user_namespace
    # Only a leader that starts as root, and drops it, can mount a fresh /proc.
    assert not alone.fresh_proc and dropped.fresh_proc


def test_secret_files_are_hidden_only_where_the_sandbox_would_show_them(settings: Settings, tmp_path: Path) -> None:
    under_usr = "/usr/bin/env"
    private = tmp_path / "htpasswd"
    private.write_text("user:hash")
    spec = sandbox.plan(settings, RunPaths.of(settings, "r"), [], [under_usr, str(private)], None)
    assert spec.hidden_files == (under_usr,)
    found = sandbox.secret_files(tuned(settings, htpasswd_file=str(private)), {"WES_GATEWAY_CONFIG": "/nonexistent"})
    assert found == [str(private)]


def test_no_identity_is_dropped_to_without_a_sandbox(settings: Settings) -> None:
    assert sandbox.run_identity(tuned(settings, run_user="nobody", run_sandbox="none")) is None
    if os.geteuid() != 0:
        pytest.skip("a run identity is only taken by a root supervisor")
    with pytest.raises(sandbox.SandboxUnavailable):
        sandbox.run_identity(tuned(settings, run_user="root", run_sandbox="bwrap"))
    with pytest.raises(sandbox.SandboxUnavailable):
        sandbox.run_identity(tuned(settings, run_user="no-such-user-here", run_sandbox="bwrap"))
    identity = sandbox.run_identity(tuned(settings, run_user="nobody", run_sandbox="bwrap"))
    assert identity is not None and identity.uid != 0


def test_hand_over_keeps_the_control_directory_the_services_alone(settings: Settings) -> None:
    paths = RunPaths.of(settings, "r")
    paths.root.mkdir(parents=True)
    sandbox.hand_over(paths, None)
    assert all(directory.is_dir() for directory in (paths.work, paths.outdir, paths.tmp, paths.home, paths.job_logs))
    assert paths.control.stat().st_mode & 0o777 == 0o700


# ------------------------------------------------------------ limits


def test_a_run_group_is_named_by_a_keyed_hash_and_not_made_where_limits_are_off(
    settings: Settings, tmp_path: Path
) -> None:
    parent = tmp_path / "cgroup"
    held = tuned(settings, run_limits="cgroup", run_cgroup_parent=str(parent))
    group = limits.group_of(held, "run-id-1")
    assert group is not None and group.version == 2
    assert group.memory == group.pids == parent / f"run-{hidden_name(held, 'run-id-1')}"
    assert "run-id-1" not in str(group.memory)
    assert group.procs_files == (str(group.memory / "cgroup.procs"),)
    (parent / "run-old").mkdir(parents=True)  # a group an earlier version named by the run id
    old = limits.group_of(held, "old")
    assert old is not None and old.memory == parent / "run-old"
    assert limits.group_of(tuned(held, run_limits="none"), "run-id-1") is None
    assert limits.group_of(tuned(held, batch_system="slurm", shared_dir=str(tmp_path)), "run-id-1") is None


def test_a_run_group_gets_its_limits_counters_and_peaks(settings: Settings, tmp_path: Path) -> None:
    held = tuned(settings, run_limits="cgroup", run_cgroup_parent=str(tmp_path / "cg"))
    group = limits.group_of(held, "r")
    assert group is not None
    group.create(512 << 20, 100)
    assert (group.memory / "memory.max").read_text() == str(512 << 20)
    assert (group.pids / "pids.max").read_text() == "100"
    (group.memory / "memory.swap.max").unlink()
    group.create(0, 0)  # unlimited; a kernel without swap accounting has no memory.swap.max
    assert (group.memory / "memory.max").read_text() == "max" and (group.pids / "pids.max").read_text() == "max"
    (group.memory / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    (group.pids / "pids.events").write_text("max 7\n")
    (group.memory / "memory.peak").write_text("1048576\n")
    (group.pids / "pids.peak").write_text("garbage")
    assert group.oom_kills() == 2 and group.process_limit_hits() == 7
    assert group.peaks() == (1 << 20, 0)  # an unreadable counter is 0, not an error
    (group.memory / "cgroup.procs").write_text("")
    assert group.members() == set()
    for name in list(group.memory.iterdir()):
        name.unlink()
    group.remove()
    assert not group.memory.exists()


def test_rlimits_are_only_for_runs_with_a_uid_of_their_own(settings: Settings) -> None:
    assert limits.rlimits_for(settings) == (0, 0)
    own = tuned(settings, run_uids="70000-70009", run_memory_limit="1G", run_max_processes=50)
    assert own.run_uid_range == range(70000, 70010)
    assert limits.rlimits_for(own) == (1 << 30, 50)
    assert limits.rlimits_for(tuned(own, run_limits="none")) == (0, 0)


def test_limits_check_says_none_where_nothing_holds_runs(settings: Settings) -> None:
    assert limits.check(tuned(settings, run_limits="none")) == "none"
    with pytest.raises(limits.LimitsUnavailable):
        limits.check(tuned(settings, run_limits="rlimit"))  # no run_uids


def test_the_tasks_of_a_uid_are_counted_and_killed(tmp_path: Path) -> None:
    uid = os.getuid()
    count, pids = limits.tasks_of_uid(uid)
    assert os.getpid() in pids and count >= len(pids)
    assert limits.live_uids(range(uid, uid + 1)) == {uid}
    assert limits.tasks_of_uid(2**31 - 7) == (0, [])


# ------------------------------------------------------------ procs


def test_procs_tells_a_live_process_from_a_gone_one() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert procs.pid_alive(child.pid)
        assert procs.parent_pid(child.pid) == os.getpid()
        started = procs.start_time(child.pid)
        assert started is not None and started >= (procs.start_time(os.getpid()) or 0)
    finally:
        child.kill()
    deadline = time.monotonic() + 10
    while procs.pid_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.02)  # a zombie until reaped: not alive either way
    assert not procs.pid_alive(child.pid)
    child.wait(10)
    assert procs.start_time(child.pid) is None and procs.parent_pid(child.pid) is None


def test_a_runs_processes_are_found_by_marker_group_and_descent_and_killed() -> None:
    marked = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen(['sleep', '30']); time.sleep(30)"],
        env={**os.environ, procs.MARKER: "fast-run-1"},
        start_new_session=True,
    )
    other = subprocess.Popen(["sleep", "30"], env={**os.environ, procs.MARKER: "fast-run-2"})
    try:
        deadline = time.monotonic() + 10
        while len(procs.processes_of_run("fast-run-1")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        found = procs.processes_of_run("fast-run-1")
        assert marked.pid in found and len(found) == 2  # the child carries the marker too, and its group
        assert other.pid not in found and os.getpid() not in found
        assert procs.run_process_groups("fast-run-1") == {marked.pid}
        assert procs.kill_run_processes("fast-run-1") == 2
        marked.wait(10)
        assert marked.returncode == -signal.SIGKILL and other.poll() is None
    finally:
        for process in (marked, other):
            process.kill()
            process.wait(10)


# ------------------------------------------------------------ batch systems


def test_a_cluster_batch_system_needs_a_writable_shared_directory(settings: Settings, tmp_path: Path) -> None:
    batch.check(settings)  # single_machine, no shared directory: nothing to check
    with pytest.raises(batch.BatchSystemUnusable, match="shared_dir"):
        batch.check(tuned(settings, batch_system="lsf"))
    batch.check(tuned(settings, batch_system="lsf", shared_dir=str(tmp_path / "shared")))
    assert (tmp_path / "shared" / "runs").is_dir()
    # A shared directory where the runs cannot be written (root writes anywhere: a file is in the way).
    (tmp_path / "blocked").write_text("")
    with pytest.raises(batch.BatchSystemUnusable, match="not writable"):
        batch.check(tuned(settings, batch_system="lsf", shared_dir=str(tmp_path / "blocked")))


def test_the_batch_systems_flags_and_leader_variables(settings: Settings) -> None:
    slurm = tuned(
        settings,
        batch_system="slurm",
        shared_dir="/tmp",
        batch_options={"partition": "short", "time": "01:00:00", "args": "--qos=low"},
    )
    assert batch.toil_args(slurm) == ["--batchSystem", "slurm", "--slurmPartition", "short", "--slurmTime", "01:00:00"]
    assert batch.toil_args(settings) == ["--batchSystem", "single_machine"]
    env = batch.leader_env(slurm, "r1", {"SLURM_CONF": "/etc/slurm.conf", "SECRET": "x"})
    assert env == {"SLURM_CONF": "/etc/slurm.conf", "TOIL_SLURM_ARGS": "--qos=low --comment=wes-gateway-run-r1"}
    assert batch.leader_env(settings, "r1", {"SLURM_CONF": "/x"}) == {}
    assert batch.client_env_names(slurm) == ("SLURM_CONF",)
    assert batch.node_of("SingleMachineBatchSystem", "1", {}) == os.uname().nodename
    assert batch.node_of("SlurmBatchSystem", "not-a-number", {}) is None
    assert batch.leftover_jobs(settings, "r1", {}) == []  # no Slurm configured: nothing asked


def test_a_sandboxed_leader_sees_the_slurm_config_file_but_not_its_directory(
    settings: Settings, tmp_path: Path
) -> None:
    conf = tmp_path / "slurm.conf"
    munge = tmp_path / "munge"
    munge.mkdir()
    conf.write_text(f"ClusterName=x\nAuthInfo=socket={munge}/munge.socket.2\n")
    slurm = tuned(settings, batch_system="slurm", shared_dir=str(tmp_path))
    assert batch.sandbox_paths(slurm, {"SLURM_CONF": str(conf)}) == [str(conf), str(munge)]
    assert batch.sandbox_paths(settings, {"SLURM_CONF": str(conf)}) == []


# ------------------------------------------------------------ volumes: sizing and names


def test_volumes_say_why_runs_get_no_filesystem(settings: Settings, tmp_path: Path) -> None:
    assert volumes.problem(settings) == "run_disk is none"
    assert not volumes.enabled(settings)
    cluster = tuned(settings, run_disk="auto", batch_system="slurm", shared_dir=str(tmp_path))
    assert "shared filesystem" in volumes.problem(cluster)
    assert volumes.check(cluster) == "none"
    with pytest.raises(volumes.VolumesUnavailable):
        volumes.check(tuned(cluster, run_disk="loop"))


def test_room_for_another_run_counts_what_running_runs_may_still_write(settings: Settings) -> None:
    settings.runs_dir.mkdir(parents=True)
    free = volumes.host_free(settings)
    assert volumes.room_for_another(settings, {"a", "b"})  # no volumes: the disk is not booked
    if os.geteuid() != 0 or volumes.problem(tuned(settings, run_disk="loop")):
        pytest.skip(
            f"the booking applies only where runs get volumes: {volumes.problem(tuned(settings, run_disk='loop'))}"
        )
    # A third of the free space a run, a quarter kept: margins far above what other writers move.
    booked = tuned(settings, run_disk="loop", run_disk_limit=str(free // 3), disk_reserve=str(free // 4))
    assert volumes.room_for_another(booked, set())
    assert volumes.room_for_another(booked, {"a"})
    # Two running runs that may each still write their whole limit leave no room for a third.
    assert not volumes.room_for_another(booked, {"a", "b"})
    assert volumes.image_of(booked, "a") == booked.runs_dir / ".volumes" / "a.img"


def test_the_service_refuses_data_only_below_its_reserve(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True)
    free = volumes.host_free(settings)
    assert volumes.short_of_space(tuned(settings, disk_reserve="1M")) == ""
    assert "short of disk space" in volumes.short_of_space(tuned(settings, disk_reserve="1M"), incoming=free)
    assert "short of disk space" in volumes.short_of_space(tuned(settings, disk_reserve=str(free + (1 << 30))))
    assert parse_memory("1.5G") == 3 << 29


def test_a_run_that_is_no_mount_never_counts_as_out_of_space(settings: Settings) -> None:
    paths = RunPaths.of(settings, "r")
    paths.root.mkdir(parents=True)
    paths.stderr.write_text(os.strerror(28) + "\n")  # ENOSPC in its log, but its disk is the host's
    assert not volumes.filled(paths) and not volumes.ran_out(paths)
    assert not volumes.settled(paths.root)
    assert volumes.unsettled(settings) == []


def test_an_image_store_is_refused_with_a_cluster_batch_system(tmp_path: Path) -> None:
    # Issue 35: Slurm jobs run outside the sandbox on other nodes, where neither the store's
    # read-only view nor the pull service is; the service says so at start.
    from wes_gateway.host import containers

    store = tmp_path / "store"
    store.mkdir()
    common = {"data_dir": tmp_path / "data", "image_store": store, "container_engine": "podman"}
    with pytest.raises(containers.ContainersUnusable, match="image_store with a cluster batch system"):
        containers.check(Settings(batch_system="slurm", **common))  # type: ignore[arg-type]
    try:  # the same store on one host: refused, if at all, for something else (the view's support)
        containers.check(Settings(batch_system="single_machine", **common))  # type: ignore[arg-type]
    except containers.ContainersUnusable as exc:
        assert "cluster batch system" not in str(exc)
