"""GET /runs and GET /runs/{id}/tasks: keyset pages, filters and counts."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import peewee

from wes_gateway.store.schema import Run, RunTag, StateCount, Task, tag_digest


def state_counts(owner: str | None = None) -> dict[str, int]:
    """Runs per state, from the trigger-maintained counts: one GROUP BY over a handful of rows."""
    query = StateCount.select(StateCount.state, peewee.fn.SUM(StateCount.n).alias("total"))
    if owner is not None:
        query = query.where(StateCount.owner == owner)
    return {row.state: int(row.total) for row in query.group_by(StateCount.state) if row.total}


class BadPageToken(ValueError):
    pass


_KEY_END = 2**63 - 1  # past every 64-bit key: the first page's bound, newest first


def encode_token(key: int, ascending: bool = False) -> str:
    prefix = "a1" if ascending else "k1"
    return base64.urlsafe_b64encode(f"{prefix}:{key}".encode()).decode().rstrip("=")


def decode_token(token: str, ascending: bool = False) -> int:
    try:
        padded = token + "=" * (-len(token) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
        prefix, _, number = text.partition(":")
        key = int(number)
        if prefix not in ("k1", "a1") or not 0 <= key < 2**63:  # keys are 64-bit primary keys
            raise ValueError(text)
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise BadPageToken("page_token is not one this service issued") from exc
    if (prefix == "a1") != ascending:
        raise BadPageToken("page_token was issued for the other sort_order")
    return key


def _keyset_page(
    query: peewee.ModelSelect, key: peewee.Field, page_size: int, page_token: str | None, descending: bool
) -> tuple[list[Any], str]:
    """One page ordered on ``key``, resumed after the token's key: rows inserted meanwhile
    never shift a page, unlike OFFSET. The first page is bounded too, past every key, so that
    it is the very query of every later page: a range on the key's index, walked in order
    and stopped at the limit (SQLite's plan then says so: SEARCH ... (rowid<?), where the
    unbounded query read "SCAN", as a scan of the whole table would)."""
    if page_token:
        bound = decode_token(page_token, ascending=not descending)
    else:
        bound = _KEY_END if descending else -1
    query = query.where(key < bound if descending else key > bound)
    rows = list(query.order_by(key.desc() if descending else key).limit(page_size + 1))
    last = rows[page_size - 1] if len(rows) > page_size else None
    # The key is the row's own id, or a joined copy of it: the token holds the id.
    next_token = encode_token(last.id, ascending=not descending) if last is not None else ""
    return rows[:page_size], next_token


@dataclass(frozen=True)
class RunFilter:
    """What GET /runs may narrow the list to; every field is optional and all must hold."""

    owner: str | None = None  # None: every owner's runs (an admin)
    states: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    workflow_type: str | None = None
    since: str | None = None  # submission time, as stored: YYYY-MM-DDTHH:MM:SSZ
    until: str | None = None

    def apply(self, query: peewee.ModelSelect) -> tuple[peewee.ModelSelect, peewee.Field]:
        """The query narrowed to the filter, and the column to order and page it by: the run
        id, or with tags the first tag's copy of it, so that SQL walks the (digest, run)
        index in order instead of sorting every match."""
        key: peewee.Field = Run.id
        for number, (name, value) in enumerate(self.tags):
            alias = RunTag.alias(f"t{number}")
            query = query.join(alias, on=(alias.run_pk == Run.id)).where(alias.digest == tag_digest(name, value))
            if number == 0:
                key = alias.run_pk
        if self.owner is not None:
            query = query.where(Run.owner == self.owner)
        if self.states:
            query = query.where(Run.state.in_(list(self.states)))
        if self.workflow_type:
            query = query.where(Run.workflow_type == self.workflow_type)
        if self.since:
            query = query.where(Run.submitted_at >= self.since)
        if self.until:
            query = query.where(Run.submitted_at <= self.until)
        return query, key


def list_runs(
    page_size: int, page_token: str | None, where: RunFilter | None = None, ascending: bool = False, full: bool = False
) -> tuple[list[Run], str]:
    """Newest first, unless ``ascending``; the summary's columns, or with ``full`` all."""
    columns = () if full else (Run.id, Run.run_id, Run.state, Run.start_time, Run.end_time, Run.tags)
    query = Run.select(*columns)
    query, key = (where or RunFilter()).apply(query)
    return _keyset_page(query, key, page_size, page_token, descending=not ascending)


def count_runs(where: RunFilter | None = None) -> int:
    """How many runs the filter matches, whatever the page. By owner and state alone, from
    the trigger-kept counts (as flat as the store is large); otherwise counted."""
    where = where or RunFilter()
    if not (where.tags or where.workflow_type or where.since or where.until):
        counts = state_counts(where.owner)
        return sum(n for state, n in counts.items() if not where.states or state in where.states)
    query, _ = where.apply(Run.select(peewee.fn.COUNT(Run.id)))
    return int(query.scalar() or 0)


def list_tasks(run_id: str, page_size: int, page_token: str | None) -> tuple[list[Task], str]:
    """In order of first appearance."""
    return _keyset_page(Task.select().where(Task.run_id == run_id), Task.id, page_size, page_token, descending=False)
