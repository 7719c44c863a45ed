"""Where everything of one run lives: the run directory and the files in it."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from wes_gateway.config import Settings
from wes_gateway.files import beneath

# outputs.json and outline.json are small; a run cannot make the service read gigabytes.
MAX_JSON_BYTES = 64 * 1024 * 1024

# The directories of a run that its user can write and that the service, as root, binds into
# the sandbox, creates or hands over. A run can put a link (or a file) in the place of any of
# them; before a restart, root would then act on what the link names (another run, the image
# store, a host directory). Parents before children.
RUN_OWNED_DIRS = ("tmp", "work", "outputs", "home", "job-logs", "jobstore", "containers", "tmp/.podman")


def staging_dir(settings: Settings) -> Path:
    """Where submissions and uploads are written before they become a run: the service's
    alone (0700), since the runs directory may be on a filesystem that batch jobs reach."""
    staging = settings.runs_dir / ".staging"
    staging.mkdir(mode=0o700, parents=True, exist_ok=True)
    if staging.stat().st_mode & 0o077:
        os.chmod(staging, 0o700)
    return staging


def hidden_name(settings: Settings, run_id: str) -> str:
    """A name for the run's host-wide objects (its cgroup) that does not give its id away:
    every run sees /sys (its container engine needs it), where those names are listed, and a
    run id is what a run needs to aim at another. Keyed by a secret of the data directory's,
    so that it is the same on every start and host."""
    return hmac.new(_name_key(settings.data_dir.resolve()), run_id.encode(), hashlib.sha256).hexdigest()[:32]


_KEYS: dict[Path, bytes] = {}


def _name_key(data_dir: Path) -> bytes:
    if data_dir not in _KEYS:
        key = data_dir / "names.key"
        if not key.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            # Written whole, then linked into place: two processes racing keep one key.
            draft = data_dir / f".names.key.{os.getpid()}.{secrets.token_hex(4)}"
            draft.write_bytes(secrets.token_bytes(32))
            os.chmod(draft, 0o600)
            try:
                os.link(draft, key)
            except FileExistsError:
                pass
            finally:
                draft.unlink()
        _KEYS[data_dir] = key.read_bytes()
    return _KEYS[data_dir]


def supervisor_beat(settings: Settings) -> Path:
    """The file this host's supervisor touches at every pass of its loop: its proof of life
    for /health (the Gunicorn master restarts a supervisor that died)."""
    return settings.data_dir.resolve() / f"supervisor-{settings.effective_host_id}.alive"


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
    def jobstore_began(self) -> bool:
        """Whether the workflow began in its job store, so that Toil's --restart can resume it:
        Toil's file job store records the root job once it has made it."""
        return (self.jobstore / "shared" / "rootJobStoreID").is_file()

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
    def containers(self) -> Path:
        """The run's container engine configuration and shims (containers.prepare)."""
        return self.root / "containers"

    @property
    def container_state(self) -> tuple[Path, Path]:
        """The container engine's storage and runtime directories: the run user's own, with
        its own group (a rootless engine maps only that user and group, and refuses a layer
        directory whose group it cannot map), so never handed over like the rest."""
        return self.containers / "storage", self.tmp / ".podman"

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
    def uid_file(self) -> Path:
        """The user id the run was given from run_uids (the supervisor's record, for adoption)."""
        return self.control / "uid.json"

    @property
    def result(self) -> Path:
        return self.control / "result.json"

    def replaced(self) -> list[str]:
        """The names of RUN_OWNED_DIRS (and the control directory) that are there but are not
        what the service made: a link, a file, a FIFO, or a control directory that is not the
        service's alone. Read without following anything (beneath)."""
        found: list[str] = []
        for name in ("control", *RUN_OWNED_DIRS):
            if any(name.startswith(f"{bad}/") for bad in found):
                continue
            try:
                fd = beneath.path_fd(self.root, name)
            except FileNotFoundError:
                continue
            except OSError:
                found.append(name)  # a parent is a link or not a directory
                continue
            try:
                info = os.fstat(fd)
            finally:
                os.close(fd)
            ours = info.st_uid == os.geteuid() and not info.st_mode & 0o077
            if not stat.S_ISDIR(info.st_mode) or (name == "control" and not ours):
                found.append(name)
        return found

    def remove_replaced(self, names: list[str]) -> None:
        """Take away what ``replaced`` found (the link or file itself, never what it names), so
        that nothing later acting on the run's paths can follow it."""
        for name in names:
            parent, _, last = name.rpartition("/")
            try:
                fd = beneath.path_fd(self.root, parent, directory=True) if parent else beneath.path_fd(self.root, "")
            except OSError:
                continue
            try:
                info = os.stat(last, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    os.rename(last, f"{last}.refused", src_dir_fd=fd, dst_dir_fd=fd)
                else:
                    os.unlink(last, dir_fd=fd)
            except OSError:
                pass
            finally:
                os.close(fd)

    def open_file(self, path: Path) -> BinaryIO | None:
        """Open a file of this run for the service to read, or None: only a regular file
        inside the run directory, reached through no symbolic link (beneath). The run owns its
        directory and could otherwise point a name (stdout.log, job-logs, outputs.json) at
        the service's own files, or at a FIFO or device that blocks or wakes something."""
        name = beneath.relative_to(self.root, path)
        if name is None:
            return None
        try:
            return os.fdopen(beneath.open_fd(self.root, name), "rb")
        except OSError:
            return None

    def read_json(self, path: Path) -> Any:
        """A JSON file the run may have written, read as ``open_file`` allows; None if not."""
        handle = self.open_file(path)
        if handle is None:
            return None
        with handle:
            try:
                return json.loads(handle.read(MAX_JSON_BYTES) or b"null")
            except (ValueError, RecursionError):
                return None

    def read_result(self) -> int | None:
        """The leader's exit code as it recorded it, or None if it never finished (also where a
        leader of the version before the control directory wrote it)."""
        legacy = () if self.control.exists() else (self.root / "result.json",)
        for path in (self.result, *legacy):
            data = self.read_json(path)
            if isinstance(data, dict) and isinstance(data.get("exit_code"), int):
                return int(data["exit_code"])
        return None

    def read_inputs(self) -> list[str]:
        data = self.read_json(self.inputs)
        return [item for item in data if isinstance(item, str)] if isinstance(data, list) else []

    def read_outputs(self) -> dict[str, Any]:
        data = self.read_json(self.outputs_json)
        return data if isinstance(data, dict) else {}
