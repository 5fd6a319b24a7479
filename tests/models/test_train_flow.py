"""The train flow end to end under Prefect's test harness: PostgreSQL snapshot in,
a verified candidate in the artifact store (a local folder and moto's S3 server) out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from bookrec.models.persist import load_model
from bookrec.registry import Registry
from bookrec.settings import Settings, get_settings

from .conftest import clustered_frames, insert_frames

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "data" / "sample"
BASELINES = {"most_popular", "itemknn", "als", "ease_plain"}


@pytest.fixture(params=["local"])
def train_env(
    request: pytest.FixtureRequest,
    prefect_harness: None,
    database_url: str,
    clean_db: sa.engine.Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Settings]:
    """Entry-point style environment: the flow's tasks read these settings."""
    if request.param == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        monkeypatch.setenv("BOOKREC_ARTIFACTS_URI", f"s3://{bucket}/registry")
        monkeypatch.setenv("BOOKREC_S3_ENDPOINT_URL", request.getfixturevalue("moto_server"))
    else:
        monkeypatch.setenv("BOOKREC_ARTIFACTS_URI", str(tmp_path / "store"))
        monkeypatch.setenv("BOOKREC_S3_ENDPOINT_URL", "")
    monkeypatch.setenv("BOOKREC_DATABASE_URL", database_url)
    monkeypatch.setenv("BOOKREC_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def snapshot(train_env: Settings, clean_db: sa.engine.Engine):
    ratings, books = clustered_frames()
    insert_frames(clean_db, ratings, books)
    return ratings, books


def _artifacts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        run = client.read_flow_run(flow_run_id)
    return {a.key: a for a in found}, run


@pytest.mark.parametrize("train_env", ["local", "s3"], indirect=True)
def test_train_flow_adds_a_verified_candidate_and_publishes_metrics(
    snapshot, train_env: Settings, tmp_path: Path
):
    from flows.train import train_flow

    ratings, _ = snapshot
    state = train_flow(max_items=500, return_state=True)
    result = state.result()
    version = result["version"]

    registry = Registry.from_settings(train_env)
    rows = {r.version: r for r in registry.list_versions()}
    assert rows[version].status == "candidate"
    manifest = registry.manifest(version)
    metrics = manifest["metrics"]
    assert set(metrics["baselines"]) == BASELINES
    # Readers have one favourite topic: the model must beat most-popular clearly.
    assert metrics["ndcg@20"] > 1.5 * metrics["baselines"]["most_popular"]["ndcg@20"]
    assert manifest["data_fingerprint"]["ratings"] == len(ratings)
    assert manifest["params"]["evaluation"]["seed"] == 42
    segments = metrics["segments"]
    assert segments["readers"]["regular"]["users"] > 0
    assert 0.0 < segments["readers"]["regular"]["reachability"] <= 1.0
    assert set(segments["popularity"]) == {"low", "mid", "high"}
    assert set(metrics["baselines"]["ease_plain"]["segments"]) == {"readers", "popularity"}
    assert manifest["version"] == version

    folder = registry.fetch_version(version, tmp_path / "cache")
    model = load_model(folder)
    recs = model.recommend(int(ratings.user_id.iloc[0]), k=5)
    assert len(recs) == 5 and recs[0].source == "cf"
    assert recs[0].reason.startswith("because you rated ")

    artifacts, run = _artifacts(state.state_details.flow_run_id)
    assert set(artifacts) == {"training-metrics", "training-summary"}
    table = json.loads(artifacts["training-metrics"].data)
    assert [row["model"] for row in table] == [
        "served (hybrid)", "most_popular", "itemknn", "als", "ease_plain"
    ]
    served = table[0]
    assert served["ndcg@20"] == pytest.approx(metrics["ndcg@20"], abs=1e-5)
    assert version in artifacts["training-summary"].data
    assert "| served (hybrid) | readers regular |" in artifacts["training-summary"].data
    assert "| ease_plain | books low |" in artifacts["training-summary"].data
    assert run.name == "train-ease-l2=100.0-items=500-sample=1.0"
    # The scratch folder is gone; the version lives in the store only.
    assert not any((train_env.home_dir / "work").iterdir())


def test_train_flow_on_an_empty_database_fails_and_adds_nothing(
    train_env: Settings, clean_db: sa.engine.Engine
):
    from flows.train import train_flow

    state = train_flow(return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="ratings table is empty"):
        state.result()
    assert Registry.from_settings(train_env).list_versions() == []


def test_bad_hyperparameter_fails_before_training(train_env: Settings, snapshot):
    from flows.train import train_flow

    state = train_flow(extra_hyperparameters={"lambda": 3}, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="unknown hybrid parameter"):
        state.result()


def test_train_flow_on_the_bundled_sample(train_env: Settings, clean_db: sa.engine.Engine,
                                          tmp_path: Path):
    """The real (dirty) sample, ingested by the real ingest, trains a loadable candidate."""
    from bookrec import db
    from bookrec.ingest import run_ingest
    from flows.train import train_flow

    run_ingest(clean_db, train_env, str(SAMPLE_DIR / "original"), "original")
    ratings = db.read_ratings(clean_db)
    result = train_flow(max_items=2000, baselines=["most_popular", "ease_plain"])
    registry = Registry.from_settings(train_env)
    manifest = registry.manifest(result["version"])
    assert manifest["data_fingerprint"]["ratings"] == len(ratings)
    metrics = manifest["metrics"]
    assert metrics["users"] > 50 and 0 < metrics["ndcg@20"] <= 1
    assert set(metrics["baselines"]) == {"most_popular", "ease_plain"}
    model = load_model(registry.fetch_version(result["version"], tmp_path / "cache"))
    heavy = int(ratings.user_id.value_counts().index[0])
    recs = model.recommend(heavy, k=10)
    history = set(model.history(heavy))
    assert len(recs) == 10 and not history & {r.isbn for r in recs}
    assert any(r.source == "cf" for r in recs)
    # A sample book anybody rated has a title and answers similar() without its own ISBN.
    isbn = ratings.isbn.value_counts().index[0]
    assert isbn not in {r.isbn for r in model.similar(isbn, k=5)}


def test_champion_recipe_is_scored_on_the_candidates_holdout(snapshot, train_env: Settings):
    from flows.train import train_flow

    first = train_flow(max_items=500, l2=100.0, baselines=["most_popular"])
    assert "champion_same_holdout" not in first["metrics"]  # no champion yet
    registry = Registry.from_settings(train_env)
    registry.promote(first["version"], by="tests", reason="first")

    other = train_flow(max_items=500, l2=5.0, baselines=["most_popular"])
    scored = registry.manifest(other["version"])["metrics"]["champion_same_holdout"]
    assert scored["version"] == first["version"] and scored["same_recipe"] is False
    assert scored["ndcg@20"] != other["metrics"]["ndcg@20"]  # really refitted with l2=100
    # same data, same split, champion's params: the champion recipe's score is reproduced
    assert scored["ndcg@20"] == pytest.approx(first["metrics"]["ndcg@20"], abs=1e-9)

    same = train_flow(max_items=500, l2=100.0, baselines=["most_popular"])
    scored = same["metrics"]["champion_same_holdout"]
    assert scored["same_recipe"] is True
    assert scored["ndcg@20"] == same["metrics"]["ndcg@20"]


def test_a_parameter_missing_from_an_old_champion_means_off():
    from dataclasses import asdict

    from bookrec import training
    from bookrec.models.hybrid import HybridParams

    ratings, books = clustered_frames()
    config = training.TrainConfig(hyperparameters={"max_items": 500}, baselines=())
    current = {k: v for k, v in asdict(HybridParams(max_items=500)).items()}
    assert current["user_norm"] > 0  # today's default
    old = {k: v for k, v in current.items() if k != "user_norm"}

    result = training.train_model(ratings, books, config, champion={"version": "old", "params": old})
    scored = result.metrics["champion_same_holdout"]
    assert scored["same_recipe"] is False  # refitted with user_norm 0.0, not today's default
    result = training.train_model(ratings, books, config,
                                  champion={"version": "new", "params": current})
    assert result.metrics["champion_same_holdout"]["same_recipe"] is True
