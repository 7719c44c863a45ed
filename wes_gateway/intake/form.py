"""A POST /runs body as the handler receives it: parsed once, by the upload middleware
(``uploads.UploadMiddleware``), whichever form it came in: a multipart form (RunRequest
fields as text or file parts, attachments spooled to disk) or a JSON RunRequest object (the
json-run-request extension). ``staging.stage`` checks and writes it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

# Where the upload middleware leaves the form: in the ASGI scope's Connexion context, which
# Connexion hands to the handler as its ``context_`` argument.
CONTEXT_KEY = "wes_gateway.run_form"
# A JSON RunRequest's members that are objects; a form sends them as JSON text.
JSON_FIELDS = ("workflow_params", "tags", "workflow_engine_parameters")


@dataclass(frozen=True)
class Attachment:
    """One workflow_attachment part: a stream to copy, or a file already spooled to disk
    (``uploads.UploadMiddleware``), which is linked into place."""

    filename: str
    stream: IO[bytes] | None = None
    path: Path | None = None


@dataclass(frozen=True)
class RunForm:
    """The RunRequest fields as text (their JSON objects as JSON text, so that one parser,
    ``staging.parse_request``, checks both forms) and the attachments. ``problem``: why a
    JSON body is no RunRequest, said once the contract's own checks have had their say."""

    fields: Mapping[str, str] = field(default_factory=dict)
    attachments: tuple[Attachment, ...] = ()
    problem: str | None = None

    @classmethod
    def of_json(cls, body: Any) -> RunForm:
        """A JSON RunRequest body as the form it stands for."""
        if not isinstance(body, dict):
            return cls(problem="a JSON POST /runs body must be a RunRequest object")
        fields: dict[str, str] = {}
        for key, value in body.items():
            if value is None:
                continue
            if key in JSON_FIELDS and isinstance(value, (dict, list, int, float, bool)):
                fields[key] = json.dumps(value)  # a non-object is refused by parse_request, by name
            elif isinstance(value, str):
                fields[key] = value
            else:
                return cls(problem=f"{key} must be a string, not {type(value).__name__}")
        return cls(fields=fields)


def run_form_of(context: Mapping[str, Any]) -> RunForm | None:
    """The form the upload middleware parsed for this request, from Connexion's context."""
    form = context.get(CONTEXT_KEY)
    return form if isinstance(form, RunForm) else None
