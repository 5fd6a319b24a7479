"""``bookrec db upgrade|current|api-role``: schema migrations and the API's database role."""

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
    role = verbs.add_parser(
        "api-role",
        help="create or update the API's least-privilege login role and its grants "
        "(BOOKREC_API_DB_ROLE, password from BOOKREC_API_DB_PASSWORD); run after upgrade",
    )
    role.set_defaults(handler=_api_role)


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


def _api_role(args: argparse.Namespace) -> int:
    from bookrec import db, dbroles
    from bookrec.settings import get_settings
    from cli.main import CommandError

    settings = get_settings()
    if settings.api_db_password is None:
        raise CommandError("BOOKREC_API_DB_PASSWORD is not set (the API role's password)")
    try:
        granted = dbroles.ensure_api_role(
            db.get_engine(settings),
            settings.api_db_role,
            settings.api_db_password.get_secret_value(),
        )
    except dbroles.RoleError as exc:
        raise CommandError(str(exc)) from exc
    for table, privileges in granted.items():
        print(f"{settings.api_db_role}: {', '.join(privileges)} on {table}")
    return 0
