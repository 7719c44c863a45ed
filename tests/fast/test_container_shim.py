"""The run's `docker` shim reads each call as Podman would (wes_gateway.host.container_shim.classify):
what it passes on, and what it refuses and why. Pure functions, no Podman; the same calls made
by a real step against real Podman are in tests/e2e/test_containers.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from wes_gateway.host import container_shim
from wes_gateway.host.container_shim import Refused, classify

ALLOWED = ["127.0.0.1:1"]


def refusal(call: str) -> str:
    with pytest.raises(Refused) as refused:
        classify(call.split(), ALLOWED)
    return str(refused.value)


@pytest.mark.parametrize(
    ("call", "rule"),
    [
        ("image pull --signature-policy /dev/null quay.io/x/y:1", "docker image pull: --signature-policy replaces"),
        ("pull --signature-policy=/dev/null 127.0.0.1:1/x/y:1", "--signature-policy"),
        ("pull --tls-verify=false 127.0.0.1:1/x/y:1", "--tls-verify=false turns off"),
        ("pull --tls-verify=0 127.0.0.1:1/x/y:1", "--tls-verify=0"),
        ("pull --cert-dir /tmp 127.0.0.1:1/x/y:1", "--cert-dir"),
        ("pull quay.io/x/y:1 --quiet", "container image quay.io/x/y:1 is not in this service's image store"),
        (
            "pull 127.0.0.1:1/x/y:1 quay.io/x/y:1",
            "its registry quay.io is not one it may pull from (allowed: 127.0.0.1:1; setting allowed_registries",
        ),
        ("--log-level=error image pull quay.io/x/y:1", "docker image pull: container image quay.io/x/y:1"),
        ("--root /tmp/s --log-level debug image --log-level=info pull docker.io/x", "registry docker.io"),
        ("pull docker://quay.io/x/y:1", "registry quay.io"),
        ("pull docker-archive:x.tar", "names the docker-archive transport: it loads an image"),
        ("pull oci:dir", "oci transport"),
        ("load -i x.tar", "docker load: it loads an image"),
        ("image load --input=x.tar", "docker image load: it loads an image"),
        ("import x.tar mine:1", "docker import: it loads an image"),
        ("image import http://127.0.0.1:1/x.tar", "docker image import: it loads an image"),
        ("build -t mine:1 .", "docker build: it builds an image"),
        ("buildx build .", "docker buildx build: it builds an image"),
        ("image build -f Containerfile .", "docker image build: it builds an image"),
        ("run --rm --pull=always docker.io/debian:stable-slim true", "--pull=always would fetch"),
        ("run --pull newer debian:stable-slim true", "--pull=newer would fetch debian:stable-slim again"),
        ("create --pull=IfNewer debian", "--pull=newer"),
        ("run --signature-policy p.json debian true", "docker run: --signature-policy"),
        ("container run --tls-verify=false quay.io/x", "docker container run: --tls-verify=false"),
        ("run docker-archive:x.tar true", "docker-archive transport"),
        ("run --frobnicate debian true", "unknown option --frobnicate"),
        ("run -Z debian true", "unknown option -Z"),
        ("--url tcp://127.0.0.1:1 pull quay.io/x", "docker: --url hands the call to another Podman"),
        ("-c other ps", "docker: --connection"),
        ("-r images", "docker: --remote"),
        ("--registries-conf r.conf pull 127.0.0.1:1/x", "docker: --registries-conf replaces"),
        ("pull --registries-conf r.conf 127.0.0.1:1/x", "docker pull: --registries-conf replaces"),
        ("manifest inspect quay.io/x", "docker manifest inspect: manifest lists"),
        ("manifest", "manifest lists"),
        ("push debian 127.0.0.1:1/x", "docker push: it sends an image to a registry"),
        ("image push debian", "publishes none"),
        ("kube play pod.yaml", "kube play pulls"),
        ("play kube pod.yaml", "play kube pulls"),
        ("auto-update", "pulls newer images"),
        ("container runlabel install quay.io/x", "runlabel pulls"),
        ("container restore --import c.tar", "loads"),
        ("image trust set -t accept default", "image trust changes signature policy"),
        ("image scp x other::", "copies images"),
        ("system service tcp://0.0.0.0:1", "serves Podman's API"),
        ("machine init", "virtual machines"),
        ("compose up", "compose runs another program"),
        ("artifact pull quay.io/x", "fetches an artifact"),
        ("login -u a -p b quay.io", "docker login: registry credentials are the service's"),
        ("login 127.0.0.1:1", "docker login: registry credentials are the service's"),
        ("search quay.io/x", "docker search: it asks registries directly"),
        ("image search x", "docker image search: it asks registries directly"),
        ("pod create --infra-image quay.io/pause", "--infra-image names an image for the step's Podman"),
        ("frobnicate", "docker frobnicate: not a command"),
        ("container frobnicate", "docker container frobnicate: not a command"),
        ("-- pull x", "-- before the command"),
        ("pull --arch", "option --arch needs a value"),
    ],
)
def test_refused_calls_name_the_rule(call: str, rule: str) -> None:
    assert rule in refusal(call)


def test_what_is_passed_on() -> None:
    def plan(call: str) -> container_shim.Plan:
        return classify(call.split(), ALLOWED)

    # cwltool's own calls (cwltool/docker.py), as Toil's CWL runner makes them through the shim.
    for call in ("images --no-trunc --all", "inspect docker.io/debian:stable-slim", "ps -a", "--version", ""):
        assert (plan(call).kind, plan(call).argv) == ("exec", call.split())
    cwltool_run = (
        "run -i --mount=type=bind,source=/w/o,target=/var/spool/cwl --workdir=/var/spool/cwl --read-only=true "
        "--net=none --log-driver=none --user=0:0 --rm --cidfile=/t/c.cid --env=TMPDIR=/tmp --env=HOME=/var/spool/cwl "
        "--entrypoint /bin/sh docker.io/debian:stable-slim -c true"
    ).split()
    run = classify(cwltool_run, ALLOWED)
    at = cwltool_run.index("docker.io/debian:stable-slim")
    # Any image: the one the service names (replacing argv[image_at]), Podman told not to pull it.
    assert (run.kind, run.image, run.options_at) == ("run", "docker.io/debian:stable-slim", 1)
    assert run.argv == [*cwltool_run[:at], "--pull=never", *cwltool_run[at:]]
    assert run.argv[run.image_at] == "docker.io/debian:stable-slim"
    # The command's own arguments are not options of the shim's concern.
    run = plan("run -it -eA=1 -v/a:/b -w/b --pull missing quay.io/x/y:1 sh -c --signature-policy")
    assert run.kind == "run" and run.argv[-5:] == ["--pull=never", "quay.io/x/y:1", "sh", "-c", "--signature-policy"]
    assert plan("run --rm -- debian:stable-slim true").argv == [
        "run",
        "--rm",
        "--pull=never",
        "--",
        "debian:stable-slim",
        "true",
    ]
    created = plan("--log-level error create --name debian debian")
    assert created.argv[created.image_at] == "debian" and created.image_at == 6
    assert plan("run --rootfs /tmp/root /bin/sh").kind == "exec"  # a directory, not an image
    # An allowed registry: pulled (by the service), or run (what the service pulled), with the run's policy.
    pulled = plan("--log-level=error image pull -q docker://127.0.0.1:1/x/y:1 127.0.0.1:1/z")
    assert (pulled.kind, pulled.options_at, pulled.images) == (
        "pull",
        3,
        ("docker://127.0.0.1:1/x/y:1", "127.0.0.1:1/z"),
    )
    assert (plan("run 127.0.0.1:1/x").kind, plan("run 127.0.0.1:1/x").options_at) == ("run", 1)
    with pytest.raises(Refused, match="--pull=always would fetch 127.0.0.1:1/x again"):
        plan("run --pull=always 127.0.0.1:1/x true")
    assert plan("pull --tls-verify=true 127.0.0.1:1/x").kind == "pull" and plan("pod create").kind == "exec"
    for call in (
        "image ls",
        "container ls -a",
        "system df",
        "kube generate c",
        "network ls",
        "logout quay.io",
        "save -o x.tar debian",
    ):
        assert plan(call).kind == "exec", call


def test_foreign_podman_settings_are_not_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(container_shim, "CONFIG", {"env": {"CONTAINERS_CONF": "/run/c.conf"}})
    monkeypatch.setenv("CONTAINER_HOST", "tcp://127.0.0.1:1")
    monkeypatch.setenv("CONTAINERS_CONF_OVERRIDE", "/tmp/remote.conf")
    monkeypatch.setenv("CONTAINERS_CONF", "/tmp/mine.conf")
    env = container_shim._env()
    assert "CONTAINER_HOST" not in env and "CONTAINERS_CONF_OVERRIDE" not in env
    assert env["CONTAINERS_CONF"] == "/run/c.conf"


def test_singularity_version_is_answered_without_an_interpreter_and_the_rest_by_the_shim(tmp_path: Path) -> None:
    from wes_gateway.config import Settings
    from wes_gateway.files.paths import RunPaths
    from wes_gateway.host import containers

    paths = RunPaths(root=tmp_path / "run")
    paths.root.mkdir()
    settings = Settings(data_dir=tmp_path / "data", container_engine="podman", run_sandbox="none")
    containers.prepare(paths, settings, sandboxed=False)
    front = paths.containers / "bin" / "singularity"
    # No Python on PATH or anywhere the shell looks: only the shell answers --version.
    version = subprocess.run([str(front), "--version"], capture_output=True, text=True, env={"PATH": "/nonexistent"})
    assert (version.returncode, version.stdout.strip()) == (0, container_shim.SINGULARITY_VERSION)
    assert front.read_text().startswith("#!/bin/sh\n")
    # Anything else goes to the shim in its singularity role (a docker call would differ).
    usage = subprocess.run([str(front), "pull", "only-one"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "pull takes an image path" in usage.stderr
    assert container_shim.main(["/run/containers/shim/singularity.py", "--version"]) == 0
