"""Trigram indexes for title/author search (``GET /v1/books?q=``).

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """pg_trgm (a trusted extension) and GIN indexes so ILIKE '%q%' needs no table scan."""
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute("CREATE INDEX ix_books_title_trgm ON books USING gin (title gin_trgm_ops)")
    op.execute("CREATE INDEX ix_books_author_trgm ON books USING gin (author gin_trgm_ops)")


def downgrade() -> None:
    """Drop the search indexes (the extension stays: other objects may use it)."""
    op.execute("DROP INDEX IF EXISTS ix_books_author_trgm")
    op.execute("DROP INDEX IF EXISTS ix_books_title_trgm")
