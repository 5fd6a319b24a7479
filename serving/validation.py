"""Input validation for the API: one declaration per parameter, used to check and to document.

Each ``Param`` parses a raw string into a value or raises ``ApiError`` naming the field,
and also renders its OpenAPI description, so the document and the checks cannot drift.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bookrec.cleaning import normalize_isbn

if TYPE_CHECKING:  # the bodies' types (serving/schemas.py)
    from serving.schemas import Error, ErrorDetail

MAX_USER_ID = 2**31 - 1
MAX_K = 100
MAX_QUERY_LEN = 200
MIN_QUERY_LEN = 3
# At least two visible characters with something between them: what leaves 3 characters
# or more once control characters become spaces and spaces are collapsed and trimmed.
QUERY_PATTERN = r"[^\x00-\x20\x7f][\s\S]+[^\x00-\x20\x7f]"
_ISBN_SHAPE = re.compile(r"[0-9]{9}[0-9X]|97[89][0-9]{10}")  # fullmatch
_ISBN_SEPARATORS = re.compile(r"[\s-]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SPACES = re.compile(r" {2,}")
ISBN_PATTERN = r"^(?:[0-9]{9}[0-9Xx]|97[89][0-9]{10})$"
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # fullmatch: no trailing newline


class ApiError(Exception):
    """A client error that becomes a JSON body with a 4xx status (or 503 when a store is down)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}

    def to_dict(self) -> Error:
        """The JSON error body."""
        body: ErrorDetail = {"status": self.status, "code": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        return {"error": body}


def invalid(field_name: str, message: str) -> ApiError:
    """A 400 for one bad field."""
    return ApiError(400, "invalid_parameter", f"{field_name}: {message}", field=field_name)


def parse_user_id(raw: object, field_name: str = "user_id") -> int:
    """A positive 32-bit integer written as plain digits (no sign, no spaces, no exponent)."""
    text = str(raw)
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise invalid(field_name, f"must be a positive integer up to {MAX_USER_ID}")
    value = int(text)
    if not 1 <= value <= MAX_USER_ID:
        raise invalid(field_name, f"must be between 1 and {MAX_USER_ID}")
    return value


@functools.lru_cache(maxsize=16384)
def _canonical_isbn(compact: str) -> str | None:
    """``normalize_isbn`` of a well-shaped key, remembered: hot books are asked for again
    and again, and the check-digit arithmetic is a Python loop."""
    return normalize_isbn(compact)


def parse_isbn(raw: object, field_name: str = "isbn") -> str:
    """A valid ISBN-10 or ISBN-13 (hyphens and spaces allowed), in canonical catalogue form.

    A value of the wrong shape is a 400; one of the right shape whose check digit fails is
    a 404: it is what the document allows (JSON Schema cannot state a check digit), and no
    book carries it."""
    if not isinstance(raw, str) or len(raw) > 20:
        raise invalid(field_name, "must be an ISBN-10 or ISBN-13 string")
    compact = _ISBN_SEPARATORS.sub("", raw).upper()
    if not _ISBN_SHAPE.fullmatch(compact):
        raise invalid(field_name, f"{raw!r} is not shaped like an ISBN-10 or ISBN-13")
    canonical = _canonical_isbn(compact)
    if canonical is None:
        raise ApiError(
            404,
            "unknown_book",
            f"{field_name}: {raw!r} fails the ISBN check-digit test, so no book has it",
            field=field_name,
        )
    return canonical


def parse_k(raw: str | None, default: int = 10) -> int:
    """The list length ``k``: an integer in 1..100."""
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 3:
        raise invalid("k", f"must be an integer between 1 and {MAX_K}")
    value = int(raw)
    if not 1 <= value <= MAX_K:
        raise invalid("k", f"must be between 1 and {MAX_K}")
    return value


def parse_query(raw: str | None) -> str:
    """A search text of 3..200 characters, with control characters and extra spaces removed
    (shorter texts match too much of the catalogue to be worth a query)."""
    if raw is None or raw == "":
        raise invalid("q", f"is required ({MIN_QUERY_LEN} to {MAX_QUERY_LEN} characters)")
    if len(raw) > MAX_QUERY_LEN:
        raise invalid("q", f"must be at most {MAX_QUERY_LEN} characters")
    text = _SPACES.sub(" ", _CONTROL.sub(" ", raw)).strip(" ")
    if len(text) < MIN_QUERY_LEN:
        raise invalid("q", f"must have at least {MIN_QUERY_LEN} characters besides blanks")
    return text


def parse_rating(body: object) -> tuple[str, int, str | None]:
    """(isbn, rating, request_id) from a JSON object ``{"isbn": str, "rating": 0..10}`` with
    an optional ``request_id`` (the ``X-Request-Id`` of the list the rating came from)."""
    if not isinstance(body, dict):
        raise invalid("body", 'must be a JSON object like {"isbn": "0316666343", "rating": 8}')
    unknown = sorted(set(body) - {"isbn", "rating", "request_id"})
    if unknown:
        raise invalid(unknown[0], "is not a known field (expected isbn, rating, request_id)")
    request_id = body.get("request_id")
    if "request_id" in body and (
        not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id)
    ):
        raise invalid("request_id", "must be 1 to 64 letters, digits, '.', '_' or '-'")
    if "isbn" not in body:
        raise invalid("isbn", "is required")
    isbn = parse_isbn(body["isbn"])
    rating = body.get("rating")
    if isinstance(rating, bool) or not isinstance(rating, int):
        raise invalid("rating", "must be an integer between 0 and 10")
    if not 0 <= rating <= 10:
        raise invalid("rating", "must be between 0 and 10")
    return isbn, rating, request_id


@dataclass(frozen=True)
class Param:
    """An OpenAPI parameter declaration (the parser functions above enforce it)."""

    name: str
    location: str
    schema: dict[str, Any]
    description: str
    required: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_openapi(self) -> dict[str, Any]:
        """The parameter object for the OpenAPI document."""
        return {
            "name": self.name,
            "in": self.location,
            "required": self.required or self.location == "path",
            "description": self.description,
            "schema": self.schema,
            **self.extra,
        }


USER_ID = Param(
    "user_id",
    "path",
    {"type": "integer", "minimum": 1, "maximum": MAX_USER_ID},
    "Book-Crossing user id (a positive 32-bit integer)",
)
ISBN_FORMAT = "isbn"
ISBN_DESCRIPTION = (
    "ISBN-10 or ISBN-13 (format `isbn`: the pattern's shape and a valid check digit; "
    "a value of that shape whose check digit fails names no book, so it is answered 404)"
)
ISBN_SCHEMA = {
    "type": "string",
    "format": ISBN_FORMAT,
    "pattern": ISBN_PATTERN,
    "description": ISBN_DESCRIPTION,
}
ISBN = Param("isbn", "path", ISBN_SCHEMA, ISBN_DESCRIPTION)
K = Param(
    "k",
    "query",
    {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10},
    "How many items to return",
)
QUERY = Param(
    "q",
    "query",
    {
        "type": "string",
        "minLength": MIN_QUERY_LEN,
        "maxLength": MAX_QUERY_LEN,
        "pattern": QUERY_PATTERN,
    },
    "Words from a title or an author name (at least 3 characters besides blanks); every "
    "word must match, the last one as a prefix",
    required=True,
)
RATING_BODY = {
    "type": "object",
    "required": ["isbn", "rating"],
    "additionalProperties": False,
    "properties": {
        "isbn": ISBN_SCHEMA,
        "rating": {"type": "integer", "minimum": 0, "maximum": 10},
        "request_id": {
            "type": "string",
            "pattern": f"^{REQUEST_ID.pattern}$",
            "description": "X-Request-Id of the list the rating came from (attribution)",
        },
    },
}
