"""The JSON bodies the API answers with, as types.

The views and the body builders return these shapes, and ``serving/openapi.py`` derives
the document's component schemas from them (``component_schemas``), so a field added to a
body is added here and appears in /openapi.json; schemathesis checks every answer against
them. Enumerations come from the code that produces the values.
"""

from typing import Annotated, Any, NotRequired

from pydantic import Field, TypeAdapter, WithJsonSchema
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from bookrec import audit, online, rollout
from bookrec.models import hybrid


def _one_of(values: tuple[str, ...]) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "enum": list(values)})


DateTime = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]


class ErrorDetail(TypedDict):
    """The HTTP status, a code, a message naming the field, and the field."""

    status: int
    code: str
    message: str
    field: NotRequired[str]


class Error(TypedDict):
    """Every error answer: ``serving.validation.ApiError.to_dict``."""

    error: ErrorDetail


class Recommendation(TypedDict):
    """One recommended book: ``serving.services.rec_to_dict``."""

    isbn: str
    title: str | None
    author: str | None
    image_url: str | None
    score: float
    source: Annotated[str, _one_of((hybrid.CF, hybrid.CONTENT, hybrid.POPULAR))]
    reason: str | None


class ModelVersions(TypedDict):
    """The two models of an interleaved list."""

    champion: str
    candidate: str


class RecommendationList(TypedDict):
    """A list of books (``serving/bodies.py``): for a reader (``user_id``, ``known_user``;
    during a rollout's interleaving also ``variant``, ``model_versions`` and the team of
    each position), similar to a book (``isbn``), or the most popular."""

    model_version: str
    k: int
    user_id: NotRequired[int]
    isbn: NotRequired[str]
    known_user: NotRequired[bool]
    variant: NotRequired[Annotated[str, _one_of((rollout.INTERLEAVE,)), Field(
        description="Set on an interleaved list of a rollout (champion and candidate)")]]
    model_versions: NotRequired[Annotated[ModelVersions, Field(
        description="An interleaved list's two models: champion and candidate")]]
    teams: NotRequired[Annotated[
        list[Annotated[int, WithJsonSchema({
            "type": "integer", "enum": [rollout.TEAM_CHAMPION, rollout.TEAM_CANDIDATE]})]],
        Field(description="An interleaved list's model of each item: 0 champion, 1 candidate"),
    ]]
    items: list[Recommendation]


class Book(TypedDict):
    """One book's catalogue row (``source`` database), or the model's copy (``model``)."""

    isbn: str
    title: str | None
    author: str | None
    year: int | None
    publisher: str | None
    image_url_s: str | None
    image_url_m: str | None
    image_url_l: str | None
    source: Annotated[str, _one_of(("database", "model"))]


class BookSearch(TypedDict):
    """Books matching a search text."""

    q: str
    count: int
    items: list[Book]


class Attribution(TypedDict):
    """The shown list a rating was attributed to: ``bookrec.online.Attribution.to_json``."""

    request_id: str
    model_version: str | None
    kind: Annotated[str, _one_of(online.KINDS)]
    position: int | None
    variant: NotRequired[str]
    credited_version: NotRequired[str | None]


class RatingRecorded(TypedDict):
    """A stored rating, and the shown list it was attributed to (null: none)."""

    user_id: int
    isbn: str
    rating: int
    status: str
    attribution: Attribution | None


class ReloadResult(TypedDict):
    """What a reload request did: ``accepted`` (or ``pending``) when the worker's loader
    thread checks, else ``ModelHolder.check``'s result (``reloaded``, ``unchanged``,
    ``no_champion``, ``failed``); ``expected`` and ``matches`` when a version was asked for."""

    pid: int
    status: str
    version: NotRequired[str | None]
    previous: NotRequired[str | None]
    reason: NotRequired[str]
    error: NotRequired[str]
    prewarmed: NotRequired[int]
    rollout: NotRequired[dict[str, Any]]
    seconds: NotRequired[float]
    expected: NotRequired[str]
    matches: NotRequired[bool]


# One champion interval: ``bookrec.audit.ChampionInterval.to_json`` ("from" is a keyword,
# hence the functional form).
HistoryEntry = TypedDict("HistoryEntry", {
    "version": str,
    "from": DateTime,
    "to": DateTime | None,
    "decision": Annotated[str, _one_of(audit.CHAMPION_MOVES)],
    "decided_by": str,
    "flow_run_id": str | None,
    "reason": str,
    "actor": str,
})


class Health(TypedDict):
    """Liveness and readiness."""

    status: str
    model_version: NotRequired[str | None]


# The document's component schemas, by name; ``ModelInfo`` (the worker's state) is open.
BODIES: dict[str, Any] = {
    "Error": Error,
    "Recommendation": Recommendation,
    "RecommendationList": RecommendationList,
    "Book": Book,
    "BookSearch": BookSearch,
    "RatingRecorded": RatingRecorded,
    "ReloadResult": ReloadResult,
    "ModelInfo": dict[str, Any],
    "ChampionHistory": list[HistoryEntry],
    "Health": Health,
}


def component_schemas() -> dict[str, dict[str, Any]]:
    """OpenAPI 3.0 schemas of ``BODIES`` and of the types they use, by name."""
    schemas: dict[str, dict[str, Any]] = {}
    for name, body in BODIES.items():
        schema = TypeAdapter(body).json_schema(ref_template="#/components/schemas/{model}")
        for inner, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(inner, _openapi30(definition))
        schemas[name] = _openapi30(schema)
    return schemas


def _openapi30(schema: Any) -> Any:
    """JSON Schema as pydantic writes it, in OpenAPI 3.0's dialect: ``X | None`` as
    ``nullable``, a reference with a description as ``allOf``, and no titles (the
    component names say it)."""
    if isinstance(schema, list):
        return [_openapi30(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "title":
            continue
        if key == "properties":  # names of fields, not schema keywords
            out[key] = {name: _openapi30(field) for name, field in value.items()}
        else:
            out[key] = _openapi30(value)
    options = out.get("anyOf")
    if options and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        del out["anyOf"]
        if len(rest) == 1 and "$ref" not in rest[0]:
            out.update(rest[0])
        else:
            out["allOf" if len(rest) == 1 else "anyOf"] = rest
        out["nullable"] = True
    if "$ref" in out and len(out) > 1:  # OpenAPI 3.0 ignores a $ref's siblings
        out = {"allOf": [{"$ref": out.pop("$ref")}], **out}
    return out
