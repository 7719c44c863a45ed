"""The image store's read-only view: a restarted supervisor detaches the views earlier ones
mounted, though the kernel reports a view on the store's own filesystem as no mount point."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wes_gateway.host import idmap


@pytest.fixture
def store_and_view(tmp_path: Path) -> tuple[Path, Path]:
    if os.geteuid() != 0 or idmap.supported():
        pytest.skip(f"idmapped mounts need root and kernel support: {idmap.supported() or 'not root'}")
    store, view = tmp_path / "store", tmp_path / "view"
    store.mkdir()
    view.mkdir()
    (store / "layer").write_text("root's")
    return store, view


def test_stacked_views_are_all_detached(store_and_view: tuple[Path, Path]) -> None:
    store, view = store_and_view
    try:
        for _ in range(2):  # two supervisor starts
            idmap.mount_view(str(store), str(view), 65534, 65534)
        assert (view / "layer").stat().st_uid == 65534
        # Why mountinfo is read: the test the code used before sees no mount at all here.
        assert not os.path.ismount(view)
        assert idmap.mounted(str(view)) == 2
        idmap.unmount_view(str(view))
        assert idmap.mounted(str(view)) == 0
        assert not (view / "layer").exists()
    finally:
        idmap.unmount_view(str(view))


# mountinfo escapes a space as \040 and writes other bytes as they are: both must be found.
@pytest.mark.parametrize("name", ["the view", "vue é"])
def test_a_path_with_a_space_or_a_non_ascii_name_is_found(store_and_view: tuple[Path, Path], name: str) -> None:
    store, view = store_and_view
    other = view.parent / name
    other.mkdir()
    try:
        idmap.mount_view(str(store), str(other), 65534, 65534)
        assert idmap.mounted(str(other)) == 1
    finally:
        idmap.unmount_view(str(other))
    assert idmap.mounted(str(other)) == 0
