"""The train flow: PostgreSQL snapshot -> fitted, evaluated hybrid -> new candidate version.

Publishes the model-vs-baselines table and a summary as Prefect artifacts. Every
hyperparameter an engineer may want to change is a typed flow parameter.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from bookrec.models.hybrid import HybridParams
from bookrec.training import BASELINES
from tasks.train import (
    fit_and_evaluate,
    make_version_id,
    new_workdir,
    publish_candidate,
    publish_training_artifacts,
    read_champion_recipe,
    remove_workdir,
    snapshot_ratings,
)

Baseline = Literal["most_popular", "itemknn", "als", "ease_plain"]


def _run_name() -> str:
    """e.g. ``train-ease-l2=100-items=10000-sample=1.0``."""
    p = flow_run.get_parameters() or {}
    return (
        f"train-{p.get('algorithm', 'ease')}-l2={p.get('l2')}-items={p.get('max_items')}"
        f"-sample={p.get('sample_fraction')}"
    )


@flow(name="train", flow_run_name=_run_name)
def train_flow(
    algorithm: Literal["ease", "rp3beta"] = "ease",
    # defaults: the served model's (HybridParams), written once there
    l2: float = HybridParams.l2,
    dropout: float = HybridParams.dropout,
    max_items: int = HybridParams.max_items,
    keep: int = HybridParams.keep,
    explicit_weight: float = HybridParams.explicit_weight,
    content_slots: int = HybridParams.content_slots,
    require_metadata: bool = HybridParams.require_metadata,
    extra_hyperparameters: dict[str, Any] | None = None,
    sample_fraction: float = 1.0,
    seed: int = 42,
    evaluate: bool = True,
    baselines: list[Baseline] | None = None,
) -> dict[str, Any]:
    """Train a candidate and add it to the registry; returns its version and metrics.

    ``extra_hyperparameters`` sets any other ``HybridParams`` field by name.
    ``baselines`` defaults to all four (most_popular, itemknn, als, ease_plain).
    """
    logger = get_run_logger()
    config = {
        "algorithm": algorithm,
        "hyperparameters": {
            "l2": l2, "dropout": dropout, "max_items": max_items, "keep": keep,
            "explicit_weight": explicit_weight, "content_slots": content_slots,
            "require_metadata": require_metadata,
            **(extra_hyperparameters or {}),
        },
        "sample_fraction": sample_fraction,
        "seed": seed,
        "evaluate": evaluate,
        "baselines": list(baselines if baselines is not None else BASELINES),
    }
    version = make_version_id()
    workdir = new_workdir()
    try:
        snapshot = snapshot_ratings(workdir)
        logger.info("Snapshot: %(ratings)s ratings, %(books)s books", snapshot)
        champion = read_champion_recipe() if evaluate else None
        trained = fit_and_evaluate(snapshot["path"], config, version, champion)
        publish_candidate(trained["path"], version)
        publish_training_artifacts(
            version, trained["metrics"], trained["timings"], trained["data_fingerprint"]
        )
    finally:
        remove_workdir(workdir)
    logger.info("Candidate %s added", version)
    return {
        "version": version,
        "metrics": trained["metrics"],
        "timings": trained["timings"],
        "data_fingerprint": trained["data_fingerprint"],
        "config": config,
    }
