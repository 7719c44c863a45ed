"""No cold start (issue 40): a web worker is ready for submissions before it accepts one.
Gunicorn's master loads what checking a submission loads (cwltool with schema-salad and each
version's schema, miniwdl with its grammars) before it forks the workers, which inherit it.

Nothing here is timed: a freshly started gateway's workers hold the validators' extension
modules before their first request, mapped where the master mapped them (inherited, not loaded
by each worker); and the warm-up leaves nothing for a first check to load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, Server, start_server, stop_server


def extension_file(module: str) -> str:
    """The shared object a compiled module is loaded from, as /proc/<pid>/maps names it."""
    found = subprocess.run(
        [sys.executable, "-c", f"import {module}; print({module}.__file__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert found.endswith(".so"), f"{module} is not a compiled module here ({found})"
    return os.path.realpath(found)


def mapped_at(pid: int, path: str) -> str | None:
    """Where ``path`` is mapped in the process (its first mapping's address), or None."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == path:
            return fields[0]
    return None


def web_workers(master: int) -> list[int]:
    """Gunicorn's workers: the master's children forked without exec (its own command line),
    or so titled where setproctitle is installed; the supervisor is a new interpreter."""
    own = Path(f"/proc/{master}/cmdline").read_bytes()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            parent = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            command = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if parent == master and (command == own or command.startswith(b"gunicorn: worker")):
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # start_server asks only /health (answered by whichever worker runs first) before it returns.
    server = start_server(tmp_path_factory.mktemp("fresh"), {"WES_GATEWAY_ACCESS_LOG": "/dev/null"}, workers=3)
    yield server
    stop_server(server)


def test_every_worker_holds_the_validators_before_its_first_submission(fresh: Server) -> None:
    deadline = time.monotonic() + 60
    workers = web_workers(fresh.process.pid)
    while len(workers) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
        workers = web_workers(fresh.process.pid)
    assert len(workers) == 3, workers
    # CWL: schema-salad (compiled), which cwltool loads documents with; WDL: miniwdl's regex.
    for module in ("schema_salad.schema", "regex._regex"):
        path = extension_file(module)
        in_master = mapped_at(fresh.process.pid, path)
        assert in_master is not None, f"the master has not loaded {module} before forking the workers"
        for worker in workers:
            assert mapped_at(worker, path) == in_master, f"worker {worker} did not inherit {module} from the master"


def test_a_first_check_after_the_warm_up_loads_no_schema_or_grammar(tmp_path: Path) -> None:
    """What warm_validation leaves behind is what a submission's check would otherwise load
    first: every CWL version's schema and the WDL grammars (in a new interpreter, as in the
    master)."""
    script = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        from wes_gateway.engines import ENGINES, warm_validation
        from wes_gateway.engines.base import ScratchAdmission
        import cwltool.process, WDL._parser

        warm_validation()
        schemas, grammars = set(cwltool.process.SCHEMA_CACHE), set(WDL._parser._lark_cache)
        root = Path(sys.argv[1])
        for version in ENGINES["CWL"].versions():
            doc = root / f"tool-{version}.cwl"
            doc.write_text(f"cwlVersion: {version}\\nclass: CommandLineTool\\nbaseCommand: 'true'\\n"
                           "inputs: []\\noutputs: []\\n")
            ENGINES["CWL"].prepare(str(doc), {}, ScratchAdmission(str(root)))
        for version in ENGINES["WDL"].versions():
            doc = root / f"task-{version.replace('.', '_')}.wdl"
            doc.write_text(f"version {version}\\ntask t {{\\n  command <<< true >>>\\n}}\\n")
            ENGINES["WDL"].prepare(str(doc), {}, ScratchAdmission(str(root)))
        print(json.dumps({
            "versions": sorted(ENGINES["CWL"].versions()),
            "warm": sorted(schemas),
            "loaded_after": sorted(set(cwltool.process.SCHEMA_CACHE) - schemas),
            "grammars": len(grammars),
            "built_after": len(set(WDL._parser._lark_cache) - grammars),
        }))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["warm"] == seen["versions"]
    assert seen["loaded_after"] == []
    assert seen["grammars"] > 0
    assert seen["built_after"] == 0
