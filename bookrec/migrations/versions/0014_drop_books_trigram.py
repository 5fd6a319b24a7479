"""Drop the trigram indexes on ``books.title`` and ``books.author``.

They served ``ILIKE '%q%'`` (0004). Nothing queries that way any more: search is answered
by each serving worker's in-memory index (``bookrec.search``), and until that is built by
the full-text query on ``books.search_doc`` and its GIN index (0011), which ranks its
candidates with a prefix ``ILIKE`` on those rows only. The two trigram indexes were the
most expensive part of loading books (building them took ~12 of a first load's CPU
seconds on the full Book-Crossing data, more than cleaning the file) and slowed every
upsert.

Revision ID: 0014
Revises: 0013
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Drop both trigram indexes (the pg_trgm extension stays: dropping it needs owner rights)."""
    op.execute("DROP INDEX IF EXISTS ix_books_title_trgm")
    op.execute("DROP INDEX IF EXISTS ix_books_author_trgm")


def downgrade() -> None:
    """Rebuild them."""
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute("CREATE INDEX IF NOT EXISTS ix_books_title_trgm ON books USING gin (title gin_trgm_ops)")
    op.execute("CREATE INDEX IF NOT EXISTS ix_books_author_trgm ON books USING gin (author gin_trgm_ops)")
