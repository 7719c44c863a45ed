"""Where everything of one run lives: the run directory and the files in it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Settings


@dataclass(frozen=True)
class RunPaths:
    """Where everything of one run lives. The directory is the unit of retention."""

    root: Path

    @classmethod
    def of(cls, settings: Settings, run_id: str) -> RunPaths:
        """The one way to find a run's directory."""
        return cls(root=settings.runs_dir / run_id)

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
    def control(self) -> Path:
        """The supervisor's own files about the run; hidden from the run's sandbox, so that
        nothing the workflow does can change what the supervisor believes of it."""
        return self.root / "control"

    @property
    def leader_file(self) -> Path:
        return self.control / "leader.json"

    @property
    def leader_files(self) -> tuple[Path, ...]:
        """Where the leader's identity is, and where a leader started by a version before the
        control directory kept it (so that an upgrade adopts runs already in flight)."""
        if self.control.exists():  # every run since has one: nothing the run wrote is believed
            return (self.leader_file,)
        return self.leader_file, self.root / "leader.json"

    @property
    def inputs(self) -> Path:
        """Local paths the input policy let the run name (bound read-only into its sandbox)."""
        return self.control / "inputs.json"

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
        return self.control / "result.json"

    def read_result(self) -> int | None:
        """The leader's exit code as it recorded it, or None if it never finished (also where a
        leader of the version before the control directory wrote it)."""
        legacy = () if self.control.exists() else (self.root / "result.json",)
        for path in (self.result, *legacy):
            try:
                return int(json.loads(path.read_text())["exit_code"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return None

    def read_inputs(self) -> list[str]:
        try:
            data = json.loads(self.inputs.read_text())
        except (OSError, ValueError):
            return []
        return [item for item in data if isinstance(item, str)] if isinstance(data, list) else []

    def read_outputs(self) -> dict[str, Any]:
        try:
            data = json.loads(self.outputs_json.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
