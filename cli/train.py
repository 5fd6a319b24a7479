"""``bookrec train|recommend|similar``: train a candidate, ask a model version questions.

``train`` runs the Prefect ``train`` flow in this process. ``recommend`` and
``similar`` answer from the champion (or, before the first promotion, the newest
candidate, or ``--version V``), fetched and verified into the local model cache.
``recommend`` scores each reader's ratings as they are now in PostgreSQL (fold-in), as
the API does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from cli.main import CommandError

_CHUNK = 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train``, ``recommend`` and ``similar`` verbs."""
    train = subparsers.add_parser("train", help="train, evaluate and store a candidate model")
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    train.add_argument("--algorithm", choices=["ease", "rp3beta"], default=None)
    train.add_argument("--l2", type=float, default=None, help="EASE regularisation")
    train.add_argument("--dropout", type=float, default=None, help="DLAE dropout (0 = EASE)")
    train.add_argument("--max-items", type=int, default=None, help="CF catalogue size")
    train.add_argument("--keep", type=int, default=None, help="weights kept per item")
    train.add_argument("--explicit-weight", type=float, default=None)
    train.add_argument("--content-slots", type=int, default=None)
    train.add_argument("--sample-fraction", type=float, default=None,
                       help="share of users to train on (quick runs)")
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--no-evaluate", action="store_true", help="skip the holdout evaluation")
    train.add_argument("--baselines", default="most_popular",
                       help="baselines evaluated beside the model: 'all' for the full "
                            "comparison table (most_popular,itemknn,als,ease_plain), a "
                            "comma-separated subset, or '' for none (default: most_popular, "
                            "what the nightly run evaluates)")
    train.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                       help="any other hyperparameter (JSON value), repeatable")
    train.set_defaults(handler=_train, prefect=True,
                        preload=("flows.train",))

    rec = subparsers.add_parser("recommend", help="recommendations for a user (or a file of ids)")
    who = rec.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", type=int, help="user id")
    who.add_argument("--users-file", type=Path, help="file with one user id per line")
    rec.add_argument("--k", type=int, default=10)
    rec.add_argument("--json", action="store_true", help="JSON (one line per user for a file)")
    rec.add_argument("--version", default=None, help="model version (default: the champion)")
    rec.add_argument("--jobs", type=int, default=None,
                     help="processes for --users-file --json (default: one per core, at most 4)")
    rec.set_defaults(handler=_recommend)

    sim = subparsers.add_parser("similar", help="books similar to an ISBN")
    sim.add_argument("--isbn", required=True)
    sim.add_argument("--k", type=int, default=10)
    sim.add_argument("--json", action="store_true")
    sim.add_argument("--version", default=None, help="model version (default: the champion)")
    sim.set_defaults(handler=_similar)


def _train_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Flow parameters from the command line (unset options keep the flow's defaults)."""
    kwargs: dict[str, Any] = {}
    for name in ("algorithm", "l2", "dropout", "max_items", "keep", "explicit_weight",
                 "content_slots", "sample_fraction", "seed"):
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    if args.no_evaluate:
        kwargs["evaluate"] = False
    kwargs["baselines"] = _baselines(args.baselines)
    extra: dict[str, Any] = {}
    for item in args.set:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise CommandError(f"--set {item!r}: expected NAME=VALUE", exit_code=2)
        try:
            extra[name] = json.loads(raw)
        except json.JSONDecodeError:
            extra[name] = raw
    if extra:
        kwargs["extra_hyperparameters"] = extra
    return kwargs


def _baselines(value: str) -> list[str]:
    """``all``, ``''`` or a comma-separated subset of the known baselines."""
    from bookrec.training import BASELINES

    if value.strip() == "all":
        return list(BASELINES)
    names = [b.strip() for b in value.split(",") if b.strip()]
    unknown = [b for b in names if b not in BASELINES]
    if unknown:
        raise CommandError(f"--baselines: unknown {', '.join(unknown)} (known: "
                           f"{', '.join(BASELINES)}, or 'all')", exit_code=2)
    return names


def _train(args: argparse.Namespace) -> int:
    from flows.train import train_flow

    kwargs = _train_kwargs(args)
    try:
        result = train_flow(**kwargs)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    if args.json:
        print(json.dumps({k: result[k] for k in ("version", "metrics", "timings")}, indent=2))
        return 0
    metrics = result["metrics"]
    print(f"version {result['version']}")
    if metrics:
        from bookrec.reports import METRIC_COLUMNS, training_rows

        print(f"{'model':<18}" + "".join(f"{c:>20}" for c in METRIC_COLUMNS))
        for row in training_rows(metrics):
            print(f"{row['model']:<18}" + "".join(f"{row[c]:>20}" for c in METRIC_COLUMNS))
        lift = metrics.get("lift_over_best_baseline")
        if lift:
            print(f"NDCG@20 lift over best baseline ({metrics['best_baseline']}): x{lift:.3f}")
    print("stage times (s): " + ", ".join(f"{k} {v}" for k, v in result["timings"].items()))
    return 0


def _load(version: str | None):
    """Fetch (verified) and load ``version``, else the champion, else the newest candidate."""
    from bookrec.artifacts import ArtifactError
    from bookrec.models.persist import load_model
    from bookrec.registry import Registry, RegistryError
    from bookrec.settings import get_settings

    settings = get_settings()
    registry = Registry.from_settings(settings)
    expected = None
    try:
        if version is None:
            pointer = registry.champion()
            if pointer:
                version, expected = pointer["version"], pointer.get("manifest_sha256")
            else:
                rows = [r for r in registry.list_versions() if r.status != "incomplete"]
                rows = [r for r in rows if r.status == "candidate"] or rows
                if not rows:
                    raise CommandError("no model in the store: run `bookrec train` first")
                version = rows[0].version
        folder = registry.fetch_version(
            version, settings.home_dir / "model-cache", expected_manifest_sha256=expected
        )
        return load_model(folder)
    except (RegistryError, ArtifactError) as exc:
        raise CommandError(f"model {version}: {exc}") from exc


def _check_k(k: int) -> None:
    if not 1 <= k <= 1000:
        raise CommandError(f"--k must be between 1 and 1000, got {k}", exit_code=2)


def _rec_json(user_id: int, recs: list, version: str) -> str:
    return json.dumps({
        "user_id": user_id,
        "model_version": version,
        "recommendations": [
            {"isbn": r.isbn, "score": r.score, "source": r.source, "reason": r.reason,
             "title": r.title, "author": r.author}
            for r in recs
        ],
    }, ensure_ascii=False)


def _print_human(header: str, recs: list) -> None:
    print(header)
    for n, r in enumerate(recs, 1):
        why = f" - {r.reason}" if r.reason else ""
        print(f"{n:>3}. {r.isbn}  {r.title or '?'} / {r.author or '?'}  [{r.source} "
              f"{r.score:.3f}]{why}")


def _read_user_ids(path: Path) -> list[int]:
    """User ids, one per line (blank lines skipped); a bad line names file and line number."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"{path}: cannot read ({exc})") from exc
    ids = []
    for number, line in enumerate(text.splitlines(), 1):
        value = line.strip()
        if not value:
            continue
        try:
            ids.append(int(value))
        except ValueError:
            raise CommandError(f"{path}:{number}: not a user id: {value[:40]!r}") from None
    return ids


_BATCH_MODEL: Any = None  # the model a forked batch worker inherits


def _json_lines(task: tuple[list[int], list[dict[str, int]], int]) -> str:
    """One chunk of users as JSON lines (runs in a forked worker)."""
    chunk, histories, k = task
    model = _BATCH_MODEL
    recs = model.recommend_histories(histories, k, user_ids=chunk)
    return "".join(
        _rec_json(user_id, user_recs, model.version) + "\n"
        for user_id, user_recs in zip(chunk, recs, strict=True)
    )


class _Histories:
    """Readers' current ratings from PostgreSQL, a chunk at a time; if the database cannot
    be reached, says so once and leaves the training histories alone."""

    def __init__(self) -> None:
        self.engine: Any = None
        self.failed = False

    def __call__(self, chunk: list[int]) -> list[dict[str, int]]:
        import sqlalchemy as sa

        from bookrec import db
        from bookrec.settings import get_settings

        if not self.failed:
            try:
                if self.engine is None:
                    self.engine = db.get_engine(get_settings())
                found = db.read_user_ratings(self.engine, chunk)
                return [found.get(u, {}) for u in chunk]
            except (sa.exc.SQLAlchemyError, db.DatabaseError) as exc:
                self.failed = True
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                print(f"warning: PostgreSQL unavailable ({first}); recommending from the "
                      "model's training histories only", file=sys.stderr)
        return [{} for _ in chunk]


def _recommend_parallel(model: Any, ids: list[int], k: int, jobs: int, out: Any,
                        histories: _Histories | None = None) -> None:
    """Score chunks of users in ``jobs`` forked processes sharing the memory-mapped model;
    lines come out in input order. ``histories`` gives each chunk's current ratings (None:
    the training histories alone)."""
    import multiprocessing

    if histories is None:
        histories = lambda chunk: [{} for _ in chunk]  # noqa: E731

    global _BATCH_MODEL
    _BATCH_MODEL = model
    chunks = (
        (ids[i : i + _CHUNK], histories(ids[i : i + _CHUNK]), k)
        for i in range(0, len(ids), _CHUNK)
    )
    try:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            for text in pool.imap(_json_lines, chunks):
                out.write(text)
    finally:
        _BATCH_MODEL = None


def _recommend(args: argparse.Namespace) -> int:
    _check_k(args.k)
    ids = [args.user] if args.users_file is None else _read_user_ids(args.users_file)
    if args.jobs is not None and not 1 <= args.jobs <= 64:
        raise CommandError(f"--jobs must be in 1..64, got {args.jobs}")
    model = _load(args.version)
    histories = _Histories()
    out = sys.stdout
    jobs = args.jobs or min(4, os.cpu_count() or 1)
    if args.json and jobs > 1 and len(ids) > _CHUNK:
        _recommend_parallel(model, ids, args.k, jobs, out, histories)
        return 0
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        now = histories(chunk)
        recs = model.recommend_histories(now, args.k, user_ids=chunk)
        for user_id, history, user_recs in zip(chunk, now, recs, strict=True):
            if args.json:
                out.write(_rec_json(user_id, user_recs, model.version) + "\n")
            else:
                known = "" if history or model.knows_user(user_id) \
                    else " (unknown user: popular books)"
                _print_human(f"user {user_id}{known}, model {model.version}:", user_recs)
    return 0


def _catalogue_row(isbn: str) -> dict[str, Any] | None:
    """The book's row in PostgreSQL (a book ingested after the model was trained gets
    content neighbours from its text); None, with a warning, if the database is down."""
    import sqlalchemy as sa

    from bookrec import db
    from bookrec.models.hybrid import isbn_candidates
    from bookrec.settings import get_settings

    try:
        return db.read_book(db.get_engine(get_settings()), isbn_candidates(isbn))
    except (sa.exc.SQLAlchemyError, db.DatabaseError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"warning: PostgreSQL unavailable ({first}); answering from the model alone",
              file=sys.stderr)
        return None


def _similar(args: argparse.Namespace) -> int:
    _check_k(args.k)
    model = _load(args.version)
    row = _catalogue_row(args.isbn) if model.needs_book_row(args.isbn) else None
    try:
        recs = model.similar(args.isbn, args.k, book=row)
    except KeyError:
        raise CommandError(f"ISBN {args.isbn!r} is not in model {model.version}") from None
    if args.json:
        book = model.book(args.isbn) or row
        print(json.dumps({
            "isbn": book["isbn"] if book else args.isbn,
            "model_version": model.version,
            "similar": [
                {"isbn": r.isbn, "score": r.score, "source": r.source, "reason": r.reason,
                 "title": r.title, "author": r.author}
                for r in recs
            ],
        }, ensure_ascii=False))
    else:
        book = model.book(args.isbn) or {}
        _print_human(f"books like {args.isbn} ({book.get('title') or '?'}), "
                     f"model {model.version}:", recs)
    return 0
