"""host/batch.py refuses a batch system whose jobs (run as the run user, outside any sandbox)
could not execute the service's Python: shown with a real interpreter behind a root-only
directory, executed as an unprivileged user, and with the same path made searchable."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wes_gateway.config import Settings, load_settings
from wes_gateway.host import batch

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="executing as another user needs root")

RUN_USER = "nobody"


def tuned(settings: Settings, **changes: Any) -> Settings:
    return load_settings({}, **{**settings.model_dump(exclude_unset=True), **changes})


def on_slurm(settings: Settings, **changes: Any) -> Settings:
    """Leaders dropped to RUN_USER (root supervisor, bwrap), jobs sent to Slurm."""
    shared = settings.data_dir.parent / "shared"
    slurm = {"batch_system": "slurm", "shared_dir": str(shared), "run_sandbox": "bwrap", "run_user": RUN_USER}
    return tuned(settings, **{**slurm, **changes})


def readable_interpreter() -> str:
    """A real Python that RUN_USER can reach: the service's own where it can (mode bits of
    every directory on its path), else the system's."""
    entry = pwd.getpwnam(RUN_USER)
    for candidate in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(candidate) and batch.unsearchable_dir(candidate, entry.pw_uid, entry.pw_gid) is None:
            return candidate
    pytest.skip(f"no Python here that {RUN_USER} can reach")


@pytest.fixture
def private() -> Iterator[Path]:
    """A root-owned directory of mode 0700 (as a home directory is), outside the tests' own
    temporary root (itself 0700, which would be named first), holding a link to a Python."""
    directory = Path(tempfile.mkdtemp(prefix="wes-gateway-batch-"))
    try:
        os.chmod(directory, 0o700)
        (directory / "python").symlink_to(readable_interpreter())
        yield directory
    finally:
        shutil.rmtree(directory)


def test_a_python_in_a_directory_the_run_user_cannot_search_is_refused(settings: Settings, private: Path) -> None:
    link = private / "python"
    uid = pwd.getpwnam(RUN_USER).pw_uid
    expected = (
        f"batch jobs run as run_user '{RUN_USER}' (uid {uid}), who cannot execute this service's Python "
        f"{link} (Permission denied); it cannot search {private} (mode 0700, owner uid 0): every job would "
        "fail with 'exec: _toil_worker: Permission denied'. Install the service's Python where the run user "
        "can execute it (for example a virtualenv under /opt) and run the service from there"
    )
    with pytest.raises(batch.BatchSystemUnusable) as caught:
        batch.check_run_user(on_slurm(settings), str(link))
    assert str(caught.value) == expected
    # Off: the same path, its directory now searchable, is executed as the run user.
    os.chmod(private, 0o755)
    batch.check_run_user(on_slurm(settings), str(link))


def test_the_real_interpreter_in_a_readable_place_passes(settings: Settings) -> None:
    batch.check_run_user(on_slurm(settings), readable_interpreter())


def test_nothing_is_checked_where_jobs_do_not_run_as_the_run_user(settings: Settings, private: Path) -> None:
    link = str(private / "python")
    # Leaders keep root (in a user namespace): so do their jobs.
    batch.check_run_user(on_slurm(settings, run_user=""), link)
    # No sandbox: no drop to the run user either.
    batch.check_run_user(on_slurm(settings, run_sandbox="none"), link)
    # Jobs on the leader's own host run inside its sandbox, where the interpreter is bound.
    batch.check_run_user(tuned(settings, run_sandbox="bwrap", run_user=RUN_USER), link)


def test_with_run_uids_a_uid_of_the_range_is_what_is_checked(settings: Settings, private: Path) -> None:
    with pytest.raises(batch.BatchSystemUnusable, match=re.escape("run as uid 70100 (from run_uids), who cannot")):
        batch.check_run_user(on_slurm(settings, run_uids="70100-70101"), str(private / "python"))


def test_an_interpreter_that_hangs_is_refused_in_bounded_time(settings: Settings) -> None:
    directory = Path(tempfile.mkdtemp(prefix="wes-gateway-batch-"))
    try:
        os.chmod(directory, 0o755)
        script = directory / "python"
        script.write_text("#!/bin/sh\nexec sleep 30\n")
        script.chmod(0o755)
        with pytest.raises(batch.BatchSystemUnusable, match=re.escape("(it did not finish within 0.5 s):")):
            batch.check_run_user(on_slurm(settings), str(script), timeout=0.5)
    finally:
        shutil.rmtree(directory)


def test_start_up_check_runs_it_for_a_cluster_batch_system(
    settings: Settings, private: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """batch.check (what preflight calls, and gunicorn turns into a refusal to start) checks
    the interpreter the service runs on; lsf needs no sbatch on this host."""
    cluster = on_slurm(settings, batch_system="lsf")
    readable = readable_interpreter()
    monkeypatch.setattr(sys, "executable", str(private / "python"))
    with pytest.raises(batch.BatchSystemUnusable, match=re.escape(f"it cannot search {private} (mode 0700")):
        batch.check(cluster)
    monkeypatch.setattr(sys, "executable", readable)
    batch.check(cluster)
