"""Wake the supervisor as soon as there is work, rather than at its next poll of the store.

The supervisor listens on a unix datagram socket in the data directory (which no run's
sandbox shows); a web worker that has just committed a run, and a pool thread whose run has
just ended, send it one byte. A lost wake-up costs nothing but latency: the poll stays as
the fallback.
"""

from __future__ import annotations

import logging
import os
import select
import socket
from pathlib import Path

from .config import Settings

log = logging.getLogger(__name__)


def socket_path(settings: Settings) -> Path:
    return settings.data_dir.resolve() / "supervisor.wake"


def poke(path: Path) -> None:
    """Wake whoever listens at ``path``; never blocks, never fails."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.setblocking(False)
            sender.sendto(b"!", str(path))
    except OSError:
        pass  # nobody listening, or the queue is full: it is awake already


class Waker:
    """The supervisor's end: wait for a poke, or for the poll interval to pass."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        try:
            path.unlink(missing_ok=True)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            listener.bind(str(path))
            os.chmod(path, 0o600)
            listener.setblocking(False)
            self.sock = listener
        except OSError as exc:  # a path too long for a unix socket, say: polling still works
            log.warning("no wake-up socket at %s (%s); new runs wait for the next poll", path, exc)

    def wait(self, timeout: float) -> None:
        if self.sock is None:
            select.select([], [], [], timeout)
            return
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if ready:
            try:
                while self.sock.recv(64):
                    pass
            except BlockingIOError:
                pass

    def wake(self) -> None:
        poke(self.path)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.path.unlink(missing_ok=True)
