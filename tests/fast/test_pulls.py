"""The pull service's own logic, in process (wes_gateway.host.pulls): references as registries
read them, the store found by tag or digest, and the shim's question over the real socket.
Pulls from a real registry are in tests/e2e/test_registry.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wes_gateway.config import Settings
from wes_gateway.host import container_shim, pulls

DIGEST = "sha256:" + "d" * 64


@pytest.mark.parametrize(
    ("image", "parts"),
    [
        ("debian", ("docker.io/library/debian", "latest", "")),
        ("debian:stable-slim", ("docker.io/library/debian", "stable-slim", "")),
        ("docker://quay.io/biocontainers/samtools:1.9--h", ("quay.io/biocontainers/samtools", "1.9--h", "")),
        ("user/tool:2", ("docker.io/user/tool", "2", "")),
        (f"127.0.0.1:5000/x/y@{DIGEST}", ("127.0.0.1:5000/x/y", "", DIGEST)),
        (f"ghcr.io/a/b:1@{DIGEST}", ("ghcr.io/a/b", "1", DIGEST)),
    ],
)
def test_references_are_read_as_registries_read_them(image: str, parts: tuple[str, str, str]) -> None:
    assert pulls.split(image) == parts


@pytest.mark.parametrize("image", ["Debian", "quay.io/x/y:", "quay.io/x/y@sha256:short", "a/b:bad tag"])
def test_what_is_not_a_reference_is_refused(image: str) -> None:
    with pytest.raises(pulls.PullError, match="not an image reference"):
        pulls.split(image)


def _store(root: Path) -> Path:
    (root / "overlay-images").mkdir(parents=True)
    entry = {"id": "a" * 64, "digest": DIGEST, "names": ["docker.io/library/debian:stable-slim"]}
    (root / "overlay-images" / "images.json").write_text(json.dumps([entry]))
    return root


def test_the_store_is_searched_by_tag_or_digest_in_the_same_repository(tmp_path: Path) -> None:
    store = _store(tmp_path / "store")
    assert pulls.find(store, *pulls.split("debian:stable-slim"))["id"] == "a" * 64  # type: ignore[index]
    assert pulls.find(store, *pulls.split(f"debian@{DIGEST}")) is not None
    assert pulls.find(store, *pulls.split(f"quay.io/other/debian@{DIGEST}")) is None  # same digest, other name
    assert pulls.find(store, *pulls.split("debian:latest")) is None


def test_the_shim_asks_the_service_over_its_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", image_store=_store(tmp_path / "store"), allowed_registries=["127.0.0.1:1"]
    )
    settings.data_dir.mkdir()
    pulls.start(settings)
    try:
        monkeypatch.setattr(container_shim, "CONFIG", {"pulls": str(pulls.socket_path(settings)), "run": "r1"})
        # Stored (pinned): answered from the store, with no registry asked.
        assert container_shim.ask("debian:stable-slim") == {
            "image": "debian:stable-slim",
            "name": "docker.io/library/debian:stable-slim",
            "id": "a" * 64,
            "digest": DIGEST,
        }
        denied = container_shim.ask("quay.io/x/y:1")["error"]
        assert "registry quay.io is not one it may pull from (allowed: 127.0.0.1:1" in denied
        assert "allowed_registries" in denied
    finally:
        pulls.stop(settings)
    assert "did not answer" in container_shim.ask("debian:stable-slim")["error"]  # the service is gone


def test_a_mirror_is_where_a_registry_s_images_are_fetched_under_their_own_names(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        image_store=_store(tmp_path / "store"),
        registry_mirrors="docker.io=127.0.0.1:5000/hub,quay.io=mirror.example.org",  # type: ignore[arg-type]
    )
    puller = pulls.Puller(settings)
    assert puller._source("docker.io/library/debian") == (
        "127.0.0.1:5000/hub/library/debian",
        "docker.io (through its mirror 127.0.0.1:5000/hub)",
    )
    assert puller._source("quay.io/biocontainers/samtools")[0] == "mirror.example.org/biocontainers/samtools"
    assert puller._source("ghcr.io/a/b") == ("ghcr.io/a/b", "ghcr.io")  # no mirror: the registry itself


@pytest.mark.parametrize("table", ["docker.io", "docker.io=https://mirror", "docker.io/x=mirror", "=mirror"])
def test_a_mirror_that_is_not_registry_equals_host_is_refused(table: str) -> None:
    with pytest.raises(ValueError, match=r"registry_mirrors: .* is not (NAME=VALUE|REGISTRY=host)"):
        Settings(registry_mirrors=table)  # type: ignore[arg-type]
