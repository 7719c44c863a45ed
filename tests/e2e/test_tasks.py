"""Tasks from Toil's message bus and job logs, over HTTP, on real runs."""

from __future__ import annotations

import time
from pathlib import Path

import requests
from conftest import Server

D = Path(__file__).parent.parent / "data"


def cwl(server: Server, workflow: str, files: list[str], params: dict, extra: dict | None = None) -> str:
    attachments: dict[str, bytes | Path] = {name: D / name for name in files}
    attachments.update(extra or {})
    return server.submit_ok(
        attachments, workflow_url=workflow, workflow_type="CWL", workflow_type_version="v1.2", workflow_params=params
    )


def all_tasks(server: Server, run_id: str, page_size: int = 100) -> list[dict]:
    found: list[dict] = []
    token = ""
    while True:
        params = {"page_size": page_size, **({"page_token": token} if token else {})}
        page = server.get(f"/runs/{run_id}/tasks", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["task_logs"]) <= page_size
        found += body["task_logs"]
        token = body["next_page_token"]
        if not token:
            return found


def test_three_step_workflow_lists_named_tasks_in_order(server: Server) -> None:
    run_id = cwl(
        server,
        "three_step.cwl",
        ["three_step.cwl", "upper.cwl", "rev.cwl", "count.cwl"],
        {"infile": {"class": "File", "location": "in.txt"}},
        {"in.txt": b"hello\n"},
    )
    assert server.wait(run_id) == "COMPLETE"
    task_list = all_tasks(server, run_id)
    assert [t["name"] for t in task_list] == ["shout", "reverse", "count"]
    for task in task_list:
        assert task["exit_code"] == 0
        assert task["start_time"] <= task["end_time"]
        assert task["stderr"].startswith(server.api) and task["stdout"].startswith(server.api)
        assert any(line.startswith("batch_job_id: ") for line in task["system_logs"])
        assert server.get(f"/runs/{run_id}/tasks/{task['id']}").json() == task
    assert task_list[0]["end_time"] <= task_list[1]["start_time"] <= task_list[2]["start_time"]
    assert task_list[0]["cmd"][:3] == ["tr", "a-z", "A-Z"]
    log = requests.get(task_list[1]["stderr"], timeout=10).text
    assert "rev" in log and "completed success" in log
    missing = server.get(f"/runs/{run_id}/tasks/no-such-task")
    assert missing.status_code == 404 and missing.json()["status_code"] == 404


def test_failed_second_step_has_exit_code_and_stderr(server: Server) -> None:
    run_id = cwl(
        server,
        "fail_second.cwl",
        ["fail_second.cwl", "upper.cwl", "fail_file.cwl"],
        {"infile": {"class": "File", "location": "in.txt"}},
        {"in.txt": b"x\n"},
    )
    assert server.wait(run_id) == "EXECUTOR_ERROR"
    by_name = {t["name"]: t for t in all_tasks(server, run_id)}
    assert by_name["shout"]["exit_code"] == 0
    failed = by_name["explode"]
    assert failed["exit_code"] not in (None, 0)
    assert "second step says: boom" in requests.get(failed["stderr"], timeout=10).text


def test_scatter_of_30_pages_each_task_once(server: Server) -> None:
    messages = [f"m{i}" for i in range(30)]
    run_id = cwl(server, "scatter.cwl", ["scatter.cwl", "echo.cwl"], {"messages": messages})
    assert server.wait(run_id, timeout=400) == "COMPLETE"
    paged = all_tasks(server, run_id, page_size=7)
    ids = [t["id"] for t in paged]
    assert len(ids) == 30 and len(set(ids)) == 30
    assert sorted(t["name"] for t in paged) == sorted(f"say[{i}]" for i in range(30))
    assert all(t["exit_code"] == 0 for t in paged)
    # WES documents no 400 for the task routes: a page_token naming no page is "not found".
    assert server.get(f"/runs/{run_id}/tasks", params={"page_token": "bogus"}).status_code == 404


def test_tasks_appear_while_running_and_survive_cancel(server: Server) -> None:
    run_id = cwl(
        server,
        "echo_and_sleep.cwl",
        ["echo_and_sleep.cwl", "echo.cwl", "sleep.cwl"],
        {"message": "early", "seconds": 300},
    )
    deadline = time.monotonic() + 120
    seen: list[dict] = []
    while time.monotonic() < deadline:
        seen = all_tasks(server, run_id)
        if any(t["name"] == "say" and t.get("exit_code") == 0 for t in seen):
            break
        time.sleep(0.5)
    assert server.get(f"/runs/{run_id}/status").json()["state"] == "RUNNING"
    assert any(t["name"] == "say" and t["exit_code"] == 0 for t in seen), seen
    running = [t for t in seen if t["name"] == "wait"]
    assert running and "exit_code" not in running[0]
    server.post(f"/runs/{run_id}/cancel")
    assert server.wait(run_id, timeout=60) == "CANCELED"
    assert {t["name"] for t in all_tasks(server, run_id)} == {"say", "wait"}


def test_a_malformed_bus_line_does_not_stop_the_task_records(tmp_path: Path) -> None:
    """The run can write its message bus: a line that is not Toil's is skipped, and the lines
    after it are read (before, every pass stopped at it, and the run's tasks never moved).
    The store and the run directory are real; no leader is needed to write a file."""
    from conftest import record_run

    from wes_gateway import store
    from wes_gateway.engines import engine_for
    from wes_gateway.files.paths import RunPaths
    from wes_gateway.runs import tasks

    store.open_database(f"sqlite:///{tmp_path / 'wes.sqlite3'}")
    store.upgrade(store.database.obj)
    run_id = record_run(state="RUNNING", bus_offset=0)
    paths = RunPaths(root=tmp_path / "runs" / run_id)
    paths.root.mkdir(parents=True)
    job = "kind-CWLJob/instance-abc"
    paths.messages.write_bytes(
        b"toil.bus.JobCompletedMessage\tx\tkind-X/instance-y\tnot-a-number\n"
        + f"toil.bus.JobIssuedMessage\techo.cwl\t{job}\t1\n".encode()
        + f"toil.bus.JobCompletedMessage\techo.cwl\t{job}\t0\n".encode()
    )
    engine = engine_for("CWL")
    assert engine is not None
    tasks.ingest(run_id, engine, "echo.cwl", paths, set())
    recorded = [(task.name, task.exit_code) for task in store.all_tasks(run_id)]
    store.database.close()
    assert recorded == [("echo.cwl", 0)], recorded
