"""The page for people at ``/``, the API docs page, and the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, render_template

from serving.openapi import build_spec

bp = Blueprint("pages", __name__)


def spec() -> dict:
    """The OpenAPI document of this app (built once, from the routes)."""
    cached = current_app.extensions.get("bookrec_openapi")
    if cached is None:
        cached = build_spec(current_app)
        current_app.extensions["bookrec_openapi"] = cached
    return cached


@bp.get("/")
def index():
    """Search books, see a book with its cover and similar books, get a user's recommendations."""
    return render_template("index.html")


@bp.get("/docs")
def docs():
    """A readable listing of the OpenAPI document."""
    document = spec()
    return render_template("docs.html", spec=document, paths=document["paths"])


@bp.get("/openapi.json")
def openapi_json():
    """The OpenAPI 3 document generated from the routes."""
    return jsonify(spec())
