"""The sandbox every run's leader lives in, built by bubblewrap and joined by the leader.

A leader is forked from the Toil-preloaded forkserver, so it cannot simply be exec'd under
``bwrap``: that would throw the preloaded interpreter away. Instead bwrap builds the sandbox
around a tiny holder process (``cat`` on a pipe), and the leader joins the holder's
namespaces with setns(2):

1. the leader's launcher (still outside) starts bwrap, waits until the holder runs, and joins
   its user namespace (where there is one) and its PID namespace, which only its children
   enter;
2. it forks the leader proper, which joins the mount namespace, chroots into the holder's
   root, drops to ``run_user`` (or, in a user namespace, drops every capability) and sets
   no_new_privs before any of Toil's code runs;
3. when the launcher exits, the pipe closes, the holder exits, and with the PID namespace's
   init gone the kernel kills whatever the run left behind.

The view holds the operating system and the Python environment read-only, the run's own
directory read-write (less its ``control`` directory, which only the supervisor writes), the
run's tmp as /tmp as well, and read-only the inputs that the policy let the run name under
``allowed_file_roots``. Nothing else of the data directory, no config, key or password file
and no home is there.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from wes_gateway.config import Settings
from wes_gateway.files import beneath
from wes_gateway.files.paths import RunPaths

log = logging.getLogger(__name__)

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_PR_SET_NO_NEW_PRIVS = 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_NS_GET_USERNS = 0xB701  # ioctl: the user namespace that owns a namespace
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8

# The operating system as a tool sees it. /bin, /lib... are symlinks into /usr on current
# Debian; where they are real directories they are bound like /usr.
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")
# Of /etc, what programs need to load, resolve names, speak TLS and find their defaults; not
# the host's accounts (passwd, group, shadow), nor any service's own configuration.
_ETC = (
    "alternatives", "apptainer", "bash.bashrc", "ca-certificates", "ca-certificates.conf", "debian_version",
    "fonts", "gai.conf", "host.conf", "hostname", "hosts", "inputrc", "ld.so.cache", "ld.so.conf",
    "ld.so.conf.d", "locale.alias", "localtime", "magic", "magic.mime", "mime.types", "mtab", "netconfig",
    "networks", "nsswitch.conf", "os-release", "perl", "profile", "protocols", "python3", "resolv.conf",
    "rpc", "services", "sgml", "singularity", "ssl", "terminfo", "timezone", "xml",
)  # fmt: skip


class SandboxUnavailable(RuntimeError):
    """bwrap is missing or cannot build a sandbox on this host."""


@dataclass(frozen=True)
class SandboxSpec:
    """What one leader's sandbox holds; built by the supervisor, pickled to the leader."""

    bwrap: str
    run_root: str
    control: str
    tmp: str
    read_only: tuple[str, ...]
    symlinks: tuple[tuple[str, str], ...]
    hidden_files: tuple[str, ...]
    user_namespace: bool
    # A /proc of the sandbox's PID namespace with nothing mounted over parts of it (bwrap covers
    # /proc/sys, /proc/irq... read-only), so that a rootless container engine may mount the
    # /proc of a container's own PID namespace: the kernel allows that only where some /proc
    # is fully visible. Only a leader that starts as root (and then drops it) can mount it.
    fresh_proc: bool = False


@dataclass(frozen=True)
class RunIdentity:
    """Who a leader runs as once it has dropped root: run_user's uid and the group shared
    with the service account, so that the supervisor can still read the run's files."""

    uid: int
    gid: int
    shared_gid: int


def run_identity(settings: Settings) -> RunIdentity | None:
    """The identity leaders drop to: only when the supervisor runs as root, and only inside the
    sandbox (without one, the run user could not even reach its directory under the 0700 data
    directory; the opt-out isolates nothing, so it pretends nothing)."""
    if os.geteuid() != 0 or not settings.run_user or settings.run_sandbox == "none":
        return None
    try:
        entry = pwd.getpwnam(settings.run_user)
    except KeyError:
        raise SandboxUnavailable(f"run_user {settings.run_user!r} is not an account on this host") from None
    if entry.pw_uid == 0:
        raise SandboxUnavailable("run_user may not be root")
    return RunIdentity(uid=entry.pw_uid, gid=entry.pw_gid, shared_gid=os.getegid())


def hand_over(paths: RunPaths, identity: RunIdentity | None) -> None:
    """Make the run directory the leader's own (group-shared with the service account),
    while its control directory stays the supervisor's alone."""
    for directory in (paths.root, paths.work, paths.outdir, paths.tmp, paths.home, paths.job_logs):
        directory.mkdir(parents=True, exist_ok=True)
    paths.control.mkdir(mode=0o700, exist_ok=True)
    for private in paths.container_state:
        _make_private(paths, private.relative_to(paths.root), identity)
    if identity is None:
        return
    os.chmod(paths.control, 0o700)
    _give(paths.root, identity, skip={paths.control, *paths.container_state})


def _make_private(paths: RunPaths, relative: Path, identity: RunIdentity | None) -> None:
    """Make the directory ``relative`` (in a directory of the run's) the run user's alone, by
    descriptor: its parent was the run's to change, and a chmod or chown by name would
    follow a link planted in the parent's place."""
    try:
        parent = beneath.path_fd(paths.root, relative.parent, directory=True)
    except OSError:
        return  # no such parent (no container engine), or one that is not the service's making
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(relative.name, 0o700, dir_fd=parent)
        try:
            fd = os.open(relative.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        except OSError:
            return  # a link or a file in its place: left alone, followed by nothing
    finally:
        os.close(parent)
    try:
        os.fchmod(fd, 0o700)
        if identity is not None:
            os.fchown(fd, identity.uid, identity.gid)
    finally:
        os.close(fd)


def _give(root: Path, identity: RunIdentity, skip: set[Path]) -> None:
    """Own everything below ``root`` to the run user (directories 2770). Walked by descriptor,
    never through a link: on a restart the run has had its directory to plant links in, and a
    chown or chmod that followed one would hand a host file to the run."""
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for dirfd, prefix, directories, regular in beneath.walk(top):
            _give_one(dirfd, identity)
            directories[:] = [name for name in directories if root / prefix / name not in skip]
            for name in regular:
                info = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                if (info.st_uid, info.st_gid) != (identity.uid, identity.shared_gid):
                    os.chown(name, identity.uid, identity.shared_gid, dir_fd=dirfd, follow_symlinks=False)
    finally:
        os.close(top)


def _give_one(fd: int, identity: RunIdentity) -> None:
    info = os.fstat(fd)
    if (info.st_uid, info.st_gid) != (identity.uid, identity.shared_gid):
        os.fchown(fd, identity.uid, identity.shared_gid)
    os.fchmod(fd, 0o2770)


def secret_files(settings: Settings, environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """Files of the service's own that no run may read even where the OS view holds them
    (a config or htpasswd file under /etc, say)."""
    candidates = [environ.get("WES_GATEWAY_CONFIG", ""), settings.htpasswd_file, settings.jwt_public_key]
    if settings.jwt_jwks and "://" not in settings.jwt_jwks:
        candidates.append(settings.jwt_jwks)
    return [os.path.realpath(path) for path in candidates if path and os.path.isfile(path)]


def python_dirs() -> list[str]:
    """The interpreter and environment every Toil worker and helper tool starts from."""
    found = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}
    return sorted(os.path.realpath(path) for path in found)


def plan(
    settings: Settings,
    paths: RunPaths,
    inputs: Iterable[str],
    hidden: Iterable[str],
    identity: RunIdentity | None,
    services: Iterable[str] = (),
    fresh_proc: bool = False,
) -> SandboxSpec:
    """The sandbox of one run: what it sees, and who its leader becomes. ``services`` are
    files and sockets of the host that the leader must use read-only (the batch system's
    configuration and its authentication socket)."""
    binary = shutil.which("bwrap") or "/usr/bin/bwrap"
    read_only: list[str] = []
    symlinks: list[tuple[str, str]] = []
    for directory in _SYSTEM_DIRS:
        if os.path.islink(directory):
            symlinks.append((os.readlink(directory), directory))
        elif os.path.isdir(directory):
            read_only.append(directory)
    for name in _ETC:
        entry = f"/etc/{name}"
        if os.path.islink(entry) and os.path.realpath(entry).startswith(("/usr/", "/proc/")):
            symlinks.append((os.readlink(entry), entry))  # it resolves inside the sandbox too
        elif os.path.exists(entry):
            read_only.append(entry)  # bound through any link, to what it names on the host
    for directory in [*python_dirs(), *settings.extra_path, *services]:
        if os.path.exists(directory) and not _covered(directory, read_only):
            read_only.append(os.path.realpath(directory))
    data_dir = os.path.realpath(settings.data_dir)
    for reference in inputs:
        # Re-checked here: the list was written at submission, and the policy may have narrowed.
        real = os.path.realpath(reference)
        if os.path.exists(real) and _under_allowed_root(real, settings) and not _is_under(real, data_dir):
            read_only.append(real)
    return SandboxSpec(
        bwrap=binary,
        run_root=str(paths.root),
        control=str(paths.control),
        tmp=str(paths.tmp),
        read_only=tuple(dict.fromkeys(read_only)),
        symlinks=tuple(symlinks),
        hidden_files=tuple(path for path in hidden if _covered(path, read_only)),
        # Without a uid to drop to, a user namespace keeps the leader's powers inside it.
        user_namespace=identity is None,
        fresh_proc=fresh_proc and identity is not None,
    )


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _covered(path: str, roots: Iterable[str]) -> bool:
    return any(_is_under(os.path.realpath(path), os.path.realpath(root)) for root in roots)


def _under_allowed_root(path: str, settings: Settings) -> bool:
    return any(_is_under(path, os.path.realpath(root)) for root in settings.allowed_file_roots)


def _parents(path: str) -> list[str]:
    parts = Path(path).parts[1:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass(frozen=True)
class RunDirectories:
    """The run's directory and its tmp (twice: bwrap closes a descriptor once it has bound it),
    open as ``O_PATH`` descriptors reached through no link, for bwrap to bind by descriptor:
    bwrap runs as root and would bind whatever a link planted in their place names (another
    run's directory, the image store)."""

    root: int
    tmp: int
    var_tmp: int

    @classmethod
    def open(cls, spec: SandboxSpec) -> RunDirectories:
        opened: list[int] = []
        try:
            # The run's directory itself is the service's name (its parent is not the run's).
            opened.append(os.open(spec.run_root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC))
            tmp = Path(spec.tmp).relative_to(spec.run_root)
            for _ in range(2):
                opened.append(beneath.path_fd(Path(spec.run_root), tmp, directory=True))
        except BaseException:
            for fd in opened:
                os.close(fd)
            raise
        return cls(*opened)

    @property
    def fds(self) -> tuple[int, int, int]:
        return self.root, self.tmp, self.var_tmp

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def bwrap_argv(spec: SandboxSpec, info_fd: int, directories: RunDirectories) -> list[str]:
    """bwrap's command line: the view, the namespaces, and the holder process."""
    argv = [spec.bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if spec.user_namespace:
        argv.append("--unshare-user")
    argv += ["--die-with-parent", "--info-fd", str(info_fd)]
    made: set[str] = set()

    def parents_of(target: str) -> list[str]:
        # bwrap makes missing parents 0700 (owned by whoever runs it): a dropped leader could
        # not walk them, so every parent is made 0755 first.
        out: list[str] = []
        for parent in _parents(target):
            if parent not in made:
                made.add(parent)
                out += ["--perms", "0755", "--dir", parent]
        return out

    for target, link in spec.symlinks:
        argv += [*parents_of(link), "--symlink", target, link]
    # /tmp first: anything bound below it afterwards (a data directory under /tmp) lands in
    # the run's own tmp rather than being hidden by it.
    argv += ["--bind-fd", str(directories.tmp), "/tmp"]
    argv += [*parents_of("/var/tmp"), "--bind-fd", str(directories.var_tmp), "/var/tmp"]
    made.update(("/tmp", "/var/tmp"))
    for path in spec.read_only:
        argv += [*parents_of(path), "--ro-bind", path, path]
        made.add(path)
    for path in spec.hidden_files:
        argv += ["--ro-bind", "/dev/null", path]
    argv += [*parents_of(spec.run_root), "--bind-fd", str(directories.root), spec.run_root]
    # The control directory (leader identity, result) is the supervisor's word: hidden.
    # /dev/shm: POSIX shared memory (Python's multiprocessing in a tool needs it), the run's own.
    # /mnt: an empty scratch area of the run's own, where container engines make mount points.
    argv += ["--tmpfs", spec.control, "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm"]
    argv += ["--perms", "1777", "--tmpfs", "/mnt"]
    argv += ["--chdir", spec.run_root, "--", "/bin/sh", "-c", "echo; exec cat"]
    return argv


class _Libc:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL(None, use_errno=True)

    def call(self, name: str, *args: object) -> None:
        if getattr(self.lib, name)(*args) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{name}: {os.strerror(errno)}")

    def setns(self, path: str, kind: int) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.call("setns", fd, kind)
        finally:
            os.close(fd)

    def drop_capabilities(self) -> None:
        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class Data(ctypes.Structure):
            _fields_ = [
                ("effective", ctypes.c_uint32),
                ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32),
            ]

        header = Header(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (Data * 2)()
        self.call("capset", ctypes.byref(header), ctypes.byref(data))

    def mount_proc(self) -> None:
        self.call("mount", b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None)

    def no_new_privs(self) -> None:
        self.call("prctl", _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


class Sandbox:
    """A built sandbox, held open by its holder process, that the launcher has half joined."""

    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec
        self.libc = _Libc()
        directories = RunDirectories.open(spec)
        info_read, info_write = os.pipe()
        hold_read, self._hold = os.pipe()
        try:
            self.process = subprocess.Popen(
                bwrap_argv(spec, info_write, directories),
                stdin=hold_read,
                stdout=subprocess.PIPE,
                pass_fds=(info_write, *directories.fds),
                close_fds=True,
            )
        finally:
            os.close(info_write)
            os.close(hold_read)
            directories.close()
        with os.fdopen(info_read, "rb") as info:
            text = info.read(4096)
        assert self.process.stdout is not None
        # The holder prints one line once bwrap has set up the whole view.
        ready = self.process.stdout.read(1)
        if not text or not ready:
            self.process.wait()
            raise SandboxUnavailable(f"bwrap did not start (exit status {self.process.returncode})")
        self.holder = int(json.loads(text)["child-pid"])
        self._root = os.open(f"/proc/{self.holder}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._mount = os.open(f"/proc/{self.holder}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        self._user = -1
        pid_ns = os.open(f"/proc/{self.holder}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if spec.user_namespace:
                # Unprivileged, bwrap nests two user namespaces: the outer one (uid 0 inside,
                # which owns the PID and mount namespaces and set them up) and the holder's
                # (the real uid again). The PID namespace is joined from its owner; the leader
                # then steps down into the holder's, where it is no one in particular.
                self._user = os.open(f"/proc/{self.holder}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
                owner = fcntl.ioctl(pid_ns, _NS_GET_USERNS)
                try:
                    self.libc.call("setns", owner, _CLONE_NEWUSER)
                finally:
                    os.close(owner)
            # Only children enter a PID namespace: the leader forked next is the first of the run.
            self.libc.call("setns", pid_ns, _CLONE_NEWPID)
        finally:
            os.close(pid_ns)

    def enter(self) -> None:
        """In the leader, just forked: join the view (``become`` then drops its powers)."""
        self.libc.call("setns", self._mount, _CLONE_NEWNS)
        os.fchdir(self._root)
        os.chroot(".")
        os.chdir(self.spec.run_root)
        for fd in (self._root, self._mount, self._hold):
            os.close(fd)
        if self.spec.fresh_proc:
            self.libc.mount_proc()
        if self.spec.user_namespace:
            if not self._same_user_namespace():
                self.libc.call("setns", self._user, _CLONE_NEWUSER)
            os.close(self._user)
            # Joining a user namespace gives every capability inside it; keep none.
            self.libc.drop_capabilities()

    def _same_user_namespace(self) -> bool:
        return os.fstat(self._user).st_ino == os.stat("/proc/self/ns/user").st_ino

    def close(self) -> None:
        """The holder exits; the kernel then ends every process left in the sandbox."""
        os.close(self._hold)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def become(identity: tuple[int, int] | None) -> None:
    """In the leader, before Toil runs: drop root for run_user and forbid regaining powers
    through setuid binaries."""
    if identity is not None:
        uid, gid = identity
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        # Run directories are setgid to the service's group: the service reads what the run writes.
        os.umask(0o007)
    _Libc().no_new_privs()


def check(settings: Settings) -> None:
    """At start-up: refuse to run if the configured sandbox cannot be built here."""
    if settings.run_sandbox == "none":
        log.warning(
            "run_sandbox is 'none': workflows run unsandboxed and can read and change this "
            "service's data directory, database and other users' runs"
        )
        return
    advice = (
        "install bubblewrap (apt-get install bubblewrap) and allow user namespaces "
        "(sysctl kernel.unprivileged_userns_clone=1 where the kernel has it), or opt out "
        "with WES_GATEWAY_RUN_SANDBOX=none (runs can then read the service's data)"
    )
    binary = shutil.which("bwrap")
    if binary is None:
        raise SandboxUnavailable(f"run_sandbox is 'bwrap' but bwrap is not installed: {advice}")
    identity = run_identity(settings)
    argv = [binary, "--unshare-pid", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
    if identity is None:
        argv.insert(1, "--unshare-user")
    result = subprocess.run([*argv, "true"], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise SandboxUnavailable(f"bwrap cannot build a sandbox here ({result.stderr.strip()}): {advice}")
