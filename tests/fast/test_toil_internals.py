"""The private Toil names the project uses are all in the installed Toil (in-process)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from wes_gateway.engines import toil_internals
from wes_gateway.engines.toil_internals import Internal

PACKAGE = Path(toil_internals.__file__).resolve().parent.parent


def _fail_on(absent: list[str]) -> None:
    """What the first test does with what is missing, apart so that its failure can be seen."""
    if absent:
        pytest.fail("the installed Toil lacks what the gateway uses: " + "; ".join(absent), pytrace=False)


def test_the_installed_toil_has_every_name_we_use() -> None:
    _fail_on(toil_internals.missing())


def test_a_missing_name_fails_the_check_naming_it() -> None:
    fake = (*toil_internals.INTERNALS, Internal("toil.leader", "Leader._no_such_name", "a test", instance=True))
    with pytest.raises(pytest.fail.Exception, match=r"toil\.leader:Leader\._no_such_name \(a test\)"):
        _fail_on(toil_internals.missing(fake))


def test_a_name_toil_lacks_is_named_with_who_relies_on_it() -> None:
    # The check can fail: a method, an instance attribute and a module that are not there.
    gone = (
        Internal("toil.leader", "Leader.noSuchMethod", "a test"),
        Internal("toil.leader", "Leader._no_such_attribute", "a test", instance=True),
        Internal("toil.no_such_module", "anything", "a test"),
    )
    assert toil_internals.missing(gone) == [
        "toil.leader:Leader.noSuchMethod (a test)",
        "toil.leader:Leader._no_such_attribute (a test)",
        "toil.no_such_module:anything (a test)",
    ]


def test_every_toil_module_our_code_imports_is_listed() -> None:
    # A new reach into Toil must come with its line in INTERNALS.
    listed = {entry.module for entry in toil_internals.INTERNALS}
    imported: set[str] = set()
    for source in PACKAGE.rglob("*.py"):
        if source.name == "toil_internals.py":
            continue
        text = source.read_text()
        imported |= set(re.findall(r"^\s*import (toil(?:\.\w+)+)", text, re.MULTILINE))
        imported |= set(re.findall(r"^\s*from (toil(?:\.\w+)+) import", text, re.MULTILINE))
    assert imported, "no Toil import found: the scan is broken"
    assert sorted(imported - listed) == []
