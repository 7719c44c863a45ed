"""WSGI entry point for WSGI-only hosts: ``wes_gateway.web.wsgi:application``.

Connexion 3 validates in ASGI middleware, so the whole ASGI app (validation included) is
adapted back to WSGI rather than exposing the inner Flask app, which would skip it.
"""

from a2wsgi import ASGIMiddleware

from wes_gateway.web.app import create_app

application = ASGIMiddleware(create_app())
