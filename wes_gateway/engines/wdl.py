"""WDL through toil.wdl.wdltoil: parse and type-check with miniwdl at submission, leader argv."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from wes_gateway.config import Settings
from wes_gateway.engines.base import Admission, load_scratch_document, warm_by_checking
from wes_gateway.errors import BadRequest
from wes_gateway.files.paths import RunPaths
from wes_gateway.host import containers

# Toil's interpreter runs these; draft-2 parses in miniwdl but Toil does not execute it.
VERSIONS = ["1.0", "1.1"]


def _where(exc: Exception, root: str) -> str:
    pos = getattr(exc, "pos", None)
    if pos is None:
        return ""
    path = pos.abspath or pos.uri
    if root and path.startswith(root + os.sep):
        path = path[len(root) + 1 :]
    return f"{path}:{pos.line}:{pos.column}: "


_WARM = """version 1.0
task warm {
  command <<< true >>>
}
"""
# What a submission's check loads, per version: a workflow calling a task.
_SAMPLE = """version {version}
workflow warm {{
  input {{ String message }}
  call echo {{ input: message = message }}
  output {{ String out = echo.out }}
}}
task echo {{
  input {{ String message }}
  command <<< echo ~{{message}} >>>
  output {{ String out = read_string(stdout()) }}
}}
"""
# Toil's WDL job kind that runs a task's command; the rest is workflow plumbing.
_TASK_JOB = "kind-WDLTaskJob/"


class WdlEngine:
    workflow_type = "WDL"
    program = "toil-wdl-runner"
    crate_language = (
        "https://w3id.org/workflowhub/workflow-ro-crate#wdl",
        "Workflow Description Language",
        "https://openwdl.org/",
    )

    def warm(self) -> None:
        import importlib_metadata  # noqa: F401  (miniwdl's plugin scan, below, imports it)
        import lazy_importer  # noqa: F401  (imported by every task's job)
        import pygtail  # type: ignore[import-untyped]  # noqa: F401  (likewise)
        import toil.wdl.wdltoil  # noqa: F401
        import WDL

        load_scratch_document("warm.wdl", _WARM, WDL.load)

    def warm_workers(self) -> None:
        # Each task's wrapper job and task job asks miniwdl for its call cache, and miniwdl
        # loads its cache plugins (an entry-point scan of every installed package) once per
        # process: twice per task, about 40 ms of CPU (issue 40). Loaded here, with the run's
        # own miniwdl configuration, every worker forked afterwards has them.
        import WDL.runtime.cache
        import WDL.runtime.config

        quiet = logging.getLogger("wes_gateway.engines.wdl.warm")
        WDL.runtime.cache.new(WDL.runtime.config.Loader(quiet), quiet)

    def warm_validation(self) -> None:
        # miniwdl builds each version's parser (a quarter of a second) on its first use.
        warm_by_checking(
            self,
            {f"warm-{v}.wdl": (_SAMPLE.format(version=v), {"warm.message": "warm"}) for v in self.versions()},
        )

    def run_leader(self, argv: list[str], paths: RunPaths) -> int:
        import toil.wdl.wdltoil

        # toil-wdl-runner reads sys.argv (the leader set it) and writes --outputFile itself.
        toil.wdl.wdltoil.main()
        return 0

    def is_task(self, job_id: str) -> bool:
        return job_id.startswith(_TASK_JOB)

    def task_name(self, job_type: str, workflow_file: str, outline: dict[str, Any]) -> str:
        return call_name(job_type, str(outline.get("name", "")))

    def versions(self) -> list[str]:
        return list(VERSIONS)

    def workflow_reference(self, location: str, fragment: str) -> str:
        if fragment:
            raise BadRequest(f"workflow_url: a WDL document takes no fragment ('#{fragment}')")
        return location

    def prepare(
        self, workflow: str, params: dict[str, Any], admission: Admission
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        import WDL

        root = os.path.dirname(workflow) if workflow.startswith("/") else ""
        try:
            document = WDL.load(workflow, path=[root] if root else [], read_source=_policed_reader(admission))
        except BadRequest as exc:
            raise BadRequest(f"the WDL document imports a file it may not read: {exc.msg}") from None
        except WDL.Error.MultipleValidationErrors as exc:
            messages = [f"{_where(inner, root)}{inner}" for inner in exc.exceptions]
            raise BadRequest("invalid WDL document: " + "; ".join(messages)) from None
        except WDL.Error.ImportError as exc:
            if isinstance(exc.__cause__, BadRequest):  # our reader refused it, unread
                raise BadRequest(f"the WDL document imports a file it may not read: {exc.__cause__.msg}") from None
            raise BadRequest(f"invalid WDL document: {_where(exc, root)}{exc}") from None
        except (WDL.Error.SyntaxError, WDL.Error.ValidationError) as exc:
            raise BadRequest(f"invalid WDL document: {_where(exc, root)}{exc}") from None
        except Exception as exc:
            raise BadRequest(f"WDL document could not be loaded: {type(exc).__name__}: {exc}") from None
        declared = document.wdl_version or "draft-2"
        if declared not in VERSIONS:
            raise BadRequest(f"WDL version {declared} is not run by Toil here; supported: {', '.join(VERSIONS)}")
        target: Any = document.workflow
        if target is None:
            if len(document.tasks) != 1:
                raise BadRequest("the WDL document has no workflow (and not exactly one task)")
            target = document.tasks[0]
        types = {f"{target.name}.{binding.name}": binding.value.type for binding in target.available_inputs}
        # Every File the inputs name, at any depth (arrays, maps, pairs, struct members).
        params = {
            key: _police(value, types[key], admission) if key in types else value for key, value in params.items()
        }
        # A File default written into the document is an input too, unless the client set it.
        for binding in target.available_inputs:
            if f"{target.name}.{binding.name}" not in params:
                _police_default(binding.value, admission)
        try:
            WDL.values_from_json(params, target.available_inputs, target.required_inputs, namespace=target.name)
        except WDL.Error.InputError as exc:
            raise BadRequest(f"workflow_params: {exc}") from None
        except Exception as exc:  # miniwdl raises plain errors for ill-typed values
            raise BadRequest(f"workflow_params: {type(exc).__name__}: {exc}") from None
        calls = sorted({call.name for call in _calls(target)})
        return params, {"steps": [{"name": name} for name in calls], "name": target.name}

    def language_args(self, paths: RunPaths, settings: Settings) -> list[str]:
        return [
            "--outputDirectory",
            str(paths.outdir),
            "--outputFile",
            str(paths.outputs_json),
            "--container",
            containers.wdl_container(settings),
        ]

    def present_outputs(self, outputs: dict[str, Any], paths: RunPaths) -> dict[str, Any]:
        """WDL outputs with local files shown as CWL shows them (class, location, path...)."""

        def convert(value: Any) -> Any:
            if isinstance(value, list):
                return [convert(item) for item in value]
            if isinstance(value, dict):
                return {key: convert(item) for key, item in value.items()}
            if isinstance(value, str) and value.startswith("/"):
                # Resolved, links and '..' included, before the check: a String output such as
                # '<run>/attachments/../../etc/shadow' names no file of the run.
                path = Path(os.path.realpath(value))
                if path.is_relative_to(Path(os.path.realpath(paths.root))) and path.exists():
                    kind = "Directory" if path.is_dir() else "File"
                    shown: dict[str, Any] = {
                        "class": kind,
                        "location": path.as_uri(),
                        "path": str(path),
                        "basename": path.name,
                    }
                    if kind == "File":
                        shown["size"] = path.stat().st_size
                    return shown
            return value

        return {key: convert(value) for key, value in outputs.items()}


def call_name(job_type: str, workflow_name: str) -> str:
    """'chain.shout.command' -> 'shout'; a scatter element 'chain.0.greet.command' -> 'greet[0]'."""
    core = job_type.removesuffix(".command")
    if workflow_name and core.startswith(workflow_name + "."):
        core = core[len(workflow_name) + 1 :]
    parts = core.split(".")
    indices = "".join(f"[{part}]" for part in parts if part.isdigit())
    names = "/".join(part for part in parts if not part.isdigit())
    return (names + indices) or job_type


def _calls(workflow: Any) -> list[Any]:
    import WDL

    found = []

    def walk(nodes: list[Any]) -> None:
        for node in nodes:
            if isinstance(node, WDL.Tree.Call):
                found.append(node)
            elif isinstance(node, (WDL.Tree.Scatter, WDL.Tree.Conditional)):
                walk(node.body)

    walk(workflow.body if hasattr(workflow, "body") else [])
    return found


def _police(value: Any, kind: Any, admission: Admission) -> Any:
    """The value with every File or Directory in it through the input policy, guided by its
    WDL type; values that do not fit the type are left for miniwdl to refuse."""
    import WDL.Type as T

    if isinstance(kind, (T.File, T.Directory)):
        return admission.input(value) if isinstance(value, str) else value
    if isinstance(kind, T.Array) and isinstance(value, list):
        return [_police(item, kind.item_type, admission) for item in value]
    if isinstance(kind, T.Map) and isinstance(value, dict):
        return {key: _police(item, kind.item_type[1], admission) for key, item in value.items()}
    if isinstance(kind, T.Pair) and isinstance(value, dict):
        sides = {"left": kind.left_type, "right": kind.right_type}
        return {key: _police(item, sides[key], admission) if key in sides else item for key, item in value.items()}
    if isinstance(kind, T.StructInstance) and isinstance(value, dict) and kind.members:
        members = kind.members
        return {key: _police(item, members[key], admission) if key in members else item for key, item in value.items()}
    return value


def _police_default(decl: Any, admission: Admission) -> None:
    """A File input's default that is a plain string literal names a file: police it."""
    import WDL.Type as T

    literal = getattr(decl.expr, "literal", None) if decl.expr is not None else None
    if isinstance(decl.type, (T.File, T.Directory)) and literal is not None and isinstance(literal.value, str):
        admission.default(literal.value)


def _policed_reader(admission: Admission) -> Any:
    """miniwdl's reader for the document and its imports, reading only what the policy allows."""
    import re

    import WDL

    async def read_source(uri: str, path: list[str], importer: Any) -> Any:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri) and not uri.lower().startswith("file://"):
            admission.document(uri)
            return await WDL.read_source_default(uri, path, importer)
        abspath = await WDL.Tree.resolve_file_import(uri, path, importer)
        admission.document(abspath)
        with open(abspath) as handle:
            return WDL.Tree.ReadSourceResult(source_text=handle.read(), abspath=abspath)

    return read_source
