"""The store's queries on SQLite: the State enum and its sets, leases and fencing, pages and
filters, tokens and failed logins."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.records import record_run
from wes_gateway import store
from wes_gateway.store import State

SPEC = Path(__file__).resolve().parents[2] / "openapi" / "wes.yaml"

# ---------------------------------------------------------------- State


def test_state_is_the_specs_enum_in_its_order() -> None:
    spec = yaml.safe_load(SPEC.read_text())
    assert [state.value for state in State] == spec["components"]["schemas"]["State"]["enum"]


def test_a_state_is_its_name_in_strings_json_and_the_database(db: Any) -> None:
    assert State.COMPLETE == "COMPLETE" and f"{State.COMPLETE}" == "COMPLETE" and str(State.RUNNING) == "RUNNING"
    assert json.dumps({State.QUEUED: State.CANCELED}) == '{"QUEUED": "CANCELED"}'
    assert {"COMPLETE": 1}[State.COMPLETE] == 1  # counts read from the database key on plain strings
    run_id = record_run()
    assert store.request_cancel(run_id) == State.CANCELED
    raw = db.execute_sql("SELECT state FROM run WHERE run_id = ?", (run_id,)).fetchone()[0]
    assert raw == "CANCELED"
    # Read back as the plain string the database holds, not as the enum.
    assert type(store.get_run(run_id).state) is str
    assert [type(state) for state in store.state_counts()] == [str]
    events = store.events_after(run_id, 0)
    assert [event.data["state"] for event in events] == ["QUEUED", "CANCELED"]


def test_the_state_sets() -> None:
    assert not store.TERMINAL & store.ACTIVE
    assert store.TERMINAL == {State.COMPLETE, State.EXECUTOR_ERROR, State.SYSTEM_ERROR, State.CANCELED}
    assert store.ACTIVE == {State.INITIALIZING, State.RUNNING, State.CANCELING}
    # Every state the service enters is in the table of moves; the others are never entered.
    assert set(store.ALLOWED_FROM) == store.TERMINAL | store.ACTIVE | {State.QUEUED}
    assert not {State.UNKNOWN, State.PAUSED, State.PREEMPTED} & set(store.ALLOWED_FROM)
    for target, sources in store.ALLOWED_FROM.items():
        assert not sources & store.TERMINAL, f"a terminal state may move to {target}"


def test_a_state_the_service_never_enters_is_refused(db: Any) -> None:
    run_id = record_run()
    with pytest.raises(KeyError):
        store.transition(run_id, State.PAUSED)
    assert store.get_run(run_id).state == State.QUEUED


# ---------------------------------------------------------------- leases and fencing


def test_only_the_claimer_renews_and_only_while_the_run_is_active(db: Any) -> None:
    run_id = record_run()
    claimed = store.claim_next("sup-a", "host-a", 30)
    assert claimed is not None and claimed.run_id == run_id and claimed.state == State.INITIALIZING
    assert claimed.claimed_by == "sup-a" and claimed.host_id == "host-a" and claimed.lease_until is not None
    assert store.renew_lease(run_id, "sup-a", 30)
    assert not store.renew_lease(run_id, "sup-b", 30)
    assert store.transition(run_id, State.COMPLETE)
    assert store.get_run(run_id).lease_until is None  # a finished run holds no lease
    assert not store.renew_lease(run_id, "sup-a", 30)


def test_a_live_lease_is_not_taken_over(db: Any) -> None:
    record_run()
    store.claim_next("sup-a", "host-a", 30)
    assert store.take_over_expired("sup-b", "host-a", 30) == []


def test_a_fenced_out_leader_stops_beating_and_a_finished_run_fences_every_leader(db: Any) -> None:
    run_id = record_run()
    store.claim_next("sup-a", "host-a", 30)
    store.leader_started(run_id, "first", "host-a")
    store.leader_started(run_id, "second", "host-a")  # a new leader: the first no longer owns the run
    assert not store.beat(run_id, "first") and not store.leader_owns(run_id, "first")
    assert store.beat(run_id, "second") and store.leader_owns(run_id, "second")
    store.transition(run_id, State.RUNNING)
    store.transition(run_id, State.EXECUTOR_ERROR, exit_code=1)
    assert not store.beat(run_id, "second")  # nothing beats for a finished run


def test_claims_go_oldest_first_and_record_the_move(db: Any) -> None:
    first, second = record_run(), record_run()
    assert store.claim_next("sup", "host-a", 30).run_id == first
    assert [e.data["state"] for e in store.events_after(first, 0)] == ["QUEUED", "INITIALIZING"]
    assert store.get_run(second).state == State.QUEUED


# ---------------------------------------------------------------- pages and filters


def _all_pages(where: store.RunFilter, ascending: bool = False, size: int = 2) -> list[str]:
    seen: list[str] = []
    rows, token = store.list_runs(size, None, where, ascending=ascending)
    seen += [row.run_id for row in rows]
    for _ in range(100):
        if not token:
            break
        rows, token = store.list_runs(size, token, where, ascending=ascending)
        seen += [row.run_id for row in rows]
    return seen


def test_filters_pages_and_counts_agree(db: Any) -> None:
    a1 = record_run(owner="alice", tags={"project": "p1", "team": "x"}, submitted_at="2026-01-01T00:00:00Z")
    a2 = record_run(owner="alice", tags={"project": "p1"}, submitted_at="2026-01-02T00:00:00Z")
    a3 = record_run(owner="alice", tags={"project": "p2"}, submitted_at="2026-01-03T00:00:00Z", workflow_type="WDL")
    b1 = record_run(owner="bob", tags={"project": "p1", "team": "x"}, submitted_at="2026-01-04T00:00:00Z")
    store.request_cancel(a2)
    cases = {
        store.RunFilter(): [b1, a3, a2, a1],
        store.RunFilter(owner="alice"): [a3, a2, a1],
        store.RunFilter(states=(State.CANCELED,)): [a2],
        store.RunFilter(owner="bob", states=(State.QUEUED, State.CANCELED)): [b1],
        store.RunFilter(tags=(("project", "p1"),)): [b1, a2, a1],
        store.RunFilter(tags=(("project", "p1"), ("team", "x"))): [b1, a1],
        store.RunFilter(owner="alice", tags=(("team", "x"),)): [a1],
        store.RunFilter(workflow_type="WDL"): [a3],
        store.RunFilter(since="2026-01-02T00:00:00Z", until="2026-01-03T00:00:00Z"): [a3, a2],
        store.RunFilter(tags=(("project", "nope"),)): [],
    }
    for where, expected in cases.items():
        assert _all_pages(where) == expected, where
        assert _all_pages(where, ascending=True) == expected[::-1], where
        assert store.count_runs(where) == len(expected), where


def test_a_token_for_one_sort_order_is_refused_by_the_other(db: Any) -> None:
    for _ in range(3):
        record_run()
    _, newest_first = store.list_runs(1, None)
    _, oldest_first = store.list_runs(1, None, ascending=True)
    with pytest.raises(store.BadPageToken, match="other sort_order"):
        store.list_runs(1, newest_first, ascending=True)
    with pytest.raises(store.BadPageToken, match="other sort_order"):
        store.list_runs(1, oldest_first)
    assert store.decode_token(store.encode_token(41, ascending=True), ascending=True) == 41
    with pytest.raises(store.BadPageToken):
        store.decode_token(store.encode_token(2**63))  # past every 64-bit key


def test_tasks_page_in_order_of_first_appearance(db: Any) -> None:
    run_id = record_run()
    for n in range(5):
        store.task_issued(run_id, f"t{n}", f"j{n}", f"step {n}", batch_id=n, now=store.utc_now())
    store.task_issued(run_id, "t1", "j1", "step 1", batch_id=9, now=store.utc_now())  # a retry
    seen: list[str] = []
    rows, token = store.list_tasks(run_id, 2, None)
    seen += [row.task_id for row in rows]
    for _ in range(10):
        if not token:
            break
        rows, token = store.list_tasks(run_id, 2, token)
        seen += [row.task_id for row in rows]
    assert seen == ["t0", "t1", "t2", "t3", "t4"]
    retried = store.get_task(run_id, "t1")
    assert retried is not None and retried.attempts == 2 and retried.batch_id == 9


# ---------------------------------------------------------------- tokens and failed logins


def test_tokens_are_kept_by_hash_and_revoked_once(db: Any) -> None:
    token = store.new_token()
    assert token.startswith("wes_") and len(token) > 40 and store.new_token() != token
    digest = store.hash_token(token)
    assert len(digest) == 64 and digest == store.hash_token(token) and token not in digest
    created = store.create_token("alice", digest, "laptop")
    store.create_token("bob", store.hash_token(store.new_token()), "ci")
    assert store.token_owner(digest) == "alice"
    assert store.token_owner(store.hash_token("wes_guessed")) is None
    assert [(t.user, t.label) for t in store.list_tokens()] == [("alice", "laptop"), ("bob", "ci")]
    assert store.revoke_token(created.id)
    assert store.token_owner(digest) is None
    assert not store.revoke_token(created.id)  # revoked already
    assert not store.revoke_token(999999)


def test_failed_logins_are_counted_within_their_window(db: Any) -> None:
    key = "alice 127.0.0.1"
    for _ in range(3):
        store.record_login_failure(key, window=60)
    store.record_login_failure("bob 127.0.0.1", window=60)
    assert len(store.login_failures(key, window=60)) == 3
    store.LoginFailure.update(at=store.LoginFailure.at - 120).execute()  # all of them two minutes ago
    assert store.login_failures(key, window=60) == []
    store.record_login_failure(key, window=60)  # and a new failure sweeps the old ones away
    assert store.LoginFailure.select().count() == 1
