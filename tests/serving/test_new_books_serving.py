"""A book ingested after the model was trained: ``GET /v1/books/<isbn>/similar`` reads its
row from PostgreSQL and answers with content neighbours from its text, transformed with
the vocabulary stored in the artifact (issue 13, "new books"). A model trained on the
bundled sample; the Flask app on the real test database."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from bookrec.models.hybrid import HybridRecommender
from bookrec.models.persist import save_model
from bookrec.models.works import work_key
from bookrec.registry import Registry
from bookrec.settings import Settings
from tests.utils.isbn import isbn10
from tests.utils.serving import ADMIN_TOKEN

VOCABULARY = ("tfidf_terms_blob", "tfidf_terms_offsets", "tfidf_idf")
NEW = isbn10(555_000_001)
NEW_ROW = {"isbn": NEW, "title": "Harry Potter and the Secret Diary", "author": "J. K. Rowling",
           "year": 2026, "publisher": "Scholastic", "image_url_s": None, "image_url_m": None,
           "image_url_l": None}
# A new edition of a book the sample has: its other editions never come back.
EDITION = isbn10(555_000_002)


@pytest.fixture(scope="module")
def sample_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The hybrid fitted on the bundled sample (500-book CF catalogue), saved twice: as
    trained, and without the vocabulary (an artifact written before it was stored)."""
    from bench.bench_foldin import load
    from bookrec.models.dataset import build_dataset
    from bookrec.models.fit import fit_hybrid

    ratings, books = load("sample")
    model = fit_hybrid(build_dataset(ratings, books), {"max_items": 500})
    root = tmp_path_factory.mktemp("sample-models")
    folders = {"20260201T000000Z-vocab1": model}
    folders["20260202T000000Z-novoc1"] = HybridRecommender(
        {k: v for k, v in model.arrays.items() if k not in VOCABULARY}, vars(model.params))
    out = {}
    for version, m in folders.items():
        save_model(m, root / version, extra={"version": version})
        out[version] = root / version
    known = set(books["isbn"]) | set(ratings["isbn"])
    assert NEW not in known and EDITION not in known
    return out


def _client(make_app, database_url, engine, tmp_path, sample_models, version, edition_title):
    settings = Settings(database_url=database_url, home=tmp_path / "home",
                        artifacts_uri=str(tmp_path / "store"), admin_token=ADMIN_TOKEN,
                        rate_limit="100000 per minute")
    registry = Registry.from_settings(settings)
    registry.add_version(sample_models[version], version)
    registry.promote(version, by="tests", reason="new books")
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE books, ratings, api_logs, impressions, rating_events"))
        conn.execute(
            sa.text("INSERT INTO books (isbn, title, author, year, publisher, image_url_s, "
                    "image_url_m, image_url_l) VALUES (:isbn, :title, :author, :year, "
                    ":publisher, :image_url_s, :image_url_m, :image_url_l)"),
            [NEW_ROW, {**NEW_ROW, "isbn": EDITION, "title": edition_title}],
        )
    return make_app(settings, TESTING=True).test_client()


def test_a_book_ingested_after_training_gets_content_neighbours(
    make_app, database_url, engine, tmp_path, sample_models
):
    client = _client(make_app, database_url, engine, tmp_path, sample_models,
                     "20260201T000000Z-vocab1", "Harry Potter and the Chamber of Secrets")
    assert client.get(f"/v1/books/{NEW}").get_json()["source"] == "database"
    response = client.get(f"/v1/books/{NEW}/similar?k=5")
    assert response.status_code == 200
    body = response.get_json()
    assert body["isbn"] == NEW and body["model_version"] == "20260201T000000Z-vocab1"
    items = body["items"]
    assert len(items) == 5
    assert all(i["source"] == "content" for i in items)
    assert all(i["reason"] == f"similar to {NEW_ROW['title']}" for i in items)
    assert all("rowling" in (i["author"] or "").lower() for i in items[:3])
    assert NEW not in {i["isbn"] for i in items}
    assert client.get(f"/v1/books/{NEW}/similar?k=5").get_json() == body  # cached, same

    # A new edition of a book the model knows: none of that work's editions come back.
    edition = client.get(f"/v1/books/{EDITION}/similar?k=10").get_json()["items"]
    key = work_key("Harry Potter and the Chamber of Secrets", "J. K. Rowling")
    assert len(edition) == 10 and edition[0]["source"] == "content"
    assert all(work_key(i["title"], i["author"]) != key for i in edition)

    # Not in the model and not in the catalogue: 404 as before.
    missing = client.get(f"/v1/books/{isbn10(555_000_003)}/similar")
    assert missing.status_code == 404


def test_an_artifact_without_vocabulary_answers_404_for_a_new_book(
    make_app, database_url, engine, tmp_path, sample_models
):
    client = _client(make_app, database_url, engine, tmp_path, sample_models,
                     "20260202T000000Z-novoc1", "Harry Potter and the Chamber of Secrets")
    response = client.get(f"/v1/books/{NEW}/similar?k=5")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "unknown_book"
    assert client.get(f"/v1/books/{NEW}").status_code == 200  # still shown from PostgreSQL
