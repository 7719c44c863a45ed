"""CWL job bodies pickled without a copy of the CWL schema (``toil_pickle_schemas``).

Toil pickles every job's body into the job store. A CWL job's body holds its cwltool tool,
and the tool's ``doc_schema`` is its CWL version's whole schema (an avro ``Names`` that every
tool of that version shares): 150 KB of the 177 KB that a one-line tool pickles to. A step
paid for it three times: the scatter (or workflow) job pickled it once per step, the step's
worker unpickled it, and pickled it again when Toil saved the job graph after the step ran;
about 7 ms of CPU per step (bench/RESULTS.md, issue 40).

Here a version's standard schema is pickled as the version's name, and unpickled as the
copy cwltool has loaded. A warm worker (forked from the leader, which the forkserver gave
every standard schema) holds it already, so nothing is parsed; the leader turns this on only
where every worker is forked warm. A worker started as a new interpreter (a Slurm job) would
parse the schema, about 0.4 s, to save 5 ms. A custom schema (cwltool's extensions), each
tool's own small ``names`` and everything else are pickled as before, and a job store
written with the setting on unpickles with it off. ``WES_GATEWAY_TOIL_PICKLE_SCHEMAS=false``
leaves Toil's pickles as they are.
"""

from __future__ import annotations

import copyreg
import pickle
from typing import Any


def install() -> None:
    """In a leader whose workers are all forked from it: from now on, in it and in every
    process it forks, a standard CWL schema pickles as its version's name."""
    from schema_salad.avro.schema import Names

    copyreg.pickle(Names, _reduce)


def uninstall() -> None:
    from schema_salad.avro.schema import Names

    copyreg.dispatch_table.pop(Names, None)


def standard_schema(version: str) -> Any:
    """What a pickled schema name unpickles to: cwltool's loaded standard schema of ``version``
    (loaded here first if this process has not)."""
    from cwltool import process

    return process.get_schema(version)[1]


def _reduce(names: Any) -> tuple[Any, ...]:
    from cwltool import process

    for version, loaded in process.SCHEMA_CACHE.items():
        if loaded[1] is names and version not in process.custom_schemas:
            return (standard_schema, (version,))
    # Not a standard schema: what pickle does without a reducer of ours.
    return names.__reduce_ex__(pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return]
