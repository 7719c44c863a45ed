"""A private single-node Slurm cluster for the tests: munge, slurmctld and slurmd with files of
their own under one temporary directory, bound to 127.0.0.1, stopped by pid.

What it takes was measured on this machine kind (../shared/notes/slurm-single-node.md):
munge with its own key and socket, SLURM_CONF for every client, loopback-only listening.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.gateway import free_port

_CONF = """\
ClusterName=wes-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={base}/munge/munge.socket.2
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
ReturnToService=2
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
Waittime=0
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/run/slurmctld.pid
SlurmdPidFile={base}/run/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class Slurm:
    base: Path
    conf: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, timeout: float = 30) -> str:
        result = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        return result.stdout

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still knows (MinJobAge keeps finished ones for 10 minutes), as
        `scontrol show job` tells them: there is no accounting daemon, so no sacct."""
        out = self.run("scontrol", "show", "job", "--oneliner")
        jobs = []
        for line in out.splitlines():
            if not line.startswith("JobId="):
                continue
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            jobs.append(fields)
        return jobs

    def queued(self) -> list[str]:
        """What squeue shows: job ids pending or running."""
        return self.run("squeue", "--noheader", "--format=%i").split()

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        shutil.rmtree(self.base, ignore_errors=True)


def available() -> str | None:
    """Why the cluster cannot start here, or None."""
    for program in ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol"):
        if shutil.which(program) is None and not os.path.exists(f"/usr/sbin/{program}"):
            return f"{program} is not installed (scripts/system-deps installs Debian's slurm-wlm and munge)"
    if os.geteuid() != 0:
        return "the private Slurm cluster needs root (slurmd starts jobs as their users)"
    return None


def _wait(check: object, what: str, timeout: float = 30) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"Slurm test cluster: {what} did not come up in {timeout:g}s")


def _memory_mb() -> int:
    with open("/proc/meminfo") as handle:
        total_kb = int(handle.readline().split()[1])
    return max(1024, total_kb // 1024 - 2048)


def start_slurm() -> Slurm:
    # World-traversable: jobs run as the run user, who reaches the job store through here.
    base = Path(tempfile.mkdtemp(prefix="wes-gateway-slurm-"))
    os.chmod(base, 0o755)
    for name in ("munge", "etc", "state", "spool", "run", "log"):
        (base / name).mkdir()
    os.chmod(base / "munge", 0o755)  # non-root clients (the run user's sbatch) need the socket
    slurm = Slurm(base=base, conf=base / "etc" / "slurm.conf")
    try:
        key = base / "etc" / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True, timeout=30)
        os.chmod(key, 0o600)
        socket_path = base / "munge" / "munge.socket.2"
        munge = [
            "munged",
            "-F",
            "--force",
            f"--socket={socket_path}",
            f"--key-file={key}",
            f"--pid-file={base / 'run' / 'munged.pid'}",
            f"--log-file={base / 'log' / 'munged.log'}",
            f"--seed-file={base / 'state' / 'munge.seed'}",
        ]
        slurm.processes.append(subprocess.Popen(munge, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def munge_ready() -> bool:
            encoded = subprocess.run(["munge", "-n", f"--socket={socket_path}"], capture_output=True, timeout=10).stdout
            if not encoded:
                return False
            decoded = subprocess.run(
                ["unmunge", f"--socket={socket_path}"], input=encoded, capture_output=True, timeout=10
            )
            return decoded.returncode == 0

        _wait(munge_ready, "munged")
        slurm.conf.write_text(
            _CONF.format(
                base=base,
                ctld_port=free_port(),
                d_port=free_port(),
                cpus=os.cpu_count() or 1,
                memory=_memory_mb(),
            )
        )
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": slurm.env}
        slurm.processes.append(
            subprocess.Popen(["slurmctld", "-D", "-c", "-i", "-f", str(slurm.conf)], **quiet)  # type: ignore[call-overload]
        )
        _wait(lambda: "UP" in slurm.run("scontrol", "ping"), "slurmctld")
        slurm.processes.append(
            subprocess.Popen(["slurmd", "-D", "-f", str(slurm.conf), "-N", "localhost"], **quiet)  # type: ignore[call-overload]
        )

        def node_idle() -> bool:
            state = slurm.run("sinfo", "--noheader", "--format=%T").strip()
            if state.startswith(("down", "drain")):
                slurm.run("scontrol", "update", "NodeName=localhost", "State=RESUME")
            return state.startswith("idle")

        _wait(node_idle, "slurmd")
    except BaseException:
        slurm.stop()
        raise
    return slurm
