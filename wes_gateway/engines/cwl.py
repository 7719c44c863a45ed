"""CWL through toil.cwl.cwltoil: validation with cwltool at submission, leader argv."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wes_gateway.config import Settings
from wes_gateway.engines import toil_schemas
from wes_gateway.engines.base import Admission, load_scratch_document, warm_by_checking
from wes_gateway.errors import BadRequest
from wes_gateway.files.paths import RunPaths
from wes_gateway.host import containers

log = logging.getLogger(__name__)


_WARM = """cwlVersion: v1.2
class: CommandLineTool
baseCommand: "true"
inputs: []
outputs: []
"""
# What a submission's check loads, per version: a workflow with a step, a tool inside.
_SAMPLE = """cwlVersion: {version}
class: Workflow
inputs: {{message: string}}
outputs: {{out: {{type: File, outputSource: echo/out}}}}
steps:
  echo:
    run:
      class: CommandLineTool
      baseCommand: echo
      inputs: {{message: {{type: string, inputBinding: {{position: 1}}}}}}
      outputs: {{out: stdout}}
    in: {{message: message}}
    out: [out]
"""
# Toil's CWL job kind that runs a step; workflow bodies, scatter and gather bookkeeping are
# Toil's plumbing and not shown as tasks.
_STEP_JOB = "kind-CWLJob/"
_SEGMENT = re.compile(r"^([^.]+)\.(.+?\.(?:cwl|yml|yaml|json)(?:#[^.]*)?)(?:\.(.+))?$")


class CwlEngine:
    workflow_type = "CWL"
    program = "toil-cwl-runner"
    crate_language = (
        "https://w3id.org/workflowhub/workflow-ro-crate#cwl",
        "Common Workflow Language",
        "https://www.commonwl.org/",
    )

    def warm(self) -> None:
        import toil.cwl.cwltoil  # noqa: F401
        from cwltool.context import LoadingContext
        from cwltool.load_tool import load_tool
        from cwltool.workflow import default_make_tool

        load_scratch_document(
            "warm.cwl",
            _WARM,
            lambda path: load_tool(path, LoadingContext({"construct_tool_object": default_make_tool})),
        )
        toil_schemas.load(self.versions())  # kept loaded in the leaders (toil_schemas.keep)

    def warm_validation(self) -> None:
        # cwltool loads each version's schema (over a second for the first) on its first use.
        warm_by_checking(
            self,
            {f"warm-{v}.cwl": (_SAMPLE.format(version=v), {"message": "warm"}) for v in self.versions()},
        )

    def warm_workers(self) -> None:
        pass  # what a CWL worker loads (cwltool, its schemas) the forkserver has loaded

    def run_leader(self, argv: list[str], paths: RunPaths) -> int:
        import toil.cwl.cwltoil

        with open(paths.outputs_json, "w") as outputs:
            return int(toil.cwl.cwltoil.main(argv, stdout=outputs) or 0)

    def is_task(self, job_id: str) -> bool:
        return job_id.startswith(_STEP_JOB)

    def task_name(self, job_type: str, workflow_file: str, outline: dict[str, Any]) -> str:
        steps = outline.get("steps")
        return step_name(job_type, workflow_file, steps if isinstance(steps, list) else [])

    def versions(self) -> list[str]:
        from cwltool.update import UPDATES

        return sorted(UPDATES)

    def workflow_reference(self, location: str, fragment: str) -> str:
        # A fragment names a process inside the document (a packed $graph, "#main"); both
        # cwltool and Toil take it on a file URI, while a bare path would quote the '#'.
        if fragment and location.startswith("/"):
            return f"{Path(location).as_uri()}#{fragment}"
        return location

    def prepare(
        self, workflow: str, params: dict[str, Any], admission: Admission
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        params = _rewrite_locations(params, admission.input)
        return params, self._validate(workflow, admission)

    def _validate(self, workflow: str, admission: Admission) -> dict[str, Any]:
        # Imported here, not with the module: the supervisor and the CLI never validate. The web
        # workers find it loaded, and its schemas too, by Gunicorn's master (warm_validation).
        from cwltool.context import LoadingContext
        from cwltool.load_tool import load_tool
        from cwltool.workflow import default_make_tool
        from schema_salad.exceptions import ValidationException

        context = LoadingContext(
            {
                "do_update": True,
                "strict": True,
                "relax_path_checks": True,
                "construct_tool_object": default_make_tool,
                "fetcher_constructor": _policed_fetcher(admission),
            }
        )
        # Quiet cwltool's own logger: its complaints become our 400 message instead.
        cwl_logger = logging.getLogger("cwltool")
        previous = cwl_logger.level
        cwl_logger.setLevel(logging.CRITICAL)
        try:
            process = load_tool(workflow, context)
        except BadRequest as exc:
            raise BadRequest(f"the CWL document refers to a file it may not read: {exc.msg}") from None
        except ValidationException as exc:
            raise BadRequest(f"invalid CWL document: {exc}") from None
        except Exception as exc:  # cwltool raises many types for unreadable documents
            raise BadRequest(f"CWL document could not be loaded: {type(exc).__name__}: {exc}") from None
        finally:
            cwl_logger.setLevel(previous)
        # Defaults inside the documents go through the same policy as the inputs: a document
        # must not smuggle in file:///etc/passwd as a default.
        for each in _processes(process):
            _rewrite_locations(each.tool, admission.default)
        return {"steps": _steps(process)}

    def present_outputs(self, outputs: dict[str, Any], paths: RunPaths) -> dict[str, Any]:
        return outputs

    def language_args(self, paths: RunPaths, settings: Settings) -> list[str]:
        return [
            "--outdir",
            str(paths.outdir),
            "--tmpdir-prefix",
            f"{paths.tmp}/",
            "--tmp-outdir-prefix",
            f"{paths.tmp}/",
            *containers.cwl_args(settings),
            # Attachment names are kept verbatim; spaces and "#" are legitimate in them.
            "--relax-path-checks",
        ]


def step_name(job_type: str, workflow_file: str, steps: list[dict[str, object]] | None = None) -> str:
    """Toil's job type as the CWL step name: 'main.cwl.align.bwa.cwl' -> 'align'; a scatter
    element 'main.cwl.3.bwa.cwl' -> 'align[3]'; nested steps are joined with '/'."""
    prefix = os.path.basename(workflow_file.split("#", 1)[0]) + "."
    if not job_type.startswith(prefix):
        return job_type
    rest = job_type[len(prefix) :]
    names: list[str] = []
    while rest:
        match = _SEGMENT.match(rest)
        if not match:
            names.append(rest)
            break
        segment, run = match.group(1), os.path.basename(match.group(2).split("#", 1)[0])
        if segment.isdigit() and not names:
            scattered = [s["name"] for s in steps or [] if s.get("scatter") and s.get("run") == run]
            segment = f"{scattered[0]}[{segment}]" if len(scattered) == 1 else segment
        names.append(segment)
        rest = match.group(3) or ""
    return "/".join(names) or job_type


def _steps(process: Any) -> list[dict[str, Any]]:
    """Top-level steps: their names and the basename of what they run, for naming tasks."""
    steps = []
    for step in getattr(process, "steps", []):
        run = step.tool.get("run")
        run_name = run if isinstance(run, str) else (run or {}).get("id", "")
        steps.append(
            {
                "name": step.id.rsplit("#", 1)[-1].rsplit("/", 1)[-1],
                "run": os.path.basename(str(run_name).split("#", 1)[0]),
                "scatter": bool(step.tool.get("scatter")),
            }
        )
    return steps


def _rewrite_locations(value: Any, resolve: Callable[[str], str]) -> Any:
    """File/Directory locations and paths through the staging resolver; local ones as URIs."""
    if isinstance(value, list):
        return [_rewrite_locations(item, resolve) for item in value]
    if not isinstance(value, dict):
        return value
    result = {key: _rewrite_locations(item, resolve) for key, item in value.items()}
    if result.get("class") not in ("File", "Directory"):
        return result
    for key in ("location", "path"):
        reference = result.get(key)
        if isinstance(reference, str):
            resolved = resolve(reference)
            result[key] = Path(resolved).as_uri() if resolved.startswith("/") else resolved
    return result


def _processes(process: Any) -> list[Any]:
    found = [process]
    for step in getattr(process, "steps", []):
        found.extend(_processes(step.embedded_tool))
    return found


def _policed_fetcher(admission: Admission) -> Any:
    """A schema-salad fetcher that reads only what the policy allows: `$include`, `$import`
    and `run:` of /etc/passwd, or of an http(s) URL outside the allowed prefixes (a metadata
    address, a private service), fail validation instead of being read here and again by
    the leader."""
    from schema_salad.fetcher import DefaultFetcher

    class PolicedFetcher(DefaultFetcher):
        def fetch_text(self, url: str, content_types: list[str] | None = None) -> str:
            if url.split(":", 1)[0].lower() in ("file", "http", "https"):
                admission.document(url.split("#", 1)[0])
            return super().fetch_text(url, content_types)

        def check_exists(self, url: str) -> bool:
            scheme = url.split(":", 1)[0].lower()
            if scheme == "file":
                admission.document(url.split("#", 1)[0])
            elif scheme in ("http", "https"):
                # Identifiers (namespaced hints, $schemas) are only looked up where a fetch would
                # be allowed; elsewhere no request leaves the worker and the link counts as absent.
                try:
                    admission.document(url.split("#", 1)[0])
                except BadRequest:
                    return False
            return bool(super().check_exists(url))

    return PolicedFetcher
