"""files/: a run's directory layout, the confined opening every read of it goes through, and
its outputs as a client fetches them (listing, ETag, zip). Real files in a temporary
directory; the planted links and FIFOs are what a workflow could leave there."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from wes_gateway.config import Settings
from wes_gateway.errors import NotFound
from wes_gateway.files import beneath, checksums, outputs
from wes_gateway.files.paths import RUN_OWNED_DIRS, RunPaths, hidden_name


@pytest.fixture
def run(tmp_path: Path) -> RunPaths:
    """A run directory as the service makes it: its own directories, a private control one."""
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir()
    for name in RUN_OWNED_DIRS:
        (paths.root / name).mkdir()
    paths.control.mkdir(mode=0o700)
    return paths


def test_the_layout_of_a_run_is_found_from_its_id(settings: Settings) -> None:
    paths = RunPaths.of(settings, "abc")
    assert paths.root == settings.runs_dir / "abc"
    assert paths.jobstore == paths.root / "jobstore"
    assert paths.outdir == paths.root / "outputs"
    # The supervisor's own records are under control/, which the sandbox hides from the run.
    assert {paths.leader_file.parent, paths.result.parent, paths.uid_file.parent, paths.inputs.parent} == {
        paths.control
    }


def test_a_run_keeps_a_legacy_leader_file_only_until_it_has_a_control_directory(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path / "r")
    paths.root.mkdir()
    assert paths.leader_files == (paths.leader_file, paths.root / "leader.json")
    paths.control.mkdir()
    # From then on nothing the run wrote beside it (its own leader.json) is believed.
    assert paths.leader_files == (paths.leader_file,)


def test_hidden_names_are_stable_keyed_and_give_no_run_id_away(tmp_path: Path) -> None:
    from wes_gateway.config import load_settings

    one = load_settings({}, data_dir=tmp_path / "a")
    other = load_settings({}, data_dir=tmp_path / "b")
    name = hidden_name(one, "run-1")
    assert name == hidden_name(one, "run-1") and len(name) == 32 and "run-1" not in name
    assert name != hidden_name(one, "run-2")
    assert name != hidden_name(other, "run-1")  # another data directory, another key
    assert (tmp_path / "a" / "names.key").stat().st_mode & 0o777 == 0o600


def test_an_untouched_run_directory_has_nothing_replaced(run: RunPaths) -> None:
    assert run.replaced() == []


def test_a_directory_replaced_by_a_link_is_found_and_removed_not_followed(run: RunPaths, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep")
    (run.root / "work").rmdir()
    (run.root / "work").symlink_to(elsewhere)
    (run.root / "home").rmdir()
    (run.root / "home").write_text("a file where a directory was")
    assert run.replaced() == ["work", "home"]
    run.remove_replaced(run.replaced())
    assert not (run.root / "work").exists() and not (run.root / "home").exists()
    assert (elsewhere / "precious").read_text() == "keep"  # the link went, not what it named
    assert run.replaced() == []


def test_a_planted_parent_hides_its_children_and_a_planted_directory_is_moved_aside(run: RunPaths) -> None:
    (run.root / "tmp" / ".podman").rmdir()
    (run.root / "tmp").rename(run.root / "tmp-real")
    (run.root / "tmp").symlink_to(run.root / "tmp-real")
    assert run.replaced() == ["tmp"]  # tmp/.podman is not looked for through the link
    # A control directory others can read is not the service's alone.
    os.chmod(run.control, 0o755)
    assert run.replaced() == ["control", "tmp"]
    run.remove_replaced(["control"])
    assert (run.root / "control.refused").is_dir() and not run.control.exists()


def test_confined_opening_refuses_dot_dot_links_and_fifos(run: RunPaths, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("host")
    (run.root / "stdout.log").write_text("ok")
    fd = beneath.open_fd(run.root, "stdout.log")
    with os.fdopen(fd, "rb") as handle:
        assert handle.read() == b"ok"
    for name in ("../secret", "/etc/passwd", "work/../../secret"):
        with pytest.raises(beneath.Outside):
            beneath.open_fd(run.root, name)
    (run.root / "work" / "link").symlink_to(tmp_path / "secret")
    os.mkfifo(run.root / "work" / "fifo")
    with pytest.raises(OSError):
        beneath.open_fd(run.root, "work/link")
    with pytest.raises(beneath.Outside):
        beneath.open_fd(run.root, "work/fifo")  # would block a plain open; O_PATH does not
    # The protection off: a plain open follows the link out of the run.
    assert (run.root / "work" / "link").read_text() == "host"


def test_a_link_on_the_way_is_not_crossed(run: RunPaths, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f").write_text("x")
    (run.root / "outputs" / "dir").symlink_to(tmp_path / "outside")
    with pytest.raises(OSError):
        beneath.open_fd(run.root, "outputs/dir/f")
    with pytest.raises(OSError):
        beneath.path_fd(run.root, "outputs/dir", directory=True)
    assert beneath.names(run.root, "outputs/dir") == []


def test_run_files_are_read_only_when_plain_and_inside(run: RunPaths, tmp_path: Path) -> None:
    (tmp_path / "db.json").write_text(json.dumps({"exit_code": 0}))
    run.result.write_text(json.dumps({"exit_code": 3}))
    assert run.read_result() == 3
    run.result.unlink()
    run.result.symlink_to(tmp_path / "db.json")
    assert run.read_result() is None  # a link is never read, even to a well-formed result
    assert run.open_file(tmp_path / "db.json") is None  # outside the run by name
    run.outputs_json.write_text("[1, 2]")
    assert run.read_outputs() == {}
    run.inputs.write_text(json.dumps(["/data/a", 3, "/data/b"]))
    assert run.read_inputs() == ["/data/a", "/data/b"]


def test_walking_lists_plain_files_only(run: RunPaths, tmp_path: Path) -> None:
    out = run.outdir
    (out / "a.txt").write_text("aa")
    (out / "sub").mkdir()
    (out / "sub" / "b.txt").write_text("b")
    (out / "link").symlink_to(tmp_path)
    os.mkfifo(out / "fifo")
    found = dict(beneath.files(run.root, "outputs"))
    assert sorted(found) == ["a.txt", "sub/b.txt"]
    assert found["a.txt"].st_size == 2


def test_output_references_get_urls_only_inside_the_output_directory(run: RunPaths) -> None:
    root = os.path.realpath(run.outdir)
    document = {
        "out": {"class": "File", "location": f"file://{root}/dir/a b.txt"},
        "other": {"class": "File", "path": "/etc/passwd"},
        "sneaky": {"class": "File", "path": f"{root}/../control/result.json"},
        "many": [{"class": "Directory", "path": f"{root}/d"}],
        "n": 1,
    }
    shown = outputs.with_urls(document, run, "http://h/outputs")
    assert shown["out"]["url"] == "http://h/outputs/dir/a%20b.txt"
    assert "url" not in shown["other"] and "url" not in shown["sneaky"]
    assert shown["many"][0]["url"] == "http://h/outputs/d"
    assert shown["n"] == 1 and "url" not in document["out"]  # the input is not changed


def test_opening_an_output_lists_directories_and_refuses_escapes(run: RunPaths, tmp_path: Path) -> None:
    (run.outdir / "d").mkdir()
    (run.outdir / "d" / "f.txt").write_text("hello")
    (run.outdir / "d" / "link").symlink_to(tmp_path)
    entries = outputs.open_output(run, "d")
    assert entries == [outputs.Entry("f.txt", False, 5)]  # the link is not listed
    assert outputs.listing("d/", entries, "http://h/o")["entries"][0]["url"] == "http://h/o/d/f.txt"
    opened = outputs.open_output(run, "d/f.txt")
    assert not isinstance(opened, list)
    handle, info = opened
    with handle:
        assert handle.read() == b"hello" and info.st_size == 5
    for bad in ("../control", "d/link", "d/../../stdout.log", "missing"):
        with pytest.raises(NotFound):
            outputs.open_output(run, bad)


def test_an_etag_changes_when_the_file_does(run: RunPaths) -> None:
    path = run.outdir / "f"
    path.write_text("one")
    first = outputs.etag(path.stat())
    assert first == outputs.etag(path.stat())
    path.write_text("three")
    assert outputs.etag(path.stat()) != first


def test_a_zip_of_the_outputs_holds_their_bytes_and_skips_what_cannot_be_opened(run: RunPaths) -> None:
    (run.outdir / "a.txt").write_bytes(b"A" * (outputs.CHUNK + 10))
    (run.outdir / "sub").mkdir()
    (run.outdir / "sub" / "b.txt").write_text("bee")
    listed = outputs.files_under(run, run.outdir)
    items: list[tuple[str, object]] = [("README", b"readme"), *outputs.all_outputs(run, listed)]
    items.append(("gone", lambda: outputs.output_file(run, "nothing-here")))
    chunks = list(outputs.zip_stream(items))  # type: ignore[arg-type]
    assert len(chunks) > 2  # sent as it is made, not built whole first
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert archive.namelist() == ["README", "a.txt", "sub/b.txt"]
    assert archive.read("a.txt") == b"A" * (outputs.CHUNK + 10)
    assert archive.read("README") == b"readme"


def test_checksums_are_recorded_within_the_budget_and_dropped_when_a_file_changes(run: RunPaths) -> None:
    (run.outdir / "small").write_bytes(b"x" * 10)
    (run.outdir / "big").write_bytes(b"y" * 1000)
    hashed = checksums.record_checksums(run, max_file_bytes=100, max_total_bytes=1_000_000)
    assert hashed == 10
    found = checksums.checksums(run)
    assert found["small"]["sha256"] == hashlib.sha256(b"x" * 10).hexdigest()
    assert "sha256" not in found["big"] and found["big"]["size"] == 1000
    os.utime(run.outdir / "small", ns=(1, 1))  # the file is not what was hashed any more
    assert "sha256" not in checksums.checksums(run)["small"]


def test_relative_to_judges_names_alone(tmp_path: Path) -> None:
    assert beneath.relative_to(tmp_path, tmp_path / "a" / "b") == PurePosixPath("a/b")
    assert beneath.relative_to(tmp_path, tmp_path / "a" / ".." / ".." / "x") is None
