"""Toil's real-time log server, turned off inside our leaders.

Toil's leader always starts a UDP server on 0.0.0.0, on a random port, and tells its jobs the
address, so that they can send log lines in real time. Anything that can reach the port can
send lines too: another user's step on the same host (the run sandbox shares the host's
network) could write into this run's log, megabytes of it. Toil turns the server off when
its level is empty; nothing is lost that a client sees, since every job's log comes through
``--writeLogs`` into the run's job logs, and the leader's own log is unchanged.
"""

from __future__ import annotations

from typing import Any


def disable() -> None:
    """In a leader, before Toil starts its workflow: start no real-time log server."""
    import toil.common
    from toil.realtimeLogger import RealtimeLogger

    class NoRealtimeLogger(RealtimeLogger):  # type: ignore[misc]
        def __init__(self, batchSystem: Any, level: str = "") -> None:
            super().__init__(batchSystem, level="")

    toil.common.RealtimeLogger = NoRealtimeLogger
