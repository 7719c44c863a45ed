"""The `docker` and `singularity` commands a run's steps see when the engine is Podman.

Stdlib only: ``containers.prepare`` copies this file into each run as ``bin/docker`` and
``bin/singularity``, with CONFIG filled in, and the run's Toil workers find them first on PATH.

- ``docker ...`` is Podman with the run's own configuration: Toil's CWL docker mode drives it
  (Toil's --podman makes cwltool pass --userns=keep-id, which rootless Podman refuses without
  subordinate ids).
- ``singularity ...`` answers the three calls Toil's WDL runner makes through miniwdl
  (``--version``, ``pull``, ``exec``) with Podman: Toil 9.6 runs WDL tasks only with
  Singularity or a Docker swarm, and Podman's API has no swarm.

Before any pull, the image's registry is checked against the deployment's allowed registries,
so that a missing image fails at once with a message naming it (recorded for the supervisor).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

# Filled in per run: podman (its path), env (Podman's configuration), allowed_registries,
# problems (a file the supervisor reads into the run's system_logs).
CONFIG: dict[str, object] = json.loads("{}")

SIF_MAGIC = "wes-gateway podman image\n"
# singularity exec options that take a value (the others are flags).
_VALUE_OPTIONS = {"--pwd", "--bind", "-B", "--env", "--home", "--no-mount", "--add-caps", "--workdir", "-W", "-H"}


def registry_of(image: str) -> str:
    """The registry an image reference names, as Podman and Docker read it."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _podman() -> str:
    return str(CONFIG["podman"])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({str(key): str(value) for key, value in dict(CONFIG.get("env") or {}).items()})  # type: ignore[call-overload]
    return env


def _problem(message: str) -> None:
    print(f"wes-gateway: {message}", file=sys.stderr, flush=True)
    try:
        with open(str(CONFIG["problems"]), "a") as problems:
            problems.write(message + "\n")
    except OSError:
        pass


def _exists(image: str) -> bool:
    return subprocess.run([_podman(), "image", "exists", image], env=_env()).returncode == 0


def pull(image: str) -> int:
    """Pull an image the run's storage and the image store do not hold, if its registry is allowed."""
    allowed = [str(name) for name in list(CONFIG.get("allowed_registries") or [])]  # type: ignore[call-overload]
    registry = registry_of(image)
    if registry not in allowed:
        _problem(
            f"container image {image} is not in this service's image store, and its registry {registry} "
            f"is not one it may pull from (allowed: {', '.join(allowed) or 'none'})"
        )
        return 125
    code = subprocess.run([_podman(), "pull", "--quiet", image], env=_env(), stdout=sys.stderr).returncode
    if code != 0:
        _problem(f"container image {image} could not be pulled from {registry} (podman exit status {code})")
    return code


def docker(args: list[str]) -> int:
    if args[:1] == ["pull"] and len(args) >= 2:
        return pull(args[-1])
    os.execve(_podman(), [_podman(), *args], _env())
    return 127  # not reached


def _image_of_sif(reference: str) -> str:
    if reference.startswith("docker://"):
        return reference[len("docker://") :]
    with open(reference) as sif:
        text = sif.read(4096)
    if not text.startswith(SIF_MAGIC):
        raise ValueError(f"{reference} is not an image reference this service wrote")
    return text[len(SIF_MAGIC) :].strip()


def singularity(args: list[str]) -> int:
    quiet = {"--verbose", "-v", "--quiet", "-q", "--silent", "-s", "--debug", "-d"}
    args = [arg for arg in args if arg not in quiet]
    if not args or args[0] in ("--version", "version"):
        print("singularity-ce version 3.11.4 (wes-gateway: Podman)")
        return 0
    if args[0] == "pull":
        positional = [arg for arg in args[1:] if not arg.startswith("-")]
        if len(positional) != 2:
            print("singularity (wes-gateway): pull takes an image path and a docker:// reference", file=sys.stderr)
            return 2
        path, image = positional[0], _image_of_sif(positional[1])
        if not _exists(image):
            code = pull(image)
            if code:
                return code
        with open(path, "w") as sif:
            sif.write(SIF_MAGIC + image + "\n")
        return 0
    if args[0] == "exec":
        return _exec(args[1:])
    print(f"singularity (wes-gateway): unsupported call {args[:1]}", file=sys.stderr)
    return 2


def _exec(args: list[str]) -> int:
    workdir = ""
    mounts: list[str] = []
    env: list[str] = []
    i = 0
    while i < len(args) and args[i].startswith("-"):
        option, _, inline = args[i].partition("=")
        if option in _VALUE_OPTIONS:
            if inline:
                value = inline
            else:
                i += 1
                value = args[i]
            if option == "--pwd":
                workdir = value
            elif option in ("--bind", "-B"):
                for spec in value.split(","):
                    parts = spec.split(":")
                    host, target = parts[0], parts[1] if len(parts) > 1 else parts[0]
                    mounts += ["-v", f"{host}:{target}" + (":ro" if parts[2:3] == ["ro"] else "")]
            elif option == "--env":
                env += ["--env", value]
        i += 1
    if i >= len(args) - 1:
        print("singularity (wes-gateway): exec needs an image and a command", file=sys.stderr)
        return 2
    image = _image_of_sif(args[i])
    command = args[i + 1 :]
    # A task's command replaces the image's entrypoint, as singularity exec does; no network,
    # as no WDL task is promised one.
    argv = [_podman(), "run", "--rm", "--network=none", "--entrypoint", command[0], *env, *mounts]
    if workdir:
        argv += ["--workdir", workdir]
    argv += [image, *command[1:]]
    os.execve(_podman(), argv, _env())
    return 127  # not reached


def main(argv: list[str]) -> int:
    name = os.path.basename(argv[0])
    if name == "singularity":
        return singularity(argv[1:])
    return docker(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
