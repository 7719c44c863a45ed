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
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

from .config import Settings, parse_memory
from .paths import RunPaths

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
    if os.path.ismount(paths.root):
        _unmount(paths.root)
    image_of(settings, run_id).unlink(missing_ok=True)


def remount(settings: Settings) -> int:
    """Mount again the filesystems of runs whose directory lost its mount (a reboot)."""
    if not enabled(settings):
        return 0
    mounted = 0
    for image in sorted(_volumes(settings).glob("*.img")):
        root = settings.runs_dir / image.stem
        if root.is_dir() and not os.path.ismount(root):
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
    return unmounted


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


def _mount(image: Path, where: Path) -> None:
    subprocess.run(
        ["mount", "-o", "loop,discard,nosuid,nodev", str(image), str(where)],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _unmount(where: Path) -> None:
    # Lazily: a web worker may still be sending a file from it; the space goes once it is done.
    subprocess.run(["umount", "-l", str(where)], check=True, capture_output=True, timeout=60)
