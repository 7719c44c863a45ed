"""The conformance suite's `docker` tests with the registry in the loop (issue 35): every image
a test names (docker.io/debian:stable-slim, docker.io/bash:4.4) comes from a loopback registry
standing in for Docker Hub (registry_mirrors), into an image store that starts empty, through
the stock client (scripts/conformance.py --registry, as `make conformance-registry` runs it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import registry as loopback

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT.parent / "shared" / "cwl-v1.2"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the service's pulls and the run user need root")


def test_the_suite_s_docker_tests_pass_with_images_only_from_the_registry(tmp_path: Path, image_store: Path) -> None:
    why = loopback.unavailable()
    if why:
        pytest.skip(why)
    if not (SUITE / "conformance_tests.yaml").exists():
        pytest.skip(f"no suite at {SUITE}")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "conformance.py"), "--registry", "--tags", "docker",
         f"--suite={SUITE}", f"--keep={tmp_path}"],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    summary = re.search(r"conformance: (\d+) passed, (\d+) failed, \d+ unsupported of (\d+)", done.stdout)
    assert summary is not None, done.stdout
    passed, failed, total = map(int, summary.groups())
    assert (passed, failed) == (total, 0) and total >= 11, done.stdout
    # What ran came from the registry, each blob fetched once for the whole suite.
    stored = json.loads((tmp_path / "pulled-images" / "overlay-images" / "images.json").read_text())
    assert sorted(name for image in stored for name in image["names"]) == [
        "docker.io/library/bash:4.4",
        "docker.io/library/debian:stable-slim",
    ]
    fetches = re.search(r"(\d+) blobs fetched, (\d+) fetches in all", done.stdout)
    assert fetches is not None and int(fetches[1]) >= 2 and fetches[1] == fetches[2], done.stdout
