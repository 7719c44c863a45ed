"""A new run is claimed at once, not at the supervisor's next poll of the store."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import start_server, stop_server

D = Path(__file__).parent.parent / "data"


def test_a_submission_wakes_the_supervisor(tmp_path: Path) -> None:
    # A poll every 30 s: only the wake-up can explain a claim within a second.
    server = start_server(tmp_path / "data", {"WES_GATEWAY_POLL_INTERVAL": "30"})
    try:
        time.sleep(1.0)  # the supervisor is listening
        run_ids = []
        for i in range(3):
            began = time.monotonic()
            run_id = server.submit_ok(
                {"echo.cwl": D / "echo.cwl"},
                workflow_url="echo.cwl",
                workflow_type="CWL",
                workflow_type_version="v1.2",
                workflow_params={"message": f"wake {i}"},
            )
            run_ids.append(run_id)
            while server.get(f"/runs/{run_id}/status").json()["state"] == "QUEUED":
                assert time.monotonic() - began < 5, "still QUEUED: the supervisor was not woken"
                time.sleep(0.05)
        # The supervisor logs a claim just after committing it: the state can be seen first.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(f"run {r} claimed" in server.log_tail(400) for r in run_ids):
            time.sleep(0.1)
        log = server.log_tail(400)
        for run_id in run_ids:
            assert f"run {run_id} claimed" in log
        assert server.wait(run_ids[-1], timeout=120) == "COMPLETE"
    finally:
        stop_server(server)
