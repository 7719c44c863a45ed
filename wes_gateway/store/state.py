"""The WES run states, and which moves between them the service makes."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """A run's state, as WES names it (in the spec's order). A ``str`` enum: each member
    equals, hashes and formats as its name, so it is what the database and JSON hold."""

    UNKNOWN = "UNKNOWN"
    QUEUED = "QUEUED"
    INITIALIZING = "INITIALIZING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETE = "COMPLETE"
    EXECUTOR_ERROR = "EXECUTOR_ERROR"
    SYSTEM_ERROR = "SYSTEM_ERROR"
    CANCELED = "CANCELED"
    CANCELING = "CANCELING"
    PREEMPTED = "PREEMPTED"


QUEUED = State.QUEUED
INITIALIZING = State.INITIALIZING
RUNNING = State.RUNNING
COMPLETE = State.COMPLETE
EXECUTOR_ERROR = State.EXECUTOR_ERROR
SYSTEM_ERROR = State.SYSTEM_ERROR
CANCELING = State.CANCELING
CANCELED = State.CANCELED

TERMINAL: frozenset[State] = frozenset({COMPLETE, EXECUTOR_ERROR, SYSTEM_ERROR, CANCELED})
ACTIVE: frozenset[State] = frozenset({INITIALIZING, RUNNING, CANCELING})

# The only legal moves. Everything that changes a run's state goes through transition(),
# which checks against this table inside the UPDATE itself. UNKNOWN, PAUSED and PREEMPTED
# are WES states this service never enters.
ALLOWED_FROM: dict[State, frozenset[State]] = {
    QUEUED: frozenset({INITIALIZING}),  # re-queue of a run whose leader never started
    INITIALIZING: frozenset({QUEUED}),
    RUNNING: frozenset({INITIALIZING}),
    COMPLETE: frozenset({INITIALIZING, RUNNING}),
    EXECUTOR_ERROR: frozenset({INITIALIZING, RUNNING}),
    SYSTEM_ERROR: frozenset({QUEUED, INITIALIZING, RUNNING, CANCELING}),
    CANCELING: frozenset({INITIALIZING, RUNNING}),
    CANCELED: frozenset({QUEUED, INITIALIZING, RUNNING, CANCELING}),
}
