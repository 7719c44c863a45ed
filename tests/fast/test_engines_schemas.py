"""toil_schemas in a leader: the CWL schemas the forkserver loaded survive the set-up Toil's
CWL front end runs (cwltool.main.setup_schema), which without it drops them all; a custom
schema (cwltool's extensions) is still replaced by the standard one. Each case in a fresh
interpreter, as a leader is, so that the patch never reaches this test process's cwltool."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import argparse, json, sys, time
from cwltool import main, process
from wes_gateway.engines import toil_schemas
toil_schemas.load(["v1.2"])
if sys.argv[1] == "kept":
    toil_schemas.keep()
loaded = process.SCHEMA_CACHE["v1.2"]
main.setup_schema(argparse.Namespace(enable_ext=False), None)  # as toil.cwl.cwltoil.main calls it
kept = process.SCHEMA_CACHE.get("v1.2") is loaded
main.setup_schema(argparse.Namespace(enable_ext=True), None)  # cwltool's extensions in effect
custom = "v1.2" in process.custom_schemas and "v1.2" not in process.SCHEMA_CACHE
process.get_schema("v1.2")
main.setup_schema(argparse.Namespace(enable_ext=False), None)  # and back to the standard one
standard = "v1.2" not in process.custom_schemas and "v1.2" not in process.SCHEMA_CACHE
print(json.dumps({"kept": kept, "custom replaced": custom, "standard again": standard}))
"""


def _probe(mode: str) -> dict[str, bool]:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_toil_s_set_up_keeps_the_loaded_schemas_only_with_the_setting() -> None:
    assert _probe("kept") == {"kept": True, "custom replaced": True, "standard again": True}
    # Off (stock cwltool): the set-up drops the loaded schema, and each leader parses it again.
    assert _probe("stock")["kept"] is False
