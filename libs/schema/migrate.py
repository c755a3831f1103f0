"""Database migrations: numbered SQL files applied once each, in order, under an advisory lock.

Safe to run twice (applied files are skipped) and from several processes at once (the lock makes
the second wait, then find nothing to do).
"""

from __future__ import annotations

from importlib import resources

import psycopg
import structlog

log = structlog.get_logger(__name__)

MIGRATION_LOCK = 0x7765656C6F  # "weelo"


def available_migrations() -> list[tuple[str, str]]:
    """(name, sql) for every migration file, in name order."""
    folder = resources.files("libs.schema").joinpath("migrations")
    files = sorted((f.name, f) for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(name, f.read_text()) for name, f in files]


def migrate(database_url: str) -> list[str]:
    """Apply every pending migration; return the names applied by this call."""
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
        applied = []
        for name, sql in available_migrations():
            if name in done:
                continue
            conn.execute(sql.encode())
            conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
            applied.append(name)
            log.info("migration_applied", migration=name)
    return applied
