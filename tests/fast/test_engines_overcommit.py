"""toil_overcommit in a leader: the single-machine batch system's cores and disk pools grow by
the factor, memory's never, and all stay as Toil makes them at 1. Each case in a fresh
interpreter, as a leader is, so that the patch never reaches this test process's Toil."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

GIB = 2**30
PROBE = """
import json, sys, tempfile
from toil.batchSystems.singleMachine import SingleMachineBatchSystem
from toil.common import Config
from wes_gateway.engines import toil_overcommit
toil_overcommit.overcommit(float(sys.argv[1]))
config = Config()
config.workDir, config.workflowID = tempfile.mkdtemp(), "probe"
batch = SingleMachineBatchSystem(config, 2, 2**30, 2**30)
pools = {p.resource_type: p.value for p in batch.resource_sources if isinstance(getattr(p, "value", None), int)}
pools["cores"] *= batch.minCores
print(json.dumps(pools))
batch.shutdown()
"""


def pools(factor: float) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", PROBE, str(factor)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout))


def test_stock_booking_at_one() -> None:
    found = pools(1.0)
    assert (found["cores"], found["memory"], found["disk"]) == (pytest.approx(2.0), GIB, GIB)


@pytest.mark.parametrize("factor", [3.0, 2.5])
def test_cores_and_disk_stretch_memory_does_not(factor: float) -> None:
    found = pools(factor)
    assert found["cores"] == pytest.approx(2.0 * factor)
    assert found["disk"] == int(GIB * factor)
    assert found["memory"] == GIB  # overbooked memory would be the OOM killer's to settle


def test_the_setting_is_bounded() -> None:
    from pydantic import ValidationError

    from wes_gateway.config import load_settings

    assert load_settings({"WES_GATEWAY_TOIL_OVERCOMMIT": "4"}).toil_overcommit == 4.0
    assert load_settings({}).toil_overcommit == 1.0
    for bad in ("0.5", "17", "many"):
        with pytest.raises(ValidationError):
            load_settings({"WES_GATEWAY_TOIL_OVERCOMMIT": bad})
