"""``bookrec models|promote|approve|reject|rollback``: versions and the champion's history,
gate a candidate, answer an approval, roll back.

``promote`` and ``rollback`` run the Prefect flows of the same names in this process.
A refused action (no candidate, lost race, unverifiable target) exits 1; a candidate the
gate rejects, or leaves to a human (``awaiting_approval``), is a decision and exits 0.
``approve`` and ``reject`` resume the waiting ``approval`` flow run with the answer
(what the UI's form does) and wait for its outcome.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``models``, ``promote`` and ``rollback`` verbs."""
    models = subparsers.add_parser("models", help="list model versions, status and metrics")
    models.add_argument("--json", action="store_true", help="print a JSON list")
    models.add_argument("--history", action="store_true",
                        help="list the champion's intervals: version, from, to, decision, reason")
    models.set_defaults(handler=_models)

    promote = subparsers.add_parser("promote", help="gate a candidate and promote it if it passes")
    promote.add_argument("version", nargs="?", default=None,
                         help="version to gate (default: the newest unpromoted candidate)")
    promote.add_argument("--require-approval", action="store_true",
                         help="ask a human even if the gate would promote on its own")
    promote.add_argument("--rollout", nargs="?", const="on", default=None, metavar="SPEC",
                         help="if the gate passes, roll out to live readers instead of "
                              "promoting (SPEC e.g. interleave=0.5,bake_minutes=20; "
                              "'off' overrides BOOKREC_ROLLOUT_DEFAULT)")
    promote.add_argument("--json", action="store_true", help="print the decision as JSON")
    promote.set_defaults(handler=_promote, prefect=True, heartbeats=False,
                        preload=("flows.promote",))

    for verb, what in (("approve", "promote"), ("reject", "reject")):
        answer = subparsers.add_parser(
            verb, help=f"answer an approval: {what} a candidate that awaits approval")
        answer.add_argument("version", help="the candidate awaiting approval")
        answer.add_argument("--reason", required=verb == "reject", default="",
                            help="why" + (" (required)" if verb == "reject" else ""))
        answer.add_argument("--wait", type=float, default=300.0, metavar="SECONDS",
                            help="how long to wait for the approval run's outcome (default 300)")
        answer.add_argument("--json", action="store_true", help="print the outcome as JSON")
        answer.set_defaults(handler=_answer, answer=verb, prefect=True,
                            preload=("prefect.flow_runs",))

    rollback = subparsers.add_parser("rollback", help="point the champion back at an earlier one")
    rollback.add_argument("version", nargs="?", default=None,
                          help="version to return to (default: the champion before this one)")
    rollback.add_argument("--to", metavar="TIME", default=None,
                          help="restore the champion that served at TIME (ISO 8601; UTC "
                               "unless it names a zone)")
    rollback.add_argument("--json", action="store_true", help="print the outcome as JSON")
    rollback.set_defaults(handler=_rollback, prefect=True, heartbeats=False,
                        preload=("flows.rollback",))


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _models(args: argparse.Namespace) -> int:
    from bookrec.registry import Registry
    from bookrec.settings import get_settings

    if args.history:
        return _history(args.json)
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


def _run(flow: Any, version: str | None, key: str, as_json: bool, **params: Any) -> int:
    """Run a registry flow and print its outcome with the reload's; a refusal, or a moved
    champion that serving did not reload, is one error line and exit 1."""
    from cli.main import CommandError
    from tasks.registry import PromotionRefused

    try:
        result = flow(version=version, **params)
    except PromotionRefused as exc:
        payload = {k: exc.payload.get(k) for k in (key, "decision", "reason", "champion")}
        raise CommandError(f"{exc.payload['decision']}: {exc.payload['reason']}",
                           payload=payload) from None
    reload = _reload_outcome(result.get("reload"))
    out = {key: result.get(key), "decision": result["decision"], "reason": result["reason"],
           "champion": result["champion"], "reload": reload}
    if result.get("approval"):
        out["approval"] = {k: result["approval"].get(k)
                           for k in ("flow_run_id", "url", "deadline")}
    if result.get("rollout"):
        out["rollout"] = {k: result["rollout"].get(k) for k in ("flow_run_id", "url", "spec")}
    failed = reload["status"] == "failed"
    if failed:
        out["error"] = f"champion is {out['champion']}, but serving did not reload: " + (
            reload["error"])
    if as_json:
        print(json.dumps(out))
    else:
        print(f"{out['decision']}: {out[key] or '-'} (champion: {out['champion'] or 'none'})")
        print(f"  {out['reason']}")
        if out.get("approval"):
            a = out["approval"]
            print(f"  answer by {a['deadline']} in {a['url'] or a['flow_run_id']} or with "
                  f"`bookrec approve {out[key]}` / `bookrec reject {out[key]} --reason ...`")
        if out.get("rollout"):
            print(f"  rolling out in flow run {out['rollout']['url'] or out['rollout']['flow_run_id']}"
                  "; follow it with `bookrec rollout --status`")
        if not failed:
            print(f"  reload: {reload['summary']}")
    if failed:
        import sys

        print(f"bookrec: error: {out['error']}", file=sys.stderr)
        return 1
    return 0


def _reload_outcome(reload: dict[str, Any] | None) -> dict[str, Any]:
    """What the reload flow did: skipped (champion unchanged), ok with each instance's
    answer, or failed with its error."""
    if reload is None:
        return {"status": "skipped", "summary": "not needed (champion unchanged)"}
    if reload.get("status") != "ok":
        return {"status": "failed", "error": " ".join(str(reload.get("error")).split())}
    instances = (reload.get("result") or {}).get("instances") or {}
    answers = {url: a.get("status") for url, a in instances.items()}
    summary = ", ".join(f"{url} {status}" for url, status in answers.items())
    return {"status": "ok", "instances": answers,
            "summary": summary or "no serving instance configured"}


def _promote(args: argparse.Namespace) -> int:
    from flows.promote import promote_flow

    return _run(promote_flow, args.version, "candidate", args.json,
                require_approval=args.require_approval, rollout=args.rollout)


def _rollback(args: argparse.Namespace) -> int:
    from flows.rollback import rollback_flow

    version = args.version
    if args.to is not None:
        if version is not None:
            raise _error("give a VERSION or --to TIME, not both")
        version = _champion_at(args.to)
    return _run(rollback_flow, version, "target", args.json)


def _error(message: str) -> Exception:
    from cli.main import CommandError

    return CommandError(message)


def _engine() -> Any:
    from bookrec.db import get_engine
    from bookrec.settings import get_settings

    return get_engine(get_settings())


def _champion_at(text: str) -> str:
    """The version that was the champion at ``text`` (ISO 8601, UTC unless zoned)."""
    from datetime import UTC, datetime

    from bookrec import audit

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise _error(f"--to {text!r} is not an ISO 8601 time (e.g. 2026-11-29T14:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    interval = audit.champion_at(_engine(), when)
    if interval is None:
        raise _error(f"no champion served at {when.isoformat()}: it is before the first promotion")
    return interval.version


def _history(as_json: bool) -> int:
    from bookrec import audit

    rows = audit.champion_history(_engine())
    if as_json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return 0
    if not rows:
        print("no champion yet")
        return 0
    for r in rows:
        end = f"{r.end:%Y-%m-%d %H:%M:%S}" if r.end else "now"
        run = f" run {r.flow_run_id}" if r.flow_run_id else ""
        print(f"{r.version:<28} {r.start:%Y-%m-%d %H:%M:%S} -> {end:<19}  {r.decision} by "
              f"{r.decided_by}{run}")
        print(f"  {r.reason}")
    return 0


def _answer(args: argparse.Namespace) -> int:
    """Resume the candidate's waiting approval run with the answer; print its outcome."""
    import getpass
    import socket
    import time
    from uuid import UUID

    from prefect import get_client
    from prefect.exceptions import FlowPauseTimeout, NotPausedError
    from prefect.flow_runs import resume_flow_run

    from bookrec import audit
    from bookrec.registry import Registry, RegistryError
    from bookrec.settings import get_settings
    from tasks.approval import expire_overdue

    registry = Registry.from_settings(get_settings())
    expire_overdue()
    try:
        status = registry.status(args.version)
    except RegistryError as exc:
        raise _error(str(exc)) from None
    if not status or status.get("status") != "awaiting_approval":
        shown = (status or {}).get("status") or "no decision pending"
        raise _error(f"{args.version} is not awaiting approval ({shown})")
    run_id = UUID(status["flow_run_id"])
    approver = f"{getpass.getuser()}@{socket.gethostname()}"
    answer = {"decision": args.answer, "reason": args.reason, "approver": approver}
    try:
        resume_flow_run(run_id, run_input=answer)
    except NotPausedError:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run_id).state
        raise _error(f"approval run {run_id} is not waiting for an answer (state: "
                     f"{state.name if state else 'none'}); it may not have started yet") from None
    except FlowPauseTimeout:
        expire_overdue(grace_s=0)
        raise _error(f"{args.version}: no answer came by {status['deadline']}, so it was "
                     "rejected") from None
    deadline = time.monotonic() + args.wait
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(run_id).state
            if (state and state.is_final()) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    decided = audit.decisions_for(_engine(), args.version)
    last = decided[-1] if decided else None
    if not (state and state.is_final()) or last is None or last.decision == "awaiting_approval":
        raise _error(f"answer delivered, but approval run {run_id} has not finished in "
                     f"{args.wait:g} s (state: {state.name if state else 'none'})")
    out = {"candidate": args.version, "decision": last.decision, "reason": last.reason,
           "champion": registry.champion_state().version, "decided_by": last.decided_by,
           "flow_run_id": str(run_id)}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['decision']}: {args.version} (champion: {out['champion'] or 'none'})")
        print(f"  {out['reason']}")
    return 0 if last.decision != "refused" else 1
