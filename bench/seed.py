"""Fast bulk seeding of finished runs straight into a store."""

from __future__ import annotations

import uuid
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
    for start in range(0, count, batch):
        rows = []
        for _ in range(min(batch, count - start)):
            run_id = uuid.uuid4().hex
            ids.append(run_id)
            rows.append(
                {
                    "run_id": run_id,
                    "owner": "",
                    "state": store.COMPLETE,
                    "workflow_type": "CWL",
                    "request": request,
                    "engine_args": [],
                    "workflow_path": "/x",
                    "tags": {"bench": "yes"},
                    "submitted_at": now,
                    "start_time": now,
                    "end_time": now,
                    "exit_code": 0,
                    "outputs": {},
                    "system_logs": [],
                }
            )
        with db.atomic():
            store.Run.insert_many(rows).execute()
    db.close()
    return ids
