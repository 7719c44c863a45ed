#!/usr/bin/env python3
"""`make conformance`: the CWL conformance suite through the gateway with a stock WES client.

Starts the gateway as `make run` does (Gunicorn, SQLite, embedded supervisor), on a free
loopback port with a data directory of its own, runs `cwltest --tool toil-wes-cwl-runner`
against it and prints one line:

    conformance: N passed, M failed, U unsupported of T (K should_fail) in S s

followed by the failing test ids. It exits non-zero when a test fails that is not listed in
the expected-failures file (each listed there with the reason direct Toil fails it too).
`bench/conformance.py` uses the same pieces to run the suite directly with toil-cwl-runner.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EXPECTED = Path(__file__).resolve().parent / "conformance-expected-failures.txt"
DEFAULT_SUITE = ROOT.parent / "shared" / "cwl-v1.2"


@dataclass
class Outcome:
    """What cwltest reported, by test id."""

    label: str
    total: int = 0
    should_fail: int = 0
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    seconds: float = 0.0
    should_fail_ids: set[str] = field(default_factory=set)

    def line(self) -> str:
        return (
            f"{self.label}: {len(self.passed)} passed, {len(self.failed)} failed, "
            f"{len(self.unsupported)} unsupported of {self.total} ({self.should_fail} should_fail) "
            f"in {self.seconds:.0f} s"
        )

    @property
    def real_passes(self) -> int:
        """Passes that a dead server would not also get."""
        return len([test for test in self.passed if test not in self.should_fail_ids])


# Never run: the `networkaccess` tests fetch a page from the internet, and tests here send
# traffic to loopback only (with a container engine on, the tool would really try).
EXCLUDED_TAGS = ("networkaccess",)


def selected_tests(suite: Path, tags: str) -> list[dict[str, object]]:
    # cwltest's own loader: the index $imports the test lists of several sub-directories.
    from cwltest.utils import load_and_validate_tests

    tests, _ = load_and_validate_tests(str(suite / "conformance_tests.yaml"))
    kept = [test for test in tests if not set(EXCLUDED_TAGS) & set(test.get("tags", []))]
    if tags == "all":
        return kept
    wanted = set(tags.split(","))
    return [test for test in kept if wanted & set(test.get("tags", []))]


def test_id(test: dict[str, object]) -> str:
    """The short id cwltest reports (the loader gives the full URI of the index)."""
    return str(test.get("short_name") or test.get("id", "")).rsplit("#", 1)[-1]


def expected_failures(path: Path = EXPECTED) -> dict[str, str]:
    """Test id -> reason, from lines `id  reason` (lines starting with # are comments)."""
    found: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        text = raw.strip()
        if text and not text.startswith("#"):
            test_id, _, reason = text.partition(" ")
            found[test_id] = reason.strip()
    return found


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # cwltest and toil-wes-cwl-runner find cwltool and each other on PATH.
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env["TOIL_HISTORY"] = "False"
    env.update(extra or {})
    return env


def run_cwltest(
    label: str,
    suite: Path,
    tags: str,
    jobs: int,
    tool: str,
    tool_args: list[str],
    workdir: Path,
    env: dict[str, str],
    timeout: int = 600,
) -> Outcome:
    tests = selected_tests(suite, tags)
    outcome = Outcome(
        label=label, total=len(tests), should_fail_ids={test_id(t) for t in tests if t.get("should_fail")}
    )
    outcome.should_fail = len(outcome.should_fail_ids)
    report = workdir / f"{label}.xml"
    argv = [
        str(BIN / "cwltest"),
        "--test",
        str(suite / "conformance_tests.yaml"),
        "--tool",
        tool,
        "-j",
        str(jobs),
        "--timeout",
        str(timeout),
        "--junit-xml",
        str(report),
    ]
    if tags != "all":
        argv += ["--tags", tags]
    argv += ["--exclude-tags", ",".join(EXCLUDED_TAGS)]
    argv += ["--", *tool_args]
    began = time.monotonic()
    # The suite's bound: every test has its own timeout; the whole run gets twice the serial worst.
    limit = max(3600, timeout * len(tests) // max(jobs, 1) * 2)
    with (workdir / f"{label}.log").open("wb") as log:
        subprocess.run(argv, cwd=suite, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=limit)
    outcome.seconds = time.monotonic() - began
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("file") or case.get("name") or "?"
        if case.find("failure") is not None or case.find("error") is not None:
            outcome.failed.append(name)
        elif case.find("skipped") is not None:
            outcome.unsupported.append(name)
        else:
            outcome.passed.append(name)
    return outcome


def through_gateway(
    suite: Path,
    tags: str,
    jobs: int,
    workdir: Path,
    label: str = "conformance",
    extra_env: dict[str, str] | None = None,
) -> Outcome:
    sys.path.insert(0, str(ROOT))  # harness/: the gateway on loopback, as the tests start it
    from harness.gateway import (
        IMAGE_STORE,
        container_env,
        images_unavailable,
        start_server,
        stop_server,
        unmount_runs,
    )

    # With the container engine on: the suite's DockerRequirement tests run in real Podman,
    # from the tests' stand-in images (scripts/build-images).
    why = images_unavailable()
    if why:
        print(f"{label}: no container engine for this run: {why}", file=sys.stderr)

    # As `make run` has it (no response validation, default poll and concurrency), but with
    # one leader per core-and-a-half of parallel tests so that -j is what limits.
    env = {
        "WES_GATEWAY_RESPONSE_VALIDATION": "false",
        "WES_GATEWAY_POLL_INTERVAL": "0.5",
        "WES_GATEWAY_MAX_CONCURRENT_RUNS": str(max(2, jobs)),
        "WES_GATEWAY_CANCEL_GRACE_SECONDS": "10",
        "WES_GATEWAY_RUN_MAX_CORES": "0",
        "WES_GATEWAY_ACCESS_LOG": str(workdir / "access.log"),
    }
    env.update(container_env(None if why else IMAGE_STORE))
    env.update(extra_env or {})
    server = start_server(workdir / "gateway", env)
    try:
        return run_cwltest(
            label,
            suite,
            tags,
            jobs,
            str(BIN / "toil-wes-cwl-runner"),
            [f"--wes_endpoint={server.base}"],
            workdir,
            tool_env(),
        )
    finally:
        stop_server(server)
        unmount_runs(server.data_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", type=Path, default=Path(os.environ.get("CWL_SUITE", DEFAULT_SUITE)))
    parser.add_argument("--tags", default=os.environ.get("TAGS", "required"), help="required (default) or all")
    parser.add_argument("-j", "--jobs", type=int, default=int(os.environ.get("JOBS", "2")))
    parser.add_argument("--keep", type=Path, help="keep the gateway's data and cwltest's logs here")
    args = parser.parse_args(argv)
    if not (args.suite / "conformance_tests.yaml").exists():
        print(f"conformance: no suite at {args.suite} (set CWL_SUITE)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="wes-conformance-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        outcome = through_gateway(args.suite.resolve(), args.tags, args.jobs, workdir)
    print(outcome.line())
    expected = expected_failures()
    for name in outcome.failed:
        reason = expected.get(name)
        print(f"  failed: {name}" + (f"  (expected: {reason})" if reason else ""))
    unexpected = [name for name in outcome.failed if name not in expected]
    if unexpected:
        print(f"conformance: {len(unexpected)} unexpected failure(s): {', '.join(unexpected)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
