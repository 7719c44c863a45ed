"""Real CWL through real Toil, driven over HTTP against a real Gunicorn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from conftest import Server, lasting_processes, pid_gone, wait_for_tool


def output_text(server: Server, run_log: dict, name: str) -> str:
    path = Path(run_log["outputs"][name]["path"])
    assert path.is_relative_to(server.data_dir), path
    return path.read_text()


def test_echo_tool_completes_with_outputs_and_logs(server: Server, data: Path) -> None:
    run_id = server.submit_ok(
        {"echo.cwl": data / "echo.cwl"},
        workflow_url="echo.cwl",
        workflow_type="cwl",
        workflow_type_version="v1.2",
        workflow_params={"message": "hello from wes"},
        tags={"project": "demo"},
    )
    assert server.wait(run_id) == "COMPLETE"
    run_log = server.get(f"/runs/{run_id}").json()
    assert run_log["state"] == "COMPLETE"
    assert run_log["run_log"]["exit_code"] == 0
    assert run_log["request"]["workflow_params"] == {"message": "hello from wes"}
    assert run_log["request"]["tags"] == {"project": "demo"}
    assert run_log["task_logs"] is None
    assert run_log["task_logs_url"] == f"{server.api}/runs/{run_id}/tasks"
    assert output_text(server, run_log, "out") == "hello from wes\n"
    assert run_log["run_log"]["start_time"] <= run_log["run_log"]["end_time"]
    stderr = requests.get(run_log["run_log"]["stderr"], timeout=10)
    assert stderr.status_code == 200 and "CWL run complete" in stderr.text
    stdout = requests.get(run_log["run_log"]["stdout"], timeout=10)
    assert stdout.status_code == 200
    summary = next(r for r in server.get("/runs?page_size=100").json()["runs"] if r["run_id"] == run_id)
    assert summary == {
        "run_id": run_id,
        "state": "COMPLETE",
        "tags": {"project": "demo"},
        "start_time": run_log["run_log"]["start_time"],
        "end_time": run_log["run_log"]["end_time"],
    }


def test_two_step_workflow_with_attached_input_in_subdirectory(server: Server, data: Path) -> None:
    run_id = server.submit_ok(
        {
            "wf/two_step.cwl": data / "two_step.cwl",
            "wf/tools/upper.cwl": data / "upper.cwl",
            "wf/tools/rev.cwl": data / "rev.cwl",
            "inputs/item #1.txt": b"abc def\nxyz\n",
        },
        workflow_url="wf/two_step.cwl",
        workflow_type="CWL",
        workflow_type_version="v1.2",
        # URL-quoted and relative to the attachments, as clients write it.
        workflow_params={"infile": {"class": "File", "location": "inputs/item%20%231.txt"}},
    )
    assert server.wait(run_id) == "COMPLETE", server.get(f"/runs/{run_id}").text
    run_log = server.get(f"/runs/{run_id}").json()
    assert output_text(server, run_log, "result") == "FED CBA\nZYX\n"


def test_attachment_names_are_kept_verbatim(server: Server, data: Path) -> None:
    run_id = server.submit_ok(
        {"colon:test.cwl": data / "echo.cwl"},
        workflow_url="colon:test.cwl",
        workflow_type="CWL",
        workflow_type_version="v1.2",
        workflow_params={"message": "colons are fine"},
    )
    assert server.wait(run_id) == "COMPLETE"
    assert (server.data_dir / "runs" / run_id / "attachments" / "colon:test.cwl").exists()


def test_failing_tool_is_executor_error_with_readable_stderr(server: Server, data: Path) -> None:
    run_id = server.submit_ok(
        {"fail.cwl": data / "fail.cwl"},
        workflow_url="fail.cwl",
        workflow_type="CWL",
        workflow_type_version="v1.2",
    )
    assert server.wait(run_id) == "EXECUTOR_ERROR"
    run_log = server.get(f"/runs/{run_id}").json()
    assert run_log["run_log"]["exit_code"] not in (None, 0)
    stderr = requests.get(run_log["run_log"]["stderr"], timeout=10).text
    assert "tool says: boom" in stderr


def test_cancel_running_sleep_leaves_no_processes(server: Server, data: Path) -> None:
    run_id = server.submit_ok(
        {"sleep.cwl": data / "sleep.cwl"},
        workflow_url="sleep.cwl",
        workflow_type="CWL",
        workflow_type_version="v1.2",
        workflow_params={"seconds": 600},
    )
    tool, groups = wait_for_tool(run_id, b"sleep\x00600", server.data_dir)
    response = server.post(f"/runs/{run_id}/cancel")
    assert response.status_code == 200 and response.json() == {"run_id": run_id}
    assert server.get(f"/runs/{run_id}/status").json()["state"] in ("CANCELING", "CANCELED")
    assert server.wait(run_id, timeout=60) == "CANCELED"
    assert lasting_processes(run_id, groups) == []
    assert pid_gone(tool), "the tool itself outlived the cancel"
    # Cancelling a finished run is a no-op that still answers with the id.
    again = server.post(f"/runs/{run_id}/cancel")
    assert again.status_code == 200 and again.json() == {"run_id": run_id}
    assert server.get(f"/runs/{run_id}/status").json()["state"] == "CANCELED"


def test_four_concurrent_runs_complete_with_separate_logs(server: Server, data: Path) -> None:
    messages = [f"concurrent-{i}" for i in range(4)]

    def submit(message: str) -> str:
        return server.submit_ok(
            {"echo.cwl": data / "echo.cwl"},
            workflow_url="echo.cwl",
            workflow_type="CWL",
            workflow_type_version="v1.2",
            workflow_params={"message": message},
        )

    with ThreadPoolExecutor(4) as pool:
        run_ids = list(pool.map(submit, messages))
    assert len(set(run_ids)) == 4
    for run_id, message in zip(run_ids, messages, strict=True):
        assert server.wait(run_id) == "COMPLETE"
        run_log = server.get(f"/runs/{run_id}").json()
        assert output_text(server, run_log, "out") == message + "\n"
        stderr = requests.get(run_log["run_log"]["stderr"], timeout=10).text
        for other in run_ids:
            if other != run_id:
                assert other not in stderr


def test_toil_wes_cwl_runner_against_live_server(server: Server, data: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "client"
    (workdir / "inputs").mkdir(parents=True)
    (workdir / "inputs" / "words.txt").write_text("hello runner\n")
    for name in ("two_step.cwl",):
        (workdir / name).write_text((data / name).read_text())
    (workdir / "tools").mkdir()
    for name in ("upper.cwl", "rev.cwl"):
        (workdir / "tools" / name).write_text((data / name).read_text())
    (workdir / "job.json").write_text(json.dumps({"infile": {"class": "File", "location": "inputs/words.txt"}}))
    runner = Path(sys.executable).parent / "toil-wes-cwl-runner"
    # As a user with the venv activated: the runner shells out to cwltool for dependencies.
    env = {
        **os.environ,
        "TOIL_WES_ENDPOINT": server.base,
        "PATH": f"{runner.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    result = subprocess.run(
        [str(runner), "two_step.cwl", "job.json", f"--outdir={tmp_path / 'out'}", "--quiet"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    outputs = json.loads(result.stdout)
    assert Path(outputs["result"]["path"]).read_text() == "RENNUR OLLEH\n"


def test_repeated_identical_attachment_is_stored_once(server: Server, data: Path) -> None:
    # toil-wes-cwl-runner sends a file once per document that references it.
    fields = {
        "workflow_url": "echo.cwl",
        "workflow_type": "CWL",
        "workflow_type_version": "v1.2",
        "workflow_params": json.dumps({"message": "twice"}),
    }
    body = (data / "echo.cwl").read_bytes()
    twice = [("workflow_attachment", ("echo.cwl", body)), ("workflow_attachment", ("echo.cwl", body))]
    response = server.post("/runs", data=fields, files=twice)
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    assert server.wait(run_id) == "COMPLETE"
    assert os.listdir(server.data_dir / "runs" / run_id / "attachments") == ["echo.cwl"]
    different = [twice[0], ("workflow_attachment", ("echo.cwl", body + b"\n# changed\n"))]
    refused = server.post("/runs", data=fields, files=different)
    assert refused.status_code == 400
    assert "'echo.cwl'" in refused.json()["msg"] and "different" in refused.json()["msg"]


def test_fragment_names_a_process_in_a_packed_document(server: Server, data: Path) -> None:
    expected = {"main": "shouted: packed\n", "shout": "shouted: packed\n", "whisper": "whispered: packed\n"}
    run_ids = {
        fragment: server.submit_ok(
            {"packed.cwl": data / "packed.cwl"},
            workflow_url=f"packed.cwl#{fragment}",
            workflow_type="CWL",
            workflow_type_version="v1.2",
            workflow_params={"message": "packed"},
        )
        for fragment in expected
    }
    for fragment, run_id in run_ids.items():
        assert server.wait(run_id) == "COMPLETE", fragment
        assert output_text(server, server.get(f"/runs/{run_id}").json(), "out") == expected[fragment]


def test_unknown_fragment_is_400_without_internal_paths(server: Server, data: Path) -> None:
    response = server.submit(
        {"packed.cwl": data / "packed.cwl"},
        workflow_url="packed.cwl#nowhere",
        workflow_type="CWL",
        workflow_type_version="v1.2",
        workflow_params={"message": "x"},
    )
    assert response.status_code == 400
    msg = response.json()["msg"]
    assert "nowhere" in msg
    assert ".staging" not in msg and str(server.data_dir) not in msg, msg
