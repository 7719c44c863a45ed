"""Supervisors' claims on runs: leases that lapse when a supervisor dies, and the fencing
token that leaves only the newest leader of a run in charge."""

from __future__ import annotations

import logging
import time

from wes_gateway.store.db import write_transaction
from wes_gateway.store.events import record_event
from wes_gateway.store.runs import get_run
from wes_gateway.store.schema import Run
from wes_gateway.store.state import ACTIVE, INITIALIZING, QUEUED
from wes_gateway.store.times import utc_now

log = logging.getLogger(__name__)


def claim_next(worker_id: str, host_id: str, lease_seconds: float) -> Run | None:
    """Atomically take the oldest QUEUED run for ``worker_id``, or return None."""
    for _ in range(10):
        candidate = Run.select(Run.id, Run.run_id).where(Run.state == QUEUED).order_by(Run.id).first()
        if candidate is None:
            return None
        with write_transaction():
            taken = (
                Run.update(
                    state=INITIALIZING,
                    claimed_by=worker_id,
                    host_id=host_id,
                    lease_until=time.time() + lease_seconds,
                )
                .where((Run.id == candidate.id) & (Run.state == QUEUED))
                .execute()
            )
            if taken == 1:
                record_event(candidate.run_id, "state", {"state": INITIALIZING, "time": utc_now()})
        if taken == 1:
            log.info("run %s claimed by %s", candidate.run_id, worker_id)
            return get_run(candidate.run_id)
    return None


def renew_lease(run_id: str, worker_id: str, lease_seconds: float) -> bool:
    return bool(
        Run.update(lease_until=time.time() + lease_seconds)
        .where((Run.run_id == run_id) & (Run.claimed_by == worker_id) & Run.state.in_(list(ACTIVE)))
        .execute()
        == 1
    )


def take_over_expired(worker_id: str, host_id: str, lease_seconds: float) -> list[Run]:
    """Claim active runs whose supervisor stopped renewing its lease, where this host may.

    A lapsed lease only says that a supervisor died. A run of this host is taken at once (its
    leader, if alive, is adopted by pid). A run of another host is taken only once its leader's
    own heartbeat has lapsed too: that host's leader may well live on without its supervisor.
    """
    now = time.time()
    lapsed = Run.state.in_(list(ACTIVE)) & ((Run.lease_until.is_null()) | (Run.lease_until < now))
    takeable = (
        (Run.host_id == host_id)
        | Run.host_id.is_null()
        | Run.heartbeat_at.is_null()
        | (Run.heartbeat_at < now - lease_seconds)
    )
    stale = list(Run.select(Run.id, Run.run_id).where(lapsed & takeable))
    taken: list[Run] = []
    for run in stale:
        changed = (
            # host_id stays the leader's host until a new leader starts (leader_started), so
            # the taker can tell whether the leader it must find is one of its own host's.
            Run.update(claimed_by=worker_id, lease_until=now + lease_seconds)
            .where((Run.id == run.id) & lapsed & takeable)
            .execute()
        )
        if changed == 1:
            now_taken = get_run(run.run_id)
            if now_taken is not None:
                taken.append(now_taken)
    return taken


def leader_started(run_id: str, token: str, host_id: str) -> None:
    """A new leader owns the run from now: any earlier one's heartbeat no longer matches."""
    Run.update(leader_token=token, host_id=host_id, heartbeat_at=time.time()).where(Run.run_id == run_id).execute()


def beat(run_id: str, token: str) -> bool:
    """The leader's heartbeat; False once another leader owns the run (or it has ended)."""
    return bool(
        Run.update(heartbeat_at=time.time())
        .where((Run.run_id == run_id) & (Run.leader_token == token) & Run.state.in_(list(ACTIVE)))
        .execute()
        == 1
    )


def leader_owns(run_id: str, token: str) -> bool:
    value = Run.select(Run.leader_token).where(Run.run_id == run_id).scalar()
    return bool(value == token)
