"""``bookrec models|promote|rollback``: list model versions, gate a candidate, roll back.

``promote`` and ``rollback`` run the Prefect flows of the same names in this process.
A refused action (no candidate, lost race, unverifiable target) exits 1; a candidate the
gate rejects is a decision, not an error, and exits 0.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``models``, ``promote`` and ``rollback`` verbs."""
    models = subparsers.add_parser("models", help="list model versions, status and metrics")
    models.add_argument("--json", action="store_true", help="print a JSON list")
    models.set_defaults(handler=_models)

    promote = subparsers.add_parser("promote", help="gate a candidate and promote it if it passes")
    promote.add_argument("version", nargs="?", default=None,
                         help="version to gate (default: the newest unpromoted candidate)")
    promote.add_argument("--json", action="store_true", help="print the decision as JSON")
    promote.set_defaults(handler=_promote)

    rollback = subparsers.add_parser("rollback", help="point the champion back at an earlier one")
    rollback.add_argument("version", nargs="?", default=None,
                          help="version to return to (default: the champion before this one)")
    rollback.add_argument("--json", action="store_true", help="print the outcome as JSON")
    rollback.set_defaults(handler=_rollback)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _models(args: argparse.Namespace) -> int:
    from bookrec.registry import Registry
    from bookrec.settings import get_settings

    rows = Registry.from_settings(get_settings()).list_versions()
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return 0
    if not rows:
        print("no model versions in the store")
        return 0
    for r in rows:
        shown = {k: v for k, v in r.metrics.items() if isinstance(v, int | float)}
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(shown.items())[:6])
        mark = "*" if r.champion else " "
        note = f"  ({r.reason})" if r.reason and r.status == "rejected" else ""
        print(f"{mark} {r.version:<28} {r.status:<10} {metrics}{note}")
    return 0


def _run(flow: Any, version: str | None, key: str, as_json: bool) -> int:
    """Run a registry flow and print its outcome; a refusal exits 1."""
    from tasks.registry import PromotionRefused

    try:
        result = flow(version=version)
        code = 0
    except PromotionRefused as exc:
        result, code = exc.payload, 1
    out = {key: result.get(key), "decision": result["decision"], "reason": result["reason"],
           "champion": result["champion"]}
    if as_json:
        print(json.dumps(out))
    else:
        print(f"{out['decision']}: {out[key] or '-'} (champion: {out['champion'] or 'none'})")
        print(f"  {out['reason']}")
    return code


def _promote(args: argparse.Namespace) -> int:
    from flows.promote import promote_flow

    return _run(promote_flow, args.version, "candidate", args.json)


def _rollback(args: argparse.Namespace) -> int:
    from flows.rollback import rollback_flow

    return _run(rollback_flow, args.version, "target", args.json)
