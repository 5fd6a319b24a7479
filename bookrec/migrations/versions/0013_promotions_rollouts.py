"""Rollout decisions in ``promotions``: 'rolling_out' (a rollout started) and
'rollout_rolled_back' (it ended with the champion kept), and the online figures the
rollout's rule judged (``online_figures``: the rollout record, per-variant figures of
every check, the rule's verdict).

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_OLD = "decision IN ('promoted', 'rejected', 'rolled back', 'refused', 'awaiting_approval')"
_NEW = ("decision IN ('promoted', 'rejected', 'rolled back', 'refused', 'awaiting_approval', "
        "'rolling_out', 'rollout_rolled_back')")


def upgrade() -> None:
    """Add ``online_figures``; allow the two rollout decisions."""
    op.add_column("promotions", sa.Column("online_figures", pg.JSONB))
    op.drop_constraint("ck_promotions_decision", "promotions", type_="check")
    op.create_check_constraint("ck_promotions_decision", "promotions", _NEW)


def downgrade() -> None:
    """Refuses while rollout rows exist (the table is append-only); else drops the column."""
    op.drop_constraint("ck_promotions_decision", "promotions", type_="check")
    op.create_check_constraint("ck_promotions_decision", "promotions", _OLD)
    op.drop_column("promotions", "online_figures")
