"""ASGI entry point for Gunicorn's uvicorn worker: ``wes_gateway.asgi:app``."""

from .app import create_app

app = create_app()
