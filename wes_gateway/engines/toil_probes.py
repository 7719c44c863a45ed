"""Toil's per-job probes, done inside the process instead of by starting programs.

For every job, Toil's worker starts three programs before and after the job's own work:
``stat -f -c %T`` twice (``toil.lib.threading.ensure_filesystem_lockable``, which refuses a
Ceph filesystem for its lock files: Python has no ``statfs``) and ``du -s`` once
(``toil.common.getDirSizeRecursively``, for the "used N% disk" line of the job's log). Each
is a fork of a large warm process and an exec; with one job per step that is paid for every
step of a scatter. Here the filesystem type comes from ``statfs(2)`` through ctypes and the
size from a walk of the job's directory, with the same answers: Ceph is refused with Toil's
own words, and the size counts each file's allocated blocks once, as ``du`` does. Where
``statfs`` fails, or a job left more than ``WALK_LIMIT`` entries, Toil's own code runs.
``WES_GATEWAY_TOIL_PROBES_IN_PROCESS=false`` leaves Toil as it is.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import math
import os
import stat
import struct
import subprocess
from typing import Any

CEPH_SUPER_MAGIC = 0x00C36400
# Beyond this many entries `du` is the faster walker; a step's scratch directory is far smaller.
WALK_LIMIT = 20_000
# struct statfs begins with f_type (a word), on every Linux ABI Toil runs on.
_STATFS_SIZE = 512


@functools.cache
def _libc() -> Any:
    # The process's own symbols, libc's among them: find_library would start programs itself.
    return ctypes.CDLL(None, use_errno=True)


def filesystem_magic(path: str) -> int | None:
    """``statfs(path).f_type``, or None where it cannot be had."""
    try:
        libc = _libc()
    except OSError:
        return None
    buffer = ctypes.create_string_buffer(_STATFS_SIZE)
    if libc.statfs(os.fsencode(path), buffer) != 0:
        return None
    return int(struct.unpack_from("l", buffer.raw)[0]) & 0xFFFFFFFF


def allocated_bytes(path: str, limit: int = WALK_LIMIT) -> int | None:
    """Bytes allocated to ``path`` and everything under it, each inode counted once (``du -s``),
    or None past ``limit`` entries."""
    seen: set[tuple[int, int]] = set()
    total = 0
    pending = [path]
    count = 0
    while pending:
        top = pending.pop()
        try:
            info = os.lstat(top)
        except OSError:
            continue  # gone meanwhile, as du would say and go on
        count += 1
        if count > limit:
            return None
        if (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            total += info.st_blocks * 512
        if stat.S_ISDIR(info.st_mode):
            try:
                with os.scandir(top) as entries:
                    pending.extend(entry.path for entry in entries)
            except OSError:
                continue
    return total


def df_output(path: str) -> str:
    """What ``df -k -P path`` prints, from ``statvfs``: the header and the filesystem's line
    (its name and mount point are not Toil's concern, and given as ``-`` and ``path``)."""
    info = os.statvfs(path)
    kib = info.f_frsize / 1024
    total, free, available = int(info.f_blocks * kib), int(info.f_bfree * kib), int(info.f_bavail * kib)
    used = total - free
    capacity = math.ceil(100 * used / (used + available)) if used + available else 0
    return (
        "Filesystem     1024-blocks      Used Available Capacity Mounted on\n"
        f"-              {total:>11} {used:>9} {available:>9} {capacity:>7}% {path}\n"
    )


class _DfInProcess:
    """The ``subprocess`` module as toil.wdl.wdltoil sees it: ``check_output(["df", "-k", "-P",
    path], ...)`` is answered by df_output; anything else is the module's own."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def check_output(args: Any, *rest: Any, **kwargs: Any) -> Any:
        if isinstance(args, list) and len(args) == 4 and args[:3] == ["df", "-k", "-P"] and not rest:
            if set(kwargs) <= {"encoding"}:
                try:
                    text = df_output(str(args[3]))
                except OSError:
                    pass  # df's own answer, or its own failure
                else:
                    return text if kwargs.get("encoding") else text.encode()
        return subprocess.check_output(args, *rest, **kwargs)


def install() -> None:
    """In a leader, before its worker zygote forks: Toil's probes done in process, in the
    leader and in every worker forked from it."""
    import toil.common
    import toil.fileStores.abstractFileStore
    import toil.lib.threading

    stock_lockable = toil.lib.threading.ensure_filesystem_lockable
    stock_size = toil.common.getDirSizeRecursively

    def ensure_filesystem_lockable(path: str, timeout: float = 30, hint: str | None = None) -> None:
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        magic = filesystem_magic(str(path))
        if magic is None:
            stock_lockable(path, timeout=timeout, hint=hint)
        elif magic == CEPH_SUPER_MAGIC:
            message = [f"Refusing to use {path} because file locks are known to break ceph filesystems."]
            if hint:
                message.append(hint)
            raise RuntimeError(" ".join(message))

    def get_dir_size_recursively(path: str) -> int:
        size = allocated_bytes(os.path.abspath(path))
        return stock_size(path) if size is None else size

    patched: list[tuple[Any, str, Any]] = [
        (toil.lib.threading, "ensure_filesystem_lockable", ensure_filesystem_lockable),
        (toil.common, "ensure_filesystem_lockable", ensure_filesystem_lockable),
        (toil.common, "getDirSizeRecursively", get_dir_size_recursively),
        (toil.fileStores.abstractFileStore, "getDirSizeRecursively", get_dir_size_recursively),
    ]
    for module, name, replacement in patched:
        setattr(module, name, replacement)
    try:
        import toil.wdl.wdltoil
    except ImportError:  # Toil without its WDL extra: nothing of it to patch
        return
    toil.wdl.wdltoil.subprocess = _DfInProcess()
