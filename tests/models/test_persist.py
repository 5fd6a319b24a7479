"""Saving and loading the served model: no pickle, every checksum verified first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bookrec.artifacts import MANIFEST, ArtifactError
from bookrec.models.persist import load_model, save_model


@pytest.fixture
def saved(world_model, tmp_path: Path) -> Path:
    folder = tmp_path / "v1"
    save_model(world_model, folder, data_fingerprint={"ratings": 3}, metrics={"ndcg@20": 0.5},
               extra={"version": "v1"})
    return folder


def _answers(model):
    users = [1, 40, 100, 200, 999]
    return (
        [[r.to_dict() for r in recs] for recs in model.recommend_many(users, k=5)],
        [r.to_dict() for r in model.similar("0000000022", k=5)],
        model.book("0000000011"),
    )


def test_round_trip_answers_the_same(world_model, saved: Path):
    loaded = load_model(saved)
    assert loaded.version == "v1"
    assert loaded.manifest["metrics"] == {"ndcg@20": 0.5}
    assert loaded.manifest["kind"] == "hybrid"
    assert _answers(loaded) == _answers(world_model)


def test_arrays_are_memory_mapped_and_nothing_is_a_pickle(saved: Path):
    names = sorted(p.name for p in saved.iterdir())
    assert all(n.endswith((".npy", ".json")) for n in names)
    for path in saved.glob("*.npy"):
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        assert array.dtype != object
        assert isinstance(array, np.memmap)
    manifest = json.loads((saved / MANIFEST).read_text())
    assert set(manifest["files"]) == set(names) - {MANIFEST}
    assert manifest["data_fingerprint"] == {"ratings": 3}


def test_one_changed_byte_is_refused(saved: Path):
    target = saved / "cf_data.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="cf_data.npy checksum mismatch"):
        load_model(saved)


def test_a_missing_file_is_refused(saved: Path):
    (saved / "title_blob.npy").unlink()
    with pytest.raises(ArtifactError, match="title_blob.npy is listed in the manifest but missing"):
        load_model(saved)


def test_unknown_schema_version_is_refused(saved: Path):
    manifest = json.loads((saved / MANIFEST).read_text())
    manifest["schema_version"] = 99
    (saved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="unknown schema_version 99"):
        load_model(saved)


def test_missing_manifest_is_refused(saved: Path):
    (saved / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_model(saved)


def test_other_kind_is_refused(saved: Path, tmp_path: Path):
    from bookrec.artifacts import save_json, write_manifest

    other = tmp_path / "other"
    other.mkdir()
    save_json(other, "x", [1])
    write_manifest(other, kind="something-else", params={}, data_fingerprint={})
    with pytest.raises(ArtifactError, match="kind 'something-else'"):
        load_model(other)


def test_array_list_naming_an_unlisted_file_is_refused(saved: Path):
    """Even a re-checksummed manifest cannot smuggle in a file it does not list."""
    from bookrec.artifacts import sha256_file

    names = json.loads((saved / "arrays.json").read_text())
    (saved / "arrays.json").write_text(json.dumps(names + ["extra"]))
    manifest = json.loads((saved / MANIFEST).read_text())
    manifest["files"]["arrays.json"] = sha256_file(saved / "arrays.json")
    (saved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="extra.npy is not listed"):
        load_model(saved)


def test_saving_into_a_non_empty_folder_is_refused(world_model, saved: Path):
    with pytest.raises(ArtifactError, match="non-empty"):
        save_model(world_model, saved)
