"""cwltool's CWL schemas, kept loaded across Toil's set-up in our leaders.

Toil's CWL front end calls ``cwltool.main.setup_schema`` at the start of every run. Without
cwltool's extensions that calls ``use_standard_schema`` for every CWL version, and that drops
the version's loaded schema from cwltool's cache even when no custom schema was ever in
effect. The forkserver loads the schemas once (``engines.cwl.CwlEngine.warm``) so that every
leader forked from it finds them loaded; the drop made every CWL leader parse its version's
schema again: 0.42 s of CPU per run on the 2-core machine, most of a one-step run's leader
time (bench/RESULTS.md). Here the drop happens only where a custom schema had been in effect,
which is the only case in which the cached schema could be the wrong one.
``WES_GATEWAY_TOIL_KEEP_SCHEMAS=false`` leaves Toil and cwltool as they are.
"""

from __future__ import annotations


def keep() -> None:
    """In a leader, before Toil's CWL front end starts: keep the standard schemas loaded."""
    import cwltool.main  # its own import of use_standard_schema is what setup_schema calls
    from cwltool import process

    def use_standard_schema(version: str) -> None:
        if version in process.custom_schemas:
            del process.custom_schemas[version]
            process.SCHEMA_CACHE.pop(version, None)

    cwltool.main.use_standard_schema = use_standard_schema  # type: ignore[attr-defined]


def load(versions: list[str]) -> None:
    """In the forkserver: load each version's standard schema once, for every leader."""
    from cwltool import process

    for version in versions:
        process.get_schema(version)
