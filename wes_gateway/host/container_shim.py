"""The `docker` and `singularity` commands a run's steps see when the engine is Podman.

Stdlib only: ``containers.prepare`` copies this file into each run as ``bin/docker`` and
``shim/singularity.py`` (behind ``bin/singularity``, a shell script that answers ``--version``
itself), with CONFIG filled in, and the run's Toil workers find them first on PATH.

- ``docker ...`` is Podman with the run's own configuration (Toil's CWL docker mode; its
  --podman would make cwltool pass --userns=keep-id, which needs subordinate ids).
- ``singularity ...`` answers what Toil's WDL runner asks through miniwdl (``--version``,
  ``pull``, ``exec``) with Podman: Toil 9.6 runs WDL tasks only with Singularity or a swarm.

Images come from the service (wes_gateway/host/pulls.py), never from the run's own Podman: the
shim asks the service's socket for each image a step names, and the step's Podman runs the
stored image the service names, by id, with ``--pull=never``. Every ``docker`` call is read as
Podman reads it (``classify``) before it goes on: what loads, builds, publishes or fetches an
image other than through the service (``load``, ``build``, ``push``, ``login``, ``manifest``,
``kube play``, transports such as ``docker-archive:``), options that replace the run's policy
or weaken verification, or hand the call to another Podman, and commands the shim does not
know (a new one could fetch) are refused.

A refusal exits 125 (Podman's status for its errors) naming the rule, also written for the
supervisor. A step running Podman by its path, with a policy of its own, fills only the run's
own storage, which no other run sees (docs/containers-registry.md).
"""

from __future__ import annotations

import json
import os
import socket
import sys

# Filled in per run: podman (its path), env (Podman's configuration), allowed_registries,
# problems (a file the supervisor reads into the run's system_logs), pulls (the service's
# socket, or ""), run (the run's id), pull_wait (seconds to wait for the service's answer).
CONFIG: dict[str, object] = json.loads("{}")

SIF_MAGIC = "wes-gateway podman image\n"
SINGULARITY_VERSION = "singularity-ce version 3.11.4 (wes-gateway: Podman)"
# singularity exec options that take a value (the others are flags).
_VALUE_OPTIONS = {"--pwd", "--bind", "-B", "--env", "--home", "--no-mount", "--add-caps", "--workdir", "-W", "-H"}
REFUSED = 125
# Variables that would point Podman at another service or configuration: not passed on.
_FOREIGN_ENV = tuple(
    "CONTAINER_HOST CONTAINER_CONNECTION CONTAINER_SSHKEY CONTAINER_PASSPHRASE CONTAINERS_CONF_OVERRIDE "
    "REGISTRIES_CONFIG_PATH DOCKER_HOST".split()
)
# Image references that name a transport other than a registry load from files, other stores or daemons.
_TRANSPORTS = frozenset(
    "atomic containers-storage dir docker-archive docker-daemon oci oci-archive ostree sif tarball".split()
)


class Refused(Exception):
    """A call the shim does not pass on; the message names the rule."""


class Options:
    """The options of a Podman command, as its flag parser (pflag) reads them: long names that
    take a value, long names that are flags, and one-letter names."""

    def __init__(self, values: str, flags: str, shorts: str = "") -> None:
        self.values = frozenset(values.split())
        self.flags = frozenset(flags.split())
        self.shorts = dict(pair.split("=") for pair in shorts.split())

    def __or__(self, other: Options) -> Options:
        merged = Options("", "")
        merged.values, merged.flags = self.values | other.values, self.flags | other.flags
        merged.shorts = {**other.shorts, **self.shorts}
        return merged


# Podman's global options (4.3 to 5.x, hidden ones too): before the command, and after it.
GLOBAL = Options(
    "cdi-spec-dir cgroup-manager config conmon connection cpu-profile db-backend default-mounts-file "
    "events-backend hooks-dir identity imagestore log-level memory-profile module namespace network-cmd-path "
    "network-config-dir out registries-conf root runroot runtime runtime-flag ssh storage-driver storage-opt "
    "tmpdir url volumepath",
    "help noout remote syslog trace transient-store version",
)
_GLOBAL_SHORTS = Options("", "", "c=connection h=help r=remote v=version")
_HELP = Options("", "", "h=help")
RUN = _HELP | Options(
    # podman run and create (4.3 to 5.x), with the hidden options and aliases Podman accepts.
    "add-host annotation arch attach authfile blkio-weight blkio-weight-device cap-add cap-drop cgroup-conf "
    "cgroup-parent cgroupns cgroups chrootdirs cidfile conmon-pidfile cpu-period cpu-quota cpu-rt-period "
    "cpu-rt-runtime cpu-shares cpus cpuset-cpus cpuset-mems decryption-key detach-keys device "
    "device-cgroup-rule device-read-bps device-read-iops device-write-bps device-write-iops dns dns-option "
    "dns-search entrypoint env env-file env-merge expose gidmap gpus group-add group-entry health-cmd "
    "health-interval health-log-destination health-max-log-count health-max-log-size health-on-failure "
    "health-retries health-start-period health-startup-cmd health-startup-interval health-startup-retries "
    "health-startup-success health-startup-timeout health-timeout healthcheck-command healthcheck-interval "
    "healthcheck-retries healthcheck-start-period healthcheck-timeout hosts-file hostuser image-volume "
    "init-ctr init-path ip ip6 ipc kernel-memory label label-file log-driver log-opt mac-address memory "
    "memory-reservation memory-swap memory-swappiness mount name net network network-alias oom-score-adj os "
    "override-arch override-os override-variant passwd-entry personality pid pidfile pids-limit platform pod "
    "pod-id-file preserve-fd preserve-fds publish pull rdt-class requires restart retry retry-delay sdnotify "
    "seccomp-policy secret security-opt shm-size shm-size-systemd signature-policy stop-signal stop-timeout "
    "subgidname subuidname sysctl systemd timeout tmpfs tz uidmap ulimit umask unsetenv user userns uts "
    "variant volume volumes-from workdir",
    "detach disable-content-trust env-host http-proxy init interactive no-healthcheck no-hostname no-hosts "
    "oom-kill-disable passwd privileged publish-all purge quiet read-only read-only-tmpfs replace rm rmi "
    "rootfs sig-proxy tls-verify tty unsetenv-all",
    "P=publish-all a=attach c=cpu-shares d=detach e=env i=interactive l=label m=memory p=publish q=quiet "
    "t=tty u=user v=volume w=workdir",
)
PULL = _HELP | Options(
    "arch authfile cert-dir creds decryption-key os platform retry retry-delay signature-policy variant",
    "all-tags disable-content-trust quiet tls-verify",
    "a=all-tags q=quiet",
)

# Commands that fetch and load nothing: passed on as they are (with any subcommand).
_PASSED = frozenset(
    "attach commit cp diff events exec export generate healthcheck help history images info init inspect kill "
    "logout logs mount network pause port ps rename restart rm rmi save secret start stats stop tag top unmount "
    "umount unpause unshare untag update version volume wait".split()
)
# Groups whose subcommands are judged one by one: those passed on as they are.
_PASSED_SUB = {
    "container": frozenset(
        "attach checkpoint cleanup clone commit cp diff exec exists export init inspect kill list logs ls mount "
        "pause port prune ps rename restart rm start stats stop top unmount umount unpause update wait".split()
    ),
    "image": frozenset("diff exists history inspect list ls mount prune rm save tag tree unmount umount untag".split()),
    "system": frozenset("check df events info migrate prune renumber reset".split()),
    "kube": frozenset(["down", "generate"]),
    "pod": frozenset("exists inspect kill logs pause prune ps ls list restart rm start stats stop top unpause".split()),
    "artifact": frozenset("add extract inspect ls list rm remove".split()),
}
_LOADS = "it loads an image from a file or URL; a step uses images from the image store or an allowed registry"
_BUILDS = "it builds an image, pulling its base images and running its steps where the shim cannot check them"
# What the shim refuses whatever follows: (command, subcommand or "") -> the rule.
_REFUSED = {
    **dict.fromkeys(
        [("load", ""), ("import", ""), ("image", "load"), ("image", "import"), ("container", "restore")], _LOADS
    ),
    **dict.fromkeys([("build", ""), ("buildx", ""), ("image", "build"), ("farm", "")], _BUILDS),
    **dict.fromkeys([("push", ""), ("image", "push")], "it sends an image to a registry; a step publishes none"),
    ("artifact", "push"): "it sends an artifact to a registry; a step publishes none",
    ("artifact", "pull"): "it fetches an artifact from a registry the shim does not check",
    ("manifest", ""): "manifest lists are read from and written to registries the shim does not check",
    ("kube", "play"): "kube play pulls the images its YAML names, which the shim does not check",
    ("kube", "apply"): "kube apply deploys to a cluster",
    ("play", ""): "play kube pulls the images its YAML names, which the shim does not check",
    ("compose", ""): "compose runs another program that pulls what its file names",
    ("auto-update", ""): "auto-update pulls newer images",
    ("container", "runlabel"): "runlabel pulls the image and runs a command its label names",
    **dict.fromkeys([("image", "scp"), ("scp", "")], "it copies images from another host or user"),
    ("image", "sign"): "it signs images with keys of the step's",
    ("image", "trust"): "image trust changes signature policy, the registry allowlist",
    ("system", "service"): "it serves Podman's API, through which anything could pull",
    ("system", "connection"): "it points Podman at another service",
    ("machine", ""): "it downloads and runs virtual machines",
    ("login", ""): "registry credentials are the service's (registry_auth_file): the service pulls, not a step",
    **dict.fromkeys([("search", ""), ("image", "search")], "it asks registries directly; the service pulls images"),
}


def registry_of(image: str) -> str:
    """The registry an image reference names, as Podman and Docker read it."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


class Plan:
    """An allowed call: ``exec`` Podman with ``argv``; ``pull`` (the service pulls ``images``);
    or ``run`` (exec, with ``argv[image_at]``, the ``image``, replaced by the id of the image the
    service names). ``options_at``: where the command's own options start in ``argv`` (the
    run's policy goes there), or 0. A plain class, not a dataclass: importing dataclasses
    (and with it inspect) was 25 ms of the 35 that every call of the shim took, once per
    WDL task and several times per CWL step in a container (issue 40)."""

    __slots__ = ("kind", "argv", "options_at", "images", "image", "image_at")

    def __init__(
        self,
        kind: str,
        argv: list[str],
        options_at: int = 0,
        images: tuple[str, ...] = (),
        image: str = "",
        image_at: int = 0,
    ) -> None:
        self.kind, self.argv, self.options_at = kind, argv, options_at
        self.images, self.image, self.image_at = images, image, image_at

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    def __repr__(self) -> str:
        return "Plan(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__) + ")"


def parse(
    args: list[str], spec: Options, interspersed: bool = True
) -> tuple[list[tuple[str, str | None]], list[str], int]:
    """``args`` as pflag reads them: the options as (long name, value or None), the positional
    arguments, and the index of the first positional (or of ``--``; len(args) if none). Without
    ``interspersed`` the first positional ends the options (``run IMAGE COMMAND...``)."""
    options: list[tuple[str, str | None]] = []
    positionals: list[str] = []
    first = len(args)
    i = 0
    while i < len(args):
        word = args[i]
        if word == "--":
            first = min(first, i)
            positionals += args[i + 1 :]
            break
        if word.startswith("--"):
            name, eq, inline = word[2:].partition("=")
            if name in spec.values:
                if not eq:
                    i += 1
                    if i == len(args):
                        raise Refused(f"option --{name} needs a value")
                    inline = args[i]
                options.append((name, inline))
            elif name in spec.flags:
                options.append((name, inline if eq else None))
            else:
                raise Refused(f"unknown option --{name} (the shim reads every option, to know what is fetched)")
        elif word.startswith("-") and word != "-":
            for j in range(1, len(word)):
                letter, rest = word[j], word[j + 1 :]
                name = spec.shorts.get(letter, "")
                if not name:
                    raise Refused(f"unknown option -{letter} (the shim reads every option, to know what is fetched)")
                if name in spec.values:
                    if rest:
                        value = rest[1:] if rest.startswith("=") else rest
                    else:
                        i += 1
                        if i == len(args):
                            raise Refused(f"option -{letter} needs a value")
                        value = args[i]
                    options.append((name, value))
                    break
                if rest.startswith("="):
                    options.append((name, rest[1:]))
                    break
                options.append((name, None))
        else:
            first = min(first, i)
            if not interspersed:
                positionals += args[i:]
                break
            positionals.append(word)
        i += 1
    return options, positionals, first


def _check_options(options: list[tuple[str, str | None]]) -> None:
    for name, value in options:
        if name == "signature-policy":
            raise Refused(
                "--signature-policy replaces the run's signature policy, which holds pulls to the allowed registries"
            )
        if name == "tls-verify" and value not in (None, "1", "t", "T", "true", "TRUE", "True"):
            raise Refused(f"--tls-verify={value} turns off the registry's TLS verification")
        if name == "cert-dir":
            raise Refused("--cert-dir trusts certificates of the step's choosing")
        if name in ("remote", "url", "connection", "identity", "ssh"):
            raise Refused(f"--{name} hands the call to another Podman service, outside this run's configuration")
        if name in ("registries-conf", "module"):
            raise Refused(f"--{name} replaces the run's registry configuration")


def _not_allowed(image: str, registry: str, allowed: list[str]) -> str:
    return (
        f"container image {image} is not in this service's image store, and its registry {registry} "
        f"is not one it may pull from (allowed: {', '.join(allowed) or 'none'}; setting allowed_registries, "
        "WES_GATEWAY_ALLOWED_REGISTRIES)"
    )


def _remote(image: str) -> str:
    """A registry reference without docker://; one naming another transport is refused."""
    image = image.removeprefix("docker://")
    transport, colon, _ = image.partition(":")
    if colon and transport in _TRANSPORTS:
        raise Refused(f"{image} names the {transport} transport: {_LOADS}")
    return image


def classify(args: list[str], allowed: list[str]) -> Plan:
    """What a ``docker`` call (Podman's arguments) may do: a Plan, or Refused naming the rule."""
    try:
        options, rest, start = parse(args, GLOBAL | _GLOBAL_SHORTS, interspersed=False)
        _check_options(options)
    except Refused as refusal:
        raise Refused(f"docker: {refusal}") from None
    if not rest:
        return Plan("exec", args)  # no command: Podman's help or version
    if args[start] == "--":
        raise Refused("docker: -- before the command")
    command, after = rest[0], start + 1
    sub = ""
    if command in (*_PASSED_SUB, "manifest", "buildx", "play", "farm", "machine", "compose"):
        _, words, first = parse(args[after:], GLOBAL | _HELP, interspersed=False)
        if words:
            sub, after = words[0], after + first + 1
    what = " ".join(["docker", command, sub]).strip()
    try:
        return _classify(args, command, sub, after, allowed)
    except Refused as refusal:
        raise Refused(f"{what}: {refusal}") from None


def _classify(args: list[str], command: str, sub: str, after: int, allowed: list[str]) -> Plan:
    rule = _REFUSED.get((command, sub)) or _REFUSED.get((command, ""))
    if rule:
        raise Refused(rule)
    own = args[after:]
    if (command, sub) in (("pull", ""), ("image", "pull")):
        options, images, _ = parse(own, PULL | GLOBAL)
        _check_options(options)
        for image in images:
            remote = _remote(image)
            if registry_of(remote) not in allowed:
                raise Refused(_not_allowed(image, registry_of(remote), allowed))
        return Plan("pull", args, options_at=after, images=tuple(images))
    if (command, sub) in (("run", ""), ("create", ""), ("container", "run"), ("container", "create")):
        return _run(args, after)
    if command == "pod" and sub in ("create", "clone"):
        if any(word.startswith("--infra-image") for word in own):
            raise Refused("--infra-image names an image for the step's Podman to pull, not the service")
        return Plan("exec", args)
    if command in _PASSED or (command in _PASSED_SUB and (not sub or sub in _PASSED_SUB[command])):
        return Plan("exec", args)
    raise Refused("not a command this service's docker passes on to Podman")


def _run(args: list[str], after: int) -> Plan:
    options, words, first = parse(args[after:], RUN | GLOBAL, interspersed=False)
    _check_options(options)
    if not words or any(
        name == "rootfs" and value in (None, "1", "t", "true", "True", "TRUE") for name, value in options
    ):
        return Plan("exec", args)  # no image (Podman says so), or a root filesystem instead of one
    image = _remote(words[0])
    for name, value in options:
        policy = {"ifnotpresent": "missing", "": "missing", "ifnewer": "newer"}.get(str(value).lower(), str(value))
        if name == "pull" and policy.lower() not in ("never", "missing"):
            raise Refused(
                f"--pull={policy} would fetch {image} again: the service pulls each image once per host, "
                "and a step runs what it pulled"
            )
    # The service's image by id: Podman is told not to pull (after the call's own --pull).
    at = after + first
    return Plan("run", [*args[:at], "--pull=never", *args[at:]], options_at=after, image=words[0], image_at=at + 1)


def _podman() -> str:
    return str(CONFIG["podman"])


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _FOREIGN_ENV}
    env.update({str(key): str(value) for key, value in dict(CONFIG.get("env") or {}).items()})  # type: ignore[call-overload]
    return env


def _policy() -> list[str]:
    """The run's policy.json (it rejects every pull): Podman 4.3 looks for a user's policy in
    $HOME/.config/containers, not in the run's configuration directory (XDG_CONFIG_HOME)."""
    config = dict(CONFIG.get("env") or {}).get("XDG_CONFIG_HOME")  # type: ignore[call-overload]
    path = os.path.join(str(config), "containers", "policy.json") if config else ""
    return [f"--signature-policy={path}"] if path and os.path.isfile(path) else []


def _problem(message: str) -> None:
    print(f"wes-gateway: {message}", file=sys.stderr, flush=True)
    try:
        with open(str(CONFIG["problems"]), "a") as problems:
            problems.write(message + "\n")
    except OSError:
        pass


def ask(image: str) -> dict[str, str]:
    """The service's answer for ``image``: {"id", "digest", ...} once it is in the shared
    store, or {"error": why}."""
    path = str(CONFIG.get("pulls") or "")
    if not path:
        return {"error": f"container image {image}: this service pulls no images (its image_store is not set)"}
    wait = float(CONFIG.get("pull_wait") or 1000)  # type: ignore[arg-type]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(wait)
            connection.connect(path)
            request = {"image": image, "run": str(CONFIG.get("run") or "")}
            connection.sendall(json.dumps(request).encode() + b"\n")
            answer = connection.makefile("rb").readline(65536)
        reply = json.loads(answer)
        return {str(key): str(value) for key, value in dict(reply).items()}
    except (OSError, ValueError, TypeError) as error:
        return {"error": f"container image {image}: the service's pulls did not answer ({error})"}


def _image_id(image: str) -> str:
    """The id of the stored image the service names for ``image``, or "" (the problem written)."""
    answer = ask(image)
    if "error" in answer:
        _problem(answer["error"])
    return answer.get("id", "")


def docker(args: list[str]) -> int:
    try:
        plan = classify(args, [str(name) for name in CONFIG.get("allowed_registries") or []])  # type: ignore[attr-defined]
    except Refused as refusal:
        _problem(f"refused {refusal}")
        return REFUSED
    argv = plan.argv
    if plan.kind == "pull":
        return 0 if all([_image_id(_remote(image)) for image in plan.images]) else REFUSED
    if plan.kind == "run":
        image_id = _image_id(_remote(plan.image))
        if not image_id:
            return REFUSED
        argv = [*argv[: plan.image_at], image_id, *argv[plan.image_at + 1 :]]
    if plan.options_at:
        argv = [*argv[: plan.options_at], *_policy(), *argv[plan.options_at :]]
    os.execve(_podman(), [_podman(), *argv], _env())
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
        print(SINGULARITY_VERSION)
        return 0
    if args[0] == "pull":
        positional = [arg for arg in args[1:] if not arg.startswith("-")]
        if len(positional) != 2:
            print("singularity (wes-gateway): pull takes an image path and a docker:// reference", file=sys.stderr)
            return 2
        path, image = positional[0], _image_of_sif(positional[1])
        if not _image_id(image):
            return REFUSED
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
    try:
        image_id = _image_id(_remote(_image_of_sif(args[i])))
    except Refused as refusal:
        _problem(f"refused singularity exec: {refusal}")
        return REFUSED
    if not image_id:
        return REFUSED
    command = args[i + 1 :]
    # A task's command replaces the image's entrypoint, as singularity exec does; no network,
    # as no WDL task is promised one.
    argv = [_podman(), "run", *_policy(), "--rm", "--network=none", "--pull=never", "--entrypoint", command[0]]
    argv += [*env, *mounts, *(["--workdir", workdir] if workdir else []), image_id, *command[1:]]
    os.execve(_podman(), argv, _env())
    return 127  # not reached


def main(argv: list[str]) -> int:
    role = os.path.basename(argv[0]).removesuffix(".py")  # the run's bin/docker, or shim/singularity.py
    return singularity(argv[1:]) if role == "singularity" else docker(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
