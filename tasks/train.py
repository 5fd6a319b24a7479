"""Prefect tasks for training: thin wrappers over ``bookrec.training`` and the registry.

Reading the snapshot and uploading the candidate are I/O and retry transient failures
(``tasks.retries``); fitting is computation and never retries (it would fail the same way
again). Tasks pass small things on: folder paths, version ids, metric dicts.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from bookrec import db, reports, training
from bookrec.registry import Registry, new_version_id
from bookrec.settings import get_settings
from bookrec.store import StoreError
from tasks.retries import IO_RETRIES


@task(name="new-training-workdir")
def new_workdir() -> str:
    """A fresh scratch folder under ``<home>/work`` for this run's snapshot and model."""
    folder = get_settings().home_dir / "work" / f"train-{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True)
    return str(folder)


@task(name="snapshot-ratings", **IO_RETRIES)
def snapshot_ratings(workdir: str) -> dict[str, Any]:
    """Read ratings and books from PostgreSQL into ``<workdir>/snapshot``; return counts."""
    engine = db.get_engine(get_settings())
    ratings, books = db.read_ratings(engine), db.read_books(engine)
    if ratings.empty:
        raise ValueError("the ratings table is empty: run `bookrec ingest` before training")
    path = training.write_snapshot(ratings, books, Path(workdir) / "snapshot")
    return {"path": str(path), "ratings": len(ratings), "books": len(books)}


@task(name="read-champion-recipe", **IO_RETRIES)
def read_champion_recipe() -> dict[str, Any] | None:
    """The current champion's version and parameters (None without a readable champion)."""
    registry = Registry.from_settings(get_settings())
    pointer = registry.champion_state().pointer
    if not pointer:
        return None
    try:
        manifest = registry.manifest(pointer["version"])
    except StoreError:
        raise  # a network or store hiccup: retried (a missing manifest is a RegistryError)
    except Exception as exc:  # noqa: BLE001 - an unreadable champion: the gate says so later
        get_run_logger().warning("champion %s unreadable (%s)", pointer.get("version"), exc)
        return None
    return training.champion_recipe(manifest)


@task(name="fit-and-evaluate")
def fit_and_evaluate(
    snapshot_dir: str, config: dict[str, Any], version: str,
    champion: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit the hybrid and baselines, evaluate (with the champion's recipe on the same
    holdout when there is a champion), refit, and save the version folder."""
    logger = get_run_logger()
    ratings, books = training.read_snapshot(Path(snapshot_dir))
    cfg = training.TrainConfig(**{**config, "baselines": tuple(config.get("baselines", ()))})
    result = training.train_model(ratings, books, cfg, report=logger.info, champion=champion)
    folder = Path(snapshot_dir).parent / "model" / version
    manifest = training.save_candidate(result, folder, version)
    return {
        "path": str(folder),
        "metrics": result.metrics,
        "timings": result.timings,
        "data_fingerprint": result.data_fingerprint,
        "files": len(manifest["files"]),
    }


@task(name="publish-candidate", **IO_RETRIES)
def publish_candidate(model_dir: str, version: str) -> dict[str, Any]:
    """Upload the version folder to the artifact store (data files first, manifest last)."""
    manifest = Registry.from_settings(get_settings()).add_version(Path(model_dir), version)
    return {"version": version, "files": len(manifest["files"])}


@task(name="publish-training-artifacts")
def publish_training_artifacts(
    version: str, metrics: dict[str, Any], timings: dict[str, float], data_fingerprint: dict
) -> None:
    """A table of the model vs baselines and a markdown summary on the flow run."""
    rows = reports.training_rows(metrics)
    if rows:
        create_table_artifact(
            key="training-metrics", table=rows,
            description=f"Model {version} vs baselines on one seeded holdout",
        )
    create_markdown_artifact(
        key="training-summary",
        markdown=reports.training_markdown(version, metrics, timings, data_fingerprint),
        description=f"Training run for {version}",
    )


@task(name="remove-training-workdir")
def remove_workdir(workdir: str) -> None:
    """Delete the scratch folder (the version now lives in the artifact store)."""
    shutil.rmtree(workdir, ignore_errors=True)


@task(name="new-version-id")
def make_version_id() -> str:
    """A sortable UTC-timestamp version id."""
    return new_version_id()
