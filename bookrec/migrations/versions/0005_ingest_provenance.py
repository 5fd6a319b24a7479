"""Quarantine raw format and per-run file metadata for ingest.

``quarantine.raw_format``: ``text`` (the record as it decoded, every existing row) or
``escaped`` (the record held bytes that are not text -- NUL, or invalid in the file's
encoding -- and ``raw`` is ``bookrec.textscan.escape_bytes`` of them, lossless).
``ingest_runs.files``: per file its name and modification time (local mtime or S3
LastModified), which decides whether a file's rating replaces a newer one from the API,
and how many API ratings were kept. Both are metadata-only column additions.

Revision ID: 0005
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0005"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the two columns (a constant default: no table rewrite)."""
    op.add_column(
        "quarantine",
        sa.Column("raw_format", sa.Text, nullable=False, server_default="text"),
    )
    op.create_check_constraint(
        "ck_quarantine_raw_format", "quarantine", "raw_format IN ('text', 'escaped')"
    )
    op.add_column("ingest_runs", sa.Column("files", pg.JSONB))


def downgrade() -> None:
    """Drop them again."""
    op.drop_column("ingest_runs", "files")
    op.drop_constraint("ck_quarantine_raw_format", "quarantine")
    op.drop_column("quarantine", "raw_format")
