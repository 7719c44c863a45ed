"""Each run has a disk of its own (#26 item 2): a run that fills it ends EXECUTOR_ERROR once
with a clear message, while the service and another run carry on; the service keeps a
reserve for its own records and answers 507 when it is reached; with the limit off, the same
step writes past it (the protection shown off).

Real Gunicorn, Toil, bwrap, loop-mounted ext4 images."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import requests
from conftest import Server, kill_all_leaders, running_server, start_server, stop_server

# Toil asks the run's filesystem for a job's tmpdirMin + outdirMin (MiB): kept small, so that
# a small disk can hold the job at all.
FILLER = """\
cwlVersion: v1.2
class: CommandLineTool
requirements:
  ResourceRequirement: {tmpdirMin: 32, outdirMin: 32}
baseCommand: [dd, if=/dev/zero, of=filler, bs=1M, count=700]
inputs: []
outputs: []
"""
ECHO = """\
cwlVersion: v1.2
class: CommandLineTool
requirements:
  ResourceRequirement: {tmpdirMin: 32, outdirMin: 32}
baseCommand: [echo, fine]
inputs: []
outputs: []
"""


def _volumes_available() -> str:
    from wes_gateway.config import load_settings
    from wes_gateway.host import volumes

    return volumes.problem(load_settings({}))


pytestmark = pytest.mark.skipif(bool(_volumes_available()), reason=_volumes_available() or "-")


def _server(tmp_path_factory: pytest.TempPathFactory, engine_env: dict[str, str], **extra: str) -> Server:
    return start_server(tmp_path_factory.mktemp("disk"), {**engine_env, "WES_GATEWAY_RUN_DISK_LIMIT": "512M", **extra})


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, engine_env: dict[str, str]) -> Iterator[Server]:
    env = {**engine_env, "WES_GATEWAY_RUN_DISK_LIMIT": "512M", "WES_GATEWAY_RUN_DISK": "loop"}
    with running_server(tmp_path_factory.mktemp("disk"), env) as server:
        yield server


def test_a_run_that_fills_its_disk_ends_once_and_alone(limited: Server) -> None:
    assert limited.get("/service-info").json()["tags"]["run_disk_limit"] == "512M"
    filler = limited.submit_cwl(("filler.cwl", FILLER), {})
    other = limited.submit_cwl(("echo.cwl", ECHO), {})
    assert limited.wait(filler, timeout=180) == "EXECUTOR_ERROR"
    assert "filled its disk space (run_disk_limit = 512M)" in limited.system_logs(filler)
    assert limited.wait(other, timeout=180) == "COMPLETE"
    # Started once: never restarted to fill its disk again.
    starts = [line for line in limited.log_path.read_text().splitlines() if f"run {filler}: leader pid" in line]
    assert len(starts) == 1, starts
    # Ended, it gives back its filesystem (issue 37): what is left of it is a plain directory
    # (its scratch and job store's files aside) that held no more than its limit.
    root = limited.data_dir / "runs" / filler
    assert not (limited.data_dir / "runs" / ".volumes" / f"{filler}.img").exists()
    assert not os.path.ismount(root)
    held = sum(os.lstat(os.path.join(where, name)).st_blocks for where, _, names in os.walk(root) for name in names)
    assert held * 512 <= 512 * 1024 * 1024
    assert limited.get("/health").status_code == 200
    assert limited.submit_cwl(("echo.cwl", ECHO), {})  # others still submit


def test_without_a_disk_limit_the_same_step_writes_past_it(
    tmp_path_factory: pytest.TempPathFactory, engine_env: dict[str, str]
) -> None:
    server = _server(tmp_path_factory, engine_env, WES_GATEWAY_RUN_DISK="none")
    try:
        filler = server.submit_cwl(("filler.cwl", FILLER), {})
        assert server.wait(filler, timeout=180) == "COMPLETE"  # 700 MiB, past the 512M limit
    finally:
        stop_server(server)
        kill_all_leaders(server.data_dir)


def test_the_reserve_keeps_the_services_records_writable(
    tmp_path_factory: pytest.TempPathFactory, engine_env: dict[str, str]
) -> None:
    """A reserve larger than the free space: no upload is taken (507, an ErrorResponse with
    Retry-After, nothing left in staging), and the books start no run."""
    from wes_gateway.config import load_settings
    from wes_gateway.host import volumes

    server = _server(tmp_path_factory, engine_env, WES_GATEWAY_DISK_RESERVE="1P")
    try:
        response = requests.post(
            f"{server.api}/runs",
            files={"workflow_attachment": ("echo.cwl", ECHO.encode())},
            data={"workflow_url": "echo.cwl", "workflow_type": "CWL", "workflow_type_version": "v1.2"},
            timeout=30,
        )
        assert response.status_code == 507, response.text
        assert response.json()["status_code"] == 507 and "disk space" in response.json()["msg"]
        assert response.headers["Retry-After"]
        assert server.get("/runs").json()["runs"] == []
        staging = server.data_dir / "runs" / ".staging"
        assert not staging.exists() or list(staging.iterdir()) == []
        settings = load_settings({}, data_dir=server.data_dir, run_disk_limit="512M")
        assert volumes.room_for_another(settings, set())
        assert not volumes.room_for_another(settings.model_copy(update={"disk_reserve": "1P"}), set())
    finally:
        stop_server(server)


def test_a_full_disk_mid_upload_is_a_507_and_leaves_nothing(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The data directory on a 48 MiB filesystem: a 64 MiB upload sent without a length (so
    that only the disk can stop it) gets 507, not the 400 "malformed body" it got, nothing of
    it stays, and the next submission goes through."""
    import subprocess

    small = tmp_path_factory.mktemp("small")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(small)], check=True)
    try:
        server = start_server(
            small / "data",
            {"WES_GATEWAY_SUPERVISOR": "off", "WES_GATEWAY_RUN_DISK": "none", "WES_GATEWAY_DISK_RESERVE": "1M"},
        )
        try:

            def body() -> Iterator[bytes]:
                boundary = b"--edge"
                yield boundary + b'\r\nContent-Disposition: form-data; name="workflow_url"\r\n\r\necho.cwl\r\n'
                yield boundary + b'\r\nContent-Disposition: form-data; name="workflow_type"\r\n\r\nCWL\r\n'
                yield boundary + b'\r\nContent-Disposition: form-data; name="workflow_type_version"\r\n\r\nv1.2\r\n'
                yield (
                    boundary + b'\r\nContent-Disposition: form-data; name="workflow_attachment"; '
                    b'filename="big.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
                )
                for _ in range(64):
                    yield bytes(1 << 20)
                yield b"\r\n" + boundary + b"--\r\n"

            response = requests.post(
                f"{server.api}/runs",
                data=body(),
                headers={"Content-Type": "multipart/form-data; boundary=edge"},
                timeout=60,
            )
            assert response.status_code == 507, response.text
            assert "disk space" in response.json()["msg"]
            assert list((small / "data" / "runs" / ".staging").iterdir()) == []
            assert server.get("/runs").json()["runs"] == []
            assert server.submit_cwl(("echo.cwl", ECHO), {})  # the store is still writable
        finally:
            stop_server(server)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


# A finished run's filesystem is given back when it ends; its outputs are served after a restart
# and `wes-gateway runs unmount`: tests/test_settled_runs.py.
