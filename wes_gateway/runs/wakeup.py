"""Wake the supervisor as soon as there is work, rather than at its next poll of the store.

The supervisor listens on a unix datagram socket in the data directory (which no run's
sandbox shows); a web worker that has just committed a run, and a pool thread whose run has
just ended, send it one byte. On PostgreSQL it also LISTENs for the NOTIFY that every
committed run sends, which reaches supervisors on other hosts too. A lost wake-up costs
nothing but latency: the poll stays as the fallback.
"""

from __future__ import annotations

import logging
import os
import select
import socket
from pathlib import Path
from typing import Any

from wes_gateway import store
from wes_gateway.config import Settings

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

    def __init__(self, path: Path, listener: Any | None = None) -> None:
        self.path = path
        self.listener = listener  # a LISTENing database connection (store.listen_for_work)
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
        watched: list[Any] = [source for source in (self.sock, self.listener) if source is not None]
        try:
            ready, _, _ = select.select(watched, [], [], timeout)
        except (OSError, ValueError):  # a listener whose connection broke: poll from now on
            log.warning("the database's wake-up connection is gone; polling every %.1f s", timeout)
            self.listener = None
            return
        if self.sock is not None and self.sock in ready:
            try:
                while self.sock.recv(64):
                    pass
            except BlockingIOError:
                pass
        if self.listener is not None and self.listener in ready:
            try:
                store.drain_work(self.listener)
            except Exception:
                log.warning("the database's wake-up connection failed; polling from now on")
                self.listener = None

    def wake(self) -> None:
        poke(self.path)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self.sock is not None:
            self.sock.close()
            self.path.unlink(missing_ok=True)
