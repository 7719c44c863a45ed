"""GET /metrics: Prometheus text from every Gunicorn worker and the supervisor (prometheus-
client's multiprocess mode), scraped during a run and parsed with prometheus_client.parser."""

from __future__ import annotations

import time
from pathlib import Path

import requests
from conftest import DATA, start_server, stop_server
from prometheus_client.parser import text_string_to_metric_families


def scrape(base: str, **kwargs) -> dict[str, dict[tuple, float]]:  # type: ignore[no-untyped-def]
    response = requests.get(base + "/metrics", timeout=30, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_metrics_during_and_after_a_run(tmp_path: Path) -> None:
    server = start_server(tmp_path, {}, workers=2)
    try:
        run_id = server.submit_ok(
            {"slow_echo.cwl": DATA / "slow_echo.cwl"},
            workflow_url="slow_echo.cwl",
            workflow_type="CWL",
            workflow_type_version="v1.2",
            workflow_params={"seconds": 4, "message": "measured"},
        )
        refused = server.submit(workflow_type="CWL")  # no workflow_url: a 400
        assert refused.status_code == 400
        server.wait(run_id, {"RUNNING"}, timeout=120)
        for _ in range(20):  # several workers answer these: all are counted together
            server.get(f"/runs/{run_id}/status")
        during = scrape(server.base)
        assert during["wes_gateway_runs"][(("state", "RUNNING"),)] == 1
        assert during["wes_gateway_submissions_total"][(("status", "200"),)] == 1
        assert during["wes_gateway_submissions_total"][(("status", "400"),)] == 1
        status_route = (("method", "GET"), ("route", "/runs/{run_id}/status"), ("status", "200"))
        assert during["wes_gateway_http_request_duration_seconds_count"][status_route] >= 20
        # Labels are route templates, never raw paths with run ids in them.
        routes = {dict(labels)["route"] for labels in during["wes_gateway_http_request_duration_seconds_count"]}
        assert not any(run_id in route for route in routes), routes
        assert during["wes_gateway_leader_starts_total"][(("kind", "start"),)] == 1
        assert during["wes_gateway_queue_wait_seconds_count"][()] == 1
        assert server.wait(run_id, timeout=120) == "COMPLETE"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            after = scrape(server.base)
            if after.get("wes_gateway_run_duration_seconds_count", {}).get((("state", "COMPLETE"),)) == 1:
                break
            time.sleep(0.5)
        assert after["wes_gateway_run_duration_seconds_count"][(("state", "COMPLETE"),)] == 1
        assert after["wes_gateway_run_duration_seconds_sum"][(("state", "COMPLETE"),)] >= 4
        assert after["wes_gateway_runs"][(("state", "COMPLETE"),)] == 1
        assert after["wes_gateway_lease_renewals_total"][(("outcome", "renewed"),)] >= 1
    finally:
        stop_server(server)


def test_metrics_are_not_for_proxied_or_remote_callers(tmp_path: Path) -> None:
    server = start_server(tmp_path, {"WES_GATEWAY_AUTH_MODES": "token"}, workers=1)
    try:
        # Loopback and direct: served, even without credentials (a local Prometheus).
        assert requests.get(server.base + "/metrics", timeout=10).status_code == 200
        # Through a proxy on the same host, it is not local: only admins.
        proxied = requests.get(server.base + "/metrics", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10)
        assert proxied.status_code == 403 and proxied.json()["status_code"] == 403
    finally:
        stop_server(server)


METRICS_PROBE = """\
cwlVersion: v1.2
class: CommandLineTool
baseCommand: [python3, -c]
arguments:
  - |
    import sys, urllib.error, urllib.request
    try:
        print(urllib.request.urlopen(sys.argv[1], timeout=10).status)
    except urllib.error.HTTPError as error:
        print(error.code)
inputs:
  url: {type: string, inputBinding: {position: 1}}
stdout: status.txt
outputs:
  status: {type: stdout}
"""


def test_a_runs_step_on_loopback_gets_no_metrics(tmp_path: Path, engine_env: dict[str, str]) -> None:
    """The runs share the host's network: a user's step asks for /metrics over loopback, as
    a local Prometheus does. The kernel says who owns its socket (the run user): refused,
    while this test's own request (another user) is served."""
    import json
    import os
    import subprocess
    import sys

    server = start_server(tmp_path, {**engine_env, "WES_GATEWAY_AUTH_MODES": "token"}, workers=1)
    try:
        created = subprocess.run(
            [sys.executable, "-m", "wes_gateway.cli", "token", "create", "erin"],
            env={**os.environ, "WES_GATEWAY_DATA_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            check=True,
        )
        erin = {"Authorization": f"Bearer {created.stdout.strip().splitlines()[-1]}"}
        submitted = requests.post(
            f"{server.api}/runs",
            headers=erin,
            files={"workflow_attachment": ("probe.cwl", METRICS_PROBE.encode())},
            data={
                "workflow_url": "probe.cwl",
                "workflow_type": "CWL",
                "workflow_type_version": "v1.2",
                "workflow_params": json.dumps({"url": f"{server.base}/metrics"}),
            },
            timeout=30,
        )
        run_id = submitted.json()["run_id"]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            state = server.get(f"/runs/{run_id}/status", headers=erin).json()["state"]
            if state in ("COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR"):
                break
            time.sleep(0.5)
        assert state == "COMPLETE"
        assert server.get(f"/runs/{run_id}/outputs/status.txt", headers=erin).text.strip() == "403"
        assert requests.get(f"{server.base}/metrics", timeout=10).status_code == 200
    finally:
        stop_server(server)
