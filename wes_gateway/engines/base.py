"""What every workflow language provides, and the per-run file layout they share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from ..config import Settings


@dataclass(frozen=True)
class RunPaths:
    """Where everything of one run lives. The directory is the unit of retention."""

    root: Path

    @property
    def attachments(self) -> Path:
        return self.root / "attachments"

    @property
    def params(self) -> Path:
        return self.root / "params.json"

    @property
    def jobstore(self) -> Path:
        return self.root / "jobstore"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def outdir(self) -> Path:
        return self.root / "outputs"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def stdout(self) -> Path:
        return self.root / "stdout.log"

    @property
    def stderr(self) -> Path:
        return self.root / "stderr.log"

    @property
    def messages(self) -> Path:
        return self.root / "messages.tsv"

    @property
    def leader_file(self) -> Path:
        return self.root / "leader.json"

    @property
    def outline(self) -> Path:
        return self.root / "outline.json"

    @property
    def job_logs(self) -> Path:
        return self.root / "job-logs"

    @property
    def outputs_json(self) -> Path:
        return self.root / "outputs.json"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    def read_result(self) -> int | None:
        """The leader's exit code as it recorded it, or None if it never finished."""
        try:
            return int(json.loads(self.result.read_text())["exit_code"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def read_outputs(self) -> dict[str, Any]:
        try:
            data = json.loads(self.outputs_json.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class LeaderSpec:
    """Everything the leader's child process needs; pickled across the forkserver."""

    run_id: str
    workflow_type: str
    argv: list[str]
    env: dict[str, str]
    root: str


class Engine(Protocol):
    workflow_type: str

    def versions(self) -> list[str]: ...

    def workflow_reference(self, location: str, fragment: str) -> str:
        """What names the workflow to the validator and the leader: ``location`` is a local
        path or an http(s) URL, ``fragment`` what followed '#' after a local path (or '')."""

    def prepare(self, workflow: str, params: dict[str, Any],
                resolve_input: Callable[[str], str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Check the document (and the inputs, where the language allows) and return the
        params with file references passed through ``resolve_input`` (which applies the
        input policy), plus an outline of the workflow (its steps) for naming tasks.
        Raises BadRequest."""

    def present_outputs(self, outputs: dict[str, Any], paths: RunPaths) -> dict[str, Any]: ...

    def argv(self, workflow: str, paths: RunPaths, user_args: list[str], settings: Settings,
             restart: bool) -> list[str]: ...


def toil_argv(workflow: str, paths: RunPaths, settings: Settings, language_args: list[str],
              user_args: list[str], restart: bool) -> list[str]:
    """The leader's argv: what every run gets, the language's own flags, then the client's
    vetted flags (last, so a client may lower --maxCores within the policy's bounds)."""
    argv = [
        workflow,
        str(paths.params),
        "--jobStore", f"file:{paths.jobstore}",
        "--workDir", str(paths.work),
        "--writeMessages", str(paths.messages),
        "--writeLogs", str(paths.job_logs),
        "--writeLogsFromAllJobs", "true",
        # One Toil job per step, so every step shows up as a task of its own.
        "--disableChaining", "true",
        "--batchSystem", "single_machine",
        "--maxCores", str(settings.effective_max_cores),
        "--maxMemory", settings.run_max_memory,
        "--disableProgress",
        *language_args,
        *user_args,
    ]
    if restart:
        argv.append("--restart")
    return argv
