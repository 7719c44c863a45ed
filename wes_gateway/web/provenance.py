"""A Workflow Run RO-Crate (w3id.org/ro/wfrun: process, workflow and provenance run crate)
of a finished run, built with the ``rocrate`` package from what the run recorded, for CWL
and WDL alike: the workflow and its attachments, the inputs, the outputs with their sizes and
sha256, the run's times, state, engine and version, and one action per task.

The crate is made when it is asked for, from the store and the run directory, so it is the
same after a restart. The output checksums are worked out by the supervisor as the run
completes (``files.checksums``, within a byte budget) and kept in the run's control
directory (the service's own), keyed by each file's size and modification time: a request
never hashes, so a run's terabyte of outputs cannot hold a web worker before its first byte.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from wes_gateway import store
from wes_gateway.engines import ENGINES, engine_for
from wes_gateway.files import outputs
from wes_gateway.files.checksums import checksums
from wes_gateway.files.outputs import Opened
from wes_gateway.files.paths import RunPaths
from wes_gateway.intake import drs, trs

PROFILES = {
    "process": "https://w3id.org/ro/wfrun/process/0.5",
    "workflow": "https://w3id.org/ro/wfrun/workflow/0.5",
    "provenance": "https://w3id.org/ro/wfrun/provenance/0.5",
    "wfcrate": "https://w3id.org/workflowhub/workflow-ro-crate/1.0",
}
_STATUS = {store.COMPLETE: "CompletedActionStatus", store.CANCELED: "FailedActionStatus"}


def build(run: store.Run, run_tasks: list[store.Task], paths: RunPaths, engine_version: str) -> dict[str, Any]:
    """The crate's ro-crate-metadata.json, as a dict."""
    from rocrate.rocrate import ROCrate

    crate = ROCrate()
    _describe_root(crate, run)
    language = _language(crate, run)
    workflow = _workflow(crate, run, paths, language)
    crate.root_dataset["mainEntity"] = {"@id": workflow.id}
    _actions(crate, run, run_tasks, paths, workflow, engine_version)
    metadata: dict[str, Any] = crate.metadata.generate()
    return metadata


def _describe_root(crate: Any, run: store.Run) -> None:
    from rocrate.model import ContextEntity

    crate.root_dataset["name"] = f"Run {run.run_id} of {run.request.get('workflow_url', 'a workflow')}"
    crate.root_dataset["conformsTo"] = [{"@id": profile} for profile in PROFILES.values()]
    crate.root_dataset["license"] = "https://spdx.org/licenses/CC-BY-4.0"
    for profile, identifier in PROFILES.items():
        crate.add(ContextEntity(crate, identifier, properties={"@type": ["CreativeWork", "Profile"], "name": profile}))


def _language(crate: Any, run: store.Run) -> Any:
    """The workflow's language, as its engine names it in a crate."""
    from rocrate.model import ContextEntity

    engine = engine_for(run.workflow_type) or ENGINES["CWL"]
    language_id, language_name, language_url = engine.crate_language
    return crate.add(
        ContextEntity(
            crate,
            language_id,
            properties={
                "@type": "ComputerLanguage",
                "name": language_name,
                "url": {"@id": language_url},
                "version": run.request.get("workflow_type_version", ""),
            },
        )
    )


_WORKFLOW_TYPES = ["File", "SoftwareSourceCode", "ComputationalWorkflow"]


def _workflow(crate: Any, run: store.Run, paths: RunPaths, language: Any) -> Any:
    """The attachments under workflow/ (DRS inputs with where they came from), and the
    workflow: the attached file, or the URL it was fetched from; from a TRS server, pinned."""
    from rocrate.model import ContextEntity

    attachments = [name for name, _info in outputs.files_under(paths, paths.attachments)]
    workflow_url = str(run.request.get("workflow_url", "")).split("#", 1)[0]
    pin = trs.load(paths)  # a workflow fetched from a TRS server: its primary file, and whence
    if pin is not None:
        workflow_url = str(pin.get("primary"))
    workflow = None
    from_drs = {str(item.get("file")): item for item in drs.load(paths)}  # inputs fetched by DRS URI
    for name in attachments:
        properties: dict[str, Any] = {"name": name}
        if name in from_drs:
            fetched = from_drs[name]
            properties.update({"sameAs": {"@id": str(fetched.get("uri"))}, "sha256": str(fetched.get("sha256"))})
            if fetched.get("checksum"):
                properties["checksum"] = str(fetched.get("checksum"))
        if name == workflow_url:
            properties.update({"@type": _WORKFLOW_TYPES, "programmingLanguage": {"@id": language.id}})
        entity = crate.add_file(None, dest_path=f"workflow/{name}", properties=properties)
        if name == workflow_url:
            workflow = entity
    if workflow is None:  # a workflow fetched by URL: named by it
        properties = {"@type": _WORKFLOW_TYPES, "programmingLanguage": {"@id": language.id}}
        workflow = crate.add(ContextEntity(crate, str(run.request.get("workflow_url")), properties=properties))
    if pin is not None:
        workflow["url"] = str(pin.get("descriptor_url"))
        workflow["sameAs"] = {"@id": str(pin.get("trs_uri"))}
        workflow["version"] = str(pin.get("version"))
        workflow["identifier"] = str(pin.get("trs_id"))
        workflow["sha256"] = str((pin.get("files") or {}).get(workflow_url, ""))
    return workflow


def _actions(
    crate: Any, run: store.Run, run_tasks: list[store.Task], paths: RunPaths, workflow: Any, engine_version: str
) -> None:
    """The inputs, the engine, the outputs with their sizes and sha256, the run's action,
    one action per task, and the engine's action that orchestrated them."""
    from rocrate.model import ContextEntity

    inputs = crate.add_file(
        None,
        dest_path="inputs/params.json",
        properties={"name": "workflow_params", "encodingFormat": "application/json"},
    )
    engine = crate.add(
        ContextEntity(
            crate,
            "https://toil.ucsc-cgl.org/",
            properties={"@type": "SoftwareApplication", "name": "Toil", "version": engine_version},
        )
    )
    sums = checksums(paths) if run.state == store.COMPLETE else {}
    results = [
        crate.add_file(
            None,
            dest_path=f"outputs/{name}",
            properties={"contentSize": entry["size"], **({"sha256": entry["sha256"]} if "sha256" in entry else {})},
        )
        for name, entry in sums.items()
    ]
    run_action = crate.add_action(
        workflow,
        identifier=f"#run-{run.run_id}",
        object=[inputs],
        result=results,
        properties={
            "@type": "CreateAction",
            "name": f"Run {run.run_id}",
            "startTime": run.start_time,
            "endTime": run.end_time,
            "actionStatus": {"@id": f"http://schema.org/{_STATUS.get(run.state, 'FailedActionStatus')}"},
            "exitCode": run.exit_code,
            "description": f"WES state {run.state}",
        },
    )
    steps = _task_actions(crate, run_tasks, workflow)
    crate.add_action(
        engine,
        identifier=f"#orchestrate-{run.run_id}",
        object=[inputs],
        result=[run_action],
        properties={
            "@type": "OrganizeAction",
            "name": f"Toil {engine_version} running {run.run_id}",
            "startTime": run.start_time,
            "endTime": run.end_time,
            "object": [{"@id": inputs.id}, *({"@id": step.id} for step in steps)],
        },
    )


def _task_actions(crate: Any, run_tasks: list[store.Task], workflow: Any) -> list[Any]:
    steps = []
    images: dict[str, Any] = {}
    for task in run_tasks:
        image = _container_image(crate, images, task.container)
        status = "CompletedActionStatus" if task.exit_code == 0 else "FailedActionStatus"
        steps.append(
            crate.add_action(
                workflow,
                identifier=f"#task-{task.task_id}",
                properties={
                    **({"containerImage": {"@id": image.id}} if image is not None else {}),
                    "@type": "CreateAction",
                    "name": task.name,
                    "startTime": task.start_time,
                    "endTime": task.end_time,
                    "exitCode": task.exit_code,
                    "actionStatus": {"@id": "http://schema.org/" + status},
                },
            )
        )
    return steps


def _container_image(crate: Any, images: dict[str, Any], record: Any) -> Any:
    """The Workflow Run Crate's ContainerImage for a task's image record, once per image."""
    from rocrate.model import ContextEntity

    if not isinstance(record, dict) or not record.get("image"):
        return None
    reference = str(record["image"])
    digest = str(record.get("digest") or "")
    key = f"{digest or reference} {record.get('source', '')}"
    if key not in images:
        name, tag = reference, ""
        if "@" not in reference and ":" in reference.rsplit("/", 1)[-1]:
            name, tag = reference.rsplit(":", 1)
        registry, _, repository = name.partition("/")
        if not repository or ("." not in registry and ":" not in registry and registry != "localhost"):
            registry, repository = "docker.io", name
        properties: dict[str, Any] = {
            "@type": "ContainerImage",
            "additionalType": {"@id": "https://w3id.org/ro/terms/workflow-run#DockerImage"},
            "name": repository,
            "registry": registry,
        }
        if tag:
            properties["tag"] = tag
        if digest.startswith("sha256:"):
            properties["sha256"] = digest.removeprefix("sha256:")
        if record.get("source") == "claimed":
            properties["description"] = "named by the run's own log; not verified against the service's image store"
        images[key] = crate.add(ContextEntity(crate, f"#container-image-{len(images) + 1}", properties=properties))
    return images[key]


def zip_items(paths: RunPaths, metadata: dict[str, Any]) -> Iterator[tuple[str, Callable[[], Opened | None] | bytes]]:
    """What the zip holds: the metadata, then each file the crate names, read from the run."""
    yield "ro-crate-metadata.json", json.dumps(metadata, indent=2).encode()
    for name, _info in outputs.files_under(paths, paths.attachments):
        yield f"workflow/{name}", partial(outputs.run_file, paths, paths.attachments / name)
    yield "inputs/params.json", partial(outputs.run_file, paths, paths.params)
    for name, opener in outputs.all_outputs(paths, outputs.files_under(paths, paths.outdir)):
        yield f"outputs/{name}", opener


def size(paths: RunPaths) -> int:
    """The bytes of files the crate's zip holds (its metadata aside)."""
    return sum(
        info.st_size
        for directory in (paths.attachments, paths.outdir)
        for _name, info in outputs.files_under(paths, directory)
    )
