"""API request log, written in batches off the request path by the serving tier.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``api_logs``."""
    op.create_table(
        "api_logs",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("route", sa.Text, nullable=False),
        sa.Column("path", sa.Text),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("model_version", sa.Text),
        sa.Column("source", sa.Text),
        sa.Column("user_id", sa.BigInteger),
        sa.Column("client", sa.Text),
    )
    op.create_index("ix_api_logs_logged_at", "api_logs", ["logged_at"])


def downgrade() -> None:
    """Drop ``api_logs``."""
    op.drop_table("api_logs")
