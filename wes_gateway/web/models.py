"""Pydantic models of the WES 1.1 responses.

The official schema declares almost nothing nullable, so absent values are left out of
the JSON rather than sent as null (``to_json``). The one exception is RunLog.task_logs,
which the spec marks nullable and deprecated: we always send it as null.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from wes_gateway.intake.request import RunRequest, WesModel

__all__ = ["RunRequest", "WesModel"]


class RunId(WesModel):
    run_id: str


class RunStatus(WesModel):
    run_id: str
    state: str


class RunSummary(RunStatus):
    start_time: str | None = None
    end_time: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class RunListResponse(WesModel):
    runs: list[RunSummary]
    next_page_token: str
    total_runs: int | None = None  # only when asked (?count=true)


class Log(WesModel):
    name: str | None = None
    cmd: list[str] | None = None
    start_time: str | None = None
    end_time: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    exit_code: int | None = None
    system_logs: list[str] | None = None


class TaskLog(Log):
    id: str
    name: str
    tes_uri: str | None = None


class TaskListResponse(WesModel):
    task_logs: list[TaskLog]
    next_page_token: str


class RunLog(WesModel):
    run_id: str
    request: RunRequest
    state: str
    run_log: Log
    task_logs_url: str
    outputs: dict[str, Any] = Field(default_factory=dict)
    deleted_at: str | None = None  # extension: when DELETE removed its files

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        data["request"] = self.request.to_json()
        data["task_logs"] = None
        return data


class ServiceType(WesModel):
    group: str = "org.ga4gh"
    artifact: str = "wes"
    version: str = "1.1.0"


class Organization(WesModel):
    name: str
    url: str


class WorkflowTypeVersion(WesModel):
    workflow_type_version: list[str]


class WorkflowEngineVersion(WesModel):
    workflow_engine_version: list[str]


class DefaultWorkflowEngineParameter(WesModel):
    name: str
    type: str
    default_value: str


class ServiceInfo(WesModel):
    id: str
    name: str
    type: ServiceType = Field(default_factory=ServiceType)
    description: str | None = None
    organization: Organization
    contactUrl: str | None = None
    documentationUrl: str | None = None
    environment: str | None = None
    version: str
    workflow_type_versions: dict[str, WorkflowTypeVersion]
    supported_wes_versions: list[str]
    supported_filesystem_protocols: list[str]
    workflow_engine_versions: dict[str, WorkflowEngineVersion]
    default_workflow_engine_parameters: list[DefaultWorkflowEngineParameter]
    system_state_counts: dict[str, int]
    auth_instructions_url: str
    tags: dict[str, str]
