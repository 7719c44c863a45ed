"""A Workflow Run RO-Crate (w3id.org/ro/wfrun: process, workflow and provenance run crate)
of a finished run, built with the ``rocrate`` package from what the run recorded, for CWL
and WDL alike: the workflow and its attachments, the inputs, the outputs with their sizes and
sha256, the run's times, state, engine and version, and one action per task.

The crate is made when it is asked for, from the store and the run directory, so it is the
same after a restart. The output checksums are worked out once and kept in the run's
control directory (the service's own), keyed by each file's size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from . import outputs, store
from .outputs import Opened
from .paths import RunPaths

PROFILES = {
    "process": "https://w3id.org/ro/wfrun/process/0.5",
    "workflow": "https://w3id.org/ro/wfrun/workflow/0.5",
    "provenance": "https://w3id.org/ro/wfrun/provenance/0.5",
    "wfcrate": "https://w3id.org/workflowhub/workflow-ro-crate/1.0",
}
LANGUAGES = {
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
_STATUS = {store.COMPLETE: "CompletedActionStatus", store.CANCELED: "FailedActionStatus"}


def _checksums(paths: RunPaths, names: list[str]) -> dict[str, dict[str, Any]]:
    """sha256 and size of each output file, from the cache where the file is unchanged."""
    cache_path = paths.control / "checksums.json"
    cached = paths.read_json(cache_path) or {}
    found: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            opened = outputs.open_output(paths, name)
        except Exception:
            continue
        if isinstance(opened, list):
            continue
        handle, info = opened
        with handle:
            key = f"{info.st_size}:{info.st_mtime_ns}"
            entry = cached.get(name) if isinstance(cached, dict) else None
            if not (isinstance(entry, dict) and entry.get("key") == key):
                digest = hashlib.sha256()
                while block := handle.read(outputs.CHUNK):
                    digest.update(block)
                entry = {"key": key, "sha256": digest.hexdigest(), "size": info.st_size}
            found[name] = entry
    temporary = cache_path.with_suffix(".tmp")
    temporary.write_text(json.dumps(found))
    os.replace(temporary, cache_path)
    return found


def build(run: store.Run, run_tasks: list[store.Task], paths: RunPaths, engine_version: str) -> dict[str, Any]:
    """The crate's ro-crate-metadata.json, as a dict."""
    from rocrate.model import ContextEntity
    from rocrate.rocrate import ROCrate

    crate = ROCrate()
    crate.root_dataset["name"] = f"Run {run.run_id} of {run.request.get('workflow_url', 'a workflow')}"
    crate.root_dataset["conformsTo"] = [{"@id": profile} for profile in PROFILES.values()]
    crate.root_dataset["license"] = "https://spdx.org/licenses/CC-BY-4.0"
    for profile, identifier in PROFILES.items():
        crate.add(ContextEntity(crate, identifier, properties={"@type": ["CreativeWork", "Profile"], "name": profile}))
    language_id, language_name, language_url = LANGUAGES.get(run.workflow_type, LANGUAGES["CWL"])
    language = crate.add(
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
    attachments = outputs.files_under(paths.attachments)
    workflow_url = str(run.request.get("workflow_url", "")).split("#", 1)[0]
    workflow = None
    for name in attachments:
        properties: dict[str, Any] = {"name": name}
        if name == workflow_url:
            properties.update(
                {
                    "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow"],
                    "programmingLanguage": {"@id": language.id},
                }
            )
        entity = crate.add_file(None, dest_path=f"workflow/{name}", properties=properties)
        if name == workflow_url:
            workflow = entity
    if workflow is None:  # a workflow fetched by URL: named by it
        workflow = crate.add(
            ContextEntity(
                crate,
                str(run.request.get("workflow_url")),
                properties={
                    "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow"],
                    "programmingLanguage": {"@id": language.id},
                },
            )
        )
    crate.root_dataset["mainEntity"] = {"@id": workflow.id}
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
    names = outputs.files_under(paths.outdir) if run.state == store.COMPLETE else []
    sums = _checksums(paths, names)
    results = [
        crate.add_file(
            None,
            dest_path=f"outputs/{name}",
            properties={"contentSize": entry["size"], "sha256": entry["sha256"]},
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
    steps = []
    images: dict[str, Any] = {}
    for task in run_tasks:
        image = _container_image(crate, images, task.container)
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
                    "actionStatus": {
                        "@id": "http://schema.org/"
                        + ("CompletedActionStatus" if task.exit_code == 0 else "FailedActionStatus")
                    },
                },
            )
        )
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
    metadata: dict[str, Any] = crate.metadata.generate()
    return metadata


def _container_image(crate: Any, images: dict[str, Any], record: Any) -> Any:
    """The Workflow Run Crate's ContainerImage for a task's image record, once per image."""
    from rocrate.model import ContextEntity

    if not isinstance(record, dict) or not record.get("image"):
        return None
    reference = str(record["image"])
    digest = str(record.get("digest") or "")
    key = digest or reference
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
        images[key] = crate.add(ContextEntity(crate, f"#container-image-{len(images) + 1}", properties=properties))
    return images[key]


def zip_items(paths: RunPaths, metadata: dict[str, Any]) -> Iterator[tuple[str, Callable[[], Opened | None] | bytes]]:
    """What the zip holds: the metadata, then each file the crate names, read from the run."""
    yield "ro-crate-metadata.json", json.dumps(metadata, indent=2).encode()
    for name in outputs.files_under(paths.attachments):
        yield f"workflow/{name}", partial(outputs.run_file, paths, paths.attachments / name)
    yield "inputs/params.json", partial(outputs.run_file, paths, paths.params)
    for name, opener in outputs.all_outputs(paths):
        yield f"outputs/{name}", opener
