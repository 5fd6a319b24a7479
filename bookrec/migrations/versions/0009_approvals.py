"""Promotions record who or what decided and in which flow run; 'awaiting_approval' rows.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_OLD = "decision IN ('promoted', 'rejected', 'rolled back', 'refused')"
_NEW = "decision IN ('promoted', 'rejected', 'rolled back', 'refused', 'awaiting_approval')"


def upgrade() -> None:
    """Add ``decided_by`` and ``flow_run_id``; allow the 'awaiting_approval' decision."""
    op.add_column("promotions", sa.Column("decided_by", sa.Text))
    op.add_column("promotions", sa.Column("flow_run_id", sa.Text))
    op.drop_constraint("ck_promotions_decision", "promotions", type_="check")
    op.create_check_constraint("ck_promotions_decision", "promotions", _NEW)
    op.create_index("ix_promotions_candidate", "promotions", ["candidate", "id"])


def downgrade() -> None:
    """Drop the columns. The old check fails while 'awaiting_approval' rows exist: the table
    is append-only, so the downgrade refuses rather than deleting them."""
    op.drop_index("ix_promotions_candidate", "promotions")
    op.drop_constraint("ck_promotions_decision", "promotions", type_="check")
    op.create_check_constraint("ck_promotions_decision", "promotions", _OLD)
    op.drop_column("promotions", "flow_run_id")
    op.drop_column("promotions", "decided_by")
