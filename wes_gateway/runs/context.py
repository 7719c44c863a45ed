"""What starting, watching and finishing a run take from the supervisor that holds it: a
protocol here, so that those modules need not import the supervisor, which imports them."""

from __future__ import annotations

import threading
from multiprocessing.context import ForkServerContext
from typing import Protocol

from wes_gateway.config import Settings
from wes_gateway.files.paths import RunPaths
from wes_gateway.host.sandbox import RunIdentity


class Holder(Protocol):
    settings: Settings
    hidden_files: list[str]  # the service's own secret files, hidden from leaders
    identity: RunIdentity | None  # run_user, where leaders drop to one
    host_id: str
    worker_id: str  # this supervisor, as its leases name it
    stop_event: threading.Event
    context: ForkServerContext  # leaders are forked from its preloaded server

    def identity_for(self, run_id: str, paths: RunPaths) -> RunIdentity | None:
        """Who the run's leader is (run_user, or a uid of its own from run_uids)."""
        ...
