"""Outputs a remote client can fetch (extension): one file with Range and ETag, directory
listings, the whole set as a streamed zip, and a url beside every File and Directory."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
import requests
from conftest import DATA, Server


@pytest.fixture(scope="module")
def made(server: Server) -> tuple[str, dict]:
    run_id = server.submit_ok(
        {"make_dir.cwl": DATA / "make_dir.cwl"},
        workflow_url="make_dir.cwl",
        workflow_type="CWL",
        workflow_type_version="v1.2",
        workflow_params={"text": "hello outputs"},
    )
    assert server.wait(run_id, timeout=180) == "COMPLETE", server.get(f"/runs/{run_id}").text
    return run_id, server.get(f"/runs/{run_id}").json()


def test_every_file_and_directory_has_a_url(server: Server, made: tuple[str, dict]) -> None:
    run_id, log = made
    top, folder = log["outputs"]["top"], log["outputs"]["dir"]
    assert top["url"] == f"{server.api}/runs/{run_id}/outputs/top%20file.txt"
    assert folder["url"] == f"{server.api}/runs/{run_id}/outputs/d"
    # What CWL clients compare is still there, unchanged.
    assert top["basename"] == "top file.txt" and top["location"].startswith("file://")
    listed = {item["basename"]: item for item in folder["listing"]}
    assert listed["a.txt"]["url"].endswith("/outputs/d/a.txt")


def test_one_file_with_length_etag_and_range(server: Server, made: tuple[str, dict]) -> None:
    _, log = made
    big = next(item for item in log["outputs"]["dir"]["listing"] if item["basename"] == "sub")
    url = next(item for item in big["listing"] if item["basename"] == "big.bin")["url"]
    on_disk = Path(log["outputs"]["dir"]["path"], "sub", "big.bin").read_bytes()
    whole = requests.get(url, timeout=30)
    assert whole.status_code == 200 and whole.content == on_disk
    assert int(whole.headers["Content-Length"]) == len(on_disk) == 300000
    assert whole.headers["Accept-Ranges"] == "bytes"
    tag = whole.headers["ETag"]
    part = requests.get(url, headers={"Range": "bytes=1000-1999"}, timeout=30)
    assert part.status_code == 206 and part.content == on_disk[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(on_disk)}"
    tail = requests.get(url, headers={"Range": "bytes=299990-"}, timeout=30)
    assert tail.status_code == 206 and tail.content == on_disk[-10:]
    assert requests.get(url, headers={"If-None-Match": tag}, timeout=30).status_code == 304
    beyond = requests.get(url, headers={"Range": "bytes=400000-"}, timeout=30)
    assert beyond.status_code == 416 and beyond.json()["status_code"] == 416


def test_directories_list_as_json(server: Server, made: tuple[str, dict]) -> None:
    run_id, _ = made
    top = server.get(f"/runs/{run_id}/outputs").json()
    assert {entry["name"]: entry["class"] for entry in top["entries"]} == {"d": "Directory", "top file.txt": "File"}
    inner = requests.get(next(e["url"] for e in top["entries"] if e["name"] == "d"), timeout=30).json()
    assert inner["path"] == "d"
    assert [(e["name"], e["class"], e.get("size")) for e in inner["entries"]] == [
        ("a.txt", "File", 13),
        ("sub", "Directory", None),
    ]


def test_all_outputs_as_a_zip(server: Server, made: tuple[str, dict]) -> None:
    run_id, log = made
    response = server.get(f"/runs/{run_id}/outputs.zip")
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    outdir = Path(log["outputs"]["top"]["path"]).parent
    assert sorted(archive.namelist()) == ["d/a.txt", "d/sub/big.bin", "top file.txt"]
    for name in archive.namelist():
        assert archive.read(name) == (outdir / name).read_bytes()


def test_nothing_outside_the_outputs_is_served(server: Server, made: tuple[str, dict]) -> None:
    run_id, log = made
    outdir = Path(log["outputs"]["top"]["path"]).parent
    # A workflow could leave links behind in its outputs: they are neither served nor zipped.
    os.symlink("/etc/hostname", outdir / "planted")
    os.symlink(outdir.parent / "params.json", outdir / "d" / "params-link")
    try:
        for path in ("planted", "d/params-link", "..%2Fparams.json", "../params.json", "d/../../params.json"):
            response = requests.get(f"{server.api}/runs/{run_id}/outputs/{path}", timeout=30)
            assert response.status_code == 404, (path, response.status_code, response.text[:200])
            assert response.json()["status_code"] == 404
        names = zipfile.ZipFile(io.BytesIO(server.get(f"/runs/{run_id}/outputs.zip").content)).namelist()
        assert "planted" not in names and "d/params-link" not in names
        listing = server.get(f"/runs/{run_id}/outputs").json()
        assert "planted" not in {entry["name"] for entry in listing["entries"]}
    finally:
        (outdir / "planted").unlink()
        (outdir / "d" / "params-link").unlink()


def test_no_outputs_before_complete_and_unknown_runs(server: Server) -> None:
    run_id = server.submit_ok(
        {"sleep.cwl": DATA / "sleep.cwl"},
        workflow_url="sleep.cwl",
        workflow_type="CWL",
        workflow_type_version="v1.2",
        workflow_params={"seconds": 60},
    )
    try:
        for path in (f"/runs/{run_id}/outputs", f"/runs/{run_id}/outputs.zip", f"/runs/{run_id}/outputs/x"):
            response = server.get(path)
            assert response.status_code == 404 and "no outputs" in response.json()["msg"]
        assert server.get("/runs/nope/outputs.zip").status_code == 404
    finally:
        server.post(f"/runs/{run_id}/cancel")


def test_logs_honour_range(server: Server, made: tuple[str, dict]) -> None:
    _, log = made
    url = log["run_log"]["stderr"]
    whole = requests.get(url, timeout=30).content
    assert len(whole) > 100
    part = requests.get(url, headers={"Range": "bytes=50-"}, timeout=30)
    assert part.status_code == 206 and part.content == whole[50:]


def test_delete_keeps_a_tombstone(server: Server) -> None:
    run_id = server.submit_ok(
        {"make_dir.cwl": DATA / "make_dir.cwl"},
        workflow_url="make_dir.cwl",
        workflow_type="CWL",
        workflow_type_version="v1.2",
        workflow_params={"text": "to be deleted"},
    )
    # Not while it runs (or waits).
    early = requests.delete(f"{server.api}/runs/{run_id}", timeout=30)
    if early.status_code != 200:  # it may already have finished on a fast machine
        assert early.status_code == 409 and early.json()["status_code"] == 409
    assert server.wait(run_id, timeout=180) == "COMPLETE"
    run_dir = Path(server.get(f"/runs/{run_id}").json()["outputs"]["top"]["path"]).parent.parent
    assert run_dir.is_dir()
    for _ in range(2):  # idempotent
        response = requests.delete(f"{server.api}/runs/{run_id}", timeout=30)
        assert response.status_code == 200 and response.json() == {"run_id": run_id}
    assert not run_dir.exists()
    log = server.get(f"/runs/{run_id}").json()
    assert log["state"] == "COMPLETE" and log["outputs"] == {} and log["deleted_at"]
    assert server.get(f"/runs/{run_id}/status").json()["state"] == "COMPLETE"
    assert server.get(f"/runs/{run_id}/tasks").json()["task_logs"] == []
    gone = server.get(f"/runs/{run_id}/outputs.zip")
    assert gone.status_code == 404 and "deleted" in gone.json()["msg"]
    assert requests.get(log["run_log"]["stdout"], timeout=30).content == b""
    assert requests.delete(f"{server.api}/runs/no-such-run", timeout=30).status_code == 404


def test_a_large_zip_streams_in_constant_memory(tmp_path: Path) -> None:
    """1.5 GB of outputs through one web worker: its peak memory barely moves."""
    from conftest import peak_rss, record_run, start_server, stop_server, worker_pid

    from wes_gateway import store

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    store.open_database(f"sqlite:///{data_dir / 'wes.sqlite3'}")
    store.upgrade(store.database.obj)
    run_id = record_run(state="COMPLETE")
    store.database.close()
    outdir = data_dir / "runs" / run_id / "outputs"
    outdir.mkdir(parents=True)
    size = 1536 * 1024 * 1024
    with open(outdir / "big.bin", "wb") as handle:  # sparse: no disk, all zeros
        handle.truncate(size)
    (outdir / "small.txt").write_text("small\n")
    server = start_server(data_dir, {"WES_GATEWAY_SUPERVISOR": "off"}, workers=1)
    try:
        pid = worker_pid(server)
        server.get("/runs")  # imports and caches warm before the baseline
        before = peak_rss(pid)
        received = 0
        with requests.get(f"{server.api}/runs/{run_id}/outputs.zip", stream=True, timeout=300) as response:
            assert response.status_code == 200
            tail = b""
            for chunk in response.iter_content(1024 * 1024):
                received += len(chunk)
                tail = (tail + chunk)[-65536:]
        growth = peak_rss(pid) - before
        assert received > size
        assert b"small.txt" in tail and b"big.bin" in tail  # the central directory came last
        assert growth < 64 * 1024 * 1024, f"the worker grew by {growth / 1e6:.0f} MB"
        print(f"zip of {received / 1e9:.2f} GB: worker peak RSS grew {growth / 1e6:.1f} MB")
    finally:
        stop_server(server)
