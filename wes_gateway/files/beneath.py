"""Opening and walking a tree that someone else controls, without ever leaving it.

A run owns its directory and can swap any name in it for a symbolic link, a FIFO or a device
node while the service (root, or the service account) reads it. Every name below a trusted
root is therefore resolved one component at a time, relative to the directory already
reached (``openat``), never following a link; the last component is first opened with
``O_PATH``, which touches no driver and does not block, and only a regular file (or a
directory, where asked for) is then opened for reading, through that very descriptor.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePath, PurePosixPath

_STEP = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class Outside(OSError):
    """The name is not a plain name below the root, or leads through a link or to something
    that is neither a regular file nor (where allowed) a directory."""


def _parts(relative: str | PurePath) -> tuple[str, ...]:
    parts = PurePosixPath(relative).parts
    if any(part in ("..", "/") or "\0" in part for part in parts):
        raise Outside(f"not a name below the root: {str(relative)!r}")
    return parts


def _reach(root: Path, parts: tuple[str, ...]) -> int:
    """An ``O_PATH`` descriptor of root/parts, crossing no link on the way or at the end."""
    # The root is the service's own name (a run's directory, which the run cannot replace).
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            following = os.open(part, _STEP if last else _STEP | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = following
        return fd
    except BaseException:
        os.close(fd)
        raise


def path_fd(root: Path, relative: str | PurePath, directory: bool = False) -> int:
    """An ``O_PATH`` descriptor of root/relative itself (a link there is not followed: the
    descriptor is the link's), crossing no link on the way; with ``directory``, only a
    directory. For the service to bind, create in or judge a run's directory by descriptor."""
    found = _reach(root, _parts(relative))
    if directory and not stat.S_ISDIR(os.fstat(found).st_mode):
        os.close(found)
        raise Outside(f"not a directory: {str(relative)!r}")
    return found


def open_fd(root: Path, relative: str | PurePosixPath, directory: bool = False) -> int:
    """A descriptor open for reading of the regular file (or, with ``directory``, the
    directory) at root/relative. Raises OSError (``Outside`` for what must not be opened)."""
    found = _reach(root, _parts(relative))
    try:
        info = os.fstat(found)
        if stat.S_ISREG(info.st_mode):
            return os.open(f"/proc/self/fd/{found}", os.O_RDONLY | os.O_CLOEXEC)
        if directory and stat.S_ISDIR(info.st_mode):
            return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=found)
        raise Outside(f"not a regular file: {str(relative)!r}")
    finally:
        os.close(found)


def relative_to(root: Path, path: Path) -> PurePosixPath | None:
    """``path`` as a name below ``root``, judged on the names alone (None if not below)."""
    try:
        return PurePosixPath(Path(os.path.normpath(path)).relative_to(os.path.normpath(root)))
    except ValueError:
        return None


# Deeper directories are not walked: a run could nest them past any recursion limit.
MAX_DEPTH = 128


def walk(top: int) -> Iterator[tuple[int, str, list[str], list[str]]]:
    """(descriptor, path from top ending in "/" or "", subdirectory names, regular file names)
    for the directory open as ``top`` and each directory below it, parents first, names in
    order. Links, FIFOs and devices are neither listed nor opened (``os.fwalk`` opens a link
    to a directory before it finds out). Remove names from the subdirectory list to prune."""
    yield from _walk(top, "", 0)


def _walk(fd: int, prefix: str, depth: int) -> Iterator[tuple[int, str, list[str], list[str]]]:
    directories: list[str] = []
    regular: list[str] = []
    try:
        with os.scandir(fd) as listing:
            for entry in sorted(listing, key=lambda item: item.name):
                if entry.is_dir(follow_symlinks=False):
                    directories.append(entry.name)
                elif entry.is_file(follow_symlinks=False):
                    regular.append(entry.name)
    except OSError:
        return
    yield fd, prefix, directories, regular
    if depth >= MAX_DEPTH:
        return
    for name in directories:
        try:
            below = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            continue
        try:
            yield from _walk(below, f"{prefix}{name}/", depth + 1)
        finally:
            os.close(below)


def files(root: Path, relative: str | PurePosixPath = "") -> Iterator[tuple[str, os.stat_result]]:
    """Every regular file below root/relative, as (name relative to that directory, its lstat), in
    order. Links are neither followed nor listed, whatever they point at."""
    try:
        top = open_fd(root, relative, directory=True)
    except OSError:
        return
    try:
        for dirfd, prefix, _directories, regular in walk(top):
            for name in regular:
                try:
                    info = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    yield prefix + name, info
    finally:
        os.close(top)


def names(root: Path, relative: str | PurePosixPath) -> list[str]:
    """The names in the directory root/relative (empty if it is not one, reached plainly)."""
    try:
        fd = open_fd(root, relative, directory=True)
    except OSError:
        return []
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)
