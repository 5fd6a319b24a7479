"""``bookrec rollout``: judge a candidate by live readers (issue 17).

    bookrec rollout VERSION [--interleave P] [--canary P] [--bake-minutes M] [--wait] [--json]
    bookrec rollout --status [--json]
    bookrec rollout --stop ID --reason T [--json]

``VERSION`` starts a ``rollout`` flow run on the Prefect server the flow commands share
(its ``rollout/local`` deployment when registered, so the worker runs it; otherwise a
detached process) and prints its address; ``--wait`` waits for the decision. ``--status``
shows the running rollout with its figures now and what the rule would say now (default
thresholds). ``--stop`` ends a running rollout at once: the champion stays, serving is
signalled, and the decision is recorded (the flow notices at its next check and stops).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from cli.main import CommandError

_FINAL = ("promoted", "rollout_rolled_back", "refused")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``rollout`` verb."""
    parser = subparsers.add_parser(
        "rollout", help="roll a candidate out to live readers, show or stop the running one")
    parser.add_argument("version", nargs="?", default=None, help="the candidate to roll out")
    parser.add_argument("--interleave", type=float, default=0.5, metavar="P",
                        help="share of readers who see the interleaved list (default 0.5)")
    parser.add_argument("--canary", type=float, default=0.0, metavar="P",
                        help="share of readers who see the candidate alone (default 0)")
    parser.add_argument("--bake-minutes", type=float, default=30.0, metavar="M",
                        help="minutes before the first decision (default 30)")
    parser.add_argument("--check-every", type=float, default=60.0, metavar="S",
                        help="seconds between breach checks (default 60)")
    parser.add_argument("--max-extensions", type=int, default=2, metavar="N",
                        help="extensions of the bake before rolling back undecided (default 2)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="any other rollout flow parameter (e.g. min_readers=100), repeatable")
    parser.add_argument("--wait", action="store_true", help="wait for the decision")
    parser.add_argument("--timeout", type=float, default=7200.0,
                        help="seconds --wait waits at most (default 7200)")
    parser.add_argument("--status", action="store_true", help="show the running rollout")
    parser.add_argument("--stop", metavar="ID", default=None, help="end rollout ID now")
    parser.add_argument("--reason", default="", help="why (required with --stop)")
    parser.add_argument("--verbose", action="store_true",
                        help="show Prefect's log lines here instead of <home>/logs")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=_rollout)


def _rollout(args: argparse.Namespace) -> int:
    if args.status:
        if args.version or args.stop:
            raise CommandError("--status takes no VERSION or --stop", exit_code=2)
        return _status(args)
    if args.stop:
        if args.version:
            raise CommandError("--stop takes no VERSION", exit_code=2)
        if not args.reason.strip():
            raise CommandError("--stop needs --reason", exit_code=2)
        return _stop(args)
    if not args.version:
        raise CommandError("give a VERSION to roll out, --status or --stop ID", exit_code=2)
    return _start(args)


def _settings():
    from bookrec.settings import get_settings

    return get_settings()


def status_payload() -> dict[str, Any]:
    """The running rollout, its figures now (no per-reader arrays) and the rule's verdict
    now with the default thresholds at the first look; ``{"rollout": None}`` if none."""
    from datetime import UTC, datetime

    from bookrec import rollout as online_rollout
    from bookrec import rollout_rule
    from bookrec.db import get_engine
    from bookrec.registry import Registry

    settings = _settings()
    current = Registry.from_settings(settings).current_rollout()
    if current is None:
        return {"rollout": None}
    figures = online_rollout.figures(get_engine(settings), current)
    verdict = rollout_rule.judge(figures, rollout_rule.RuleConfig(), look=1,
                                 interleave=current["interleave"], canary=current["canary"])
    inter = (figures.get("readers") or {}).get("interleave") or {}
    started = datetime.fromisoformat(current["started_at"])
    return {
        "rollout": current,
        "elapsed_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "variants": figures.get("variants"),
        "interleave_credits": {"champion": sum(inter.get("champion") or []),
                               "candidate": sum(inter.get("candidate") or [])},
        "rule_now": verdict.to_json(),
    }


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.2%}"


def _status(args: argparse.Namespace) -> int:
    out = status_payload()
    if args.json:
        print(json.dumps(out))
        return 0
    r = out["rollout"]
    if r is None:
        print("no rollout is running")
        return 0
    print(f"rollout {r['id']}: {r['candidate']} vs champion {r['champion']} "
          f"(interleave {r['interleave']:.0%}, canary {r['canary']:.0%}), "
          f"{out['elapsed_s'] / 60:.1f} min, started by {r['started_by']}")
    print(f"  {'variant':<22}{'requests':>9}{'errors':>8}{'p95 ms':>8}{'lists':>8}"
          f"{'readers':>8}{'hits':>6}{'hit rate':>9}")
    for name, v in (out["variants"] or {}).items():
        p95 = v.get("p95_ms")
        print(f"  {name:<22}{v.get('requests', '-')!s:>9}{_pct(v.get('error_rate')):>8}"
              f"{'-' if p95 is None else f'{p95:.0f}':>8}{v.get('impressions', 0):>8}"
              f"{v.get('readers', 0):>8}{v.get('hits', 0):>6}{v.get('hit_rate', 0):>9.4f}")
    print(f"  rule now (default thresholds): {out['rule_now']['decision']}: "
          f"{out['rule_now']['reason']}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    import getpass
    import socket

    from bookrec import audit
    from bookrec import rollout as online_rollout
    from bookrec.db import get_engine
    from bookrec.registry import Registry

    settings = _settings()
    registry = Registry.from_settings(settings)
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    reason = f"stopped by {who}: {args.reason.strip()}"
    record = registry.rollout(args.stop)  # an invalid id: RegistryError, one line
    if record is None:
        raise CommandError(f"no rollout {args.stop}")
    if record.get("ended_at"):
        raise CommandError(f"rollout {args.stop} ended already ({record.get('decision')}: "
                           f"{record.get('reason')})")
    ended = registry.end_rollout(args.stop, "stopped", reason)
    engine = get_engine(settings)
    figures = online_rollout.figures(engine, ended)
    from tasks.rollout import summary

    audit.record_decision(
        engine, candidate=ended["candidate"], decision="rollout_rolled_back", reason=reason,
        actor=who, champion_before=ended["champion"], champion_after=ended["champion"],
        decided_by=who, flow_run_id=ended.get("flow_run_id"),
        online_figures={"rollout": ended, "checks": [summary(figures)], "verdict": None},
    )
    signal = _signal_serving(settings, ended["champion"])
    out = {"rollout_id": ended["id"], "candidate": ended["candidate"], "decision": "stopped",
           "reason": reason, "champion": ended["champion"], "reload": signal}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"stopped rollout {ended['id']} of {ended['candidate']} (champion: "
              f"{ended['champion']})\n  {reason}")
    return 0


def _signal_serving(settings, version: str | None) -> dict[str, Any]:
    """Tell serving the rollout ended: the Redis signal and ``POST /admin/reload`` on each
    instance (unreachable ones poll the registry)."""
    from tasks.reload import call_instance, publish_signal, serving_urls

    out: dict[str, Any] = {"signal": publish_signal(settings, version), "instances": {}}
    for url in serving_urls(settings):
        try:
            out["instances"][url] = call_instance(settings, url, version).get("status")
        except Exception as exc:  # noqa: BLE001 - reported; instances also poll
            out["instances"][url] = f"unreachable: {type(exc).__name__}"
    return out


def _start(args: argparse.Namespace) -> int:
    from bookrec import audit, rollout_rule
    from bookrec.db import get_engine
    from cli.main import _find_local_system
    from cli.run import parse_params

    try:
        rollout_rule.check_shares(args.interleave, args.canary)
    except rollout_rule.RuleConfigError as exc:
        raise CommandError(str(exc), exit_code=2) from None
    params = {"version": args.version, "interleave": args.interleave, "canary": args.canary,
              "bake_minutes": args.bake_minutes, "check_every_s": args.check_every,
              "max_extensions": args.max_extensions, **parse_params(args.param)}
    args.preload = ("flows.rollout",)
    _find_local_system(args)
    from prefect import get_client

    from tasks.rollout import launch_run

    started = launch_run(params)
    out: dict[str, Any] = {"candidate": args.version, **started, "parameters": params}
    if not args.wait:
        if args.json:
            print(json.dumps(out))
        else:
            print(f"rollout of {args.version} started: flow run {started['flow_run_id']} "
                  f"({started['via']})\n  {started['url'] or ''}\n  follow it with "
                  "`bookrec rollout --status`")
        return 0
    from uuid import UUID

    run_id = UUID(started["flow_run_id"])
    deadline = time.monotonic() + args.timeout
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(run_id).state
            if (state and state.is_final()) or time.monotonic() > deadline:
                break
            time.sleep(2.0)
    rows = [d for d in audit.decisions_for(get_engine(_settings()), args.version)
            if d.flow_run_id == str(run_id) and d.decision in _FINAL]
    out["state"] = state.name if state else None
    if not rows:
        raise CommandError(
            f"rollout run {run_id} ended {out['state']} without a decision"
            if state and state.is_final() else
            f"rollout run {run_id} has not decided in {args.timeout:g} s ({out['state']})",
            payload={k: out[k] for k in ("candidate", "flow_run_id", "url")})
    last = rows[-1]
    online = last.online_figures or {}
    out.update({"decision": last.decision, "reason": last.reason,
                "champion": last.champion_after,
                "rollout_id": (online.get("rollout") or {}).get("id")})
    if args.json:
        print(json.dumps(out, default=str))
    else:
        print(f"{last.decision}: {args.version} (champion: {last.champion_after})\n"
              f"  {last.reason}")
    return 1 if last.decision == "refused" else 0

