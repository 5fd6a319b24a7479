"""``bookrec online``: how each model version does with real readers (impressions, ratings
attributed to them, hit rate@k, mean position of the hits)."""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime, timedelta

from cli.main import CommandError

_AGO = re.compile(r"^(\d+)([hd])$")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``online`` verb."""
    parser = subparsers.add_parser("online", help="per model version: impressions and hits")
    parser.add_argument(
        "--since",
        default="7d",
        help="start of the period: an ISO 8601 date or time (UTC unless given), or 24h, 7d "
        "(default 7d)",
    )
    parser.add_argument("--k", type=int, default=10, help="hit rate@k: the first k places")
    parser.add_argument("--json", action="store_true", help="print a JSON list")
    parser.set_defaults(handler=_online)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``24h``/``7d`` before now, or an ISO 8601 date or time (naive means UTC)."""
    now = now or datetime.now(UTC)
    ago = _AGO.match(text.strip())
    if ago:
        n, unit = int(ago.group(1)), ago.group(2)
        return now - (timedelta(hours=n) if unit == "h" else timedelta(days=n))
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CommandError(
            f"--since: {text!r} is not an ISO 8601 date/time or a duration like 24h or 7d",
            exit_code=2,
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _online(args: argparse.Namespace) -> int:
    from bookrec import db, online
    from bookrec.settings import get_settings

    if args.k < 1:
        raise CommandError("--k: must be at least 1", exit_code=2)
    since = parse_since(args.since)
    rows = online.report(db.get_engine(get_settings()), since, k=args.k)
    if args.json:
        print(json.dumps(online.report_json(rows)))
        return 0
    if not rows:
        print(f"no impressions since {since.isoformat()}")
        return 0
    print(f"since {since.isoformat()}, hit rate@{args.k}")
    print(
        f"{'model version':<28} {'impressions':>11} {'readers':>8} {'attributed':>10} "
        f"{'hit rate':>9} {'mean pos':>8}"
    )
    for r in rows:
        pos = f"{r.mean_hit_position:.2f}" if r.mean_hit_position is not None else "-"
        print(
            f"{r.model_version:<28} {r.impressions:>11} {r.readers:>8} "
            f"{r.attributed_ratings:>10} {r.hit_rate:>9.4f} {pos:>8}"
        )
    return 0
