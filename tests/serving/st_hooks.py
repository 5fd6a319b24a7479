"""Schemathesis hooks for the bookrec API (loaded with SCHEMATHESIS_HOOKS).

The document names the ISBN's format (``isbn``: the pattern's shape and a valid check
digit). JSON Schema cannot state a check digit, so this registers a generation strategy
for the format: ISBN-10 and ISBN-13 strings with correct check digits, which the server
must accept. Without the hooks schemathesis draws from the pattern alone, and the server
answers a failing check digit with 404 (no such book), which is also an acceptance.
"""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

from tests.utils.isbn import isbn10, isbn13

ISBNS = st.one_of(
    st.from_regex(r"\A[0-9]{9}\Z").map(isbn10),
    st.from_regex(r"\A97[89][0-9]{9}\Z").map(isbn13),
)
schemathesis.openapi.format("isbn", ISBNS)
