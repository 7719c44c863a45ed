"""Real WDL through Toil's WDL interpreter, with the test-only singularity stand-in."""

from __future__ import annotations

from pathlib import Path

import requests
from conftest import Server, cmdline, lasting_processes, pid_gone, wait_for_tool

W = Path(__file__).parent.parent / "data" / "wdl"


def submit(
    server: Server, workflow: str, files: dict[str, bytes | Path], params: dict, version: str = "1.0"
) -> requests.Response:
    return server.submit(
        files, workflow_url=workflow, workflow_type="wdl", workflow_type_version=version, workflow_params=params
    )


def test_wdl_runs_fail_and_cancel(server: Server) -> None:
    # Three runs at once: WDL runs are slow to start, so they share the wait.
    chain = submit(
        server,
        "chain.wdl",
        {"chain.wdl": W / "chain.wdl", "lib/tasks.wdl": W / "lib" / "tasks.wdl", "data/in put.txt": b"abc def\n"},
        {"chain.infile": "data/in put.txt", "chain.names": ["ann", "bob", "cy"]},
    )
    assert chain.status_code == 200, chain.text
    failing = submit(server, "fail.wdl", {"fail.wdl": W / "fail.wdl"}, {})
    napping = submit(server, "sleep.wdl", {"sleep.wdl": W / "sleep.wdl"}, {"napping.seconds": 600}, version="1.1")
    assert failing.status_code == 200 and napping.status_code == 200
    chain_id, failing_id, napping_id = (r.json()["run_id"] for r in (chain, failing, napping))

    # Cancel the long task once it is really running on the host.
    tool, groups = wait_for_tool(napping_id, b"sleep\x00600", server.data_dir, timeout=240)
    server.post(f"/runs/{napping_id}/cancel")
    assert server.wait(napping_id, timeout=90) == "CANCELED"
    left = lasting_processes(napping_id, groups)
    assert left == [], [(pid, cmdline(pid)[:200]) for pid in left]
    assert pid_gone(tool), "the WDL task outlived the cancel"

    assert server.wait(chain_id, timeout=400) == "COMPLETE", server.get(f"/runs/{chain_id}").text
    outputs = server.get(f"/runs/{chain_id}").json()["outputs"]
    assert outputs["chain.count"] == "8"
    assert outputs["chain.greetings"] == ["hello ann", "hello bob", "hello cy"]
    upper = outputs["chain.upper"]
    assert upper["class"] == "File" and upper["location"].startswith("file://")
    assert Path(upper["path"]).read_text() == "ABC DEF\n"
    task_logs = server.get(f"/runs/{chain_id}/tasks").json()["task_logs"]
    assert sorted(t["name"] for t in task_logs) == ["count_chars", "greet[0]", "greet[1]", "greet[2]", "shout"]
    assert all(t["exit_code"] == 0 for t in task_logs)

    assert server.wait(failing_id, timeout=400) == "EXECUTOR_ERROR"
    run_log = server.get(f"/runs/{failing_id}").json()
    assert run_log["run_log"]["exit_code"] not in (None, 0)
    assert "wdl task says: boom" in requests.get(run_log["run_log"]["stderr"], timeout=10).text
    [explode] = server.get(f"/runs/{failing_id}/tasks").json()["task_logs"]
    assert explode["name"] == "explode" and explode["exit_code"] not in (None, 0)


def test_invalid_wdl_gives_position(server: Server) -> None:
    response = submit(server, "broken.wdl", {"broken.wdl": W / "broken.wdl"}, {})
    assert response.status_code == 400
    msg = response.json()["msg"]
    assert "broken.wdl:4:" in msg and "missing_task" in msg


def test_wdl_syntax_error_gives_position(server: Server) -> None:
    response = submit(server, "s.wdl", {"s.wdl": b"version 1.0\nworkflow w {\n  call (\n}\n"}, {})
    assert response.status_code == 400 and "s.wdl:3:" in response.json()["msg"], response.text


def test_missing_and_unknown_wdl_inputs(server: Server) -> None:
    missing = submit(server, "sleep.wdl", {"sleep.wdl": W / "sleep.wdl"}, {}, version="1.1")
    assert missing.status_code == 400 and "seconds" in missing.json()["msg"], missing.text
    unknown = submit(
        server, "sleep.wdl", {"sleep.wdl": W / "sleep.wdl"}, {"napping.seconds": 1, "napping.bogus": 2}, version="1.1"
    )
    assert unknown.status_code == 400 and "bogus" in unknown.json()["msg"], unknown.text
    draft = submit(server, "sleep.wdl", {"sleep.wdl": W / "sleep.wdl"}, {"napping.seconds": 1}, version="draft-2")
    assert draft.status_code == 400 and "workflow_type_version" in draft.json()["msg"]


def test_outputs_name_no_file_outside_the_run(tmp_path: Path) -> None:
    # A WDL String output is shown as a File when it names one of the run's files. One that
    # climbs out with '..', or through a link the run planted, names nothing of the host.
    from wes_gateway.engines.wdl import WdlEngine
    from wes_gateway.files.paths import RunPaths

    paths = RunPaths(root=tmp_path / "run")
    (paths.root / "attachments").mkdir(parents=True)
    (paths.outdir).mkdir()
    (paths.outdir / "own.txt").write_text("the run's own\n")
    (paths.outdir / "planted").symlink_to("/etc/passwd")
    climbing = f"{paths.root}/attachments" + "/.." * 12 + "/etc/passwd"
    shown = WdlEngine().present_outputs(
        {"own": str(paths.outdir / "own.txt"), "climb": climbing, "link": str(paths.outdir / "planted")}, paths
    )
    assert shown["own"]["class"] == "File" and shown["own"]["size"] == len("the run's own\n")
    assert shown["climb"] == climbing and shown["link"] == str(paths.outdir / "planted")
