#!/usr/bin/env python3
"""bench/conformance: the CWL v1.2 conformance suite at -j2 through the gateway (stock
toil-wes-cwl-runner) and directly with `toil-cwl-runner`, in the same run, both with the same
container engine (Podman with the tests' stand-in images, when they can be built here).
Prints pass counts, failing ids and wall times for both, and the gateway/direct time ratio.

    .venv/bin/python bench/conformance.py [--tags all|required] [-j 2]

Needs the conformance extra (`make conformance` installs it)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))  # before bench/ (this script's own folder): its conformance.py

from common import direct_engine  # noqa: E402
from conformance import BIN, DEFAULT_SUITE, Outcome, run_cwltest, through_gateway, tool_env  # noqa: E402


def report(outcome: Outcome) -> None:
    print(outcome.line())
    print(f"  real passes (not should_fail): {outcome.real_passes}")
    print(f"  failed: {' '.join(sorted(outcome.failed)) or '-'}")
    if outcome.unsupported:
        print(f"  unsupported: {' '.join(sorted(outcome.unsupported))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", type=Path, default=DEFAULT_SUITE)
    parser.add_argument("--tags", default="all")
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep logs and junit reports here")
    parser.add_argument("--sides", default="gateway,direct", help="gateway, direct or both (the default)")
    args = parser.parse_args()
    sides = set(args.sides.split(","))
    suite = args.suite.resolve()
    with tempfile.TemporaryDirectory(prefix="wes-bench-conformance-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        gateway = through_gateway(suite, args.tags, args.jobs, workdir, label="gateway") if "gateway" in sides else None
        if gateway is not None:
            report(gateway)
        if "direct" not in sides:
            return
        from harness.gateway import IMAGE_STORE, images_unavailable

        if images_unavailable():
            engine_env, container_args = {}, ["--no-container"]
        else:
            engine_env, container_args = direct_engine(workdir / "direct-engine", IMAGE_STORE)
        direct = run_cwltest(
            "direct",
            suite,
            args.tags,
            args.jobs,
            str(BIN / "toil-cwl-runner"),
            [*container_args, "--disableProgress"],
            workdir,
            # The engine's shim first, then what cwltest needs.
            tool_env({"PATH": f"{engine_env['PATH'].split(':', 1)[0]}:{tool_env()['PATH']}"} if engine_env else {}),
        )
        report(direct)
    if gateway is None:
        return
    only_direct = sorted(set(direct.passed) - set(gateway.passed))
    print(f"passed directly but not through the gateway: {' '.join(only_direct) or '-'}")
    print(
        f"wall time gateway/direct: {gateway.seconds:.0f} s / {direct.seconds:.0f} s = "
        f"{gateway.seconds / direct.seconds:.2f}"
    )


if __name__ == "__main__":
    main()
