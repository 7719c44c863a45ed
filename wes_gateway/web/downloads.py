"""How many downloads each user has going at once on this host, across its web workers.

A download holds a slot: an exclusive ``flock`` on one of ``max_downloads_per_user`` lock
files of the user's in ``<data_dir>/downloads``. The lock goes with its open file, so it is
given back however the download ends, the worker's death included, and every worker of the
host sees the same slots. A user with every slot taken is refused (429) until one is free.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from wes_gateway.config import Settings


def slots_dir(settings: Settings) -> Path:
    return settings.data_dir.resolve() / "downloads"


def _nothing() -> None:
    pass


def take(settings: Settings, user: str) -> Callable[[], None] | None:
    """A slot of ``user``'s, as what gives it back (any number of calls), or None when all
    are taken. The slot's file is also closed, and the slot freed, when it is collected."""
    limit = settings.max_downloads_per_user
    if not limit:
        return _nothing
    directory = slots_dir(settings)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # A user's name may be anything: the files are named by its digest.
    stem = hashlib.sha256(user.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    for slot in range(limit):
        fd = os.open(directory / f"{stem}.{slot}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        return os.fdopen(fd, "rb").close
    return None
