"""Variants of a rollout (interleaving, canary) in the online tables.

- ``impressions``: the reader's ``variant`` ("champion", "interleave", "canary"), the
  ``rollout_id`` the assignment belongs to (both null outside a rollout and on lists that
  have no reader), and for an interleaved list ``teams``, one per position (0: the
  champion contributed the book, 1: the candidate).
- ``rating_events``: when attributed, the variant and rollout of the list, the version
  credited with the hit (``credited_version``: for an interleaved list the version of the
  team that contributed the book) and that team (``credited_team``).
- ``api_logs``: the variant and rollout of a recommendations request, so error rate and
  latency are read per variant.

The columns are added to the partitioned parents (no rewrite: they are nullable with no
default), so every partition, present and future, has them. Partial indexes on
``(rollout_id, time)`` make a rollout's figures read only its own rows.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the columns and the rollout indexes."""
    op.execute(
        "ALTER TABLE impressions ADD COLUMN variant text, ADD COLUMN rollout_id text, "
        "ADD COLUMN teams smallint[]"
    )
    op.execute(
        "ALTER TABLE rating_events ADD COLUMN variant text, ADD COLUMN rollout_id text, "
        "ADD COLUMN credited_version text, ADD COLUMN credited_team smallint"
    )
    op.execute("ALTER TABLE api_logs ADD COLUMN variant text, ADD COLUMN rollout_id text")
    op.execute(
        "CREATE INDEX ix_impressions_rollout ON impressions (rollout_id, shown_at) "
        "WHERE rollout_id IS NOT NULL"
    )
    op.execute(
        "CREATE INDEX ix_rating_events_rollout ON rating_events (rollout_id, shown_at) "
        "WHERE rollout_id IS NOT NULL"
    )
    op.execute(
        "CREATE INDEX ix_api_logs_rollout ON api_logs (rollout_id, logged_at) "
        "WHERE rollout_id IS NOT NULL"
    )


def downgrade() -> None:
    """Drop the indexes and columns."""
    op.execute("DROP INDEX IF EXISTS ix_api_logs_rollout")
    op.execute("DROP INDEX IF EXISTS ix_rating_events_rollout")
    op.execute("DROP INDEX IF EXISTS ix_impressions_rollout")
    op.execute("ALTER TABLE api_logs DROP COLUMN rollout_id, DROP COLUMN variant")
    op.execute(
        "ALTER TABLE rating_events DROP COLUMN credited_team, DROP COLUMN credited_version, "
        "DROP COLUMN rollout_id, DROP COLUMN variant"
    )
    op.execute("ALTER TABLE impressions DROP COLUMN teams, DROP COLUMN rollout_id, DROP COLUMN variant")
