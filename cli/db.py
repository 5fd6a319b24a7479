"""``bookrec db upgrade|current``: schema migrations."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``db`` verb group."""
    parser = subparsers.add_parser("db", help="database schema migrations")
    verbs = parser.add_subparsers(dest="db_command", metavar="VERB", required=True)
    up = verbs.add_parser("upgrade", help="apply migrations up to the newest revision")
    up.add_argument("--revision", default="head")
    up.set_defaults(handler=_upgrade)
    cur = verbs.add_parser("current", help="print the database's revision")
    cur.set_defaults(handler=_current)


def _upgrade(args: argparse.Namespace) -> int:
    from bookrec import db
    from bookrec.settings import get_settings

    engine = db.get_engine(get_settings())
    db.upgrade(engine, args.revision)
    print(f"database at revision {db.current_revision(engine)}")
    return 0


def _current(args: argparse.Namespace) -> int:
    from bookrec import db
    from bookrec.settings import get_settings

    print(db.current_revision(db.get_engine(get_settings())) or "none")
    return 0
