"""`weelo migrate` (CONTRACT.md section 1): safe to run twice and concurrently."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from libs.schema.migrate import available_migrations
from tests.processes import ROOT, environment, weelo_command


@pytest.fixture
def empty_database(_servers: tuple[str, str]) -> Iterator[str]:
    """A database with no tables at all, dropped afterwards."""
    name = f"weelo_migrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_servers[0], autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield psycopg.conninfo.make_conninfo(_servers[0], dbname=name)
    with psycopg.connect(_servers[0], autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def migrate_processes(env: dict[str, str], count: int) -> list[subprocess.CompletedProcess[str]]:
    procs = [
        subprocess.Popen(
            weelo_command("migrate"),
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(count)
    ]
    return [subprocess.CompletedProcess(p.args, p.wait(60), p.communicate()[0]) for p in procs]


def test_migrate_from_four_processes_at_once_then_again_applies_each_file_once(
    empty_database: str, service_env: dict[str, str]
) -> None:
    """Four concurrent `weelo migrate` all succeed, one applies every file, a rerun applies none."""
    env = environment(service_env, DATABASE_URL=empty_database)
    first = migrate_processes(env, 4)
    assert [p.returncode for p in first] == [0, 0, 0, 0], [p.stdout for p in first]
    total = len(available_migrations())
    applied = sorted(int(p.stdout.split("migrations applied: ")[1].split()[0]) for p in first)
    assert applied == [0, 0, 0, total]
    [again] = migrate_processes(env, 1)
    assert again.returncode == 0 and "migrations applied: 0" in again.stdout
    with psycopg.connect(empty_database) as conn:
        rows = conn.execute("SELECT name, count(*) FROM schema_migrations GROUP BY name").fetchall()
    assert sorted(rows) == [(name, 1) for name, _ in available_migrations()]
