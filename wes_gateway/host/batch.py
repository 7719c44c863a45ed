"""What the gateway knows of Toil's batch systems: the flags and variables that choose and
configure one, what a sandboxed leader must see to submit to it, and where a job ran.

Scheduling itself is Toil's (its slurm, lsf, htcondor, ... batch systems); nothing here
queues or places a job.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from wes_gateway.config import Settings
from wes_gateway.host import sandbox

log = logging.getLogger(__name__)

SINGLE_MACHINE = "single_machine"

# Variables the batch system's own clients read, kept from the service's environment for the
# leader (and the supervisor's own lookups). Paths, not secrets.
CLIENT_ENV: dict[str, tuple[str, ...]] = {
    "slurm": ("SLURM_CONF",),
    "lsf": ("LSF_ENVDIR", "LSF_SERVERDIR"),
}
# Where each grid batch system takes extra submission arguments (Toil reads these).
ARGS_ENV = {"slurm": "TOIL_SLURM_ARGS", "lsf": "TOIL_LSF_ARGS", "grid_engine": "TOIL_GRIDENGINE_ARGS"}
ARGS_ENV["torque"] = "TOIL_TORQUE_ARGS"

_SLURM_CONF_DEFAULT = "/etc/slurm/slurm.conf"
_MUNGE_SOCKET_DEFAULT = "/run/munge/munge.socket.2"
_AUTH_SOCKET = re.compile(r"^\s*AuthInfo\s*=.*?\bsocket=([^,\s]+)", re.IGNORECASE | re.MULTILINE)


class BatchSystemUnusable(RuntimeError):
    """The configured batch system cannot work with these settings."""


def is_remote(settings: Settings) -> bool:
    """Whether jobs may run on other hosts than the leader's."""
    return settings.batch_system != SINGLE_MACHINE


def client_env_names(settings: Settings) -> tuple[str, ...]:
    names: list[str] = []
    for system in {settings.batch_system, *settings.allowed_batch_systems}:
        names.extend(CLIENT_ENV.get(system, ()))
    return tuple(names)


def toil_args(settings: Settings) -> list[str]:
    """The flags that choose the deployment's batch system and pass its options."""
    argv = ["--batchSystem", settings.batch_system]
    options = settings.batch_options
    if settings.batch_system == "slurm" or "slurm" in settings.allowed_batch_systems:
        # Toil ignores a batch system's flags when another one runs.
        if options.partition:
            argv += ["--slurmPartition", options.partition]
        if options.time:
            argv += ["--slurmTime", options.time]
    return argv


def leader_env(settings: Settings, run_id: str, environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """What the leader needs to reach the batch system: its clients' variables and the extra
    submission arguments (for Slurm, with the run's label)."""
    env = {name: environ[name] for name in client_env_names(settings) if name in environ}
    for system, variable in ARGS_ENV.items():
        if system not in {settings.batch_system, *settings.allowed_batch_systems}:
            continue
        args = settings.batch_options.args
        if system == "slurm":
            args = f"{args} --comment={run_label(run_id)}".strip()
        if args:
            env[variable] = args
    return env


def slurm_conf(environ: dict[str, str] | os._Environ[str]) -> str:
    return environ.get("SLURM_CONF") or _SLURM_CONF_DEFAULT


def sandbox_paths(settings: Settings, environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """Files a sandboxed leader must see, read-only, to submit jobs: for Slurm its config file
    (not the directory: slurmdbd.conf there holds the accounting database's password) and
    munge's socket directory."""
    if "slurm" not in {settings.batch_system, *settings.allowed_batch_systems}:
        return []
    conf = slurm_conf(environ)
    paths = [conf] if os.path.isfile(conf) else []
    socket_path = _MUNGE_SOCKET_DEFAULT
    try:
        found = _AUTH_SOCKET.search(Path(conf).read_text(errors="replace"))
        if found:
            socket_path = found.group(1)
    except OSError:
        pass
    directory = os.path.dirname(socket_path)
    if os.path.isdir(directory):
        paths.append(directory)
    return paths


def check(settings: Settings) -> None:
    """At start-up: a batch system that sends jobs to other hosts needs a shared directory
    that this service can write, its submission command on PATH, and a run user who can
    execute this service's Python (the jobs' Toil worker)."""
    _check_shared_dir(settings)
    check_run_user(settings)


def _check_shared_dir(settings: Settings) -> None:
    if not is_remote(settings) and not settings.shared_dir:
        return
    if is_remote(settings) and settings.shared_dir is None:
        raise BatchSystemUnusable(
            f"batch_system is {settings.batch_system!r}: set shared_dir (WES_GATEWAY_SHARED_DIR) to a directory "
            "on the filesystem that the compute nodes share, for job stores and work directories"
        )
    assert settings.shared_dir is not None
    runs = settings.runs_dir
    try:
        runs.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=runs, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise BatchSystemUnusable(f"shared_dir {settings.shared_dir} is not writable: {exc.strerror}") from None
    if settings.batch_system == "slurm" and shutil.which("sbatch") is None:
        raise BatchSystemUnusable("batch_system is 'slurm' but sbatch is not on PATH (install slurm-client)")


def check_run_user(settings: Settings, executable: str | None = None, timeout: float = 30) -> None:
    """Batch jobs start Toil's worker as the run user, outside any sandbox, with this
    service's Python: one that user cannot execute (say, under a home directory of mode
    0700) fails every job with ``exec: _toil_worker: Permission denied`` deep in the run's
    log, so refuse to start instead. Executes it as that user, as the job will."""
    identity = sandbox.run_identity(settings)
    if identity is None or not ({settings.batch_system, *settings.allowed_batch_systems} - {SINGLE_MACHINE}):
        return
    # With run_uids each run has a uid of its own; none has an account, so any stands for all.
    uids = settings.run_uid_range
    uid, gid = (uids[0] if uids else identity.uid), identity.gid
    interpreter = executable or sys.executable
    try:
        result = subprocess.run(
            [interpreter, "-c", "pass"],
            user=uid,
            group=gid,
            extra_groups=[],
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        reason = None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["no output"])[-1]
        if reason is not None:
            reason = f"exit status {result.returncode}: {reason}"
    except OSError as exc:
        reason = exc.strerror or str(exc)
    except subprocess.TimeoutExpired:
        reason = f"it did not finish within {timeout:g} s"
    if reason is None:
        return
    who = f"uid {uid} (from run_uids)" if uids else f"run_user {settings.run_user!r} (uid {uid})"
    blocked = unsearchable_dir(interpreter, uid, gid)
    where = f"; it cannot search {blocked}" if blocked else ""
    raise BatchSystemUnusable(
        f"batch jobs run as {who}, who cannot execute this service's Python {interpreter} ({reason}){where}: "
        "every job would fail with 'exec: _toil_worker: Permission denied'. Install the service's Python "
        "where the run user can execute it (for example a virtualenv under /opt) and run the service from there"
    )


def unsearchable_dir(path: str, uid: int, gid: int) -> str | None:
    """The first directory on ``path`` (as given, then through its symbolic links) that
    ``uid`` with group ``gid`` and no other groups may not search, by mode bits; None if none."""
    for candidate in dict.fromkeys([os.path.abspath(path), os.path.realpath(path)]):
        parts = Path(candidate).parts
        for depth in range(1, len(parts)):
            directory = os.path.join(*parts[:depth])
            try:
                info = os.stat(directory)
            except OSError:
                return directory
            if info.st_uid == uid:
                bit = stat.S_IXUSR
            elif info.st_gid == gid:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if not info.st_mode & bit:
                return f"{directory} (mode {stat.S_IMODE(info.st_mode):04o}, owner uid {info.st_uid})"
    return None


def node_of(batch_system: str, external_id: str, environ: dict[str, str] | os._Environ[str]) -> str | None:
    """The host a batch job ran on, as its scheduler tells it; None if it cannot say.
    ``batch_system`` is as Toil's bus names it (SlurmBatchSystem) or as the settings do."""
    kind = batch_system.lower().removesuffix("batchsystem").replace("_", "")
    if kind == "singlemachine":
        return os.uname().nodename
    if kind != "slurm" or not external_id.isdigit():
        return None
    shown = _slurm(["scontrol", "show", "job", "--oneliner", external_id], environ)
    if shown is None:
        return None
    found = re.search(r"\bBatchHost=(\S+)", shown) or re.search(r"\bNodeList=(\S+)", shown)
    if not found or found.group(1) in ("(null)", ""):
        return None
    return found.group(1)


def _slurm(argv: list[str], environ: dict[str, str] | os._Environ[str]) -> str | None:
    """What one of Slurm's clients prints, with its configuration variables; None if it fails."""
    env = {"PATH": environ.get("PATH", "/usr/bin:/bin"), **{k: environ[k] for k in CLIENT_ENV["slurm"] if k in environ}}
    try:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("%s failed: %s", argv[0], exc)
        return None


def run_label(run_id: str) -> str:
    """What marks a run's jobs in the scheduler (Slurm's job comment), so that they can be
    found after their leader is gone."""
    return f"wes-gateway-run-{run_id}"


def leftover_jobs(settings: Settings, run_id: str, environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """The run's jobs the scheduler still holds (pending or running)."""
    if "slurm" not in {settings.batch_system, *settings.allowed_batch_systems}:
        return []
    listed = _slurm(["squeue", "--noheader", "--format=%i %k"], environ)
    label = run_label(run_id)
    return [line.split()[0] for line in (listed or "").splitlines() if line.split()[1:] == [label]]


def cancel_leftovers(settings: Settings, run_id: str, environ: dict[str, str] | os._Environ[str]) -> int:
    """Cancel whatever the run left queued or running on the scheduler: a leader killed (by
    its cancel escalating to SIGKILL, or by a crash) cannot cancel its own jobs, and a resumed
    leader must not race them."""
    jobs = leftover_jobs(settings, run_id, environ)
    if jobs:
        log.info("run %s: cancelling %d leftover Slurm jobs: %s", run_id, len(jobs), " ".join(jobs))
        _slurm(["scancel", *jobs], environ)
    return len(jobs)
