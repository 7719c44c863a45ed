"""Read-only, id-mapped views of a directory tree (Linux idmapped mounts, kernel 5.12+).

The shared image store belongs to root on disk, so that no process of the run user can change
it anywhere: not a step in a sandbox, and not a job outside one. Rootless Podman in a run maps
only the run user (container root = the run user) and needs the layers to be that user's; a
view of the store in which on-disk root appears as the run user, read-only, gives it that
without giving the run user a single file. Made with open_tree(2), mount_setattr(2) and
move_mount(2), which Python's os module does not wrap.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import signal
import subprocess

# x86_64 and aarch64 share these numbers (the new mount API came after the tables converged).
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_OPEN_TREE_CLONE, _AT_RECURSIVE, _AT_EMPTY_PATH, _AT_FDCWD = 1, 0x8000, 0x1000, -100
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV, _MOUNT_ATTR_IDMAP = 0x1, 0x2, 0x4, 0x100000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_CLONE_NEWUSER = 0x10000000


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _checked(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


def supported() -> str:
    """Why idmapped views cannot be made here, or "" if they can be tried."""
    if platform.machine() not in ("x86_64", "aarch64"):
        return f"idmapped mounts are not wired up for {platform.machine()}"
    if os.geteuid() != 0:
        return "idmapped mounts need root"
    return ""


def _user_namespace(uid: int, gid: int) -> int:
    """A descriptor of a user namespace in which id 0 is ``uid``/``gid`` of the host (and
    nothing else is mapped): the mapping the view applies to the files' on-disk owners."""
    libc = _libc()
    ready_read, ready_write = os.pipe()
    hold_read, hold_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (a child that only makes its namespace and waits)
        try:
            os.close(ready_read)
            os.close(hold_write)
            ok = libc.unshare(_CLONE_NEWUSER) == 0
            os.write(ready_write, b"1" if ok else b"0")
            os.read(hold_read, 1)
        finally:
            os._exit(0)
    os.close(ready_write)
    os.close(hold_read)
    try:
        if os.read(ready_read, 1) != b"1":
            raise OSError("unshare(CLONE_NEWUSER) failed")
        with open(f"/proc/{pid}/uid_map", "w") as handle:
            handle.write(f"0 {uid} 1\n")
        with open(f"/proc/{pid}/gid_map", "w") as handle:
            handle.write(f"0 {gid} 1\n")
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_read)
        os.close(hold_write)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)


def mount_view(source: str, target: str, uid: int, gid: int) -> None:
    """Mount ``source`` (and what is mounted below it) read-only, nosuid and nodev at
    ``target``, with files owned by root on disk shown as owned by ``uid``/``gid``."""
    libc = _libc()
    userns = _user_namespace(uid, gid)
    try:
        flags = _OPEN_TREE_CLONE | os.O_CLOEXEC | _AT_RECURSIVE
        tree = _checked(libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, source.encode(), flags), f"open_tree {source}")
        try:
            attr = _MountAttr(
                _MOUNT_ATTR_IDMAP | _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV, 0, 0, userns
            )
            _checked(
                libc.syscall(
                    _SYS_MOUNT_SETATTR,
                    tree,
                    b"",
                    _AT_EMPTY_PATH | _AT_RECURSIVE,
                    ctypes.byref(attr),
                    ctypes.sizeof(attr),
                ),
                f"mount_setattr (idmap) {source}",
            )
            _checked(
                libc.syscall(_SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, target.encode(), _MOVE_MOUNT_F_EMPTY_PATH),
                f"move_mount to {target}",
            )
        finally:
            os.close(tree)
    finally:
        os.close(userns)


_OCTAL = re.compile(r"\\([0-7]{3})")


def mounted(target: str) -> int:
    """How many mounts are stacked at ``target``. os.path.ismount cannot tell: a view of a
    tree on the same filesystem has the same device number as its parent directory."""
    wanted = os.path.realpath(target)
    with open("/proc/self/mountinfo") as handle:
        # Field 5 is the mount point, with space, tab, newline and backslash octal-escaped.
        points = [_OCTAL.sub(lambda escape: chr(int(escape[1], 8)), line.split()[4]) for line in handle]
    return points.count(wanted)


def unmount_view(target: str) -> None:
    """Detach every view stacked at ``target`` (earlier supervisors' too); sandboxes already
    built keep their own copies."""
    for _ in range(mounted(target)):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True, timeout=60)
