"""Alembic environment: migrations run on the connection that ``bookrec.db.upgrade`` passes in."""

from alembic import context


def _run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through bookrec.db.upgrade (bookrec db upgrade)")
    context.configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


_run()
