"""toil_pickles: a CWL job body carries its version's standard schema as a name, and unpickles
as the schema this process has loaded; off, and for a custom schema, the schema is pickled
whole as before. Each case in a fresh interpreter, as a leader is, so that the reducer never
reaches this test process's pickles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "data" / "echo.cwl"

PROBE = """
import json, pickle, sys
import toil.cwl.cwltoil  # as a leader has it: cwltool's default tool maker set
from cwltool import process
from cwltool.context import LoadingContext
from cwltool.load_tool import load_tool
from wes_gateway.engines import toil_pickles
tool = toil.cwl.cwltoil.remove_pickle_problems(load_tool(sys.argv[2], LoadingContext()))
if sys.argv[1] != "stock":
    toil_pickles.install()
if sys.argv[1] == "custom":  # as cwltool's extensions leave it: not the standard schema
    process.custom_schemas["v1.2"] = ("x", "y")
body = pickle.dumps(tool, pickle.HIGHEST_PROTOCOL)
toil_pickles.uninstall()
back = pickle.loads(body)
print(json.dumps({
    "bytes": len(body),
    "names the function": b"standard_schema" in body,
    "the loaded schema": back.doc_schema is process.SCHEMA_CACHE["v1.2"][1],
    "same types": sorted(back.doc_schema.names) == sorted(tool.doc_schema.names),
    "own names whole": sorted(back.names.names) == sorted(tool.names.names) and back.names is not tool.names,
}))
"""


def _probe(mode: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode, str(TOOL)], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_a_standard_schema_is_pickled_by_name_and_unpickled_as_the_loaded_one() -> None:
    on = _probe("on")
    assert on["names the function"] and on["the loaded schema"] and on["same types"] and on["own names whole"]
    # Off (stock Toil): the tool carries its version's whole schema, and unpickles a copy.
    stock = _probe("stock")
    assert not stock["names the function"] and not stock["the loaded schema"] and stock["same types"]
    assert int(on["bytes"]) < 40_000 < 150_000 < int(stock["bytes"])  # type: ignore[call-overload]


def test_a_custom_schema_is_pickled_whole() -> None:
    custom = _probe("custom")
    assert not custom["names the function"] and not custom["the loaded schema"] and custom["same types"]
    assert int(custom["bytes"]) > 150_000  # type: ignore[call-overload]
