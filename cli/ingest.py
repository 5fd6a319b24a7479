"""``bookrec ingest SOURCE``: run the ingest flow and print its report."""

from __future__ import annotations

import argparse
import json

from cli.main import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ingest`` verb."""
    parser = subparsers.add_parser(
        "ingest", help="load Book-Crossing CSVs (folder or s3:// prefix) into PostgreSQL"
    )
    parser.add_argument("source", help="folder or s3://bucket/prefix holding the three files")
    parser.add_argument("--layout", choices=["auto", "kaggle", "original"], default="auto")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_ingest, prefect=True, heartbeats=False,
                        preload=("flows.ingest", "alembic.command"))


def _ingest(args: argparse.Namespace) -> int:
    from bookrec.reports import ingest_markdown, public_ingest_report
    from bookrec.sources import IngestFileError
    from flows.ingest import ingest_flow

    try:
        report = ingest_flow(source=args.source, layout=args.layout)
    except IngestFileError as exc:
        raise CommandError(f"{exc} (nothing was written)") from exc
    if args.json:
        print(json.dumps(public_ingest_report(report), indent=2))
    else:
        print(ingest_markdown(report))
    return 0
