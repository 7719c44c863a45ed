"""The attacks that got through before: each reproduced as it was reported, now refused.

Policy on every fetch (CWL documents, WDL imports), inputs that are data and not
documents, every spelling of a blocked address, and the WDL file policy."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import Server, leader_group, leftover_processes, loopback_http, wait_for_tool

SECRET = "internal-only-4c1d9"


@pytest.fixture(scope="module")
def internal_service() -> Iterator[str]:
    """A loopback HTTP service holding a secret, as an internal API would."""
    with loopback_http(f"{SECRET}\n".encode()) as url:
        yield url


def submit_document(
    server: Server, kind: tuple[str, str, str], document: str, params: dict, extra: dict[str, bytes] | None
) -> tuple[int, str]:
    name, workflow_type, version = kind
    response = server.submit(
        {name: document.encode(), **(extra or {})},
        workflow_url=name,
        workflow_type=workflow_type,
        workflow_type_version=version,
        workflow_params=params,
    )
    return response.status_code, response.text


def cwl(server: Server, document: str, params: dict, extra: dict[str, bytes] | None = None) -> tuple[int, str]:
    return submit_document(server, ("tool.cwl", "CWL", "v1.2"), document, params, extra)


def wdl(server: Server, document: str, params: dict, extra: dict[str, bytes] | None = None) -> tuple[int, str]:
    return submit_document(server, ("main.wdl", "WDL", "1.0"), document, params, extra)


ECHO_TOOL = """cwlVersion: v1.2
class: CommandLineTool
baseCommand: echo
inputs:
  message: {type: %s, inputBinding: {position: 1}}
outputs: {out: stdout}
"""


def test_include_of_an_internal_url_is_refused_without_echoing_it(server: Server, internal_service: str) -> None:
    status, text = cwl(server, ECHO_TOOL % f'{{$include: "{internal_service}/x"}}', {"message": "hi"})
    assert status == 400, text
    assert SECRET not in text and ".staging" not in text and str(server.data_dir) not in text
    assert "allowed URL prefix" in text


def test_run_of_an_internal_url_is_refused(server: Server, internal_service: str) -> None:
    workflow = f"""cwlVersion: v1.2
class: Workflow
inputs: []
outputs: []
steps:
  s:
    run: {internal_service}/tool.cwl
    in: []
    out: []
"""
    status, text = cwl(server, workflow, {})
    assert status == 400 and SECRET not in text, text


@pytest.mark.parametrize(
    "params",
    [
        {"f": {"$import": "evil.json"}},
        {"message": {"$include": "/etc/hostname"}},
        {"deep": {"list": [{"$mixin": "evil.json"}]}},
    ],
)
def test_directives_in_inputs_are_refused(server: Server, params: dict) -> None:
    evil = json.dumps({"class": "File", "location": "file:///etc/passwd"}).encode()
    status, text = cwl(server, ECHO_TOOL % "string", params, {"evil.json": evil})
    assert status == 400 and "not allowed in inputs" in text, text


def test_deeply_nested_inputs_are_a_400(server: Server) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    response = server.submit(
        {"tool.cwl": (ECHO_TOOL % "string").encode()},
        workflow_url="tool.cwl",
        workflow_type="CWL",
        workflow_type_version="v1.2",
        workflow_params='{"message": ' + deep + "}",
    )
    assert response.status_code == 400 and response.json()["status_code"] == 400, response.text


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[fe80::1]/",
        "http://no-such-host.invalid/data.txt",
    ],
)
def test_blocked_and_unresolvable_addresses_are_refused(server: Server, location: str) -> None:
    status, text = cwl(server, ECHO_TOOL % "File", {"message": {"class": "File", "location": location}})
    assert status == 400, text


WDL_STRUCT = """version 1.0
struct Sample { String name
  File reads }
workflow w {
  input { Sample s }
  output { String n = s.name }
}
"""
WDL_DEFAULT = """version 1.0
workflow w {
  input { File f = "/etc/passwd" }
  output { Array[String] lines = read_lines(f) }
}
"""
WDL_IMPORT = """version 1.0
import "/etc/passwd" as p
workflow w { }
"""


def test_wdl_struct_member_file_is_policed(server: Server) -> None:
    status, text = wdl(server, WDL_STRUCT, {"w.s": {"name": "x", "reads": "/etc/passwd"}})
    assert status == 400 and "/etc/passwd" in text, text
    status, text = wdl(server, WDL_STRUCT, {"w.s": {"name": "x", "reads": "r.fq"}}, {"r.fq": b"ACGT\n"})
    assert status == 200, text
    assert server.wait(json.loads(text)["run_id"]) == "COMPLETE"


def test_wdl_file_default_is_policed(server: Server) -> None:
    status, text = wdl(server, WDL_DEFAULT, {})
    assert status == 400 and "/etc/passwd" in text, text


def test_wdl_import_outside_the_attachments_is_refused(server: Server) -> None:
    status, text = wdl(server, WDL_IMPORT, {})
    assert status == 400 and "may not read" in text, text
    assert "root:" not in text


WDL_READ_HOST = """version 1.0
workflow w {
  input { String where = "/etc/passwd" }
  File coerced = where
  output {
    Array[String] lines = read_lines("/etc/passwd")
    Int n = length(read_lines(coerced))
  }
}
"""


def test_wdl_reads_of_host_files_fail_in_the_sandbox(server: Server) -> None:
    # What the policy cannot see at submission (a literal in the body, a String turned into a
    # File), the sandbox stops at run time: the host's /etc/passwd is not in its view.
    status, text = wdl(server, WDL_READ_HOST, {})
    assert status == 200, text
    run_id = json.loads(text)["run_id"]
    assert server.wait(run_id, timeout=240) == "EXECUTOR_ERROR"
    assert "root:x:0:0" not in json.dumps(server.get(f"/runs/{run_id}").json())


# ---------------------------------------------------------------- no 5xx from any input


def test_forged_page_token_is_a_400(server: Server) -> None:
    for token in ("k1:99999999999999999999999", "k1:-1", "zz", "k1:" + "9" * 400):
        response = server.get("/runs", params={"page_token": token})
        assert response.status_code == 400, (token, response.text)
        assert response.json()["status_code"] == 400


def test_attachment_with_an_over_long_name_is_a_400(server: Server) -> None:
    status, text = cwl(server, ECHO_TOOL % "string", {"message": "x"}, {("a" * 300) + "/b.txt": b"x"})
    assert status == 400 and "too long" in text, text
    assert not list((server.data_dir / "runs" / ".staging").glob("*/attachments"))


@pytest.mark.parametrize("order", [("d", "d/x"), ("d/x", "d")])
def test_file_and_directory_of_one_name_is_a_400(server: Server, order: tuple[str, str]) -> None:
    response = server.post(
        "/runs",
        data={
            "workflow_url": "tool.cwl",
            "workflow_type": "CWL",
            "workflow_type_version": "v1.2",
            "workflow_params": json.dumps({"message": "x"}),
        },
        files=[("workflow_attachment", ("tool.cwl", (ECHO_TOOL % "string").encode()))]
        + [("workflow_attachment", (name, b"x")) for name in order],
    )
    assert response.status_code == 400 and "clashes" in response.text, response.text


def test_engine_parameter_with_400_digits_is_a_400(server: Server) -> None:
    response = server.submit(
        {"tool.cwl": (ECHO_TOOL % "string").encode()},
        workflow_url="tool.cwl",
        workflow_type="CWL",
        workflow_type_version="v1.2",
        workflow_params={"message": "x"},
        workflow_engine_parameters={"--defaultMemory": "9" * 400, "--maxCores": "9" * 400},
    )
    assert response.status_code == 400 and response.json()["status_code"] == 400, response.text


def test_control_characters_in_a_path_forge_no_log_line(server: Server) -> None:
    forged = 'INFO wes_gateway.access: 10.0.0.1 admin "DELETE /everything" 200'
    server.get("/runs/x%0a" + forged.replace(" ", "%20"))
    server.get("/runs/y%0d%0a" + forged.replace(" ", "%20"))
    log = server.log_tail(400)
    assert not any(line.startswith(forged) or line.lstrip().startswith(forged) for line in log.splitlines())


def _udp_ports_of(pids: list[int]) -> list[int]:
    """The UDP ports that these processes hold sockets on (IPv4 and IPv6)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports = []
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_another_run_cannot_write_into_a_runs_log(server: Server, data: Path) -> None:
    # Toil's leader listens for its jobs' real-time log lines on UDP 0.0.0.0; anyone on the
    # host (another user's step) could send lines to it. Our leaders start no such server.
    run_id = server.submit_cwl(data / "sleep.cwl", {"seconds": 20})
    tool, groups = wait_for_tool(run_id, b"sleep\x0020", server.data_dir)
    leader_pids = leftover_processes(run_id, groups | leader_group(server.data_dir, run_id))
    ports = _udp_ports_of(leader_pids)
    forged = json.dumps(
        {"name": "toil.forged", "levelname": "CRITICAL", "levelno": 50, "msg": "FORGED-BY-ANOTHER-RUN"}
    ).encode()
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(forged, ("127.0.0.1", port))
    server.post(f"/runs/{run_id}/cancel")
    assert server.wait(run_id, timeout=90) == "CANCELED"
    log = requests.get(f"{server.api}/runs/{run_id}/logs/stderr", timeout=10).text
    assert "FORGED-BY-ANOTHER-RUN" not in log
    assert ports == [], f"the run's leader listens on UDP {ports}"
