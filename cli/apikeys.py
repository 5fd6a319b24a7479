"""``bookrec apikeys create|list|revoke``: the API keys that writes need."""

from __future__ import annotations

import argparse
import json

from cli.main import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``apikeys`` verb group."""
    from bookrec.apikeys import DEFAULT_RATE_PER_MINUTE

    parser = subparsers.add_parser("apikeys", help="create, list and revoke API keys for writes")
    verbs = parser.add_subparsers(dest="apikeys_command", metavar="VERB", required=True)
    create = verbs.add_parser("create", help="create a key (printed once, stored as a hash)")
    create.add_argument("name", help="who or what the key is for")
    create.add_argument(
        "--rate-per-minute",
        type=int,
        default=DEFAULT_RATE_PER_MINUTE,
        help=f"requests per minute this key may make (default {DEFAULT_RATE_PER_MINUTE})",
    )
    create.add_argument(
        "--user-id",
        type=int,
        action="append",
        dest="user_ids",
        metavar="ID",
        help="bind the key to this reader (repeatable); unbound keys may write for anyone",
    )
    create.add_argument("--json", action="store_true", help="print the key as JSON")
    create.set_defaults(handler=_create)
    listing = verbs.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.set_defaults(handler=_list)
    revoke = verbs.add_parser("revoke", help="revoke a key (workers stop accepting it in seconds)")
    revoke.add_argument("id", type=int, help="the key's id (see `bookrec apikeys list`)")
    revoke.set_defaults(handler=_revoke)


def _engine():
    from bookrec import db
    from bookrec.settings import get_settings

    return db.get_engine(get_settings())


def _create(args: argparse.Namespace) -> int:
    from bookrec.apikeys import ApiKeyError, create_key

    try:
        created = create_key(_engine(), args.name, args.rate_per_minute, args.user_ids)
    except ApiKeyError as exc:
        raise CommandError(str(exc), exit_code=2) from None
    if args.json:
        print(json.dumps(created))
        return 0
    bound = ", ".join(map(str, created["user_ids"])) if created["user_ids"] else "any reader"
    print(
        f"API key {created['id']} ({created['name']}, {created['rate_per_minute']}/min, "
        f"writes for {bound}):"
    )
    print(created["key"])
    print("Store it now: it is not shown again (only its SHA-256 is kept).")
    return 0


def _list(args: argparse.Namespace) -> int:
    from bookrec.apikeys import list_keys

    keys = list_keys(_engine())
    if args.json:
        print(json.dumps([k.to_json() for k in keys]))
        return 0
    if not keys:
        print("no API keys (create one with `bookrec apikeys create NAME`)")
        return 0
    for k in keys:
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        bound = ",".join(map(str, k.user_ids)) if k.user_ids else "any reader"
        print(
            f"{k.id:>5}  bk_{k.prefix}_…  {k.rate_per_minute:>7}/min  {state:<24} "
            f"{bound:<16} {k.name}"
        )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from bookrec.apikeys import ApiKeyError, revoke_key

    try:
        when = revoke_key(_engine(), args.id)
    except ApiKeyError as exc:
        raise CommandError(str(exc)) from None
    print(f"API key {args.id} revoked at {when.isoformat()}")
    return 0
