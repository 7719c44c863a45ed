"""The docs stay true to the code: docs/configuration.md is what scripts/config-doc makes of
the Settings model today, and every relative link in README.md and docs/ reaches a file (and
a heading, where it names one)."""

from __future__ import annotations

import re
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path
from types import ModuleType

from pydantic import Field, create_model

from wes_gateway.config import Settings

ROOT = Path(__file__).resolve().parents[2]
# Links and images: [text](target) and ![alt](target), the target up to a space or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")
# A file of the checkout named in code: `wes_gateway/host/sandbox.py`, `tests/e2e/test_ui.py`.
NAMED_PATH = re.compile(r"`((?:wes_gateway|tests|scripts|bench|deploy|openapi)/[\w./-]*\w)`")


def config_doc() -> ModuleType:
    """scripts/config-doc as a module (a script has no .py name to import it by)."""
    path = ROOT / "scripts" / "config-doc"
    loader = SourceFileLoader("config_doc", str(path))
    spec = spec_from_loader("config_doc", loader)
    assert spec is not None
    module = module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_configuration_page_is_generated_from_settings_and_current() -> None:
    doc = config_doc()
    diff = doc.stale()
    assert diff == [], "docs/configuration.md is stale: run scripts/config-doc --write\n" + "\n".join(diff[:40])


def test_every_settings_field_is_on_the_page_with_its_variable_default_and_description() -> None:
    page = config_doc().render()
    for name, field in Settings.model_fields.items():
        row = next((line for line in page.splitlines() if line.startswith(f"| `WES_GATEWAY_{name.upper()}`<br>")), "")
        assert f"`{name}`" in row, name
        assert row.count(" | ") >= 3 and not row.rstrip().endswith("|  |"), f"{name} has no description: {row}"
        if field.description:
            assert field.description.split()[0].replace("<", "&lt;") in row


def test_a_field_added_or_removed_makes_the_page_stale(tmp_path: Path) -> None:
    doc = config_doc()
    page = tmp_path / "configuration.md"
    page.write_text(doc.render())
    assert doc.stale(page) == []

    added = create_model(
        "Added",
        __base__=Settings,
        registry_mirror=(str, Field("", description="A field the page does not know yet.")),
    )
    diff = doc.stale(page, added)
    assert any(line.startswith("+") and "WES_GATEWAY_REGISTRY_MIRROR" in line for line in diff)

    kept = {name: (field.annotation, field) for name, field in Settings.model_fields.items() if name != "send_timeout"}
    removed = create_model("Removed", **kept)  # type: ignore[call-overload]
    diff = doc.stale(page, removed)
    assert any(line.startswith("-") and "WES_GATEWAY_SEND_TIMEOUT" in line for line in diff)
    assert not any(line.startswith("+|") for line in diff)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(path: Path) -> set[str]:
    found: set[str] = set()
    fenced = False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def broken_links(path: Path) -> list[str]:
    """The relative links of one Markdown file whose file (or heading) does not exist."""
    broken = []
    fenced = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # http:, https:, mailto: are not files here
            name, _, anchor = target.partition("#")
            there = (path.parent / name).resolve() if name else path
            if not there.exists():
                broken.append(f"{path.name}:{number}: {target} (no such file)")
            elif anchor and there.suffix == ".md" and anchor not in headings(there):
                broken.append(f"{path.name}:{number}: {target} (no such heading)")
    return broken


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "bench" / "RESULTS.md"]


def test_every_relative_link_in_readme_and_docs_reaches_a_file_and_heading() -> None:
    assert len(markdown_files()) >= 7
    broken = [line for path in markdown_files() for line in broken_links(path)]
    assert broken == []


def missing_paths(path: Path) -> list[str]:
    """Files of the checkout that one Markdown file names in code spans and that do not exist
    (a module moved, a test renamed): the docs name the layout, so they go stale with it."""
    return [
        f"{path.name}:{number}: {name}"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for name in NAMED_PATH.findall(line)
        if "<" not in name and not (ROOT / name).exists()
    ]


def test_every_file_of_the_checkout_that_the_docs_name_exists() -> None:
    missing = [line for path in markdown_files() for line in missing_paths(path)]
    assert missing == [], "the docs name files that are not there (moved?):\n" + "\n".join(missing)


def test_the_path_check_finds_a_moved_module(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("`wes_gateway/host/sandbox.py` and `wes_gateway/sandbox.py`, `tests/fast/`\n")
    assert missing_paths(page) == ["page.md:1: wes_gateway/sandbox.py"]


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# A heading: with `code`\n\n```\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#a-heading-with-code) ![img](there.md) [web](https://example.org/x)\n"
        "`[code](nowhere.md)`\n[gone](nowhere.md) [bad anchor](there.md#not-a-heading)\n"
    )
    assert broken_links(page) == [
        "page.md:3: nowhere.md (no such file)",
        "page.md:3: there.md#not-a-heading (no such heading)",
    ]
