"""The ``wes-gateway`` command: supervisor, schema upgrades, housekeeping."""

from __future__ import annotations

import argparse
import sys

from . import store
from .config import load_settings


def _supervise(args: argparse.Namespace) -> int:
    from .executor import serve

    serve(load_settings(), stop_on_parent_exit=args.exit_with_parent)
    return 0


def _db_upgrade(_args: argparse.Namespace) -> int:
    settings = load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = store.open_database(settings.effective_database_url)
    applied = store.upgrade(db)
    print(f"schema at version {store.current_version(db)}" + (f" (applied {applied})" if applied else " (up to date)"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wes-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    supervise = commands.add_parser("supervise", help="claim and run queued workflows")
    supervise.add_argument("--exit-with-parent", action="store_true",
                           help="stop when the parent process (Gunicorn's master) goes away")
    supervise.set_defaults(func=_supervise)
    db = commands.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply pending schema migrations").set_defaults(func=_db_upgrade)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
