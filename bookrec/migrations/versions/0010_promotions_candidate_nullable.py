"""A refusal that names no version (nothing to promote, nothing to roll back to) is recorded
in ``promotions`` too, with no candidate.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Let ``candidate`` be NULL (only refusals that name no version leave it empty)."""
    op.alter_column("promotions", "candidate", nullable=True)


def downgrade() -> None:
    """Refuses while rows without a candidate exist: the table is append-only."""
    op.alter_column("promotions", "candidate", nullable=False)
