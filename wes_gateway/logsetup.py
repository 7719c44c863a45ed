"""Logging for every process of the service: web workers, the supervisor and the CLI."""

from __future__ import annotations

import logging


def setup_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
