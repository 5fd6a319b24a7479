"""Append-only audit trail of model promotion decisions.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``promotions`` and refuse UPDATE/DELETE on it with a trigger."""
    op.create_table(
        "promotions",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "decided_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("candidate", sa.Text, nullable=False),
        sa.Column("champion_before", sa.Text),
        sa.Column("champion_after", sa.Text),
        sa.Column("candidate_metrics", pg.JSONB),
        sa.Column("champion_metrics", pg.JSONB),
        sa.Column("thresholds", pg.JSONB),
        sa.Column("decision", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.CheckConstraint(
            "decision IN ('promoted', 'rejected', 'rolled back', 'refused')",
            name="ck_promotions_decision",
        ),
    )
    op.execute(
        """
        CREATE FUNCTION promotions_append_only() RETURNS trigger AS $$
        BEGIN
            RAISE EXCEPTION 'promotions is append-only';
        END;
        $$ LANGUAGE plpgsql;
        """
    )
    op.execute(
        "CREATE TRIGGER promotions_append_only BEFORE UPDATE OR DELETE ON promotions "
        "FOR EACH ROW EXECUTE FUNCTION promotions_append_only()"
    )


def downgrade() -> None:
    """Drop the audit table and its trigger function."""
    op.execute("DROP TRIGGER IF EXISTS promotions_append_only ON promotions")
    op.drop_table("promotions")
    op.execute("DROP FUNCTION IF EXISTS promotions_append_only()")
