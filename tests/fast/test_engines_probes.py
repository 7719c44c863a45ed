"""toil_probes in a leader: Toil's per-job filesystem check and disk measure give Toil's
answers without starting `stat` or `du`, and Ceph is still refused. Each case in a fresh
interpreter, as a leader is, so that the patch never reaches this test process's Toil."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wes_gateway.engines import toil_probes

PROBE = """
import json, subprocess, sys
started = []
stock_popen_init = subprocess.Popen.__init__
def counting(self, args, *rest, **kwargs):
    started.append(args[0] if isinstance(args, list) else args)
    stock_popen_init(self, args, *rest, **kwargs)
subprocess.Popen.__init__ = counting
import toil.common, toil.fileStores.abstractFileStore, toil.lib.threading
from wes_gateway.engines import toil_probes
if sys.argv[1] == "in-process":
    toil_probes.install()
where = sys.argv[2]
toil.common.ensure_filesystem_lockable(where)
toil.lib.threading.ensure_filesystem_lockable(where)
size = toil.fileStores.abstractFileStore.getDirSizeRecursively(where)
print(json.dumps({"size": size, "started": started}))
"""


def _probe(mode: str, where: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode, str(where)], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_the_probes_answer_as_toil_s_without_starting_a_program(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data").write_bytes(b"x" * 100_000)
    (tmp_path / "link").symlink_to(tmp_path / "sub" / "data")
    (tmp_path / "hard").hardlink_to(tmp_path / "sub" / "data")  # counted once, as du counts it
    inside, stock = _probe("in-process", tmp_path), _probe("stock", tmp_path)
    assert inside == {"size": stock["size"], "started": []}
    # Off (stock Toil): `stat -f` for each check, `du` for the size.
    assert stock["started"] == ["stat", "stat", "du"]


def test_ceph_is_refused_with_toil_s_words(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import toil.common
    import toil.fileStores.abstractFileStore
    import toil.lib.threading

    # Recorded as they are, so that the patch below is undone after the test.
    for module in (toil.lib.threading, toil.common, toil.fileStores.abstractFileStore):
        for name in ("ensure_filesystem_lockable", "getDirSizeRecursively"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, getattr(module, name))
    toil_probes.install()
    monkeypatch.setattr(toil_probes, "filesystem_magic", lambda path: toil_probes.CEPH_SUPER_MAGIC)
    with pytest.raises(RuntimeError, match="file locks are known to break ceph filesystems. Use elsewhere"):
        toil.lib.threading.ensure_filesystem_lockable(str(tmp_path), hint="Use elsewhere")
    with pytest.raises(FileNotFoundError):
        toil.lib.threading.ensure_filesystem_lockable(str(tmp_path / "absent"))


def test_a_walk_past_its_limit_leaves_the_size_to_du(tmp_path: Path) -> None:
    for n in range(5):
        (tmp_path / str(n)).write_text("x")
    assert toil_probes.allocated_bytes(str(tmp_path), limit=3) is None
    assert toil_probes.allocated_bytes(str(tmp_path)) == sum(
        p.lstat().st_blocks * 512 for p in [tmp_path, *tmp_path.iterdir()]
    )


def test_df_s_line_for_a_wdl_task_is_made_without_starting_df(tmp_path: Path) -> None:
    import re

    real = subprocess.run(["df", "-k", "-P", str(tmp_path)], capture_output=True, text=True, check=True).stdout
    made = toil_probes.df_output(str(tmp_path))
    # The pattern toil.wdl.wdltoil reads the free kilobytes with.
    pattern = re.compile(r".+ \d+ +\d+ +(\d+) +\d+% +.+")
    real_free, made_free = (int(re.match(pattern, text.split("\n")[1])[1]) for text in (real, made))  # type: ignore[index]
    assert abs(real_free - made_free) <= 64 * 1024  # the same filesystem, written to meanwhile by others
    assert real.split("\n")[1].split()[1] == made.split("\n")[1].split()[1]  # its size in 1024-blocks
    proxy = toil_probes._DfInProcess()
    assert proxy.check_output(["df", "-k", "-P", str(tmp_path)], encoding="utf-8") == made
    assert proxy.check_output(["echo", "x"]) == b"x\n"  # anything else is subprocess's own
