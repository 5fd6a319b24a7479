"""Training in the domain: a rating/book snapshot in, a fitted hybrid and its metrics out.

The same seeded split scores the served model and the baselines (most-popular,
implicit's cosine item-kNN and ALS, a plain EASE over the 10,000 most-read books), so
the table in the manifest, the Prefect artifacts and the benchmark compare like with
like. After evaluation the served model is refitted on the whole snapshot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bookrec import columns as C
from bookrec.evaluation import (
    PRIMARY,
    Split,
    evaluate,
    holdout_split,
    model_recommend_fn,
    scorable_items,
)
from bookrec.models.cf import EASERecommender, ImplicitALS, ImplicitItemKNN, prune_rows
from bookrec.models.dataset import Dataset, build_dataset, fingerprint, interactions
from bookrec.models.fit import component_keys, fit_cf, fit_hybrid, fit_knn
from bookrec.models.hybrid import HybridParams, HybridRecommender
from bookrec.models.persist import save_model
from bookrec.models.popularity import PopularityRecommender

log = logging.getLogger(__name__)

BASELINES = ("most_popular", "itemknn", "als", "ease_plain")
# What a hybrid parameter missing from an older manifest meant (the feature did not exist).
ABSENT_MEANS: dict[str, Any] = {"user_norm": 0.0, "author_weight": 0.0, "publisher_weight": 0.0,
                                "popularity_exponent": 0.0, "knn_items": 0}


@dataclass
class TrainConfig:
    """What to train and how to evaluate it (all JSON-serialisable)."""

    algorithm: str = "ease"  # CF inside the hybrid: "ease" or "rp3beta"
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # HybridParams overrides
    sample_fraction: float = 1.0  # share of users kept (seeded), for quick runs
    seed: int = 42
    min_interactions: int = 10
    test_fraction: float = 0.2
    cold_test_users: int = 2000  # readers with 2-5 interactions, one held out (cold segment)
    baselines: tuple[str, ...] = BASELINES
    evaluate: bool = True

    def hybrid_params(self) -> HybridParams:
        """The served model's parameters (unknown names are refused)."""
        return HybridParams.from_dict({"cf_algorithm": self.algorithm, **self.hyperparameters})

    def validate(self) -> TrainConfig:
        """Refuse values that cannot train, naming the field."""
        if not 0.0 < self.sample_fraction <= 1.0:
            raise ValueError(f"sample_fraction must be in (0, 1], got {self.sample_fraction}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.cold_test_users < 0:
            raise ValueError(f"cold_test_users must be >= 0, got {self.cold_test_users}")
        if self.min_interactions < 2:
            raise ValueError(f"min_interactions must be at least 2, got {self.min_interactions}")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ValueError(f"unknown baseline(s) {unknown}; known: {list(BASELINES)}")
        if self.algorithm not in ("ease", "rp3beta"):
            raise ValueError(f"algorithm must be 'ease' or 'rp3beta', got {self.algorithm!r}")
        self.hybrid_params()
        return self

    def evaluation_params(self) -> dict[str, Any]:
        """The split definition (two runs are comparable when these and the data match)."""
        return {
            "seed": self.seed,
            "min_interactions": self.min_interactions,
            "test_fraction": self.test_fraction,
            "sample_fraction": self.sample_fraction,
            "cold_test_users": self.cold_test_users,
        }


@dataclass
class TrainResult:
    """The refitted served model plus everything the manifest and reports need."""

    model: HybridRecommender
    metrics: dict[str, Any]
    data_fingerprint: dict[str, Any]
    timings: dict[str, float]
    config: TrainConfig
    cpu_timings: dict[str, float] = field(default_factory=dict)  # process CPU s per stage


class _Timer:
    """Collects wall seconds per named stage."""

    def __init__(self, report: Callable[[str], None] | None = None):
        self.timings: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.report = report or log.info

    def stage(self, name: str):
        """Context manager timing one stage."""
        timer = self

        class _Stage:
            def __enter__(self):
                self.started = time.perf_counter()
                self.cpu = time.process_time()

            def __exit__(self, *exc):
                seconds = time.perf_counter() - self.started
                cpu = time.process_time() - self.cpu
                timer.timings[name] = round(timer.timings.get(name, 0.0) + seconds, 3)
                timer.cpu[name] = round(timer.cpu.get(name, 0.0) + cpu, 3)
                timer.report(f"{name}: {seconds:.1f}s")

        return _Stage()


def sample_users(ratings: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """All ratings of a seeded ``fraction`` of the users (1.0 returns ``ratings``)."""
    if fraction >= 1.0:
        return ratings
    users = np.sort(ratings[C.USER_ID].unique())
    rng = np.random.default_rng(seed)
    keep = rng.choice(users, size=max(1, int(round(len(users) * fraction))), replace=False)
    return ratings[ratings[C.USER_ID].isin(keep)].reset_index(drop=True)


def fit_baseline(name: str, train_weights) -> Any:
    """Fit one of the published baselines on binary training interactions."""
    if name == "most_popular":
        return PopularityRecommender(rating_weight=0.0).fit(train_weights)
    if name == "itemknn":
        return ImplicitItemKNN(k=50).fit(train_weights)
    if name == "als":
        return ImplicitALS(factors=64, iterations=15).fit(train_weights)
    if name == "ease_plain":
        return EASERecommender(l2=100.0, max_items=10_000).fit(train_weights)
    raise ValueError(f"unknown baseline {name!r}")


def _plain_ease_equivalent(params: HybridParams) -> bool:
    """True when the hybrid's CF, before pruning, is exactly the plain-EASE baseline."""
    return (params.cf_algorithm == "ease" and params.l2 == 100.0 and params.dropout == 0.0
            and params.user_norm == 0.0 and params.max_items == 10_000
            and params.explicit_weight == 0.0 and params.author_weight == 0.0
            and params.publisher_weight == 0.0 and params.popularity_exponent == 0.0)


def champion_recipe(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{"version", "params"}`` of a champion manifest, for ``train_model(champion=...)``."""
    if not manifest:
        return None
    params = {k: v for k, v in (manifest.get("params") or {}).items() if k != "evaluation"}
    return {"version": str(manifest.get("version", "")), "params": params}


def evaluate_champion_recipe(
    champion: dict[str, Any], train_ds: Dataset, split: Split, params: HybridParams,
    candidate: dict[str, Any], timer: _Timer,
) -> dict[str, Any]:
    """The champion's recipe refitted on the candidate's training split, scored on its
    holdout: the gate's same-holdout comparison. (The champion's artifact saw part of
    this holdout when it was trained, so scoring the artifact itself would leak.) The
    same recipe gives the candidate's own metrics; a recipe this code cannot build is
    reported with the reason, and the gate falls back to the recorded metrics."""
    out: dict[str, Any] = {"version": champion.get("version")}
    # A parameter the champion's manifest lacks did not exist when it was trained: read it
    # as "off", not as today's default. ``from_dict`` refuses names this code does not know.
    try:
        champ_params = HybridParams.from_dict({**ABSENT_MEANS, **(champion.get("params") or {})})
    except (TypeError, ValueError) as exc:
        out["error"] = f"cannot rebuild the champion's recipe: {exc}"
        return out
    if champ_params == params:
        out["same_recipe"] = True
        out.update({k: v for k, v in candidate.items()
                    if isinstance(v, int | float) or k == "segments"})
        return out
    with timer.stage("fit champion recipe (evaluation split)"):
        model = fit_hybrid(train_ds, champ_params)
    with timer.stage("evaluate champion recipe"):
        out.update(_evaluate_model(model, split))
    out["same_recipe"] = False
    return out


def _evaluate_model(model, split: Split, binary=None, per_user: bool = False) -> dict[str, Any]:
    """Headline metrics plus segments of the hybrid (``binary`` None) or a baseline."""
    fn = model.recommend_indices if binary is None else model_recommend_fn(model, binary)
    return evaluate(fn, split, scorable=scorable_items(model, split.train.shape[1]),
                    segments=True, per_user=per_user)


def evaluate_models(
    dataset: Dataset, split: Split, config: TrainConfig, timer: _Timer,
    champion: dict[str, Any] | None = None, *, per_user: bool = False,
    components: dict | None = None,
) -> dict[str, Any]:
    """Metrics of the served model and every baseline, all on ``split``; with ``champion``
    (``champion_recipe``), also the champion's recipe on the same split. ``per_user``
    keeps per-user arrays (``evaluate``) for the benchmark's intervals. ``components``
    (the benchmark's): a dict that receives the served model's fitted CF and kNN under
    ``fit.component_keys``, for other recipes on the same split to reuse."""
    params = config.hybrid_params()
    train_ds = dataset.with_matrix(split.train)
    binary = interactions(split.train)
    baselines: dict[str, dict[str, float]] = {}
    shared_cf = None
    if "ease_plain" in config.baselines and _plain_ease_equivalent(params):
        with timer.stage("fit ease_plain (shared with the model)"):
            dense = fit_baseline("ease_plain", binary)
        with timer.stage("evaluate ease_plain"):
            baselines["ease_plain"] = _evaluate_model(dense, split, binary, per_user)
        shared_cf = dense
        if params.keep and params.keep < len(dense.items_):
            shared_cf = EASERecommender(l2=dense.l2, max_items=dense.max_items, keep=params.keep)
            shared_cf.n_items, shared_cf.items_ = dense.n_items, dense.items_
            shared_cf.weights_ = prune_rows(np.asarray(dense.weights_), params.keep)
        del dense
    with timer.stage("fit model (evaluation split)"):
        if components is not None:
            cf_key, knn_key = component_keys(params)
            if shared_cf is None:
                shared_cf = fit_cf(train_ds, params)
            components[("cf", cf_key)] = shared_cf
            components[("knn", knn_key)] = fit_knn(train_ds, params)
            model = fit_hybrid(train_ds, params, cf_model=shared_cf,
                               knn_model=components[("knn", knn_key)])
        else:
            model = fit_hybrid(train_ds, params, cf_model=shared_cf)
    with timer.stage("evaluate model"):
        metrics: dict[str, Any] = _evaluate_model(model, split, per_user=per_user)
    del model, shared_cf
    if champion is not None:
        metrics["champion_same_holdout"] = evaluate_champion_recipe(
            champion, train_ds, split, params, metrics, timer
        )
    for name in config.baselines:
        if name in baselines:
            continue
        with timer.stage(f"fit {name}"):
            baseline = fit_baseline(name, binary)
        with timer.stage(f"evaluate {name}"):
            baselines[name] = _evaluate_model(baseline, split, binary, per_user)
        del baseline
    metrics["baselines"] = {name: baselines[name] for name in config.baselines}
    best_name, best = _best_baseline(baselines)
    if best is not None:
        metrics["best_baseline"] = best_name
        metrics["lift_over_best_baseline"] = (
            metrics[PRIMARY] / best[PRIMARY] if best[PRIMARY] > 0 else None
        )
    return metrics


def _best_baseline(baselines: dict[str, dict[str, float]]):
    """(name, metrics) of the baseline with the highest primary metric."""
    if not baselines:
        return None, None
    name = max(baselines, key=lambda n: baselines[n][PRIMARY])
    return name, baselines[name]


def train_model(
    ratings: pd.DataFrame,
    books: pd.DataFrame,
    config: TrainConfig | None = None,
    *,
    report: Callable[[str], None] | None = None,
    champion: dict[str, Any] | None = None,
    per_user: bool = False,
) -> TrainResult:
    """Evaluate on a seeded holdout, then refit the served hybrid on all the data.

    ``champion`` (``champion_recipe(manifest)``) adds the champion's recipe, scored on
    the same holdout, to the metrics (``champion_same_holdout``) for the promotion gate.
    ``per_user`` keeps per-user arrays in the metrics (the benchmark pops them).
    """
    config = (config or TrainConfig()).validate()
    timer = _Timer(report)
    if ratings.empty:
        raise ValueError("the rating snapshot is empty: ingest data before training")
    with timer.stage("prepare data"):
        ratings = sample_users(ratings, config.sample_fraction, config.seed)
        data_fp = fingerprint(ratings, books)
        dataset = build_dataset(ratings, books)
    metrics: dict[str, Any] = {}
    if config.evaluate:
        with timer.stage("split"):
            split = holdout_split(
                dataset.matrix, min_interactions=config.min_interactions,
                test_fraction=config.test_fraction, seed=config.seed,
                cold_users=config.cold_test_users,
            )
        if split.n_test_users == 0:
            raise ValueError(
                f"no user has {config.min_interactions} interactions: nothing to evaluate on"
            )
        metrics = evaluate_models(dataset, split, config, timer, champion, per_user=per_user)
    with timer.stage("fit model (all data)"):
        model = fit_hybrid(dataset, config.hybrid_params())
    return TrainResult(model, metrics, data_fp, timer.timings, config, timer.cpu)


def save_candidate(result: TrainResult, folder: Path, version: str) -> dict[str, Any]:
    """Write the trained model as a version folder; return its manifest."""
    return save_model(
        result.model,
        folder,
        data_fingerprint=result.data_fingerprint,
        metrics=result.metrics,
        extra={
            "version": version,
            "training": {
                "config": {**asdict(result.config), "baselines": list(result.config.baselines)},
                "evaluation": result.config.evaluation_params(),
                "timings_s": result.timings,
            },
        },
        extra_params={"evaluation": result.config.evaluation_params()},
    )


def write_snapshot(ratings: pd.DataFrame, books: pd.DataFrame, folder: Path) -> Path:
    """Store a snapshot as .npy columns (ratings) and CSV (books) for the next task."""
    from bookrec.artifacts import save_array

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_array(folder, "user_id", ratings[C.USER_ID].to_numpy(np.int64))
    save_array(folder, "rating", ratings[C.RATING].to_numpy(np.int16))
    save_array(folder, "isbn", np.char.encode(ratings[C.ISBN].to_numpy(str), "utf-8"))
    books.to_csv(folder / "books.csv", index=False)
    return folder


def read_snapshot(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read what ``write_snapshot`` wrote."""
    from bookrec.artifacts import load_array

    folder = Path(folder)
    ratings = pd.DataFrame({
        C.USER_ID: load_array(folder, "user_id", mmap=False),
        C.ISBN: np.char.decode(load_array(folder, "isbn", mmap=False), "utf-8").astype(object),
        C.RATING: load_array(folder, "rating", mmap=False),
    })
    dtype = {c: str for c in C.BOOK_COLUMNS}
    dtype[C.YEAR] = "Int16"
    books = pd.read_csv(folder / "books.csv", dtype=dtype, keep_default_na=False, na_values=[""])
    return ratings, books
