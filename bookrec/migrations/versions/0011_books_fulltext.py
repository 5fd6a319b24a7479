"""Full-text search on books (``GET /v1/books?q=``): a stored search vector and its index.

``books.search_doc`` is the ``simple`` text-search vector of title and author (no stemming
or stop words: titles and names are matched word by word), a generated column, so every
writer of ``books`` (ingest's COPY with a column list, its ``LIKE ... INCLUDING ALL``
twins) keeps it without knowing of it, and a GIN index on it. Stored, the vector is not
recomputed for each candidate row a search ranks. The trigram indexes of 0004 served
``ILIKE '%q%'``, whose matches all had to be sorted: a common word cost a scan of tens of
thousands of rows.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

SEARCH_VECTOR = "to_tsvector('simple'::regconfig, coalesce(title, '') || ' ' || coalesce(author, ''))"


def upgrade() -> None:
    """Add the generated column (rewrites books once) and index it."""
    op.execute(
        f"ALTER TABLE books ADD COLUMN search_doc tsvector GENERATED ALWAYS AS ({SEARCH_VECTOR}) "
        "STORED"
    )
    op.execute("CREATE INDEX ix_books_search_doc ON books USING gin (search_doc)")


def downgrade() -> None:
    """Drop the index and the column."""
    op.execute("DROP INDEX IF EXISTS ix_books_search_doc")
    op.execute("ALTER TABLE books DROP COLUMN IF EXISTS search_doc")
