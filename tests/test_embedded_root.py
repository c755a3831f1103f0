"""The embedded PostgreSQL works as root from a checkout that only root can enter (a clone under
a 0700 folder, its `.venv` included), and changes the permissions of no folder it did not make."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from libs.local import embedded
from libs.local.embedded import embedded_postgres

pytestmark = [
    pytest.mark.process,  # starts PostgreSQL itself
    pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL changes user only under root"),
]


def modes(path: Path) -> dict[Path, int]:
    """The mode of `path` and of every folder above it."""
    return {p: p.stat().st_mode for p in (path, *path.parents)}


@pytest.fixture
def locked_clone(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A checkout under a 0700 folder: its `.weelo/postgres` and its own copy of the PostgreSQL
    binaries (as in the clone's `.venv`), neither reachable by any other user."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    clone = locked / "clone"
    site = clone / ".venv" / "lib" / "python3.11" / "site-packages"
    pginstall = site / "pgserver" / "pginstall"
    source = embedded._pginstall()
    shutil.copytree(source, pginstall, symlinks=True, ignore=shutil.ignore_patterns("include"))
    shutil.copytree(source.parents[1] / "pgserver.libs", site / "pgserver.libs")
    yield clone / ".weelo" / "postgres", pginstall
    shutil.rmtree(clone / ".weelo", ignore_errors=True)
    embedded.forget_orphans()


def row_count(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kept (n int)")
        row = conn.execute("SELECT count(*) FROM kept").fetchone()
        conn.execute("INSERT INTO kept VALUES (1)")
    assert row is not None
    return int(row[0])


def test_root_runs_postgres_from_a_checkout_under_a_0700_folder(
    locked_clone: tuple[Path, Path],
) -> None:
    """PostgreSQL starts and answers, its data survives a restart, and no folder above the
    checkout (the 0700 one included) has its mode changed."""
    data_dir, pginstall = locked_clone
    before = modes(data_dir.parents[1])  # the clone and every folder above it
    with embedded_postgres(data_dir, pginstall=pginstall) as url:
        assert row_count(url) == 0
    with embedded_postgres(data_dir, pginstall=pginstall) as url:
        assert row_count(url) == 1
    assert modes(data_dir.parents[1]) == before
    assert stat.S_IMODE(data_dir.parents[2].stat().st_mode) == 0o700


def test_deleting_the_state_dir_resets_the_relocated_cluster(
    locked_clone: tuple[Path, Path],
) -> None:
    """Where the cluster had to live outside the checkout, removing `.weelo/` still resets it:
    the next start has a new, empty database, and the old cluster's folder is gone."""
    data_dir, pginstall = locked_clone
    with embedded_postgres(data_dir, pginstall=pginstall) as url:
        row_count(url)
    home = (data_dir / "data").resolve().parents[1]
    assert not home.is_relative_to(data_dir.parents[2])  # outside the 0700 folder
    shutil.rmtree(data_dir.parent)
    embedded.forget_orphans()
    assert not home.exists()
    with embedded_postgres(data_dir, pginstall=pginstall) as url:
        assert row_count(url) == 0


def test_a_moved_checkout_keeps_its_relocated_cluster() -> None:
    """A checkout (outside the temp dir) renamed after its first run finds its cluster again
    through the link, though a sweep of orphaned clusters ran in between; one left unused past
    the grace period is swept."""
    locked = Path(tempfile.mkdtemp(prefix="weelo-test-", dir="/var/tmp"))  # mode 0700
    try:
        clone = locked / "clone"
        with embedded_postgres(clone / ".weelo" / "postgres") as url:
            row_count(url)
        moved = locked / "moved"
        clone.rename(moved)
        embedded.forget_orphans()
        with embedded_postgres(moved / ".weelo" / "postgres") as url:
            assert row_count(url) == 1
        home = (moved / ".weelo" / "postgres" / "data").resolve().parents[1]
        moved.rename(clone)
        embedded.forget_orphans()
        assert home.exists()
        embedded.forget_orphans(now=time.time() + embedded.ORPHAN_GRACE_S + 60)
        assert not home.exists()
    finally:
        shutil.rmtree(locked)
