"""GET /service-info: static facts computed once per process, plus live state counts."""

from __future__ import annotations

from functools import lru_cache

from wes_gateway import __version__, store
from wes_gateway.config import Settings
from wes_gateway.engines import ENGINES, toil_version
from wes_gateway.host import containers, limits, volumes
from wes_gateway.intake import drs, trs
from wes_gateway.intake.engine_params import default_of, options_for
from wes_gateway.web.models import (
    DefaultWorkflowEngineParameter,
    Organization,
    ServiceInfo,
    WorkflowEngineVersion,
    WorkflowTypeVersion,
)


@lru_cache(maxsize=1)
@lru_cache(maxsize=1)
def _type_versions() -> dict[str, WorkflowTypeVersion]:
    return {name: WorkflowTypeVersion(workflow_type_version=engine.versions()) for name, engine in ENGINES.items()}


def filesystem_protocols(settings: Settings) -> list[str]:
    # What a submission's inputs may name and this deployment really resolves: http(s) URLs
    # always (staging.resolve_input holds them to check_remote only: no link-local or metadata
    # address), local files only under allowed_file_roots, drs:// where a DRS server can be
    # reached and its access URLs pass allowed_url_prefixes (drs.usable). TRS is a form of
    # workflow_url, not of an input: the tags trs_roots and trs_workflow_url_forms say it.
    protocols = ["http", "https"]
    if settings.allowed_file_roots:
        protocols.append("file")
    if drs.usable(settings):
        protocols.append("drs")
    return protocols


EXTENSIONS = (
    "run-filters",  # GET /runs?state=&tag=&workflow_type=&since=&until=&sort_order=
    "run-count",  # GET /runs?count=true -> total_runs
    "outputs-download",  # GET /runs/{id}/outputs/{path}, outputs.zip, url in RunLog.outputs
    "run-delete",  # DELETE /runs/{id}, tombstones
    "log-range",  # Range on the log routes
    "run-events",  # GET /runs/{id}/events (Server-Sent Events)
    "ro-crate",  # GET /runs/{id}/ro-crate
    "metrics",  # GET /metrics (Prometheus)
    "json-run-request",  # POST /runs with an application/json RunRequest (no attachments)
    "trs-workflow-url",  # workflow_url: trs://, Dockstore ids and pages, TRS descriptor URLs (tags.trs_roots)
)


def build(settings: Settings, counts: dict[str, int]) -> ServiceInfo:
    # Whether runs here are held to the memory and process limits (a cgroup, or rlimits).
    held = limits.group_of(settings, "any") is not None or limits.rlimits_for(settings) != (0, 0)
    return ServiceInfo(
        id=settings.service_id,
        name=settings.service_name,
        description=settings.service_description,
        organization=Organization(name=settings.organization_name, url=settings.organization_url),
        contactUrl=settings.contact_url or None,
        documentationUrl=settings.documentation_url or None,
        environment=settings.environment,
        version=__version__,
        workflow_type_versions=_type_versions(),
        supported_wes_versions=["1.1.0"],
        supported_filesystem_protocols=filesystem_protocols(settings),
        workflow_engine_versions={"toil": WorkflowEngineVersion(workflow_engine_version=[toil_version()])},
        default_workflow_engine_parameters=[
            DefaultWorkflowEngineParameter(
                name=option.name, type=option.type, default_value=default_of(option, settings)
            )
            for option in options_for(settings).values()
        ],
        system_state_counts=counts,
        auth_instructions_url=settings.auth_instructions_url,
        tags={
            "max_concurrent_runs": str(settings.effective_max_concurrent_runs),
            "run_max_cores": str(settings.effective_max_cores),
            "run_max_memory": settings.run_max_memory,
            "default_page_size": str(settings.default_page_size),
            "max_page_size": str(settings.max_page_size),
            "container_engine": containers.engine(settings),
            "wdl_container_engine": containers.wdl_container(settings),
            "run_sandbox": settings.run_sandbox,
            # What one run may take on this host, so that a workflow's author can size it.
            "run_memory_limit": str(settings.effective_run_memory_limit if held else 0),
            "run_max_processes": str(settings.run_max_processes if held else 0),
            "run_disk_limit": settings.run_disk_limit if volumes.enabled(settings) else "0",
            "max_served_file_bytes": str(settings.max_served_file_bytes),
            "max_served_run_bytes": str(settings.max_served_run_bytes),
            "batch_system": settings.batch_system,
            # The extensions this service adds, each declared in its OpenAPI document.
            "extensions": ",".join(EXTENSIONS),
            # Where a workflow_url may name a TRS workflow, and how.
            **trs.service_info_tags(settings),
        },
    )


def state_counts(owner: str | None = None) -> dict[str, int]:
    counts = {state.value: 0 for state in store.State}
    counts.update(store.state_counts(owner))
    return counts
