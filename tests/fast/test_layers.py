"""The map of the code (README): each layer imports only the layers below it, and nothing
imports the web layer. Read from the source, so a new upward import fails here at once."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "wes_gateway"
# Bottom to top. "base" is the package's own top-level modules (settings, errors, logging,
# metric definitions), which every layer may use; cli is the entry point and sits on top.
ORDER = ["base", "store", "files", "host", "engines", "runs", "intake", "web", "cli"]
# Layers that are side by side: neither may import the other.
SIBLINGS = {frozenset({"runs", "intake"})}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ORDER:
        return parts[1]
    return "cli" if parts[1:2] == ["cli"] else "base"


def imports_of(source: str, module: str) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{module}: relative import; the package imports itself by absolute names")
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "wes_gateway":
            found += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "wes_gateway"]
    return found


def upward(module: str, source: str) -> list[str]:
    """The imports of ``module`` that break the map."""
    here = layer_of(module)
    wrong = []
    for target in imports_of(source, module):
        there = layer_of(target)
        if there == here or there == "base" and target.count(".") == 1:
            continue  # the package root itself (its version)
        if ORDER.index(there) > ORDER.index(here) or frozenset({here, there}) in SIBLINGS:
            wrong.append(f"{module} ({here}) imports {target} ({there})")
    return wrong


def modules() -> list[tuple[str, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(("wes_gateway", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        found.append((name, path.read_text()))
    return found


def test_no_module_imports_a_layer_above_its_own() -> None:
    wrong = [line for name, source in modules() for line in upward(name, source)]
    assert wrong == []


def test_every_module_is_in_a_layer_the_map_names() -> None:
    top_level = {name.split(".")[1] for name, _ in modules() if name.count(".") >= 1}
    assert top_level <= set(ORDER) | {"config", "errors", "logsetup", "metrics"}


def test_the_check_sees_an_upward_import() -> None:
    # The protection off: the same check over a module that reaches up, as the code once did.
    assert upward("wes_gateway.runs.supervisor", "from wes_gateway.web import metrics_endpoint\n")
    assert upward("wes_gateway.intake.staging", "from wes_gateway.web.service_info import toil_version\n")
    assert upward("wes_gateway.runs.tasks", "import wes_gateway.intake.trs\n")
    assert not upward("wes_gateway.web.handlers", "from wes_gateway.runs import wakeup\n")
