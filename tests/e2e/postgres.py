"""A private PostgreSQL server for the tests: its own data directory, port and lifetime."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.gateway import free_port


@dataclass
class Postgres:
    url: str
    data: Path
    bin_dir: Path
    user: str | None

    def stop(self) -> None:
        _run(self, [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"], check=False)
        shutil.rmtree(self.data.parent, ignore_errors=True)


def _run(pg: Postgres | None, argv: list[str], user: str | None = None, check: bool = True) -> None:
    user = user if pg is None else pg.user
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    subprocess.run(argv, check=check, capture_output=True, timeout=120)


def find_bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def start_postgres() -> Postgres:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL is not installed (scripts/system-deps installs Debian's postgresql)")
    # PostgreSQL refuses to run as root: use the postgres account where we are root, in a
    # directory it can reach (pytest's temporary directories are private to their owner).
    user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="wes-gateway-pg-"))
    data = root / "pgdata"
    socket_dir = root / "pgsock"
    for directory in (data, socket_dir):
        directory.mkdir(parents=True)
        if user:
            shutil.chown(directory, user)
    if user:
        os.chmod(root, 0o755)
    port = free_port()
    try:
        _run(None, [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"], user)
    except subprocess.CalledProcessError as exc:
        raise OSError(f"initdb failed: {exc.stderr.decode(errors='replace')[-500:]}") from None
    pg = Postgres(url=f"postgresql://postgres@127.0.0.1:{port}/wes", data=data, bin_dir=bin_dir, user=user)
    _run(
        pg,
        [
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-w",
            "-l",
            str(data / "server.log"),
            "-o",
            f"-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off",
            "start",
        ],
    )
    _run(pg, [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "wes"])
    return pg
