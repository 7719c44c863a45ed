"""Settling a finished run, the part that touches its files: its directory copied out of its
image into a plain directory of the host's filesystem, by descriptor, and then swapped in for
the mount point in one atomic exchange (``volumes.settle`` says when, and holds the run's lock).

The copy takes directories and regular files only (no link, FIFO or device), keeps hard links
as links and holes as holes (so that it takes no more room than the image held), drops setuid
and setgid bits, and keeps owners, modes and times. The walk is ``beneath.walk``'s: nothing the
run planted is followed out of its directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

from wes_gateway.files import beneath


def copy_tree(source: Path, target: Path, skip: frozenset[str]) -> int:
    """Copy the tree at ``source`` (the run's, walked by descriptor) to ``target`` (new, the
    service's): bytes copied."""
    copied = 0
    top = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    directories: list[tuple[str, os.stat_result]] = [("", os.fstat(top))]
    linked: dict[tuple[int, int], str] = {}
    os.mkdir(target, 0o700)
    out_top = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for dirfd, prefix, subdirectories, regular in beneath.walk(top):
            subdirectories[:] = [name for name in subdirectories if prefix + name not in skip]
            out = os.open(prefix or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=out_top)
            try:
                for name in subdirectories:
                    with contextlib.suppress(OSError):
                        info = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                        if stat.S_ISDIR(info.st_mode):
                            os.mkdir(name, 0o700, dir_fd=out)
                            directories.append((prefix + name, info))
                for name in regular:
                    copied += _copy_file(dirfd, out, out_top, prefix + name, name, linked)
            finally:
                os.close(out)
        for name, info in reversed(directories):  # children first: their times stay
            fd = os.open(name or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=out_top)
            try:
                _keep_attributes(fd, info)
            finally:
                os.close(fd)
    finally:
        os.close(out_top)
        os.close(top)
    return copied


def _copy_file(dirfd: int, out: int, out_top: int, path: str, name: str, linked: dict[tuple[int, int], str]) -> int:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError:
        return 0
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return 0
        key = (info.st_dev, info.st_ino)
        if info.st_nlink > 1 and key in linked:
            # A hard link stays one: a run cannot make its files count twice on the host.
            os.link(linked[key], name, src_dir_fd=out_top, dst_dir_fd=out, follow_symlinks=False)
            return 0
        copy = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=out)
        try:
            copied = _copy_data(fd, copy, info.st_size)
            _keep_attributes(copy, info)
        finally:
            os.close(copy)
        if info.st_nlink > 1:
            linked[key] = path
        return copied
    finally:
        os.close(fd)


def _copy_data(source: int, target: int, size: int) -> int:
    """The data of ``source``, holes left as holes (a sparse file costs what it held)."""
    copied = 0
    position = 0
    while position < size:
        try:
            start = os.lseek(source, position, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                break
            raise
        end = min(os.lseek(source, start, os.SEEK_HOLE), size)
        os.lseek(target, start, os.SEEK_SET)
        while start < end:
            sent = os.sendfile(target, source, start, end - start)
            if sent == 0:
                break
            start += sent
            copied += sent
        position = max(end, start)
    os.ftruncate(target, size)
    return copied


def _keep_attributes(fd: int, info: os.stat_result) -> None:
    os.fchown(fd, info.st_uid, info.st_gid)
    os.fchmod(fd, stat.S_IMODE(info.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
    os.utime(fd, ns=(info.st_atime_ns, info.st_mtime_ns))


# Run as root in a mount namespace of its own, private: there the run's mount is detached, so
# that the kernel lets its directory be renamed (it refuses to rename a mount point of the
# caller's namespace); in the service's namespace the mount moves with the directory.
_EXCHANGE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def check(result, what):
    if result != 0:
        number = ctypes.get_errno()
        sys.exit(f"{what}: {os.strerror(number)}")
check(libc.unshare(0x00020000), "unshare(CLONE_NEWNS)")
check(libc.mount(None, b"/", None, 0x40000 | 0x4000, None), "mount --make-rprivate /")
mounted, settled = os.fsencode(sys.argv[1]), os.fsencode(sys.argv[2])
while os.path.ismount(mounted):
    check(libc.umount2(mounted, 2), "umount2(MNT_DETACH)")
check(libc.renameat2(-100, mounted, -100, settled, 2), "renameat2(RENAME_EXCHANGE)")
"""


def exchange(mounted: Path, settled: Path) -> None:
    """Swap the run's mount point for its settled copy, atomically for every reader; the
    mount then sits on the copy's old name."""
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _EXCHANGE, str(mounted), str(settled)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise OSError(f"{mounted} not swapped for its settled copy: {done.stderr.strip()[-500:]}")
