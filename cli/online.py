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
    parser.add_argument(
        "--rollout",
        nargs="?",
        const="current",
        metavar="ID",
        help="instead, the figures per variant of a rollout (the running one without ID): "
        "requests, errors, p50/p95 latency, impressions, readers, hits, hit rate",
    )
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
    if args.rollout is not None:
        return _rollout(args)
    since = parse_since(args.since)
    rows = online.report(db.get_engine(get_settings()), since, k=args.k)
    if args.json:
        print(json.dumps(online.report_json(rows)))
        return 0
    if not rows:
        print(f"no impressions since {since.isoformat()}")
        _running_rollout()
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
    _running_rollout()
    return 0


def _running_rollout() -> None:
    """After the per-version table: the running rollout's figures per variant, if any."""
    from bookrec import db, rollout
    from bookrec.registry import Registry, RegistryError
    from bookrec.settings import get_settings
    from bookrec.store import StoreError

    settings = get_settings()
    try:
        record = Registry.from_settings(settings).current_rollout()
    except (RegistryError, StoreError) as exc:
        print(f"\nrollout: the registry cannot be read ({exc})")
        return
    if record is not None:
        print()
        _print_rollout(record, rollout.figures(db.get_engine(settings), record))


_VARIANT_ROWS = (
    "champion",
    "canary",
    "interleave",
    "interleave_champion",
    "interleave_candidate",
)


def _rollout(args: argparse.Namespace) -> int:
    """Print a rollout's figures per variant (``bookrec.rollout.figures``)."""
    from bookrec import db, rollout
    from bookrec.registry import Registry, RegistryError
    from bookrec.settings import get_settings

    settings = get_settings()
    registry = Registry.from_settings(settings)
    try:
        record = (
            registry.current_rollout() if args.rollout == "current" else registry.rollout(args.rollout)
        )
    except RegistryError as exc:
        raise CommandError(str(exc), exit_code=2) from None
    if record is None:
        what = "no rollout is running" if args.rollout == "current" else "no such rollout"
        raise CommandError(what, exit_code=1)
    figs = rollout.figures(db.get_engine(settings), record)
    public = {k: v for k, v in record.items() if k != "salt"}
    if args.json:
        print(json.dumps({"rollout": {**public, "variants": figs["variants"],
                                      "since": figs["since"], "until": figs["until"]}}))
        return 0
    _print_rollout(record, figs)
    return 0


def _print_rollout(record: dict, figs: dict) -> None:
    """The per-variant table of a rollout."""
    state = f"ended {record['ended_at']} ({record['decision']})" if record.get("ended_at") \
        else "running"
    print(
        f"rollout {record['id']}: candidate {record['candidate']} against {record['champion']}, "
        f"interleave {record['interleave']:.0%}, canary {record['canary']:.0%}, since "
        f"{record['started_at']}, {state}"
    )
    print(
        f"{'variant':<22} {'requests':>8} {'errors':>7} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'lists':>7} {'readers':>7} {'hits':>6} {'hit rate':>9}"
    )
    for name in _VARIANT_ROWS:
        row = figs["variants"][name]

        def ms(value) -> str:
            return f"{value:.1f}" if value is not None else "-"

        requests = row.get("requests")
        print(
            f"{name:<22} {requests if requests is not None else '':>8} "
            f"{row.get('errors', ''):>7} {ms(row.get('p50_ms')) if requests is not None else '':>8} "
            f"{ms(row.get('p95_ms')) if requests is not None else '':>8} {row['impressions']:>7} "
            f"{row['readers']:>7} {row['hits']:>6} {row['hit_rate']:>9.4f}"
        )
