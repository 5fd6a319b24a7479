"""Core schema: books, users, ratings, quarantine, ingest_runs.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the tables that ingest fills."""
    op.create_table(
        "books",
        sa.Column("isbn", sa.Text(collation="C"), primary_key=True),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("author", sa.Text),
        sa.Column("year", sa.SmallInteger),
        sa.Column("publisher", sa.Text),
        sa.Column("image_url_s", sa.Text),
        sa.Column("image_url_m", sa.Text),
        sa.Column("image_url_l", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    op.create_table(
        "users",
        sa.Column("user_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("location", sa.Text),
        sa.Column("city", sa.Text),
        sa.Column("region", sa.Text),
        sa.Column("country", sa.Text),
        sa.Column("age", sa.SmallInteger),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    # No foreign key to books: ratings of valid ISBNs without a book row are kept for CF.
    op.create_table(
        "ratings",
        sa.Column("user_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("isbn", sa.Text(collation="C"), primary_key=True),
        sa.Column("rating", sa.SmallInteger, nullable=False),
        sa.Column("source", sa.Text, nullable=False, server_default="ingest"),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.CheckConstraint("rating BETWEEN 0 AND 10", name="ck_ratings_rating_range"),
    )
    op.create_index("ix_ratings_isbn", "ratings", ["isbn"])
    op.create_table(
        "ingest_runs",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("layout", sa.Text, nullable=False),
        sa.Column("counts", pg.JSONB, nullable=False),
        sa.Column("duration_s", sa.Float, nullable=False),
    )
    op.create_table(
        "quarantine",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("run_id", sa.BigInteger, sa.ForeignKey("ingest_runs.id", ondelete="CASCADE")),
        sa.Column("source_file", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("line_number", sa.Integer, nullable=False),
        sa.Column("raw", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    op.create_index("ix_quarantine_run", "quarantine", ["run_id"])


def downgrade() -> None:
    """Drop the core tables."""
    for table in ("quarantine", "ingest_runs", "ratings", "users", "books"):
        op.drop_table(table)
