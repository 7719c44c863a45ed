"""toil_overcommit (issue 40): more short steps of a run at once than Toil's booking of the
run's cores and disk allows. Each step records when it began and ended; the overlap is read
from the outputs, not timed."""

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
