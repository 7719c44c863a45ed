"""A finished run gives back its mount (issue 37): its directory is copied out of its
loop-mounted image when it ends (wes_gateway.host.volumes.settle), so that the mounts, and with
them the cost of every later sandbox, do not grow with the runs a service has kept; its
outputs are served as before, across a restart and after `wes-gateway runs unmount`, and
images that an earlier version left for finished runs are settled in the background.

Real Gunicorn, Toil, bwrap, loop-mounted ext4 images. WES_GATEWAY_TEST_SETTLED_RUNS sets the
number of runs of the first test: 120 by default, which take about 2-4 minutes on a
shared 2-core machine (the issue asks for 300: set it to 300 where that time is to be had)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import DATA, Server, kill_all_leaders, running_server, start_server, stop_server

from harness.measure import mount_count, sandbox_start

RUNS = int(os.environ.get("WES_GATEWAY_TEST_SETTLED_RUNS", "120"))


def _volumes_available() -> str:
    from wes_gateway.config import load_settings
    from wes_gateway.host import volumes

    return volumes.problem(load_settings({}))


pytestmark = pytest.mark.skipif(bool(_volumes_available()), reason=_volumes_available() or "-")

# Room for Toil's default 3 GiB a CWL job (the image is sparse: it costs what is written).
DISK = {"WES_GATEWAY_RUN_DISK_LIMIT": "4G", "WES_GATEWAY_RUN_DISK": "loop"}


def run_mounts(data_dir: Path) -> list[str]:
    """Mount points below the data directory's runs (the image store's view is no run's)."""
    runs = f"{data_dir / 'runs'}/"
    points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    return [point for point in points if point.startswith(runs)]


def run_loop_devices(data_dir: Path) -> list[str]:
    """Loop devices whose backing file is in the data directory."""
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if backing.read_text().startswith(f"{data_dir}/"):
                found.append(backing.parent.parent.name)
        except OSError:
            pass
    return found


def active_runs(server: Server) -> int:
    listed = server.get("/runs", params={"page_size": 1000}).json()["runs"]
    return sum(run["state"] in ("QUEUED", "INITIALIZING", "RUNNING", "CANCELING") for run in listed)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, engine_env: dict[str, str]) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("settled"), {**engine_env, **DISK}) as server:
        yield server


def test_finished_runs_hold_no_mount_and_stay_served(served: Server) -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bwrap is not installed")
    before, mounted_before = sandbox_start(), mount_count()
    began = time.monotonic()
    messages = {served.submit_cwl(DATA / "echo.cwl", {"message": f"run {n}"}): f"run {n}\n" for n in range(RUNS)}
    for run_id in messages:
        assert served.wait(run_id, timeout=max(300, 3 * RUNS)) == "COMPLETE", served.system_logs(run_id)
    took = time.monotonic() - began
    active = active_runs(served)
    mounts = run_mounts(served.data_dir)
    print(f"\n{RUNS} runs in {took:.0f} s; mounts under runs/ afterwards: {len(mounts)} (active runs: {active})")
    assert len(mounts) <= active == 0, mounts
    deadline = time.monotonic() + 10  # a loop device goes once the last namespace lets go of it
    while run_loop_devices(served.data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run_loop_devices(served.data_dir) == []
    assert list((served.data_dir / "runs" / ".volumes").glob("*.img")) == []
    for run_id, message in messages.items():
        output = served.get(f"/runs/{run_id}").json()["outputs"]["out"]
        response = requests.get(output["url"], timeout=30)
        assert response.status_code == 200 and response.text == message, (run_id, response.status_code)
    one = next(iter(messages))
    archive = zipfile.ZipFile(io.BytesIO(served.get(f"/runs/{one}/outputs.zip").content))
    assert [archive.read(name).decode() for name in archive.namelist()] == [messages[one]]
    assert served.get(f"/runs/{one}/ro-crate").status_code in (200, 404)
    after = sandbox_start()
    for _ in range(5):  # a busy moment of the machine's other work is measured again
        if after <= 1.2 * before:
            break
        time.sleep(2)
        after = min(after, sandbox_start())
    mounted_after = mount_count()
    print(
        f"sandbox start: {before * 1000:.1f} ms before, {after * 1000:.1f} ms after ({after / before:.2f}x); "
        f"mounts in the service's namespace: {mounted_before} before, {mounted_after} after"
    )
    # What makes a sandbox slower: the mount table, which the runs left as it was (others'
    # test sessions on this machine may hold a few mounts of their own meanwhile).
    assert mounted_after - mounted_before <= 16, (mounted_before, mounted_after)
    # Loose, for the same reason: the growth was 4.2 -> 47.9 ms at 535 mounts, about
    # 0.08 ms a mount.
    assert after <= max(1.2 * before, before + 0.005), (before, after)


def test_a_finished_run_is_served_across_a_restart_and_an_unmount(
    tmp_path_factory: pytest.TempPathFactory, engine_env: dict[str, str]
) -> None:
    data_dir = tmp_path_factory.mktemp("kept")
    env = {**engine_env, **DISK}
    server = start_server(data_dir, env)
    try:
        run_id = server.submit_cwl(DATA / "echo.cwl", {"message": "kept"})
        assert server.wait(run_id, timeout=180) == "COMPLETE"
        url = server.get(f"/runs/{run_id}").json()["outputs"]["out"]["url"]
        assert requests.get(url, timeout=30).text == "kept\n"
        root = data_dir / "runs" / run_id
        assert not os.path.ismount(root) and run_mounts(data_dir) == []
        # Read it all through a restart: every answer that comes is the output itself.
        answers: list[tuple[int, str]] = []
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                try:
                    response = requests.get(url.replace(server.base, current.base), timeout=10)
                    answers.append((response.status_code, response.text))
                except requests.RequestException:
                    pass  # down, between the two
                time.sleep(0.02)

        current = server
        reader = threading.Thread(target=read)
        reader.start()
        try:
            time.sleep(0.5)
            stop_server(server)
            server = current = start_server(data_dir, env)
            time.sleep(1.0)
        finally:
            stop.set()
            reader.join()
        assert answers and all(answer == (200, "kept\n") for answer in answers), set(answers)
        assert run_mounts(data_dir) == []
    finally:
        stop_server(server)
        kill_all_leaders(data_dir)
    # A reboot, or `runs unmount` before the data directory is moved: nothing of it is mounted.
    unmounted = subprocess.run(
        [sys.executable, "-m", "wes_gateway.cli", "runs", "unmount"],
        env={**os.environ, "WES_GATEWAY_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "unmounted 0 run filesystems" in unmounted.stdout
    assert (root / "outputs").is_dir()
    with running_server(data_dir, env) as again:
        assert requests.get(again.get(f"/runs/{run_id}").json()["outputs"]["out"]["url"], timeout=30).text == "kept\n"
        assert run_mounts(data_dir) == []


def test_finished_runs_an_earlier_version_left_mounted_are_settled(
    tmp_path_factory: pytest.TempPathFactory, engine_env: dict[str, str]
) -> None:
    """A data directory of the version before: finished runs' directories are images, and a
    reboot took their mounts away (what is beneath is what was there before the run). The
    supervisor mounts none of them at start; they are served, and settled, in the background."""
    from wes_gateway.host import volumes

    data_dir = tmp_path_factory.mktemp("legacy")
    env = {**engine_env, **DISK}
    with running_server(data_dir, env) as server:
        run_ids = [server.submit_cwl(DATA / "echo.cwl", {"message": f"old {n}"}) for n in range(3)]
        for run_id in run_ids:
            assert server.wait(run_id, timeout=180) == "COMPLETE"
    for run_id in run_ids:  # back to how the earlier version left them, unmounted
        root = data_dir / "runs" / run_id
        image = data_dir / "runs" / ".volumes" / f"{run_id}.img"
        os.removexattr(root, volumes.SETTLED)
        volumes._make(image, root, 4 << 30)
        for entry in root.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    with running_server(data_dir, env) as server:
        # Mounted read-only by the supervisor's first pass of settling, then settled.
        for n, run_id in enumerate(run_ids):
            url = server.get(f"/runs/{run_id}").json()["outputs"]["out"]["url"]
            deadline = time.monotonic() + 30
            while requests.get(url, timeout=30).status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert requests.get(url, timeout=30).text == f"old {n}\n"
        deadline = time.monotonic() + 30
        while (run_mounts(data_dir) or list((data_dir / "runs" / ".volumes").glob("*.img"))) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert run_mounts(data_dir) == [] and list((data_dir / "runs" / ".volumes").glob("*.img")) == []
        for n, run_id in enumerate(run_ids):
            url = server.get(f"/runs/{run_id}").json()["outputs"]["out"]["url"]
            assert requests.get(url, timeout=30).text == f"old {n}\n"
            assert volumes.settled(data_dir / "runs" / run_id)


def test_the_copy_takes_only_directories_and_regular_files(tmp_path: Path) -> None:
    """What a run leaves is the run's to shape: the copy follows and keeps no link, FIFO or
    device, drops setuid and setgid, keeps a hard link one file and a hole a hole (so that the
    copy takes no more room than the run did), and leaves the scratch behind."""
    from wes_gateway.host import volumes

    run = tmp_path / "run"
    (run / "outputs" / "deep").mkdir(parents=True)
    (run / "tmp").mkdir()
    (run / "tmp" / "scratch").write_bytes(b"x" * 4096)
    (run / "outputs" / "deep" / "a.txt").write_text("a\n")
    os.link(run / "outputs" / "deep" / "a.txt", run / "outputs" / "same.txt")
    (run / "outputs" / "shadow").symlink_to("/etc/shadow")
    (run / "outputs" / "up").symlink_to("..")
    os.mkfifo(run / "outputs" / "fifo")
    with open(run / "outputs" / "sparse", "wb") as handle:
        handle.seek(1 << 30)
        handle.write(b"end")
    (run / "outputs" / "tool").write_text("#!/bin/sh\n")
    os.chmod(run / "outputs" / "tool", 0o6755)
    os.chown(run / "outputs" / "deep" / "a.txt", 65534, 65534)
    os.utime(run / "outputs" / "deep", ns=(1_000_000_000, 2_000_000_000))
    copy = tmp_path / "copy"
    volumes._copy_tree(run, copy, volumes.LEFT_BEHIND)
    assert sorted(path.name for path in (copy / "outputs").iterdir()) == ["deep", "same.txt", "sparse", "tool"]
    assert not (copy / "tmp").exists()
    a, same = (copy / "outputs" / "deep" / "a.txt").stat(), (copy / "outputs" / "same.txt").stat()
    assert (a.st_ino, a.st_nlink, a.st_uid, a.st_gid) == (same.st_ino, 2, 65534, 65534)
    assert (copy / "outputs" / "same.txt").read_text() == "a\n"
    sparse = (copy / "outputs" / "sparse").stat()
    assert sparse.st_size == (1 << 30) + 3 and sparse.st_blocks * 512 <= 1 << 20
    with open(copy / "outputs" / "sparse", "rb") as handle:
        handle.seek(1 << 30)
        assert handle.read() == b"end"
    assert (copy / "outputs" / "tool").stat().st_mode & 0o7777 == 0o755
    assert (copy / "outputs" / "deep").stat().st_mtime_ns == 2_000_000_000
