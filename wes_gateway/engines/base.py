"""What every workflow language provides, and the per-run file layout they share."""

from __future__ import annotations

import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from wes_gateway.config import Settings, parse_memory
from wes_gateway.errors import BadRequest
from wes_gateway.files.paths import RunPaths
from wes_gateway.host import batch
from wes_gateway.host.sandbox import SandboxSpec


@dataclass(frozen=True)
class LeaderSpec:
    """Everything the leader's child process needs; pickled across the forkserver."""

    run_id: str
    workflow_type: str
    argv: list[str]
    env: dict[str, str]
    root: str
    sandbox: SandboxSpec | None = None
    run_as: tuple[int, int] | None = None  # uid and gid to drop to (supervisor running as root)
    token: str = ""  # this leader's claim on the run; a successor's token fences it out
    heartbeat_seconds: float = 10.0  # how often the launcher renews the leader's heartbeat
    fence_seconds: float = 20.0  # with no renewal this long, the leader stops (another host may take over)
    prompt_shutdown: bool = True  # cut Toil's idle waits at the run's end short (toil_waits)
    warm_workers: bool = True  # fork this host's Toil workers from a warm zygote (toil_workers)
    overcommit: float = 1.0  # the single-machine cores and disk pools, times this (toil_overcommit)
    probes_in_process: bool = True  # Toil's per-job stat and du done without programs (toil_probes)
    keep_schemas: bool = True  # cwltool's loaded CWL schemas survive Toil's set-up (toil_schemas)
    pickle_schemas: bool = True  # job bodies carry a standard CWL schema's name, not the schema (toil_pickles)
    cgroup_procs: tuple[str, ...] = ()  # the run's group (limits): the leader joins it first
    # Where there is no group: (RLIMIT_AS bytes per process, RLIMIT_NPROC for the run's own uid); 0 = none.
    rlimits: tuple[int, int] = (0, 0)


class Admission(Protocol):
    """The input policy as an engine sees it (staging implements it)."""

    def input(self, reference: str) -> str:
        """A file an input names: an absolute local path or an http(s) URL, or BadRequest."""

    def document(self, reference: str) -> str:
        """A document the workflow pulls in ($import, $include, run:, WDL import): an
        attachment, a file under the allowed roots, or an http(s) URL under the allowed
        prefixes; anything else is BadRequest, before it is read."""

    def default(self, reference: str) -> str:
        """A file a default inside the workflow's documents names: as ``input``, except that
        what would have to be rewritten in the document (a drs:// URI) is BadRequest."""


class Engine(Protocol):
    workflow_type: str
    program: str  # the Toil command a leader stands for, as shown in RunLog.cmd
    # The language as a Workflow RO-Crate names it: its identifier, name and home page.
    crate_language: tuple[str, str, str]

    def warm(self) -> None:
        """Import the language's Toil front end and load a tiny document, in the forkserver,
        so that every leader forked afterwards starts with warm parsers."""

    def warm_validation(self) -> None:
        """Check a tiny document of every version the language takes as a submission's is
        checked (``prepare``), so that what that loads (the validator, its grammars and
        schemas) is loaded: in Gunicorn's master, before the web workers fork."""

    def run_leader(self, argv: list[str], paths: RunPaths) -> int:
        """Inside the leader process: run Toil's front end; return its exit code."""

    def warm_workers(self) -> None:
        """Inside the leader process, in the run's environment, just before it forks its worker
        zygote: load what every one of its workers would otherwise load for itself."""

    def is_task(self, job_id: str) -> bool:
        """Whether a Toil job runs a workflow step (the rest is Toil's plumbing)."""

    def task_name(self, job_type: str, workflow_file: str, outline: dict[str, Any]) -> str:
        """A task's name, from Toil's job type and the outline ``prepare`` returned."""

    def versions(self) -> list[str]: ...

    def workflow_reference(self, location: str, fragment: str) -> str:
        """What names the workflow to the validator and the leader: ``location`` is a local
        path or an http(s) URL, ``fragment`` what followed '#' after a local path (or '')."""

    def prepare(
        self, workflow: str, params: dict[str, Any], admission: Admission
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Check the document (and the inputs, where the language allows) and return the
        params with file references passed through ``admission.input`` (the input policy),
        plus an outline of the workflow (its steps) for naming tasks. Every document the
        workflow pulls in goes through ``admission.document`` before it is read.
        Raises BadRequest."""

    def present_outputs(self, outputs: dict[str, Any], paths: RunPaths) -> dict[str, Any]: ...

    def language_args(self, paths: RunPaths, settings: Settings) -> list[str]:
        """The language's own flags for its Toil front end (outputs, containers, tmp dirs)."""


def exit_code_of(main: Callable[[], int | None]) -> int:
    """What a process whose program is ``main`` exits with: its return value (None is 0) or
    its SystemExit code (a message is 1), 130 for an interrupt, 1 for any other exception
    (its traceback printed). For a leader or a worker in a forked process, which must end
    with ``os._exit`` and never unwind into its parent's code."""
    try:
        code = main()
        return 0 if code is None else code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        return 130
    except BaseException:
        traceback.print_exc()
        return 1


def load_scratch_document(name: str, text: str, load: Callable[[str], object]) -> None:
    """Write a tiny document to a scratch directory and load it: how engines warm a parser."""
    with tempfile.TemporaryDirectory(prefix="wes-gateway-warm-") as tmp:
        document = Path(tmp) / name
        document.write_text(text)
        load(str(document))


class ScratchAdmission:
    """The input policy for the gateway's own warm-up documents, which pull nothing in: only
    what lies under their scratch directory is admitted."""

    def __init__(self, root: str) -> None:
        self.root = root

    def input(self, reference: str) -> str:
        path = reference.removeprefix("file://").split("#", 1)[0]
        if not path.startswith(self.root + "/"):
            raise BadRequest(f"a warm-up document may not read {reference!r}")
        return reference

    def document(self, reference: str) -> str:
        return self.input(reference)

    def default(self, reference: str) -> str:
        return self.input(reference)


def warm_by_checking(engine: Engine, documents: dict[str, tuple[str, dict[str, Any]]]) -> None:
    """``engine.prepare`` each of ``documents`` (file name: text and params), from a scratch
    directory: how engines warm their validation."""
    with tempfile.TemporaryDirectory(prefix="wes-gateway-warm-") as tmp:
        for name, (text, params) in documents.items():
            document = Path(tmp) / name
            document.write_text(text)
            engine.prepare(str(document), params, ScratchAdmission(tmp))


def toil_argv(
    workflow: str, paths: RunPaths, settings: Settings, language_args: list[str], user_args: list[str], restart: bool
) -> list[str]:
    """The leader's argv: what every run gets, the language's own flags, then the client's
    vetted flags (last, so a client may lower --maxCores within the policy's bounds)."""
    argv = [
        workflow,
        str(paths.params),
        "--jobStore",
        f"file:{paths.jobstore}",
        "--workDir",
        str(paths.work),
        "--writeMessages",
        str(paths.messages),
        "--writeLogs",
        str(paths.job_logs),
        "--writeLogsFromAllJobs",
        "true",
        # One Toil job per step, so every step shows up as a task of its own.
        "--disableChaining",
        "true",
        *batch.toil_args(settings),
        "--maxCores",
        str(settings.effective_max_cores),
        "--maxMemory",
        # In bytes, as the service reads the size (4G is 4 GiB here and in the run's cgroup):
        # Toil reads "4G" as 4e9, which two jobs of its default 2 GiB do not fit.
        str(parse_memory(settings.run_max_memory)),
        "--disableProgress",
        *language_args,
        *user_args,
    ]
    if restart:
        argv.append("--restart")
    return argv
