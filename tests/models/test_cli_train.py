"""``bookrec train``, ``recommend`` and ``similar`` through the real command entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main

from .test_train_flow import snapshot, train_env  # noqa: F401 (fixtures)


@pytest.fixture
def trained(snapshot, capsys) -> str:  # noqa: F811
    """Train once through the CLI; return the printed version id."""
    assert main(["train", "--json", "--max-items", "500", "--baselines", "most_popular"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"version", "metrics", "timings"}
    assert set(out["metrics"]["baselines"]) == {"most_popular"}
    return out["version"]


def test_recommend_and_similar_answer_from_the_newest_candidate(trained, capsys):
    assert main(["recommend", "--user", "1", "--k", "4", "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["user_id"] == 1 and line["model_version"] == trained
    assert len(line["recommendations"]) == 4
    assert {"isbn", "score", "source", "reason"} <= set(line["recommendations"][0])

    assert main(["similar", "--isbn", "100000000X", "--k", "3", "--json"]) == 0
    sim = json.loads(capsys.readouterr().out)
    assert len(sim["similar"]) == 3 and "100000000X" not in {s["isbn"] for s in sim["similar"]}

    assert main(["recommend", "--user", "1", "--k", "2", "--version", trained]) == 0
    assert f"model {trained}" in capsys.readouterr().out


def test_users_file_gives_one_json_line_per_user(trained, capsys, tmp_path: Path):
    ids = tmp_path / "users.txt"
    ids.write_text("1\n2\n\n777777\n")
    assert main(["recommend", "--users-file", str(ids), "--k", "3", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["user_id"] for x in lines] == [1, 2, 777777]
    assert {r["source"] for r in lines[2]["recommendations"]} == {"popular"}
    assert all(len(x["recommendations"]) == 3 for x in lines)


def test_bad_input_is_named(trained, capsys, tmp_path: Path):
    ids = tmp_path / "users.txt"
    ids.write_text("1\nbob\n")
    assert main(["recommend", "--users-file", str(ids), "--json"]) == 1
    assert f"{ids}:2: not a user id: 'bob'" in capsys.readouterr().err
    assert main(["similar", "--isbn", "0000000000"]) == 1
    assert "is not in model" in capsys.readouterr().err
    assert main(["recommend", "--user", "1", "--version", "20000101T000000Z-abcdef"]) == 1
    assert "model 20000101T000000Z-abcdef" in capsys.readouterr().err


def test_recommend_without_any_model_says_so(train_env, capsys):  # noqa: F811
    assert main(["recommend", "--user", "1"]) == 1
    assert "no model in the store" in capsys.readouterr().err


def test_parallel_batch_gives_the_same_lines_in_order(trained, capsys, tmp_path: Path):
    ids = tmp_path / "users.txt"
    users = [(n * 7919) % 300 + 1 for n in range(2500)] + [777777]  # > 2 chunks, unknown last
    ids.write_text("\n".join(map(str, users)) + "\n")
    outputs = {}
    for jobs in ("1", "2"):
        assert main(["recommend", "--users-file", str(ids), "--k", "4", "--json",
                     "--jobs", jobs]) == 0
        outputs[jobs] = capsys.readouterr().out.splitlines()
    assert outputs["1"] == outputs["2"]
    assert [json.loads(x)["user_id"] for x in outputs["2"]] == users
    assert main(["recommend", "--users-file", str(ids), "--json", "--jobs", "0"]) == 1
    assert "--jobs must be in 1..64" in capsys.readouterr().err


def test_recommend_scores_ratings_stored_after_training(trained, clean_db, capsys):
    """``bookrec recommend`` reads the same current history as the API (fold-in)."""
    import sqlalchemy as sa

    assert main(["recommend", "--user", "1", "--k", "5", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["recommendations"][0]
    insert = sa.text("INSERT INTO ratings (user_id, isbn, rating, source) "
                     "VALUES (:u, :i, :r, 'api')")
    with clean_db.begin() as conn:
        conn.execute(insert, [{"u": 1, "i": top["isbn"], "r": 9},
                              {"u": 888888, "i": top["isbn"], "r": 10}])
    assert main(["recommend", "--user", "1", "--k", "5", "--json"]) == 0
    after = json.loads(capsys.readouterr().out)["recommendations"]
    assert top["isbn"] not in {r["isbn"] for r in after}
    assert main(["recommend", "--user", "888888", "--k", "3"]) == 0
    text = capsys.readouterr().out
    assert "unknown user" not in text and "[cf " in text
    assert f"because you rated {top['title']}" in text


def test_similar_for_a_book_catalogued_after_training(trained, clean_db, capsys):
    """``bookrec similar`` reads a new book's row from PostgreSQL, like the API."""
    import sqlalchemy as sa

    new = "5550000016"
    assert main(["similar", "--isbn", new, "--k", "3"]) == 1
    assert "is not in model" in capsys.readouterr().err
    with clean_db.begin() as conn:
        conn.execute(sa.text("INSERT INTO books (isbn, title, author, publisher) "
                             "VALUES (:i, 'Baking volume 99', 'Writer 1-0', 'baking press')"),
                     {"i": new})
    assert main(["similar", "--isbn", new, "--k", "3", "--json"]) == 0
    sim = json.loads(capsys.readouterr().out)
    assert sim["isbn"] == new and len(sim["similar"]) == 3
    assert all(s["source"] == "content" for s in sim["similar"])
    assert all(s["reason"] == "similar to Baking volume 99" for s in sim["similar"])
    assert all(s["title"].startswith("Baking volume") for s in sim["similar"])
