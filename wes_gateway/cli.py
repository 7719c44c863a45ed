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
    # Gunicorn's master runs this before forking workers: no connection may be inherited.
    db.close()
    return 0


def _runs_purge(args: argparse.Namespace) -> int:
    from .retention import parse_duration, purge_runs

    settings = load_settings()
    try:
        age = parse_duration(args.older_than)
    except ValueError as exc:
        print(f"wes-gateway: {exc}", file=sys.stderr)
        return 2
    db = store.open_database(settings.effective_database_url)
    if store.current_version(db) != store.SCHEMA_VERSION:
        print("wes-gateway: the schema is not current; run `wes-gateway db upgrade` first", file=sys.stderr)
        return 2
    purged = purge_runs(settings, age, dry_run=args.dry_run)
    verb = "would purge" if args.dry_run else "purged"
    print(f"{verb} {len(purged)} finished runs that ended more than {args.older_than} ago")
    for run_id in purged:
        print(run_id)
    db.close()
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
    runs = commands.add_parser("runs", help="run records and directories").add_subparsers(
        dest="runs_command", required=True)
    purge = runs.add_parser("purge", help="delete finished runs (records and directories)")
    purge.add_argument("--older-than", required=True, help="age since the run ended, e.g. 30d, 12h")
    purge.add_argument("--dry-run", action="store_true", help="list what would be purged")
    purge.set_defaults(func=_runs_purge)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
