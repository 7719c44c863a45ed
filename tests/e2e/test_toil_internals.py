"""The private Toil names the project patches are all in the installed Toil (in-process)."""

from __future__ import annotations

from wes_gateway.engines import toil_internals
from wes_gateway.engines.toil_internals import Internal


def test_the_installed_toil_has_every_name_we_patch() -> None:
    assert toil_internals.missing() == []


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
