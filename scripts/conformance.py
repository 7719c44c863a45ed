#!/usr/bin/env python3
"""`make conformance`: the CWL conformance suite through the gateway with a stock WES client.

Starts the gateway as `make run` does (Gunicorn, SQLite, embedded supervisor), on a free
loopback port with a data directory of its own, runs `cwltest --tool toil-wes-cwl-runner`
against it and prints one line:

    conformance: N passed, M failed, U unsupported of T (K should_fail) in S s

followed by the failing test ids. It exits non-zero when a test fails that is not listed in
the expected-failures file (each listed there with the reason direct Toil fails it too).
`bench/conformance.py` uses the same pieces to run the suite directly with toil-cwl-runner.

With --registry the suite's images come from a registry instead of the tests' pre-built store
(issue 35): a loopback registry (harness/registry.py: TLS from a test CA, htpasswd) holds the
stand-ins under their Docker Hub names, the gateway's image store starts empty, and
`registry_mirrors` sends its docker.io pulls to the loopback registry. `make
conformance-registry` runs the suite's `docker` tests so.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    notes: list[str] = field(default_factory=list)

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


# What the suite's DockerRequirement tests name (docker.io/debian:stable-slim, docker.io/bash:4.4),
# as Docker Hub's paths in the loopback registry -> the stand-in it is copied from.
SUITE_IMAGES = {f"library/{name}": f"docker.io/library/{name}" for name in ("debian:stable-slim", "bash:4.4")}


@contextlib.contextmanager
def registry_in_the_loop(workdir: Path, stand_ins: Path) -> Iterator[tuple[dict[str, str], Any]]:
    """A loopback registry standing in for Docker Hub, and the gateway settings that pull every
    image from it into an empty store: (settings, the registry)."""
    from harness import registry as loopback

    store = workdir / "pulled-images"
    store.mkdir(mode=0o755)
    with contextlib.closing(loopback.running(workdir / "registry", stand_ins, SUITE_IMAGES)) as running:
        reg = next(running)
        yield (
            {
                "WES_GATEWAY_CONTAINER_ENGINE": "podman",
                "WES_GATEWAY_IMAGE_STORE": str(store),
                "WES_GATEWAY_ALLOWED_REGISTRIES": "docker.io",
                "WES_GATEWAY_REGISTRY_MIRRORS": f"docker.io={reg.host}",
                "WES_GATEWAY_REGISTRY_CERTS_DIR": str(reg.certs_dir),
                "WES_GATEWAY_REGISTRY_AUTH_FILE": str(reg.auth_file),
            },
            reg,
        )


def through_gateway(
    suite: Path,
    tags: str,
    jobs: int,
    workdir: Path,
    label: str = "conformance",
    extra_env: dict[str, str] | None = None,
    registry: bool = False,
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
    with contextlib.ExitStack() as stack:
        if registry:
            if why:
                raise RuntimeError(f"{label}: --registry needs the container engine: {why}")
            pulling, reg = stack.enter_context(registry_in_the_loop(workdir, IMAGE_STORE))
            env.update(pulling)
        server = start_server(workdir / "gateway", env)
        try:
            outcome = run_cwltest(
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
        if registry:
            fetched = reg.blob_fetches()
            outcome.notes.append(
                f"registry {reg.host}: {len(fetched)} blobs fetched, {sum(fetched.values())} fetches in all "
                f"(most of one blob: {max(fetched.values(), default=0)})"
            )
        return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", type=Path, default=Path(os.environ.get("CWL_SUITE", DEFAULT_SUITE)))
    parser.add_argument("--tags", default=os.environ.get("TAGS", "required"), help="required (default) or all")
    parser.add_argument("-j", "--jobs", type=int, default=int(os.environ.get("JOBS", "2")))
    parser.add_argument("--keep", type=Path, help="keep the gateway's data and cwltest's logs here")
    parser.add_argument(
        "--registry", action="store_true", help="images from a loopback registry into an empty store (docstring)"
    )
    args = parser.parse_args(argv)
    if not (args.suite / "conformance_tests.yaml").exists():
        print(f"conformance: no suite at {args.suite} (set CWL_SUITE)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="wes-conformance-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        outcome = through_gateway(args.suite.resolve(), args.tags, args.jobs, workdir, registry=args.registry)
    print(outcome.line())
    for note in outcome.notes:
        print(f"  {note}")
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
