"""The API's least-privilege PostgreSQL role.

In production the API connects as its own role, not as the master user: it reads the
catalogue, reads and writes ratings, appends to the log tables, records impressions and
rating events, reads API keys, and can do nothing else (no DDL, no DELETE, no TRUNCATE, no reading the logs).
``ensure_api_role`` creates or updates the role and its grants; it is idempotent and is
run after every ``db upgrade`` (``bookrec db api-role``, a one-shot task at deploy time),
so tables added by later migrations get their grants. Locally nothing calls it: the
embedded and test servers use one trusted user.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.engine import Engine

# Table -> privileges the API needs. Tables a migration has not created yet are skipped.
API_GRANTS: dict[str, tuple[str, ...]] = {
    "books": ("SELECT",),
    "ratings": ("SELECT", "INSERT", "UPDATE"),
    "api_logs": ("INSERT",),
    # Attribution reads the shown lists and writes the rating event in the rating's
    # transaction, and retries it later (UPDATE).
    "impressions": ("SELECT", "INSERT"),
    "rating_events": ("SELECT", "INSERT", "UPDATE"),
    "api_keys": ("SELECT",),
}
_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_LOCK_KEY = 72210007


class RoleError(ValueError):
    """The role name or password is unusable."""


def ensure_api_role(engine: Engine, role: str, password: str) -> dict[str, list[str]]:
    """Create (or update the password of) the login role ``role`` and give it exactly the
    privileges of ``API_GRANTS`` on the tables that exist; returns table -> privileges.

    Everything else on the schema's tables and sequences is revoked first, so a privilege
    removed from ``API_GRANTS`` is removed from the role on the next run.
    """
    if not _ROLE_NAME.match(role):
        raise RoleError(f"role name {role!r} must match {_ROLE_NAME.pattern}")
    if len(password) < 16:
        raise RoleError(f"the password of role {role} must be at least 16 characters")
    granted: dict[str, list[str]] = {}
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        exists = conn.execute(
            sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}
        ).scalar()
        verb = "ALTER" if exists else "CREATE"
        # psycopg2 interpolates the password as a quoted literal on the client side.
        conn.execute(
            sa.text(
                f'{verb} ROLE "{role}" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE '
                "NOINHERIT PASSWORD :pw"
            ),
            {"pw": password},
        )
        schema = conn.execute(sa.text("SELECT current_schema()")).scalar()
        database = conn.execute(sa.text("SELECT current_database()")).scalar()
        conn.execute(sa.text(f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"'))
        conn.execute(sa.text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
        conn.execute(sa.text(f'REVOKE CREATE ON SCHEMA "{schema}" FROM "{role}"'))
        conn.execute(sa.text(f'REVOKE ALL ON ALL TABLES IN SCHEMA "{schema}" FROM "{role}"'))
        conn.execute(sa.text(f'REVOKE ALL ON ALL SEQUENCES IN SCHEMA "{schema}" FROM "{role}"'))
        for table, privileges in API_GRANTS.items():
            if (
                conn.execute(
                    sa.text("SELECT to_regclass(:t)"), {"t": f'"{schema}"."{table}"'}
                ).scalar()
                is None
            ):
                continue
            conn.execute(sa.text(f'GRANT {", ".join(privileges)} ON "{table}" TO "{role}"'))
            if "INSERT" in privileges:
                # An identity column draws from its sequence on insert.
                sequences = conn.execute(
                    sa.text(
                        "SELECT pg_get_serial_sequence(:t, a.attname) FROM pg_attribute a "
                        "WHERE a.attrelid = to_regclass(:t) AND a.attnum > 0 "
                        "AND NOT a.attisdropped AND a.attidentity <> ''"
                    ),
                    {"t": f'"{schema}"."{table}"'},
                ).scalars()
                for sequence in sequences:
                    conn.execute(sa.text(f'GRANT USAGE ON SEQUENCE {sequence} TO "{role}"'))
            granted[table] = list(privileges)
    return granted
