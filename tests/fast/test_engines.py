"""The engines in process: checking a CWL or WDL document, finding an engine, the RO-Crate
language, and the leader's argv. Real cwltool and miniwdl on the documents of tests/data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from wes_gateway.config import Settings, load_settings
from wes_gateway.engines import ENGINES, engine_for, toil_argv
from wes_gateway.engines.base import ScratchAdmission
from wes_gateway.engines.cwl import CwlEngine
from wes_gateway.engines.wdl import WdlEngine
from wes_gateway.errors import BadRequest
from wes_gateway.files.paths import RunPaths

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture
def documents(tmp_path: Path) -> Path:
    """A copy of tests/data, which the admission (the input policy) confines the checks to."""
    copy = tmp_path / "data"
    shutil.copytree(DATA, copy, ignore=shutil.ignore_patterns("probe"))
    return copy


def test_a_good_cwl_workflow_is_checked_and_outlined(documents: Path) -> None:
    params, outline = CwlEngine().prepare(
        str(documents / "scatter.cwl"), {"messages": ["a", "b"]}, ScratchAdmission(str(documents))
    )
    assert params == {"messages": ["a", "b"]}
    assert outline == {"steps": [{"name": "say", "run": "echo.cwl", "scatter": True}]}


def test_a_cwl_input_file_goes_through_the_admission_as_a_uri(documents: Path) -> None:
    engine = CwlEngine()
    inside = {"f": {"class": "File", "path": str(documents / "echo.cwl")}}
    params, _ = engine.prepare(str(documents / "echo.cwl"), inside, ScratchAdmission(str(documents)))
    assert params["f"]["path"] == (documents / "echo.cwl").as_uri()
    outside = {"f": {"class": "File", "location": "file:///etc/passwd"}}
    with pytest.raises(BadRequest, match="may not read 'file:///etc/passwd'"):
        engine.prepare(str(documents / "echo.cwl"), outside, ScratchAdmission(str(documents)))


def test_a_cwl_document_with_a_bad_type_is_a_precise_bad_request(documents: Path) -> None:
    with pytest.raises(BadRequest) as caught:
        CwlEngine().prepare(str(documents / "invalid.cwl"), {"message": "x"}, ScratchAdmission(str(documents)))
    assert caught.value.msg.startswith("invalid CWL document:"), caught.value.msg
    assert "strnig" in caught.value.msg  # the word that is wrong, named


def test_a_cwl_run_outside_the_admitted_files_is_refused_unread(documents: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(documents / "echo.cwl", elsewhere / "echo.cwl")
    (documents / "echo.cwl").unlink()
    workflow = documents / "outside.cwl"
    workflow.write_text((documents / "scatter.cwl").read_text().replace("run: echo.cwl", f"run: {elsewhere}/echo.cwl"))
    with pytest.raises(BadRequest, match="^the CWL document refers to a file it may not read"):
        CwlEngine().prepare(str(workflow), {"messages": []}, ScratchAdmission(str(documents)))


def test_a_good_wdl_workflow_is_checked_and_outlined(documents: Path) -> None:
    infile = str(documents / "echo.cwl")
    params, outline = WdlEngine().prepare(
        str(documents / "wdl" / "chain.wdl"),
        {"chain.infile": infile, "chain.names": ["a"]},
        ScratchAdmission(str(documents)),
    )
    assert params == {"chain.infile": infile, "chain.names": ["a"]}
    assert outline == {"steps": [{"name": "count_chars"}, {"name": "greet"}, {"name": "shout"}], "name": "chain"}


def test_a_wdl_document_calling_no_such_task_is_a_precise_bad_request(documents: Path) -> None:
    with pytest.raises(BadRequest) as caught:
        WdlEngine().prepare(str(documents / "wdl" / "broken.wdl"), {}, ScratchAdmission(str(documents)))
    # Where (relative to the document's directory, line and column) and what.
    assert caught.value.msg.startswith("invalid WDL document: broken.wdl:4:"), caught.value.msg
    assert "missing_task" in caught.value.msg


def test_wdl_inputs_of_the_wrong_type_are_a_bad_request(documents: Path) -> None:
    with pytest.raises(BadRequest, match="^workflow_params: "):
        WdlEngine().prepare(
            str(documents / "wdl" / "chain.wdl"),
            {"chain.infile": str(documents / "echo.cwl"), "chain.names": {"not": "an array"}},
            ScratchAdmission(str(documents)),
        )


def test_a_wdl_file_input_outside_the_admitted_files_is_refused(documents: Path) -> None:
    with pytest.raises(BadRequest, match="may not read '/etc/passwd'"):
        WdlEngine().prepare(
            str(documents / "wdl" / "chain.wdl"),
            {"chain.infile": "/etc/passwd", "chain.names": []},
            ScratchAdmission(str(documents)),
        )


@pytest.mark.parametrize(
    ("workflow_type", "engine_type"), [("CWL", CwlEngine), ("cwl", CwlEngine), ("WDL", WdlEngine), ("Wdl", WdlEngine)]
)
def test_engine_for_a_language_in_any_case(workflow_type: str, engine_type: type) -> None:
    engine = engine_for(workflow_type)
    assert isinstance(engine, engine_type)
    assert engine is ENGINES[workflow_type.upper()]


@pytest.mark.parametrize("workflow_type", ["NFL", "", "CWL ", "SMK"])
def test_engine_for_an_unknown_language_is_none(workflow_type: str) -> None:
    assert engine_for(workflow_type) is None


def test_each_engine_names_its_language_as_workflow_ro_crate_does() -> None:
    assert {name: engine.crate_language for name, engine in ENGINES.items()} == {
        "CWL": (
            "https://w3id.org/workflowhub/workflow-ro-crate#cwl",
            "Common Workflow Language",
            "https://www.commonwl.org/",
        ),
        "WDL": (
            "https://w3id.org/workflowhub/workflow-ro-crate#wdl",
            "Workflow Description Language",
            "https://openwdl.org/",
        ),
    }


@pytest.fixture
def run_settings(tmp_path: Path) -> Settings:
    return load_settings({}, data_dir=tmp_path / "data", container_engine="none", run_max_cores=3, run_max_memory="2G")


def test_toil_argv_puts_the_run_first_and_the_client_last(run_settings: Settings, tmp_path: Path) -> None:
    paths = RunPaths(root=tmp_path / "run")
    argv = toil_argv("wf.cwl", paths, run_settings, ["--lang", "x"], ["--maxCores", "1"], restart=False)
    root = tmp_path / "run"
    assert argv == [
        "wf.cwl",
        str(root / "params.json"),
        "--jobStore",
        f"file:{root / 'jobstore'}",
        "--workDir",
        str(root / "work"),
        "--writeMessages",
        str(paths.messages),
        "--writeLogs",
        str(paths.job_logs),
        "--writeLogsFromAllJobs",
        "true",
        "--disableChaining",
        "true",
        "--batchSystem",
        "single_machine",
        "--maxCores",
        "3",
        "--maxMemory",
        str(2 * 2**30),  # in bytes: Toil would read "2G" as 2e9, less than one job of its default 2 GiB
        "--disableProgress",
        "--lang",
        "x",
        "--maxCores",  # the client's own, after ours: Toil takes the last
        "1",
    ]


def test_toil_argv_of_a_resumed_run_ends_with_restart(run_settings: Settings, tmp_path: Path) -> None:
    paths = RunPaths(root=tmp_path / "run")
    fresh = toil_argv("wf.cwl", paths, run_settings, [], [], restart=False)
    resumed = toil_argv("wf.cwl", paths, run_settings, [], [], restart=True)
    assert "--restart" not in fresh
    assert resumed == [*fresh, "--restart"]


def test_toil_argv_with_each_engines_own_flags(run_settings: Settings, tmp_path: Path) -> None:
    paths = RunPaths(root=tmp_path / "run")
    cwl = toil_argv("wf.cwl", paths, run_settings, CwlEngine().language_args(paths, run_settings), [], False)
    assert cwl[cwl.index("--outdir") + 1] == str(paths.outdir)
    assert cwl[cwl.index("--tmpdir-prefix") + 1] == f"{paths.tmp}/"
    assert "--relax-path-checks" in cwl
    wdl = toil_argv("wf.wdl", paths, run_settings, WdlEngine().language_args(paths, run_settings), [], False)
    assert wdl[wdl.index("--outputFile") + 1] == str(paths.outputs_json)
    assert wdl[wdl.index("--outputDirectory") + 1] == str(paths.outdir)
