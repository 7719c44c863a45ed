"""The WES RunRequest (what a submission asks for, as intake parses it and the run record
echoes it), and the base of every WES wire model: absent values are left out of the JSON,
as the official schema declares almost nothing nullable."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class WesModel(BaseModel):
    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


class RunRequest(WesModel):
    workflow_params: dict[str, Any] = Field(default_factory=dict)
    workflow_type: str
    workflow_type_version: str
    tags: dict[str, str] = Field(default_factory=dict)
    workflow_engine_parameters: dict[str, str | None] = Field(default_factory=dict)
    workflow_engine: str | None = None
    workflow_engine_version: str | None = None
    workflow_url: str

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        # Bare flags are null in the submission, but the schema says string values.
        data["workflow_engine_parameters"] = {
            key: ("" if value is None else value) for key, value in self.workflow_engine_parameters.items()
        }
        return data
