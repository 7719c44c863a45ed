"""Fast bulk seeding of finished runs straight into a store."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from wes_gateway import store


def seed_runs(data_dir: Path, count: int, batch: int = 2000) -> list[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    db = store.open_database(f"sqlite:///{data_dir.resolve() / 'wes.sqlite3'}")
    store.upgrade(db)
    request = {
        "workflow_url": "echo.cwl",
        "workflow_type": "CWL",
        "workflow_type_version": "v1.2",
        "workflow_params": {"message": "hi"},
    }
    ids: list[str] = []
    now = store.utc_now()
    # Something for every filter to find: one run in ten failed, one in twenty is WDL, tags of
    # ten projects, and a submission time a second apart, oldest first.
    began = datetime(2026, 1, 1, tzinfo=UTC)
    for start in range(0, count, batch):
        rows = []
        for n in range(start, start + min(batch, count - start)):
            run_id = uuid.uuid4().hex
            ids.append(run_id)
            rows.append(
                {
                    "run_id": run_id,
                    "owner": "",
                    "state": store.EXECUTOR_ERROR if n % 10 == 3 else store.COMPLETE,
                    "workflow_type": "WDL" if n % 20 == 7 else "CWL",
                    "request": request,
                    "engine_args": [],
                    "workflow_path": "/x",
                    "tags": {"bench": "yes", "project": f"p{n % 10}"},
                    "submitted_at": (began + timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "start_time": now,
                    "end_time": now,
                    "exit_code": 0,
                    "outputs": {},
                    "system_logs": [],
                }
            )
        with db.atomic():
            store.Run.insert_many(rows).execute()
            batch_ids = [row["run_id"] for row in rows]
            pks = dict(store.Run.select(store.Run.run_id, store.Run.id).where(store.Run.run_id.in_(batch_ids)).tuples())
            store.RunTag.insert_many(
                [
                    {"run_pk": pks[row["run_id"]], "digest": store.tag_digest(key, value)}
                    for row in rows
                    for key, value in row["tags"].items()
                ]
            ).execute()
    db.close()
    return ids
