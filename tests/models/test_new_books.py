"""Books the model was not trained with: ``similar`` from their catalogue row's text,
transformed with the TF-IDF vocabulary stored in the artifact (issue 13, "new books")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bookrec import columns as C
from bookrec.artifacts import ArtifactError
from bookrec.models.dataset import build_dataset
from bookrec.models.persist import load_model, save_model
from bookrec.models.works import work_key

from .conftest import FANTASY, NO_ROW

NEW = "9999999999"
NEW_BOOK = {"isbn": NEW, "title": "Dragon Wizard Tales", "author": "Ann Dragon",
            "publisher": "Pub House"}
VOCABULARY = ("tfidf_terms_blob", "tfidf_terms_offsets", "tfidf_idf")


def test_text_vector_equals_the_stored_rows(world, world_model):
    dataset = build_dataset(*world)
    for row, item in enumerate(world_model.content_items):
        vector = world_model.text_vector(dataset.meta[C.TITLE][item],
                                         dataset.meta[C.AUTHOR][item],
                                         dataset.meta[C.PUBLISHER][item])
        assert np.allclose(vector.toarray(), world_model.tfidf[row].toarray(), atol=1e-6)


def test_a_new_book_gets_content_neighbours_with_reasons(world_model):
    assert world_model.needs_book_row(NEW)
    recs = world_model.similar(NEW, k=4, book=NEW_BOOK)
    assert len(recs) == 4
    assert all(r.source == "content" for r in recs)
    assert all(r.reason == "similar to Dragon Wizard Tales" for r in recs)
    fantasy = {isbn for isbn, _, _ in FANTASY}
    assert recs[0].isbn in fantasy and NEW not in {r.isbn for r in recs}
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)


def test_a_new_edition_never_gets_its_own_work_back(world_model):
    """"The Dragon Saga" has two editions in the model; a third, new one is similar to
    neither of them (they are the same work), and the popular fill skips them too."""
    book = {"title": "The Dragon Saga (Deluxe)", "author": "ANN DRAGON", "publisher": "X"}
    recs = world_model.similar(NEW, k=10, book=book)
    key = work_key(book["title"], book["author"])
    assert len(recs) == 10
    assert all(work_key(r.title, r.author) != key for r in recs)
    assert {"0000000011", "0000000077"}.isdisjoint(r.isbn for r in recs)
    assert len({work_key(r.title, r.author) for r in recs}) == 10  # one edition per work


def test_unknown_isbn_without_a_usable_row_still_raises(world_model):
    with pytest.raises(KeyError):
        world_model.similar(NEW, k=3)
    with pytest.raises(KeyError):
        world_model.similar(NEW, k=3, book={"title": None, "author": "Ann Dragon"})


def test_text_with_no_known_term_gets_popular_books(world_model):
    recs = world_model.similar(NEW, k=3, book={"title": "Zzyzx Qwvp", "author": "Nobody"})
    assert [r.source for r in recs] == ["popular"] * 3


def test_a_rated_isbn_catalogued_after_training_uses_its_row(world_model):
    """``NO_ROW`` was rated but had no book row at training time: no content row."""
    assert world_model.needs_book_row(NO_ROW)
    assert not world_model.needs_book_row(FANTASY[0][0])
    before = world_model.similar(NO_ROW, k=3)
    assert all(r.source == "popular" for r in before)
    recs = world_model.similar(NO_ROW, k=3, book={"title": "Baking Bread Again",
                                                  "author": "Di Baker"})
    assert recs[0].source == "content" and recs[0].isbn == "1000000011"
    assert recs[0].reason == "similar to Baking Bread Again"
    # a known book with its own content row ignores the row it is given
    known = FANTASY[0][0]
    assert world_model.similar(known, k=4, book=NEW_BOOK) == world_model.similar(known, k=4)


def test_vocabulary_round_trips_checksummed(world_model, tmp_path: Path):
    folder = tmp_path / "v"
    manifest = save_model(world_model, folder, extra={"version": "v"})
    assert {f"{name}.npy" for name in VOCABULARY} <= set(manifest["files"])
    loaded = load_model(folder)
    assert loaded.transforms_text
    assert loaded.similar(NEW, k=4, book=NEW_BOOK) == world_model.similar(NEW, k=4,
                                                                          book=NEW_BOOK)
    target = folder / "tfidf_terms_blob.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="tfidf_terms_blob.npy checksum mismatch"):
        load_model(folder)


def test_an_artifact_without_vocabulary_loads_with_the_old_behaviour(world_model, tmp_path):
    """Models trained before the vocabulary was stored: they load, answer as before, and a
    book they do not know has no similar books (KeyError: the API's 404)."""
    from bookrec.models.hybrid import HybridRecommender

    old = HybridRecommender({k: v for k, v in world_model.arrays.items()
                             if k not in VOCABULARY}, vars(world_model.params))
    folder = tmp_path / "old"
    save_model(old, folder, extra={"version": "old"})
    loaded = load_model(folder)
    assert not loaded.transforms_text
    assert not loaded.needs_book_row(NEW) and not loaded.needs_book_row(NO_ROW)
    with pytest.raises(KeyError):
        loaded.similar(NEW, k=3, book=NEW_BOOK)
    assert loaded.similar("0000000022", k=5) == world_model.similar("0000000022", k=5)
    assert loaded.similar(NO_ROW, k=3, book={"title": "Baking Bread"}) == \
        world_model.similar(NO_ROW, k=3)
