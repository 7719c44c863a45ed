"""The service never opens a host file on a run's behalf (#26 item 5).

A run owns its directory: its step swaps ``job-logs`` for a link to a host directory and
plants a directory link in ``outputs/``. The host directory holds FIFOs, and a watcher on
the host sees every time anything opens one for reading (a FIFO opened for writing without
blocking succeeds only while it has a reader). The supervisor (as it reads job logs and
hashes outputs) and the web workers (listing, files, zip, RO-Crate) must open none."""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import Server

PLANTING_TOOL = """\
cwlVersion: v1.2
class: CommandLineTool
baseCommand: [sh, -c]
inputs:
  host: {type: string}
arguments:
  # Backquotes: $(...) is CWL's own parameter reference.
  - valueFrom: |
      root=`pwd`
      while [ ! -d "$root/job-logs" ] && [ "$root" != / ]; do root=`dirname "$root"`; done
      mv "$root/job-logs" "$root/job-logs.real"
      ln -s $(inputs.host) "$root/job-logs"
      ln -s $(inputs.host) "$root/outputs/planted" && echo planted > "$root/outputs/planted.ok"
      sleep 4
      rm "$root/job-logs"
      mv "$root/job-logs.real" "$root/job-logs"
      echo done > out.txt
outputs:
  out: {type: File, outputBinding: {glob: out.txt}}
"""


class OpenWatch:
    """inotify on the host directory: every open of it, or of anything in it, by anyone."""

    IN_OPEN = 0x20
    IN_ACCESS = 0x01

    def __init__(self, directory: Path) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        wd = self.libc.inotify_add_watch(self.fd, str(directory).encode(), self.IN_OPEN | self.IN_ACCESS)
        assert wd >= 0, os.strerror(ctypes.get_errno())

    def opened(self) -> list[str]:
        """What was opened or read since the watch began ("." for the directory itself)."""
        seen = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return seen
            offset = 0
            while offset < len(data):
                _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode()
                seen.append(name or ".")
                offset += 16 + length

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def host_dir(tmp_path: Path) -> Iterator[tuple[Path, OpenWatch]]:
    host = tmp_path / "host"
    host.mkdir()
    for fifo in ("toil-job.log", "secret.fifo"):
        os.mkfifo(host / fifo)
    (host / "secret.txt").write_text("host secret\n")
    watch = OpenWatch(host)
    yield host, watch
    watch.close()


def test_a_run_cannot_make_the_service_open_host_files(server: Server, host_dir: tuple[Path, OpenWatch]) -> None:
    host, watch = host_dir
    run_id = server.submit_cwl(("plant.cwl", PLANTING_TOOL), {"host": str(host)})
    assert server.wait(run_id, timeout=180) == "COMPLETE", server.get(f"/runs/{run_id}").text
    outdir = server.data_dir / "runs" / run_id / "outputs"
    assert (outdir / "planted.ok").is_file(), "the step should have planted its link"
    # A run with a filesystem of its own is copied out of it as it ends, links left behind
    # (volumes.settle); without one the link is still there. Either way nothing is served.
    assert (outdir / "planted").is_symlink() or not (outdir / "planted").exists()
    # Every way the web workers read outputs, through the planted link and around it.
    for path in ("outputs/planted/secret.fifo", "outputs/planted/secret.txt", "outputs/planted"):
        response = server.get(f"/runs/{run_id}/{path}")
        assert response.status_code == 404, (path, response.status_code, response.text[:200])
    listing = server.get(f"/runs/{run_id}/outputs").json()
    assert "planted" not in [entry["name"] for entry in listing["entries"]]
    for archive in ("outputs.zip", "ro-crate"):
        body = requests.get(f"{server.api}/runs/{run_id}/{archive}", timeout=60)
        assert body.status_code == 200 and b"host secret" not in body.content
    opened = watch.opened()
    assert opened == [], f"the service opened the host directory or files in it: {sorted(set(opened))}"
