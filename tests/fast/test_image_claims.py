"""What a task's image record may believe: the service's image store, never the run's word.

A run writes its own job logs and its own Podman records; a step that ran no container could
name a trusted image and give it any id and digest. The record keeps the name as claimed and
takes an id and digest only from the service's image store (root's).
"""

from __future__ import annotations

import json
from pathlib import Path

from wes_gateway.files.paths import RunPaths
from wes_gateway.host import containers
from wes_gateway.web import provenance

FORGED_ID = "f" * 64
STORE_ID = "a" * 64
STORE_DIGEST = "sha256:" + "b" * 64


def images_json(root: Path, names: list[str], image_id: str, digest: str) -> None:
    listing = root / "overlay-images"
    listing.mkdir(parents=True)
    (listing / "images.json").write_text(json.dumps([{"id": image_id, "digest": digest, "names": names}]))


def test_an_image_only_the_run_vouches_for_is_claimed(tmp_path: Path) -> None:
    paths = RunPaths(root=tmp_path / "run")
    # The run's own storage, forged: the old code read its id and digest into the task.
    images_json(paths.container_state[0], ["quay.io/trusted/verified:1"], FORGED_ID, "sha256:" + "f" * 64)
    record = containers.image_record("quay.io/trusted/verified:1", image_store=None)
    assert record == {"image": "quay.io/trusted/verified:1", "source": "claimed"}


def test_an_image_in_the_service_store_takes_the_stores_id_and_digest(tmp_path: Path) -> None:
    store = tmp_path / "store"
    images_json(store, ["docker.io/library/debian:stable-slim"], STORE_ID, STORE_DIGEST)
    record = containers.image_record("debian:stable-slim", image_store=store)
    assert record == {
        "image": "debian:stable-slim",
        "source": "image_store",
        "id": f"sha256:{STORE_ID}",
        "digest": STORE_DIGEST,
    }


def test_the_crate_says_a_claimed_image_is_unverified() -> None:
    from rocrate.rocrate import ROCrate

    crate = ROCrate()
    images: dict[str, object] = {}
    claimed = provenance._container_image(crate, images, {"image": "quay.io/trusted/verified:1", "source": "claimed"})
    stored = provenance._container_image(
        crate, images, {"image": "debian:stable-slim", "source": "image_store", "digest": STORE_DIGEST}
    )
    assert "not verified" in claimed.properties()["description"]
    assert "sha256" not in claimed.properties()
    assert "description" not in stored.properties() and stored.properties()["sha256"] == "b" * 64
