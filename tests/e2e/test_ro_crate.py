"""GET /runs/{id}/ro-crate (extension): a Workflow Run RO-Crate zip, for CWL and WDL, that
loads with the rocrate package, names every output by its sha256, and is the same after a
restart of the service."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from urllib.parse import unquote

from conftest import DATA, start_server, stop_server
from rocrate.rocrate import ROCrate

W = DATA / "wdl"


def load_crate(content: bytes, into: Path) -> ROCrate:
    zipfile.ZipFile(io.BytesIO(content)).extractall(into)
    return ROCrate(str(into))


def test_crates_of_a_cwl_and_a_wdl_run_survive_a_restart(tmp_path: Path, engine_env: dict[str, str]) -> None:
    env = engine_env
    server = start_server(tmp_path / "data", env)
    try:
        cwl = server.submit_ok(
            {"make_dir.cwl": DATA / "make_dir.cwl"},
            workflow_url="make_dir.cwl",
            workflow_type="CWL",
            workflow_type_version="v1.2",
            workflow_params={"text": "crated"},
        )
        wdl = server.submit_ok(
            {"chain.wdl": W / "chain.wdl", "lib/tasks.wdl": W / "lib" / "tasks.wdl", "data/in.txt": b"abc\n"},
            workflow_url="chain.wdl",
            workflow_type="WDL",
            workflow_type_version="1.0",
            workflow_params={"chain.infile": "data/in.txt", "chain.names": ["ann"]},
        )
        assert server.get(f"/runs/{cwl}/ro-crate").status_code in (200, 404)  # 404 while it runs
        assert server.wait(cwl, timeout=180) == "COMPLETE"
        assert server.wait(wdl, timeout=400) == "COMPLETE", server.get(f"/runs/{wdl}").text
        first = {run: server.get(f"/runs/{run}/ro-crate").content for run in (cwl, wdl)}
    finally:
        stop_server(server)
    server = start_server(tmp_path / "data", env)  # the crates are the run's, not the process's
    try:
        for run_id, kind in ((cwl, "CWL"), (wdl, "WDL")):
            response = server.get(f"/runs/{run_id}/ro-crate")
            assert response.status_code == 200 and response.headers["Content-Type"] == "application/zip"
            crate = load_crate(response.content, tmp_path / f"crate-{run_id}")
            again = load_crate(first[run_id], tmp_path / f"before-{run_id}")
            assert {e.id for e in crate.get_entities()} == {e.id for e in again.get_entities()}
            root = crate.root_dataset
            profiles = {p["@id"] if isinstance(p, dict) else p.id for p in root["conformsTo"]}
            assert {"https://w3id.org/ro/wfrun/process/0.5", "https://w3id.org/ro/wfrun/workflow/0.5"} <= profiles
            workflow = crate.mainEntity
            assert "ComputationalWorkflow" in workflow.type
            assert workflow["programmingLanguage"]["name"].startswith({"CWL": "Common", "WDL": "Workflow"}[kind])
            actions = [e for e in crate.get_entities() if "CreateAction" in e.type]
            run_action = next(a for a in actions if a.id == f"#run-{run_id}")
            assert run_action["startTime"] and run_action["endTime"] and run_action["exitCode"] == 0
            status = run_action["actionStatus"]
            assert (status if isinstance(status, str) else status.id).endswith("CompletedActionStatus")
            engine = next(e for e in crate.get_entities() if "SoftwareApplication" in e.type)
            assert engine["name"] == "Toil" and engine["version"]
            tasks = server.get(f"/runs/{run_id}/tasks").json()["task_logs"]
            task_actions = [a for a in actions if a.id.startswith("#task-")]
            assert len(task_actions) == len(tasks) >= 1
            assert all("exitCode" in a.properties() and a["startTime"] for a in task_actions)
            # Every output file is in the crate, referenced by its checksum, and its bytes match.
            outdir = tmp_path / f"crate-{run_id}" / "outputs"
            files_on_disk = [p for p in outdir.rglob("*") if p.is_file()]
            assert files_on_disk
            results = {unquote(r.id): r for r in run_action["result"]}
            for path in files_on_disk:
                entity = results[f"outputs/{path.relative_to(outdir)}"]
                assert entity["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
                assert entity["contentSize"] == path.stat().st_size
            assert (tmp_path / f"crate-{run_id}" / "inputs" / "params.json").is_file()
            assert (tmp_path / f"crate-{run_id}" / unquote(workflow.id)).is_file()
    finally:
        stop_server(server)
