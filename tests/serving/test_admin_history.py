"""GET /admin/models/history: the champion's intervals from PostgreSQL, behind the token."""

from __future__ import annotations

from bookrec import audit
from tests.utils.serving import ADMIN_TOKEN

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_history_lists_intervals_behind_the_token(client, engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE promotions")
    assert client.get("/admin/models/history").status_code == 401
    assert client.get("/admin/models/history", headers=AUTH).get_json() == []
    audit.record_decision(engine, candidate="v1", decision="promoted", reason="first model",
                          actor="nightly", champion_after="v1", decided_by="gate",
                          flow_run_id="run-1")
    audit.record_decision(engine, candidate="v2", decision="awaiting_approval", reason="close",
                          actor="nightly", champion_before="v1", champion_after="v1",
                          decided_by="gate", flow_run_id="run-2")
    audit.record_decision(engine, candidate="v2", decision="promoted", reason="approved",
                          actor="ann", champion_before="v1", champion_after="v2",
                          decided_by="ann@laptop", flow_run_id="run-2")
    response = client.get("/admin/models/history", headers=AUTH)
    assert response.status_code == 200
    rows = response.get_json()
    assert [(r["version"], r["decided_by"], r["flow_run_id"]) for r in rows] == [
        ("v1", "gate", "run-1"), ("v2", "ann@laptop", "run-2")]
    assert rows[0]["to"] == rows[1]["from"] and rows[1]["to"] is None
    assert client.get("/admin/models/history?limit=1", headers=AUTH).get_json()[0]["version"] \
        == "v2"
    bad = client.get("/admin/models/history?limit=0", headers=AUTH)
    assert bad.status_code == 400 and "limit" in bad.get_json()["error"]["message"]
