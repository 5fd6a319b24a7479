"""Schemathesis with all its checks against /openapi.json of a running gunicorn."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from serving.schemas import component_schemas
from tests.utils.serving import ADMIN_TOKEN

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_openapi_document_is_generated_from_the_routes(start_gunicorn, serving_settings):
    server = start_gunicorn(serving_settings, workers=1)
    spec = requests.get(f"{server.url}/openapi.json", timeout=5).json()
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert ("/v1/users/{user_id}/ratings", "post") in documented
    assert ("/admin/reload", "post") in documented
    assert spec["paths"]["/admin/model"]["get"]["security"] == [{"bearerAuth": []}]
    rating = spec["paths"]["/v1/users/{user_id}/ratings"]["post"]
    assert rating["security"] == [{"apiKey": []}] and "401" in rating["responses"]
    assert spec["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    k = spec["paths"]["/v1/books/popular"]["get"]["parameters"][0]
    assert (k["name"], k["schema"]["minimum"], k["schema"]["maximum"]) == ("k", 1, 100)
    # The bodies' schemas are derived from serving/schemas.py, in OpenAPI 3.0's dialect.
    schemas = spec["components"]["schemas"]
    assert schemas == component_schemas()
    listed = schemas["RecommendationList"]
    assert {"teams", "model_versions", "variant"} <= set(listed["properties"])
    assert listed["properties"]["items"]["items"] == {"$ref": "#/components/schemas/Recommendation"}
    assert schemas["Book"]["properties"]["year"] == {"type": "integer", "nullable": True}
    assert "anyOf" not in str(schemas) and schemas["Book"]["required"][:2] == ["isbn", "title"]


def test_a_view_naming_an_unknown_body_type_fails_the_document(monkeypatch):
    from flask import Flask

    from serving.openapi import build_spec, operation

    app = Flask(__name__)

    @app.get("/x")
    @operation("x", tag="t", response="NoSuchBody")
    def x():
        return ""

    with pytest.raises(ValueError, match="no body type 'NoSuchBody'"):
        build_spec(app)


def test_schemathesis_all_checks_pass(start_gunicorn, serving_settings, tmp_path, key_headers):
    server = start_gunicorn(serving_settings, workers=2)
    env = dict(
        os.environ,
        SCHEMATHESIS_HOOKS="st_hooks",
        PYTHONPATH=os.pathsep.join([str(HERE), str(REPO)]),  # st_hooks uses tests.utils
        BOOKREC_ST_ADMIN_TOKEN=ADMIN_TOKEN,
        BOOKREC_ST_API_KEY=key_headers["Authorization"].removeprefix("Bearer "),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(HERE / "schemathesis.toml"),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--request-timeout",
            "30",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    # Generated values can be huge: show every line of the report, cut short.
    report = "\n".join(line[:300] for line in output.splitlines())
    assert result.returncode == 0, report[-8000:]
    assert "No issues found" in output or "passed" in output, output[-3000:]
