"""The code that runs inside each run's leader process.

This module is preloaded into the multiprocessing forkserver, so importing Toil's CWL and
WDL front ends is paid once, not per run. Each leader is forked from there and owns the
process-global state Toil insists on (signal handlers, root logger, sys.argv, environ).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path

# Preload: the expensive imports happen in the forkserver, before any run.
import toil.cwl.cwltoil  # noqa: F401
import toil.wdl.wdltoil  # noqa: F401

from .base import LeaderSpec, RunPaths

_WARM_CWL = """cwlVersion: v1.2
class: CommandLineTool
baseCommand: "true"
inputs: []
outputs: []
"""
_WARM_WDL = """version 1.0
task warm {
  command <<< true >>>
}
"""


def _warm_parsers() -> None:
    """Load a tiny CWL and WDL document once, here in the forkserver: the first load builds
    cwltool's schema-salad loaders (over a second) and miniwdl's grammar, and every leader
    forked afterwards inherits them instead of paying again."""
    import logging
    import tempfile

    quiet = [logging.getLogger(name) for name in ("cwltool", "salad", "toil")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        with tempfile.TemporaryDirectory(prefix="wes-gateway-warm-") as tmp:
            cwl = Path(tmp) / "warm.cwl"
            cwl.write_text(_WARM_CWL)
            from cwltool.context import LoadingContext
            from cwltool.load_tool import load_tool
            from cwltool.workflow import default_make_tool

            load_tool(str(cwl), LoadingContext({"construct_tool_object": default_make_tool}))
            wdl = Path(tmp) / "warm.wdl"
            wdl.write_text(_WARM_WDL)
            import WDL

            WDL.load(str(wdl))
    except Exception:  # warming is an optimisation; a leader still works without it
        pass
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


_warm_parsers()


def _redirect(fd: int, path: str) -> None:
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, fd)
    os.close(target)


def _write_result(paths: RunPaths, exit_code: int) -> None:
    temporary = paths.result.with_suffix(".tmp")
    temporary.write_text(json.dumps({"exit_code": exit_code}))
    os.replace(temporary, paths.result)


def run_leader(spec: LeaderSpec) -> None:
    """Entry point in the child. Never returns: exits with the leader's exit code."""
    # Own process group, so cancel can signal the leader and everything it started.
    os.setsid()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    paths = RunPaths(root=Path(spec.root))
    os.chdir(spec.root)
    # Who the leader is, for a supervisor that must adopt it after a crash: pid and start time
    # (a forked process's /proc environ still shows the forkserver's, so no marker is visible).
    with open(f"/proc/{os.getpid()}/stat") as stat:
        started = int(stat.read().rsplit(") ", 1)[1].split()[19])
    paths.leader_file.write_text(json.dumps({"pid": os.getpid(), "start": started}))
    # Toil pickles the leader's environment into the job store: give it only what we chose.
    os.environ.clear()
    os.environ.update(spec.env)
    sys.stdout.flush()
    sys.stderr.flush()
    _redirect(1, str(paths.stdout))
    _redirect(2, str(paths.stderr))
    exit_code = 1
    try:
        if spec.workflow_type == "CWL":
            sys.argv = ["toil-cwl-runner", *spec.argv]
            with open(paths.outputs_json, "w") as outputs:
                exit_code = int(toil.cwl.cwltoil.main(spec.argv, stdout=outputs) or 0)
        else:
            sys.argv = ["toil-wdl-runner", *spec.argv]
            toil.wdl.wdltoil.main()
            exit_code = 0
    except SystemExit as exc:
        code = exc.code
        exit_code = code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:
        exit_code = 130
    except BaseException:
        traceback.print_exc()
        exit_code = 1
    try:
        _write_result(paths, exit_code)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # Skip interpreter teardown: Toil leaves threads and atexit hooks behind.
        os._exit(exit_code)
