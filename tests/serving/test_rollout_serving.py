"""Variants of a rollout through the API (Flask app on a real registry, PostgreSQL): each
reader's variant, the canary's and the interleaved lists, what impressions and the API log
record, credit for the model that contributed a rated book, caching and read-your-writes,
and the per-variant counts of /metrics, ``bookrec online`` and ``figures``."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import sqlalchemy as sa

from bookrec import rollout as ro
from bookrec.registry import Registry
from cli.main import main
from tests.utils.serving import ADMIN_TOKEN, metric_total

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
READERS = range(1, 61)


def _flush(client) -> None:
    svc = client.application.extensions["bookrec"]
    svc.impressions.flush()
    svc.apilog.flush()


def _start(settings, model_set, client, **shares) -> dict:
    record = Registry.from_settings(settings).start_rollout(
        model_set.versions[1], started_by="tests", **{"interleave": 0.4, "canary": 0.3, **shares}
    )
    answer = client.post("/admin/reload", headers=ADMIN)
    assert answer.status_code == 202
    assert answer.get_json()["rollout"] == {
        "status": "loaded", "id": record["id"], "candidate": model_set.versions[1]
    }
    return record


def _expected(app, variant: str, user: int, k: int) -> tuple[list[str], list[int] | None]:
    """The list (and teams) the variant should show, computed from the loaded models."""
    svc = app.extensions["bookrec"]
    champion, variants = svc.holder.model, svc.holder.variants
    history = svc.catalog.user_ratings(user)

    def isbns(model) -> list[str]:
        return [r.isbn for r in model.recommend_history(history, k=k, user_id=user)]

    if variant == "champion":
        return isbns(champion), None
    if variant == "canary":
        return isbns(variants.candidate), None
    recs = {
        r.isbn: r
        for m in (champion, variants.candidate)
        for r in m.recommend_history(history, k=k, user_id=user)
    }
    from bookrec.models.works import work_key

    drafted = ro.team_draft(
        isbns(champion), isbns(variants.candidate), k, f"{variants.rollout['salt']}:{user}",
        work={i: work_key(r.title, r.author) for i, r in recs.items()},
    )
    return [i for i, _ in drafted], [t for _, t in drafted]


def test_each_reader_gets_their_variant_and_it_is_recorded(
    app, client, serving_settings, model_set, engine
):
    champion, candidate = model_set.versions
    record = _start(serving_settings, model_set, client)
    seen: dict[int, str] = {}
    for user in READERS:
        variant = ro.assign(user, record)
        for attempt in range(2):  # the second answer is the cached one
            response = client.get(
                f"/v1/users/{user}/recommendations?k=6",
                headers={"X-Request-Id": f"u{user}-{attempt}"},
            )
            assert response.status_code == 200
            assert response.headers["X-Variant"] == variant
            body = response.get_json()
            isbns, teams = _expected(app, variant, user, 6)
            assert [i["isbn"] for i in body["items"]] == isbns
            if variant == "canary":
                assert body["model_version"] == candidate
                assert response.headers["X-Model-Version"] == candidate
                assert "teams" not in body
            elif variant == "interleave":
                assert body["variant"] == "interleave" and body["teams"] == teams
                assert body["model_versions"] == {"champion": champion, "candidate": candidate}
                assert response.headers["X-Model-Version"] == f"{champion}+{candidate}"
            else:
                assert body["model_version"] == champion and "variant" not in body
                assert response.headers["X-Model-Version"] == champion
        seen[user] = variant
    counts = Counter(seen.values())
    assert set(counts) == {"champion", "interleave", "canary"}
    # An interleaved list really mixes the two models here (different seeds, different lists).
    assert any(
        len(set(_expected(app, "interleave", u, 6)[1])) == 2
        for u, v in seen.items() if v == "interleave"
    )
    # Similar and popular stay the champion's, whatever the reader.
    popular = client.get("/v1/books/popular?k=3")
    assert popular.headers["X-Model-Version"] == champion and "X-Variant" not in popular.headers

    _flush(client)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT request_id, user_id, model_version, variant, rollout_id, teams, isbns "
                "FROM impressions WHERE kind = 'user'"
            )
        ).all()
        logs = conn.execute(
            sa.text(
                "SELECT variant, rollout_id, model_version, count(*) AS n FROM api_logs "
                "WHERE route = '/v1/users/<user_id>/recommendations' "
                "GROUP BY variant, rollout_id, model_version"
            )
        ).all()
    assert len(rows) == 2 * len(READERS)
    for row in rows:
        user = row.user_id
        assert row.variant == seen[user] and row.rollout_id == record["id"]
        isbns, teams = _expected(app, seen[user], user, 6)
        assert list(row.isbns) == isbns
        assert (list(row.teams) if row.teams is not None else None) == teams
        assert row.model_version == {
            "champion": champion, "canary": candidate, "interleave": f"{champion}+{candidate}"
        }[seen[user]]
    assert {(r.variant, r.rollout_id, r.model_version): r.n for r in logs} == {
        ("champion", record["id"], champion): 2 * counts["champion"],
        ("canary", record["id"], candidate): 2 * counts["canary"],
        ("interleave", record["id"], f"{champion}+{candidate}"): 2 * counts["interleave"],
    }
    figs = ro.figures(engine, record)
    for variant, n in counts.items():
        assert figs["variants"][variant]["requests"] == 2 * n
        assert figs["variants"][variant]["impressions"] == 2 * n
        assert figs["variants"][variant]["readers"] == n
        assert figs["variants"][variant]["errors"] == 0
    metrics = client.get("/metrics").get_data(as_text=True)
    for variant, n in counts.items():
        assert metric_total(metrics, "bookrec_variant_requests_total", variant=variant) == 2 * n
        assert metric_total(metrics, "bookrec_variant_impressions_total", variant=variant) == 2 * n
    info = client.get("/admin/model", headers=ADMIN).get_json()
    assert info["rollout"]["id"] == record["id"] and "salt" not in info["rollout"]
    assert info["rollout"]["candidate_loaded"] == candidate
    assert set(info["workers_rollouts"].values()) == {record["id"]}


def test_a_rating_credits_the_model_that_contributed_the_book(
    app, client, serving_settings, model_set, engine, key_headers, capsys, cli_db, monkeypatch
):
    champion, candidate = model_set.versions
    record = _start(serving_settings, model_set, client, interleave=0.5, canary=0.3)
    # An interleaved reader whose list holds books of both teams.
    user, body = None, None
    for u in READERS:
        if ro.assign(u, record) != "interleave":
            continue
        answer = client.get(f"/v1/users/{u}/recommendations?k=6", headers={"X-Request-Id": f"i{u}"})
        if {0, 1} <= set(answer.get_json()["teams"]):
            user, body = u, answer.get_json()
            break
    assert user is not None
    _flush(client)
    picks = {team: next(i["isbn"] for i, t in zip(body["items"], body["teams"], strict=True)
                        if t == team) for team in (0, 1)}
    credited = {}
    for team, isbn in picks.items():
        posted = client.post(
            f"/v1/users/{user}/ratings",
            json={"isbn": isbn, "rating": 9, "request_id": f"i{user}"},
            headers=key_headers,
        )
        assert posted.status_code == 201
        credited[team] = posted.get_json()["attribution"]
    assert credited[0]["variant"] == "interleave" and credited[0]["credited_version"] == champion
    assert credited[1]["credited_version"] == candidate
    assert credited[1]["model_version"] == f"{champion}+{candidate}"
    # Read your writes: the next interleaved list has neither rated book (nor its editions).
    after = client.get(f"/v1/users/{user}/recommendations?k=6").get_json()
    assert not set(picks.values()) & {i["isbn"] for i in after["items"]}
    assert after["variant"] == "interleave"

    # A canary reader's rating credits the candidate.
    canary_user = next(u for u in READERS if ro.assign(u, record) == "canary")
    listed = client.get(
        f"/v1/users/{canary_user}/recommendations?k=6", headers={"X-Request-Id": "c1"}
    ).get_json()
    _flush(client)
    posted = client.post(
        f"/v1/users/{canary_user}/ratings",
        json={"isbn": listed["items"][0]["isbn"], "rating": 7, "request_id": "c1"},
        headers=key_headers,
    ).get_json()
    assert posted["attribution"]["credited_version"] == candidate
    assert posted["attribution"]["variant"] == "canary"
    again = client.get(f"/v1/users/{canary_user}/recommendations?k=6").get_json()
    assert listed["items"][0]["isbn"] not in {i["isbn"] for i in again["items"]}
    assert again["model_version"] == candidate

    _flush(client)
    figs = ro.figures(engine, record)
    assert figs["variants"]["interleave_champion"]["hits"] == 1
    assert figs["variants"]["interleave_candidate"]["hits"] == 1
    assert figs["variants"]["canary"]["hits"] == 1
    table = figs["readers"]["interleave"]
    row = table["user_id"].index(user)
    assert (table["champion"][row], table["candidate"][row]) == (1, 1)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert metric_total(
        metrics, "bookrec_variant_attributed_ratings_total", variant="interleave"
    ) == 2
    assert metric_total(
        metrics, "bookrec_variant_attributed_ratings_total", credited="candidate"
    ) == 2

    from bookrec.settings import get_settings

    monkeypatch.setenv("BOOKREC_ARTIFACTS_URI", str(serving_settings.artifacts_uri))
    get_settings.cache_clear()
    assert main(["online", "--rollout", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rollout"]["id"] == record["id"] and "salt" not in out["rollout"]
    assert out["rollout"]["variants"]["canary"]["hits"] == 1
    assert main(["online", "--rollout", record["id"]]) == 0
    text = capsys.readouterr().out
    assert "interleave_candidate" in text and record["id"] in text
    assert main(["online", "--since", "1h"]) == 0  # the per-version table, then the rollout's
    text = capsys.readouterr().out
    assert f"{champion}+{candidate}" in text and "interleave_champion" in text


def test_ending_the_rollout_returns_every_reader_to_the_champion(
    app, client, serving_settings, model_set
):
    champion, candidate = model_set.versions
    before = client.get("/v1/users/5/recommendations?k=4").get_json()  # cached: champion's
    record = _start(serving_settings, model_set, client, interleave=0.0, canary=1.0)
    response = client.get("/v1/users/5/recommendations?k=4")
    assert response.get_json()["model_version"] == candidate
    isbns = [i["isbn"] for i in response.get_json()["items"]]
    assert isbns == _expected(app, "canary", 5, 4)[0] != [i["isbn"] for i in before["items"]]
    holder = app.extensions["bookrec"].holder
    assert holder.variants.candidate.version == candidate
    Registry.from_settings(serving_settings).end_rollout(record["id"], "rolled_back", "test")
    answer = client.post("/admin/reload", headers=ADMIN).get_json()
    assert answer["rollout"] == {"status": "ended", "id": None, "ended": record["id"]}
    assert holder.variants is None
    response = client.get("/v1/users/5/recommendations?k=4")
    assert response.get_json() == before  # the champion's list again, not the canary's
    assert "X-Variant" not in response.headers
    info = client.get("/admin/model", headers=ADMIN).get_json()
    assert info["rollout"] is None and info["workers_rollouts"] == {}


def test_a_candidate_that_cannot_load_leaves_the_champion_serving(
    app, client, serving_settings, model_set, tmp_path
):
    champion, candidate = model_set.versions
    registry = Registry.from_settings(serving_settings)
    record = registry.start_rollout(candidate, interleave=0.5, canary=0.5, started_by="tests")
    # Damage the candidate in the store after the rollout pinned its manifest.
    key = next(k for k in registry.store.list(f"models/{candidate}/") if k.endswith(".npy"))
    registry.store.put(key, b"not the array")
    answer = client.post("/admin/reload", headers=ADMIN).get_json()
    assert answer["rollout"]["status"] == "failed"
    assert app.extensions["bookrec"].holder.variants is None
    for user in READERS:
        response = client.get(f"/v1/users/{user}/recommendations?k=3")
        assert response.status_code == 200
        assert response.headers["X-Model-Version"] == champion
    assert record["id"]


def test_candidate_files_identical_to_the_champions_are_shared(
    app, client, serving_settings, model_set
):
    """Arrays the two fits share (catalogue, histories, text features) are one file."""
    champion, candidate = model_set.versions
    _start(serving_settings, model_set, client)
    root = serving_settings.home_dir / "serving" / "models"
    manifests = {
        v: json.loads((root / v / "manifest.json").read_text())["files"] for v in (champion, candidate)
    }
    same = [n for n, sha in manifests[candidate].items() if manifests[champion].get(n) == sha]
    assert "isbns.npy" in same and "title_blob.npy" in same
    for name in same:
        assert (root / champion / name).stat().st_ino == (root / candidate / name).stat().st_ino
    differ = [n for n, sha in manifests[candidate].items() if manifests[champion].get(n) != sha]
    assert "cf_data.npy" in differ
    for name in differ:
        assert (root / candidate / name).stat().st_nlink == 1


@pytest.mark.parametrize("variant_share", [{"interleave": 1.0, "canary": 0.0}])
def test_interleaved_lists_keep_one_edition_per_work(
    app, client, serving_settings, model_set, variant_share
):
    _start(serving_settings, model_set, client, **variant_share)
    from bookrec.models.works import work_key

    for user in READERS:
        body = client.get(f"/v1/users/{user}/recommendations?k=10").get_json()
        keys = [work_key(i["title"], i["author"]) or i["isbn"] for i in body["items"]]
        assert len(keys) == len(set(keys)) and len(keys) == len(body["teams"])
