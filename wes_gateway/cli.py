"""The ``wes-gateway`` command: supervisor, schema upgrades, housekeeping."""

from __future__ import annotations

import argparse
import sys

import peewee

from wes_gateway import store
from wes_gateway.config import load_settings


def _supervise(args: argparse.Namespace) -> int:
    from wes_gateway.runs.supervisor import serve

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
    from wes_gateway.runs.retention import parse_duration, purge_runs

    settings = load_settings()
    try:
        age = parse_duration(args.older_than)
    except ValueError as exc:
        print(f"wes-gateway: {exc}", file=sys.stderr)
        return 2
    db, status = _open_current()
    if status:
        return status
    purged = purge_runs(settings, age, dry_run=args.dry_run)
    verb = "would purge" if args.dry_run else "purged"
    print(f"{verb} {len(purged)} finished runs that ended more than {args.older_than} ago")
    for run_id in purged:
        print(run_id)
    db.close()
    return 0


def _open_current() -> tuple[peewee.Database, int]:
    settings = load_settings()
    db = store.open_database(settings.effective_database_url)
    if store.current_version(db) != store.SCHEMA_VERSION:
        print("wes-gateway: the schema is not current; run `wes-gateway db upgrade` first", file=sys.stderr)
        return db, 2
    return db, 0


def _token_create(args: argparse.Namespace) -> int:
    db, status = _open_current()
    if status:
        return status
    token = store.new_token()
    row = store.create_token(args.user, store.hash_token(token), args.label)
    print(f"token {row.id} for {args.user} (shown once; only its hash is stored):")
    print(token)
    return 0


def _token_list(_args: argparse.Namespace) -> int:
    db, status = _open_current()
    if status:
        return status
    for row in store.list_tokens():
        state = f"revoked {row.revoked_at}" if row.revoked_at else "active"
        print(f"{row.id}\t{row.user}\t{row.label}\t{row.created_at}\t{state}")
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    db, status = _open_current()
    if status:
        return status
    if not store.revoke_token(args.id):
        print(f"wes-gateway: no active token {args.id}", file=sys.stderr)
        return 1
    print(f"token {args.id} revoked")
    return 0


def _runs_unmount(_args: argparse.Namespace) -> int:
    from wes_gateway.host import containers, volumes

    settings = load_settings()
    print(f"unmounted {volumes.unmount_all(settings)} run filesystems")
    containers.release_store_view(settings)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wes-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    supervise = commands.add_parser("supervise", help="claim and run queued workflows")
    supervise.add_argument(
        "--exit-with-parent", action="store_true", help="stop when the parent process (Gunicorn's master) goes away"
    )
    supervise.set_defaults(func=_supervise)
    db = commands.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply pending schema migrations").set_defaults(func=_db_upgrade)
    token = commands.add_parser("token", help="API tokens for auth mode token").add_subparsers(
        dest="token_command", required=True
    )
    create = token.add_parser("create", help="issue a token for USER")
    create.add_argument("user")
    create.add_argument("--label", default="")
    create.set_defaults(func=_token_create)
    token.add_parser("list", help="list tokens (never their values)").set_defaults(func=_token_list)
    revoke = token.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(func=_token_revoke)
    runs = commands.add_parser("runs", help="run records and directories").add_subparsers(
        dest="runs_command", required=True
    )
    purge = runs.add_parser("purge", help="delete finished runs (records and directories)")
    purge.add_argument("--older-than", required=True, help="age since the run ended, e.g. 30d, 12h")
    purge.add_argument("--dry-run", action="store_true", help="list what would be purged")
    purge.set_defaults(func=_runs_purge)
    runs.add_parser(
        "unmount", help="unmount every run's filesystem (before the data directory is moved or deleted)"
    ).set_defaults(func=_runs_unmount)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
