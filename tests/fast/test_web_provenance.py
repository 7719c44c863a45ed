"""The RO-Crate metadata of a run (web/provenance.py), built in process from a submitted run's
record and directory."""

from __future__ import annotations

from typing import Any

from wes_gateway import store
from wes_gateway.config import Settings
from wes_gateway.files.paths import RunPaths
from wes_gateway.web import provenance


def graph(metadata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entity["@id"]: entity for entity in metadata["@graph"]}


def test_the_crate_names_the_attached_workflow_its_language_and_actions(settings: Settings, submit: Any) -> None:
    run_id = submit().json()["run_id"]
    run = store.get_run(run_id)
    assert run is not None
    task = store.Task(
        run_id=run_id, task_id="t1", name="echo", exit_code=0, container={"image": "quay.io/biocontainers/x:1.0"}
    )
    metadata = provenance.build(run, [task], RunPaths.of(settings, run_id), "9.6.0")
    entities = graph(metadata)
    root = entities["./"]
    assert root["mainEntity"] == {"@id": "workflow/echo.cwl"}
    assert {item["@id"] for item in root["conformsTo"]} == set(provenance.PROFILES.values())
    workflow = entities["workflow/echo.cwl"]
    assert "ComputationalWorkflow" in workflow["@type"]
    language = entities[workflow["programmingLanguage"]["@id"]]
    assert language["@type"] == "ComputerLanguage" and language["version"] == "v1.2"
    assert entities["inputs/params.json"]["name"] == "workflow_params"
    run_action = entities[f"#run-{run_id}"]
    assert run_action["instrument"] == {"@id": "workflow/echo.cwl"}
    assert run_action["description"] == "WES state QUEUED"
    step = entities["#task-t1"]
    assert step["actionStatus"] == {"@id": "http://schema.org/CompletedActionStatus"}
    image = entities[step["containerImage"]["@id"]]
    assert (image["registry"], image["name"], image["tag"]) == ("quay.io", "biocontainers/x", "1.0")
    orchestrate = entities[f"#orchestrate-{run_id}"]
    assert orchestrate["instrument"] == {"@id": "https://toil.ucsc-cgl.org/"}
    assert entities["https://toil.ucsc-cgl.org/"]["version"] == "9.6.0"


def test_a_workflow_by_url_is_named_by_it(settings: Settings, submit: Any) -> None:
    run_id = submit().json()["run_id"]
    run = store.get_run(run_id)
    assert run is not None
    run.request = {**run.request, "workflow_url": "https://example.org/wf.cwl"}
    metadata = provenance.build(run, [], RunPaths.of(settings, run_id), "9.6.0")
    entities = graph(metadata)
    assert entities["./"]["mainEntity"] == {"@id": "https://example.org/wf.cwl"}
    assert "ComputationalWorkflow" in entities["https://example.org/wf.cwl"]["@type"]
    assert "ComputationalWorkflow" not in entities["workflow/echo.cwl"].get("@type", [])
