"""A small GA4GH TRS v2 server on loopback, for the tests: a multi-file CWL workflow (a
`run:` file) in two versions, a WDL workflow with an `import`, 404s for what it has not, and
one tool whose every endpoint hangs until the server stops."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from harness.loopback import Reply, Request, serve

ROOT_PATH = "/ga4gh/trs/v2"
CWL_ID = "#workflow/example.org/multi-cwl"
WDL_ID = "#workflow/example.org/wdl-import"
HANGING_ID = "#workflow/example.org/hangs"

MAIN_CWL = b"""cwlVersion: v1.2
class: Workflow
inputs:
  message: string
outputs:
  out:
    type: File
    outputSource: say/out
steps:
  say:
    run: tools/say.cwl
    in: {message: message}
    out: [out]
"""
SAY_CWL = """cwlVersion: v1.2
class: CommandLineTool
baseCommand: echo
arguments: ["%s"]
inputs:
  message: {type: string, inputBinding: {position: 1}}
outputs:
  out: {type: stdout}
stdout: out.txt
"""
MAIN_WDL = b"""version 1.0

import "lib/greet.wdl" as lib

workflow main {
  input { String name }
  call lib.greet { input: name = name }
  output { String greeting = greet.line }
}
"""
GREET_WDL = b"""version 1.0

task greet {
  input { String name }
  command <<<
    echo "hello ~{name}"
  >>>
  output { String line = read_string(stdout()) }
  runtime { docker: "ubuntu:22.04" }
}
"""

# tool id -> version -> (descriptor type, primary path, {path: bytes}, offers a zip)
TOOLS: dict[str, dict[str, tuple[str, str, dict[str, bytes], bool]]] = {
    CWL_ID: {
        version: ("CWL", "main.cwl", {"main.cwl": MAIN_CWL, "tools/say.cwl": (SAY_CWL % version).encode()}, True)
        for version in ("v1", "v2")
    },
    WDL_ID: {"1.0": ("WDL", "main.wdl", {"main.wdl": MAIN_WDL, "lib/greet.wdl": GREET_WDL}, False)},
}


@dataclass
class TrsServer:
    root: str  # the TRS API base URL, as trs_roots names it
    netloc: str
    requests: list[str]


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, body in files.items():
            archive.writestr(path, body)
    return buffer.getvalue()


def _files(kind: str, primary: str, files: dict[str, bytes], zipped: bool, query: str) -> Reply:
    """A version's /{type}/files: the listing, or (format=zip) the files in one archive."""
    if query == "format=zip":
        return Reply(200, _zip(files), "application/zip") if zipped else Reply(404, b'{"message": "no zip here"}')
    listing = [
        {"path": path, "file_type": "PRIMARY_DESCRIPTOR" if path == primary else "SECONDARY_DESCRIPTOR"}
        for path in files
    ]
    listing.append({"path": "test.json", "file_type": "TEST_FILE"})
    return Reply(200, json.dumps(listing).encode())


@contextlib.contextmanager
def trs_server() -> Iterator[TrsServer]:
    stop = threading.Event()
    seen: list[str] = []

    def answer(request: Request) -> Reply:
        seen.append(request.path)
        parsed = urlparse(request.path)
        if not parsed.path.startswith(ROOT_PATH + "/tools/"):
            return Reply(404, b'{"message": "no such route"}')
        parts = [unquote(part) for part in parsed.path[len(ROOT_PATH + "/tools/") :].split("/")]
        tool_id = parts[0]
        if tool_id == HANGING_ID:
            stop.wait(120)  # bounded: the server's stop ends it at once
            return Reply(503, b"{}")
        versions = TOOLS.get(tool_id)
        if versions is None:
            return Reply(404, b'{"message": "no such tool"}')
        if len(parts) == 1:
            listed = [{"name": v, "id": v, "descriptor_type": [spec[0]]} for v, spec in versions.items()]
            return Reply(200, json.dumps({"id": tool_id, "versions": listed}).encode())
        if len(parts) < 3 or parts[1] != "versions" or parts[2] not in versions:
            return Reply(404, b'{"message": "no such version"}')
        kind, primary, files, zipped = versions[parts[2]]
        if len(parts) == 3:
            return Reply(200, json.dumps({"name": parts[2], "descriptor_type": [kind]}).encode())
        if parts[3] == kind and parts[4:] == ["files"]:
            return _files(kind, primary, files, zipped, parsed.query)
        if parts[3] == "PLAIN_" + kind and parts[4:5] == ["descriptor"]:
            relative = "/".join(parts[5:]) or primary
            if relative in files:
                return Reply(200, files[relative], "text/plain")
        return Reply(404, b'{"message": "not found"}')

    with serve(answer) as netloc:
        try:
            yield TrsServer(root=f"http://{netloc}{ROOT_PATH}", netloc=netloc, requests=seen)
        finally:
            stop.set()
