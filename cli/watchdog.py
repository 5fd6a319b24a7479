"""``bookrec automations``: create or update the watchdog automations on the Prefect server.

The automations are declared in ``deployments/automations.yaml``: one fires when a nightly
run has not completed by its deadline (a proactive trigger), one when a nightly run fails
or crashes. Both call the Webhook block ``bookrec-alert`` (the URL in
``BOOKREC_ALERT_WEBHOOK``) when one is configured; firing also emits Prefect's
``prefect.automation.triggered`` event either way. ``bookrec up`` and the deploy workflow
run this; running it again updates the automations in place (matched by name).
"""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

DECLARATIONS = Path(__file__).resolve().parents[1] / "deployments" / "automations.yaml"
WEBHOOK_BLOCK = "bookrec-alert"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``automations`` verb."""
    parser = subparsers.add_parser(
        "automations", help="create or update the watchdog automations on the Prefect server"
    )
    parser.add_argument("--json", action="store_true", help="print what was applied as JSON")
    parser.set_defaults(handler=_automations, prefect=True,
                        preload=("prefect.automations",))


def declared_automations(path: Path = DECLARATIONS) -> list[dict[str, Any]]:
    """The automations as declared (name, description, trigger, payload)."""
    import yaml

    return yaml.safe_load(path.read_text())["automations"]


def _webhook_block_id(url: str | None):
    """Save the alert URL as the Webhook block ``bookrec-alert``; its id (None: no URL)."""
    if not url:
        return None
    from prefect.blocks.webhook import Webhook

    return Webhook(url=url, method="POST").save(WEBHOOK_BLOCK, overwrite=True)


def build_automations(settings, block_id=None, path: Path = DECLARATIONS) -> list:
    """The declared automations as Prefect objects, with the deadline and webhook filled in."""
    from prefect.automations import Automation, CallWebhook, DoNothing, EventTrigger

    built = []
    for spec in declared_automations(path):
        trigger = dict(spec["trigger"])
        if trigger.get("within") == "nightly_deadline":
            trigger["within"] = timedelta(seconds=settings.nightly_deadline_s)
        actions = (
            [CallWebhook(block_document_id=block_id, payload=spec["payload"])]
            if block_id
            else [DoNothing()]
        )
        built.append(Automation(
            name=spec["name"], description=spec.get("description", ""), enabled=True,
            trigger=EventTrigger(**trigger), actions=actions,
        ))
    return built


def apply_automations(settings, path: Path = DECLARATIONS) -> list[dict[str, Any]]:
    """Create each declared automation, or update the one of the same name in place."""
    from prefect.automations import Automation

    block_id = _webhook_block_id(settings.alert_webhook)
    applied = []
    for automation in build_automations(settings, block_id, path):
        try:
            existing = Automation.read(name=automation.name)
        except ValueError:
            automation.create()
            action = "created"
        else:
            automation.id = existing.id
            automation.update()
            action = "updated"
        applied.append({
            "name": automation.name, "id": str(automation.id), "action": action,
            "webhook": bool(block_id),
        })
    return applied


def _automations(args: argparse.Namespace) -> int:
    from bookrec.settings import get_settings

    applied = apply_automations(get_settings())
    if args.json:
        print(json.dumps(applied))
        return 0
    for item in applied:
        target = f"webhook block {WEBHOOK_BLOCK}" if item["webhook"] else (
            "event only (BOOKREC_ALERT_WEBHOOK not set)")
        print(f"{item['action']} automation {item['name']} -> {target}")
    return 0
