"""Runs written straight into a store, for tests and benchmarks that need runs without running them."""

from __future__ import annotations

from typing import Any


def record_run(owner: str = "", tags: dict[str, str] | None = None, workflow_url: str = "x.cwl", **fields: Any) -> str:
    """A run straight into the open store, as a submission records it, then with ``fields``
    (state, times...) set: for tests that need runs without running them."""
    from wes_gateway import store

    run_id = store.new_run_id()
    store.create_run(
        store.NewRun(
            run_id=run_id,
            owner=owner,
            workflow_type="CWL",
            request={"workflow_url": workflow_url, "workflow_type": "CWL", "workflow_type_version": "v1.2"},
            engine_args=[],
            workflow_path="/x",
            tags=tags or {},
        )
    )
    if fields:
        store.Run.update(**fields).where(store.Run.run_id == run_id).execute()
    return run_id
