"""The container engine that runs the images workflows declare (CWL DockerRequirement, WDL
runtime.docker), as Toil is told to use it, and the per-run configuration that makes Podman
run rootless inside the run sandbox.

Podman (the default where it is installed) runs as the run's own user in the sandbox's
namespaces, with a single-uid mapping (container root is the run user), no subordinate ids
and no setuid helper (the sandbox sets no_new_privs). Its storage is in the run's directory
(``containers/storage``, its runtime state in the run's tmp), its images come read-only from
the deployment's image store (Podman's additionalimagestores) or, only from allowed
registries, by pull. Each container's PID namespace is nested in the sandbox's, so whatever
ends the sandbox ends them.

The image store belongs to root on disk, so that no process of the run user can change an
image another run will use: not a step (whose sandbox shows the store read-only), and not a
job outside a sandbox. Runs see it through a read-only idmapped view (``store_view``) in
which root's files are the run user's, as single-uid rootless Podman needs them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from wes_gateway.config import Settings
from wes_gateway.files.paths import RunPaths
from wes_gateway.host import container_shim, idmap, pulls, sandbox

log = logging.getLogger(__name__)

MAX_PROBLEMS_BYTES = 16 * 1024
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# `docker run` options that take their value as the next word (cwltool writes --entrypoint so).
_VALUE_OPTIONS = {"--entrypoint", "-e", "--env", "-v", "--volume", "-w", "--workdir", "-u", "--user", "--name"}
_REFERENCE = re.compile(r"[\w][\w.:/@+-]{0,254}")
_SINGULARITY_INVOCATION = re.compile(r'singularity invocation :: args: "[^"]*? (/[^" ]+\.sif)"')


def engine(settings: Settings) -> str:
    """podman, docker, singularity or none: ``auto`` is podman where it is installed."""
    if settings.container_engine != "auto":
        return settings.container_engine
    return "podman" if shutil.which("podman") else "none"


class ContainersUnusable(RuntimeError):
    """The container settings cannot work together on this host."""


def store_view(settings: Settings) -> Path | None:
    """Where the runs' Podman finds ``image_store``: its idmapped read-only view where leaders
    drop to run_user in a sandbox (made by ``provide_store_view``), else the store itself."""
    if settings.image_store is None:
        return None
    if engine(settings) != "podman" or sandbox.run_identity(settings) is None:
        return settings.image_store
    return _view_path(settings)


def _view_path(settings: Settings) -> Path:
    return settings.data_dir.resolve() / "image-view"


def pulls_served(settings: Settings) -> bool:
    """Whether this supervisor pulls images for its runs (pulls.py): Podman with an image store."""
    return engine(settings) == "podman" and settings.image_store is not None


def provide_store_view(settings: Settings) -> None:
    """Mount the image store's view for this supervisor's runs (again at every start, for the
    current run_user), and serve their pulls. Sandboxes built from it keep their own copy of
    the mount."""
    if pulls_served(settings):
        pulls.start(settings)
    view = store_view(settings)
    identity = sandbox.run_identity(settings)
    if view is None or identity is None or view == settings.image_store:
        return
    _unmount_view(settings)
    view.mkdir(mode=0o700, exist_ok=True)
    idmap.mount_view(str(settings.image_store), str(view), identity.uid, identity.gid)
    log.info("image store %s shown to runs read-only as run_user's at %s", settings.image_store, view)


def release_store_view(settings: Settings) -> None:
    pulls.stop(settings)
    _unmount_view(settings)


def _unmount_view(settings: Settings) -> None:
    idmap.unmount_view(str(_view_path(settings)))


def _not_root_owned(store: Path) -> str:
    """A file of the store's layers that is not root's (a store built for runs to own), or ""."""
    for layer in sorted((store / "overlay").glob("*/diff")):
        for entry in [layer, *sorted(layer.iterdir())[:50]]:
            if entry.lstat().st_uid != 0:
                return str(entry)
    return ""


def check(settings: Settings) -> None:
    """At start-up: refuse what would make every container step fail, or let a run change an
    image that other runs use."""
    store = settings.image_store
    if engine(settings) == "podman" and store is not None and settings.batch_system != "single_machine":
        raise ContainersUnusable(
            "image_store with a cluster batch system: jobs run as run_user outside the run sandbox, where "
            "Podman would need the store's layers to be run_user's, so any job could change the images other "
            "runs use; leave image_store unset on a cluster"
        )
    if engine(settings) == "podman" and store is not None and store_view(settings) != store:
        why = idmap.supported()
        if why:
            raise ContainersUnusable(f"image_store cannot be shown to runs read-only: {why}")
        owned = _not_root_owned(store)
        if owned:
            raise ContainersUnusable(
                f"image_store {store} holds files that are not root's ({owned}): a run user that owns image "
                f"files can change them for every run; chown -R root:root {store} (scripts/build-images does)"
            )
    if engine(settings) == "podman" and store is not None and settings.run_uid_range is not None:
        # Measured: the store's layers belong to the user that imported them, which no run of
        # another uid can map ("potentially insufficient UIDs ... requested 65534:0").
        raise ContainersUnusable(
            "run_uids cannot share image_store: its layers belong to one user (run_user), whom a run "
            "with a uid of its own cannot map; leave run_uids unset, or image_store (runs pull their images)"
        )


def cwl_args(settings: Settings) -> list[str]:
    """Toil's own CWL container options for the engine."""
    chosen = engine(settings)
    if chosen == "none":
        return ["--no-container"]
    if chosen == "singularity":
        return ["--singularity"]
    if chosen == "podman":
        # Toil's docker mode through the run's `docker` (Podman) shim: --podman makes cwltool
        # pass --userns=keep-id, which rootless Podman refuses without subordinate ids. No
        # prepull: the leader would pull before the shim could say which registries are allowed;
        # no user matching: container root already is the run user.
        return ["--no-prepull", "--no-match-user"]
    return []  # docker: Toil's default


def wdl_container(settings: Settings) -> str:
    """Toil's --container for WDL: Podman through the run's `singularity` shim (Toil 9.6 runs
    WDL tasks only with Singularity or a Docker swarm, which Podman's API lacks)."""
    return "docker" if engine(settings) == "docker" else "singularity"


def sandbox_paths(settings: Settings) -> list[str]:
    """What the run sandbox must show read-only for the engine to work in it."""
    chosen = engine(settings)
    if chosen == "docker":
        # The daemon's socket, which the deployment chose to hand to its runs (docs/containers.md).
        return [path for path in ("/run/docker.sock", "/var/run/docker.sock") if os.path.exists(path)][:1]
    if chosen != "podman":
        return []
    # Podman reads the cgroup layout from /sys, and runc mounts it into the container.
    shown = ["/sys"]
    view = store_view(settings)
    if view is not None:
        shown.append(str(view))
    if pulls_served(settings):
        shown.append(str(pulls.socket_dir(settings)))
    return shown


def path_dirs(paths: RunPaths, settings: Settings) -> list[str]:
    """Directories to put first on the leader's PATH: the run's shims."""
    return [str(paths.containers / "bin")] if engine(settings) == "podman" else []


def prepare(paths: RunPaths, settings: Settings, sandboxed: bool = True, own_pid_namespace: bool = True) -> None:
    """Write the run's Podman configuration and its `docker` and `singularity` shims (again
    on every start: a resumed run gets the service's current settings). Each container gets a
    PID namespace of its own (so that what a step leaves running ends with it) where the run's
    /proc allows one (sandbox.SandboxSpec.fresh_proc), else shares the sandbox's."""
    if engine(settings) != "podman":
        return
    podman = shutil.which("podman") or "/usr/bin/podman"
    # Made afresh: the run owns its directory and may have left links where these go.
    if paths.containers.is_symlink() or paths.containers.is_file():
        paths.containers.unlink()
    elif paths.containers.exists():
        shutil.rmtree(paths.containers)
    config = paths.containers / "config"
    (config / "containers").mkdir(parents=True, exist_ok=True)
    (paths.containers / "bin").mkdir(parents=True, exist_ok=True)
    (paths.containers / "shim").mkdir(parents=True, exist_ok=True)
    storage, runtime = paths.container_state
    # Podman refuses a runtime directory (its sockets') of more than 50 characters: in the
    # sandbox the run's tmp is /tmp; outside it, a directory of the run's own in the host's.
    if sandboxed:
        runtime = Path("/tmp") / runtime.relative_to(paths.tmp)
    else:
        runtime = Path(f"/tmp/wes-podman-{paths.root.name}"[:50])
        runtime.mkdir(mode=0o700, exist_ok=True)
    for name, text in _podman_files(settings, storage, runtime, own_pid_namespace).items():
        _write(config / "containers" / name, text)
    env = {
        "CONTAINERS_CONF": str(config / "containers" / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(config / "containers" / "storage.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(config / "containers" / "registries.conf"),
        "XDG_CONFIG_HOME": str(config),
        "XDG_RUNTIME_DIR": str(runtime),
        "HOME": str(paths.home),
    }
    _write_shims(paths, settings, podman, env)


def _podman_files(settings: Settings, storage: Path, runtime: Path, own_pid_namespace: bool) -> dict[str, str]:
    """The run's Podman configuration files, by name."""
    view = store_view(settings)
    stores = [str(view)] if view is not None else []
    return {
        "storage.conf": _toml(
            {
                "storage": {
                    "driver": "overlay",
                    "graphroot": str(storage),
                    "rootless_storage_path": str(storage),
                    "runroot": str(runtime / "storage"),
                    "options": {
                        "additionalimagestores": stores,
                        # One uid in the namespace: every file of a pulled layer becomes the run user's.
                        "overlay": {"ignore_chown_errors": "true"},
                    },
                }
            }
        ),
        "containers.conf": _toml(
            {
                "containers": {
                    "pidns": "private" if own_pid_namespace else "host",
                    # cwltool asks for --net=none unless the step declares NetworkAccess.
                    "netns": "host",
                    "default_ulimits": [],
                    "seccomp_profile": "/usr/share/containers/seccomp.json",
                },
                "engine": {
                    # crun refuses hybrid cgroup hosts; rootless cgroupfs sets no limits itself.
                    "runtime": "runc",
                    "cgroup_manager": "cgroupfs",
                    "events_logger": "file",
                    "events_logfile_path": str(runtime / "events.log"),
                    "tmp_dir": str(runtime / "libpod"),
                    "volume_path": str(storage / "volumes"),
                },
            }
        ),
        "registries.conf": _toml({"unqualified-search-registries": ["docker.io"]}),
        # No pulls by the run's Podman: the service pulls (pulls.py); stored images need no policy.
        "policy.json": json.dumps({"default": [{"type": "reject"}]}),
    }


def _write_shims(paths: RunPaths, settings: Settings, podman: str, env: dict[str, str]) -> None:
    """The run's `docker` and `singularity`: container_shim.py with its CONFIG filled in."""
    shim_config = {
        "podman": podman,
        "env": env,
        "allowed_registries": list(settings.allowed_registries),
        "problems": str(paths.containers / "problems.log"),
        "pulls": str(pulls.socket_path(settings)) if pulls_served(settings) else "",
        "run": paths.root.name,
        "pull_wait": settings.pull_timeout + 2 * settings.registry_timeout + 60,
    }
    placeholder = 'CONFIG: dict[str, object] = json.loads("{}")'
    source = Path(__file__).with_name("container_shim.py").read_text()
    assert placeholder in source
    source = source.replace(placeholder, f"CONFIG: dict[str, object] = json.loads({json.dumps(shim_config)!r})", 1)
    script = f"#!{sys.executable} -IS\n{source}"
    _write(paths.containers / "bin" / "docker", script, mode=0o755)
    # Toil's WDL runner asks `singularity --version` once per task (miniwdl initialises its
    # container backend in every new worker process): answered by the shell, the rest by the
    # shim, kept off PATH under the name whose role it takes.
    _write(paths.containers / "shim" / "singularity.py", script, mode=0o755)
    _write(
        paths.containers / "bin" / "singularity",
        "#!/bin/sh\n"
        f'if [ "$#" -eq 1 ] && [ "$1" = --version ]; then echo {shlex.quote(container_shim.SINGULARITY_VERSION)}; exit 0; fi\n'
        f'exec {shlex.quote(sys.executable)} -IS {shlex.quote(str(paths.containers / "shim" / "singularity.py"))} "$@"\n',
        mode=0o755,
    )


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    # The directory was just made afresh by prepare, before any leader of the run starts.
    path.write_text(text)
    os.chmod(path, mode)


def _toml(table: dict[str, Any], prefix: str = "") -> str:
    """The few TOML shapes Podman's files need: tables of strings, lists and sub-tables."""
    lines: list[str] = []
    nested: list[tuple[str, dict[str, Any]]] = []
    for key, value in table.items():
        if isinstance(value, dict):
            nested.append((f"{prefix}{key}", value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    text = "\n".join(lines) + ("\n" if lines else "")
    for name, sub in nested:
        text += f"\n[{name}]\n" + _toml(sub, f"{name}.")
    return text


def problems(paths: RunPaths) -> list[str]:
    """What the run's shims said went wrong with its images (bounded; the run writes it)."""
    handle = paths.open_file(paths.containers / "problems.log")
    if handle is None:
        return []
    with handle:
        text = handle.read(MAX_PROBLEMS_BYTES).decode("utf-8", "replace")
    return list(dict.fromkeys(line.strip()[:500] for line in text.splitlines() if line.strip()))[:20]


def image_of_command(cmd: list[str]) -> str | None:
    """The image of a ``docker run`` command line as cwltool writes it (options as --name=value)."""
    for index, word in enumerate(cmd):
        if os.path.basename(word) in ("docker", "podman") and cmd[index + 1 : index + 2] == ["run"]:
            rest = iter(cmd[index + 2 :])
            for argument in rest:
                if argument in _VALUE_OPTIONS:
                    next(rest, None)
                elif not argument.startswith("-"):
                    return argument if _REFERENCE.fullmatch(argument) else None
    return None


def image_of_log(log_head: str, paths: RunPaths) -> str | None:
    """The image of a WDL task, from the image reference its job log names (miniwdl logs the
    `singularity exec` it runs; the run's singularity shim wrote the reference)."""
    match = _SINGULARITY_INVOCATION.search(log_head)
    if not match:
        return None
    handle = paths.open_file(Path(match.group(1)))
    if handle is None:
        return None
    with handle:
        text = handle.read(4096).decode("utf-8", "replace")
    if not text.startswith(container_shim.SIF_MAGIC):
        return None
    image = text[len(container_shim.SIF_MAGIC) :].strip().split("\n", 1)[0]
    return image if _REFERENCE.fullmatch(image) else None


def image_record(image: str, image_store: Path | None) -> dict[str, str]:
    """What the service can say of the image a task's log names: the name is the run's word
    (its job log is the run's to write), so the record says ``claimed``, with no id or digest;
    where the service's image store (root's, which no run can change) holds that name (a tag,
    pinned to what the service pulled, or a digest), its id and digest are the store's, and the
    record says ``image_store``. The run's own Podman records are never read: a run can write
    any id and digest there."""
    entry = None
    if image_store is not None:
        with contextlib.suppress(pulls.PullError):
            entry = pulls.find(image_store, *pulls.split(image))
    if entry is None:
        return {"image": image, "source": "claimed"}
    record = {"image": image, "source": "image_store"}
    image_id, digest = str(entry.get("id", "")), str(entry.get("digest", ""))
    if re.fullmatch(r"[0-9a-f]{64}", image_id):
        record["id"] = f"sha256:{image_id}"
    if _DIGEST.match(digest):
        record["digest"] = digest
    return record
