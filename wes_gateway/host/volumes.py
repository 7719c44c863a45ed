"""Each run's disk space: a filesystem of its own, so that one run cannot fill the disk
that the database, the logs, the metrics and every other run live on.

When a run starts, its directory becomes an ext4 filesystem of ``run_disk_limit`` bytes in a
sparse image under ``<runs>/.volumes`` (made with what the directory held, then loop-mounted
over it, with ``discard`` so that deleted files give their space back to the host). A run
that fills it meets ENOSPC in its own space only. The images are sparse, so the supervisor
also keeps the host's books: it starts a run only while the free space, less what the running
runs may still write, leaves ``disk_reserve`` for the service. The web workers refuse
uploads (507) when the reserve is reached.

Loop mounts need root and a host-local run directory: with a cluster batch system (a shared
filesystem) or without root, the runs are not held (``run_disk = "auto"``).

A finished run holds no mount (``settle``). Every mount costs every later sandbox (bubblewrap
copies the mount table: 48 ms a sandbox with 556 mounts against 4 ms with 21), so a mount that
outlived its run made each run slower than the last. The limit only matters while something
writes, so when a run ends, before its state is recorded, its directory is copied out of the
image into a plain directory of the host's filesystem and swapped in for the mount point, and
the image is deleted: its outputs are then served from that directory, by the same names,
through the same confinement (``beneath``). Project quotas (XFS ``prjquota``, ext4 with
``project,quota``) would limit a directory tree with no mount at all, but need the data
directory's filesystem made or mounted for them, which this host's is not; mounting finished
runs again on demand would put the cost back, smaller, and need a root helper for the web
workers. The copy is made by descriptor (``beneath.walk``): directories and regular files only
(no link, FIFO or device), hard links kept as links and holes as holes (so that it takes no
more room than the image held), setuid and setgid bits dropped, owners, modes and times kept;
the run's scratch (``tmp``), its container storage and a job store that retention removes
anyway are left behind. The swap is atomic for readers: in a mount namespace of its own, a
helper detaches the mount there and exchanges the two directories (``renameat2`` with
``RENAME_EXCHANGE``); in the service's namespace the mount follows its directory out of the
way, and is then detached. A settled directory carries a ``trusted.`` attribute (which no run
can set), so a supervisor that died midway knows what is left to do. At start, only active
runs' images are mounted again; images of finished runs (left by an earlier version, or a
settle that failed) are mounted read-only, so they are served, and settled in the background.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from wes_gateway import store
from wes_gateway.config import Settings, parse_memory
from wes_gateway.files.paths import RunPaths

# Under their old names, which the settle below (and tests/e2e/test_settled_runs) use.
from wes_gateway.host.settling import copy_tree as _copy_tree
from wes_gateway.host.settling import exchange as _exchange

log = logging.getLogger(__name__)

# Below this much free space in its own filesystem, a run that failed is taken to have failed
# for want of space.
FULL_MARGIN = 16 * 1024 * 1024
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
LOG_TAIL = 256 * 1024


class VolumesUnavailable(RuntimeError):
    """``run_disk = "loop"`` was asked for and this host cannot give runs a filesystem each."""


# Asked at every supervisor pass and run start: the host's tools do not come and go meanwhile.
@cache
def _tools() -> tuple[str | None, str | None, str | None]:
    return shutil.which("mkfs.ext4"), shutil.which("mount"), shutil.which("umount")


def problem(settings: Settings) -> str:
    """Why runs get no filesystem of their own here, or "" if they do."""
    if settings.run_disk == "none":
        return "run_disk is none"
    if settings.batch_system != "single_machine" or settings.shared_dir is not None:
        return "run directories are on a shared filesystem (a cluster batch system)"
    if os.geteuid() != 0:
        return "loop mounts need the service to run as root"
    if not all(_tools()):
        return "mkfs.ext4, mount and umount are needed (Debian: e2fsprogs, mount)"
    if not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control)"
    return ""


def enabled(settings: Settings) -> bool:
    return settings.run_disk != "none" and not problem(settings)


def check(settings: Settings) -> str:
    """At start-up: "loop" or "none"; raises VolumesUnavailable if loop was asked for and
    cannot be had (one image is made and mounted to find out)."""
    why = problem(settings)
    if not why:
        try:
            _probe(settings)
            return "loop"
        except (OSError, subprocess.CalledProcessError) as exc:
            why = f"a loop-mounted filesystem could not be made: {exc}"
    if settings.run_disk == "loop":
        raise VolumesUnavailable(why)
    if settings.run_disk == "auto":
        log.warning("runs have no disk limit of their own: %s", why)
    return "none"


def _probe(settings: Settings) -> None:
    where = _volumes(settings) / f"probe-{os.getpid()}"
    where.mkdir(mode=0o700, exist_ok=True)
    try:
        _make(where.with_suffix(".img"), where, 64 * 1024 * 1024)
        _mount(where.with_suffix(".img"), where)
        _unmount(where)
    finally:
        where.with_suffix(".img").unlink(missing_ok=True)
        where.rmdir()


def _volumes(settings: Settings) -> Path:
    path = settings.runs_dir / ".volumes"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def image_of(settings: Settings, run_id: str) -> Path:
    return settings.runs_dir / ".volumes" / f"{run_id}.img"


def provide(settings: Settings, paths: RunPaths, run_id: str) -> None:
    """Give the run its filesystem, with what its directory holds (idempotent)."""
    if not enabled(settings) or os.path.ismount(paths.root):
        return
    image = image_of(settings, run_id)
    if settled(paths.root):
        # Settled, then started again (its supervisor died before the run's end was recorded).
        _tidy(settings, run_id)
        os.removexattr(paths.root, SETTLED, follow_symlinks=False)
    if not image.exists():
        _volumes(settings)
        fresh = image.with_suffix(".new")
        _make(fresh, paths.root, parse_memory(settings.run_disk_limit))
        os.replace(fresh, image)
    _mount(image, paths.root)
    lost = paths.root / "lost+found"
    if lost.is_dir() and not any(lost.iterdir()):
        lost.rmdir()
    log.info("run %s: its directory is a filesystem of its own (%s)", run_id, settings.run_disk_limit)


def release(settings: Settings, paths: RunPaths, run_id: str) -> None:
    """Unmount the run's filesystem and delete its image (the run is being deleted)."""
    with _held(settings, run_id):
        if os.path.ismount(paths.root):
            _unmount(paths.root)
        _tidy(settings, run_id)


def remount(settings: Settings) -> int:
    """Mount again the filesystems of active runs whose directory lost its mount (a reboot).
    Finished runs' images are for ``settle_finished``."""
    if not enabled(settings):
        return 0
    images = sorted(_volumes(settings).glob("*.img"))
    active = {run.run_id for run in store.iter_runs(store.ACTIVE | {store.QUEUED})} if images else set()
    mounted = 0
    for image in images:
        root = settings.runs_dir / image.stem
        if image.stem in active and root.is_dir() and not os.path.ismount(root) and not settled(root):
            try:
                _mount(image, root)
                mounted += 1
            except (OSError, subprocess.CalledProcessError) as exc:
                log.error("run %s: its filesystem could not be mounted again: %s", image.stem, exc)
    return mounted


def unmount_all(settings: Settings) -> int:
    """Unmount every run filesystem of this data directory (before it is moved or deleted;
    the supervisor mounts them again when it starts)."""
    unmounted = 0
    volumes = settings.runs_dir / ".volumes"
    for image in sorted(volumes.glob("*.img")) if volumes.is_dir() else []:
        root = settings.runs_dir / image.stem
        if os.path.ismount(root):
            _unmount(root)
            unmounted += 1
        if os.path.ismount(_copy_of(settings, image.stem)):  # a settle that stopped midway
            _unmount(_copy_of(settings, image.stem))
    return unmounted


# ------------------------------------------------------------ settling finished runs

# Set (as root) on a run directory that was copied out of its image: no run can set or forge
# a trusted.* attribute, nor did any image's root carry one.
SETTLED = "trusted.wes-gateway.settled"
# What a settled run leaves behind: its scratch, its container engine's storage, and what
# fsck may have put in its filesystem's lost+found.
LEFT_BEHIND = frozenset({"tmp", "containers/storage", "lost+found"})


def settled(root: Path) -> bool:
    """Whether the run directory is a plain directory copied out of its image."""
    if os.path.ismount(root):
        return False
    try:
        os.getxattr(root, SETTLED, follow_symlinks=False)
        return True
    except OSError:
        return False


def _copy_of(settings: Settings, run_id: str) -> Path:
    return settings.runs_dir / ".volumes" / f"{run_id}.copy"


def settle(settings: Settings, paths: RunPaths, run_id: str, keep_jobstore: bool = True) -> bool:
    """Give back a finished run's mount and image: its directory becomes a plain directory of
    the host's filesystem with what the image held (``LEFT_BEHIND`` and, unless kept, the job
    store aside), in one atomic swap. Idempotent, and safe to do again after a crash at any
    point. False if there was nothing to settle."""
    image = image_of(settings, run_id)
    with _held(settings, run_id):
        if settled(paths.root):
            _tidy(settings, run_id)  # swapped, but not tidied up: done now
            return False
        if not image.exists() or not paths.root.is_dir() or paths.root.is_symlink():
            return False
        if not os.path.ismount(paths.root):
            _mount(image, paths.root, read_only=True)
        copy = _copy_of(settings, run_id)
        _remove_copy(copy)
        # For a moment the run takes twice its room: not out of the service's reserve.
        if host_free(settings) - image.stat().st_blocks * 512 < parse_memory(settings.disk_reserve):
            log.warning("run %s: not settled yet: the disk is short of space for its copy", run_id)
            return False
        skip = LEFT_BEHIND if keep_jobstore else LEFT_BEHIND | {"jobstore"}
        try:
            copied = _copy_tree(paths.root, copy, skip)
            os.setxattr(copy, SETTLED, b"1", follow_symlinks=False)
        except BaseException:
            _remove_copy(copy)
            raise
        _exchange(paths.root, copy)
        _tidy(settings, run_id)
    log.info("run %s: settled, %d bytes copied out of its filesystem, which is given back", run_id, copied)
    return True


def _tidy(settings: Settings, run_id: str) -> None:
    """What is left once the run's directory is settled (or deleted): the mount that was
    swapped out of the way, what was beneath it, and the image."""
    _remove_copy(_copy_of(settings, run_id))
    image_of(settings, run_id).unlink(missing_ok=True)


def _remove_copy(copy: Path) -> None:
    if os.path.ismount(copy):
        _unmount(copy)
    if copy.is_dir() and not copy.is_symlink():
        shutil.rmtree(copy)
    else:
        copy.unlink(missing_ok=True)


def unsettled(settings: Settings) -> list[tuple[str, str]]:
    """(run id, state) of finished runs that still have an image."""
    volumes = settings.runs_dir / ".volumes"
    found = []
    for image in sorted(volumes.glob("*.img")) if volumes.is_dir() else []:
        known = store.get_run_state(image.stem)
        if known is not None and known[1] in store.TERMINAL:
            found.append((image.stem, known[1]))
    return found


def settle_finished(settings: Settings, limit: int = 4) -> int:
    """Settle up to ``limit`` finished runs that still have an image (left by an earlier
    version, or by a settle that failed); meanwhile each is mounted read-only, so that its
    outputs are served. How many are left."""
    if not enabled(settings):
        return 0
    left = unsettled(settings)
    for run_id, _state in left:
        root = settings.runs_dir / run_id
        if root.is_dir() and not root.is_symlink() and not os.path.ismount(root) and not settled(root):
            try:
                _mount(image_of(settings, run_id), root, read_only=True)
            except (OSError, subprocess.CalledProcessError) as exc:
                log.error("run %s: its filesystem could not be mounted again: %s", run_id, exc)
    for run_id, state in left[:limit]:
        try:
            settle(settings, RunPaths.of(settings, run_id), run_id, keep_jobstore=state != store.COMPLETE)
        except (OSError, subprocess.CalledProcessError) as exc:
            log.error("run %s: not settled (its filesystem stays mounted): %s", run_id, exc)
    return max(0, len(left) - limit)


@contextlib.contextmanager
def _held(settings: Settings, run_id: str) -> Iterator[None]:
    """The run's lock: one settle or release at a time (the supervisor's threads, a DELETE)."""
    path = _volumes(settings) / f"{run_id}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # removed by the holder before us: take the new one
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def filled(paths: RunPaths) -> bool:
    """Whether the run's own filesystem is (all but) full."""
    if not os.path.ismount(paths.root):
        return False
    try:
        info = os.statvfs(paths.root)
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < FULL_MARGIN or info.f_favail == 0


def ran_out(paths: RunPaths) -> bool:
    """Whether a run that failed shows that it ran out of its space: its filesystem is full
    now, or the end of its log names ENOSPC (a failed job's files are gone by the time the
    run ends, so the space may be free again)."""
    if not os.path.ismount(paths.root):
        return False
    if filled(paths):
        return True
    handle = paths.open_file(paths.stderr)
    if handle is None:
        return False
    with handle:
        size = os.fstat(handle.fileno()).st_size
        handle.seek(max(0, size - LOG_TAIL))
        return os.strerror(errno.ENOSPC).encode() in handle.read(LOG_TAIL)


def host_free(settings: Settings) -> int:
    """Bytes free for the service on the filesystem of the run directories (and, usually, the
    database): what the reserve is measured against."""
    where = settings.runs_dir if settings.runs_dir.exists() else settings.data_dir
    info = os.statvfs(where)
    return info.f_bavail * info.f_frsize


def room_for_another(settings: Settings, running: set[str]) -> bool:
    """Whether one more run may start: the host's free space, less what the running runs may
    still write into their sparse images, must leave ``disk_reserve`` after the new run's
    ``run_disk_limit``."""
    if not enabled(settings):
        return True
    limit = parse_memory(settings.run_disk_limit)
    promised = 0
    for run_id in running:
        try:
            used = image_of(settings, run_id).stat().st_blocks * 512
        except FileNotFoundError:
            used = 0
        promised += max(0, limit - used)
    return host_free(settings) - promised - limit >= parse_memory(settings.disk_reserve)


def short_of_space(settings: Settings, incoming: int = 0) -> str:
    """Why the service takes no more data now ("" if it does): ``incoming`` more bytes would
    leave less than ``disk_reserve`` free."""
    free = host_free(settings)
    reserve = parse_memory(settings.disk_reserve)
    if free - incoming < reserve:
        return (
            f"the service is short of disk space ({free >> 20} MiB free, {reserve >> 20} MiB kept "
            "for its own records): try again later"
        )
    return ""


def _make(image: Path, content: Path, size: int) -> None:
    with open(image, "wb") as handle:
        handle.truncate(size)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-m", "0", "-J", "size=16", "-E", "nodiscard", "-d", str(content), str(image)],
        check=True,
        capture_output=True,
        timeout=120,
    )


def _mount(image: Path, where: Path, read_only: bool = False) -> None:
    options = "loop,ro,nosuid,nodev,noexec" if read_only else "loop,discard,nosuid,nodev"
    # Through a link of a random name, gone once mounted: every run can read a loop device's
    # backing file name in /sys, and the image's own name is a run id.
    alias = image.parent / f".{secrets.token_hex(16)}.img"
    os.link(image, alias)
    try:
        subprocess.run(
            ["mount", "-o", options, str(alias), str(where)],
            check=True,
            capture_output=True,
            timeout=60,
        )
    finally:
        alias.unlink()


def _unmount(where: Path) -> None:
    # Lazily: a web worker may still be sending a file from it; the space goes once it is done.
    subprocess.run(["umount", "-l", str(where)], check=True, capture_output=True, timeout=60)
