"""A bare Connexion app that serves constants from a minimal spec: the baseline for overhead."""

from __future__ import annotations

from pathlib import Path

import connexion

SPEC = Path(__file__).with_name("bare.yaml")


def status(run_id: str) -> dict[str, str]:
    return {"run_id": run_id, "state": "COMPLETE"}


def runs(page_size: int = 50) -> dict[str, object]:
    return {
        "runs": [{"run_id": str(i), "state": "COMPLETE", "tags": {}} for i in range(page_size)],
        "next_page_token": "",
    }


def health() -> dict[str, str]:
    return {"status": "ok"}


def create() -> connexion.FlaskApp:
    app = connexion.FlaskApp(__name__, specification_dir=str(SPEC.parent))
    app.add_api(SPEC.name, strict_validation=True)
    return app


app = create()


def _wsgi() -> object:
    from a2wsgi import ASGIMiddleware

    return ASGIMiddleware(app)


wsgi_app = _wsgi()
