"""toil_overcommit (issue 40): more short steps of a run at once than Toil's booking of the
run's cores and disk allows; and run_max_memory booked as the service reads it. Each step
records when it began and ended; the overlap is read from the outputs, not timed."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import running_server

STEP = """cwlVersion: v1.2
class: CommandLineTool
baseCommand: [sh, -c, 'date +%s.%N; sleep 2; date +%s.%N']
inputs:
  n: {type: int, inputBinding: {position: 1}}
outputs:
  span: stdout
"""
SCATTER = """cwlVersion: v1.2
class: Workflow
requirements: {ScatterFeatureRequirement: {}}
inputs: {ns: 'int[]'}
outputs: {spans: {type: 'File[]', outputSource: step/span}}
steps:
  step: {run: step.cwl, scatter: n, in: {n: ns}, out: [span]}
"""
STEPS = 6


def most_at_once(server_env: dict[str, str], tmp_path: Path) -> int:
    """The largest number of the scatter's steps that were running at one moment."""
    with running_server(tmp_path, server_env) as server:
        run_id = server.submit_ok(
            {"scatter.cwl": SCATTER.encode(), "step.cwl": STEP.encode()},
            workflow_url="scatter.cwl",
            workflow_type="CWL",
            workflow_type_version="v1.2",
            workflow_params={"ns": list(range(STEPS))},
        )
        assert server.wait(run_id, timeout=300) == "COMPLETE", server.get(f"/runs/{run_id}").text
        outputs = server.get(f"/runs/{run_id}").json()["outputs"]["spans"]
        spans = [tuple(map(float, Path(item["path"]).read_text().split())) for item in outputs]
    assert len(spans) == STEPS, json.dumps(outputs)
    return max(sum(1 for began, ended in spans if began <= moment < ended) for moment, _ in spans)


def test_overcommit_runs_more_steps_at_once_than_toil_books(tmp_path: Path) -> None:
    # The tests' gateways give a run 2 cores and an 8G filesystem, of which a CWL step books
    # some 3G: as Toil books, 2 steps run at once.
    assert most_at_once({}, tmp_path / "stock") <= 2
    assert most_at_once({"WES_GATEWAY_TOIL_OVERCOMMIT": "4"}, tmp_path / "overcommitted") >= 4


WDL = """version 1.0
workflow overlap {
  input { Array[Int] ns }
  scatter (n in ns) { call step { input: n = n } }
  output { Array[String] spans = step.span }
}
task step {
  input { Int n }
  command <<< date +%s.%N; sleep 3; date +%s.%N >>>
  output { String span = read_string(stdout()) }
}
"""


def wdl_most_at_once(server_env: dict[str, str], tmp_path: Path) -> int:
    with running_server(tmp_path, server_env) as server:
        run_id = server.submit_ok(
            {"overlap.wdl": WDL.encode()},
            workflow_url="overlap.wdl",
            workflow_type="WDL",
            workflow_type_version="1.0",
            workflow_params={"overlap.ns": [1, 2]},
        )
        assert server.wait(run_id, timeout=300) == "COMPLETE", server.system_logs(run_id)
        spans = [
            tuple(map(float, text.split())) for text in server.get(f"/runs/{run_id}").json()["outputs"]["overlap.spans"]
        ]
    return max(sum(1 for began, ended in spans if began <= moment < ended) for moment, _ in spans)


def test_run_max_memory_is_booked_as_the_service_reads_it(engine_env: dict[str, str], tmp_path: Path) -> None:
    # A WDL task books Toil's default 2 GiB. 4G is 4 GiB to the service (and the run's cgroup):
    # two tasks at once. Toil itself would read "4G" as 4e9 bytes, room for one: what the
    # leaders were given until the size was passed in bytes. 3G has room for one either way.
    assert wdl_most_at_once({**engine_env, "WES_GATEWAY_RUN_MAX_MEMORY": "4G"}, tmp_path / "four") == 2
    assert wdl_most_at_once({**engine_env, "WES_GATEWAY_RUN_MAX_MEMORY": "3G"}, tmp_path / "three") == 1
