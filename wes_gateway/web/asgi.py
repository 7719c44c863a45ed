"""ASGI entry point for Gunicorn's uvicorn worker: ``wes_gateway.web.asgi:app``."""

from wes_gateway.web.app import create_app

app = create_app()
