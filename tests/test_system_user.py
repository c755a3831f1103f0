"""Concurrent embedded starts under root agree on the server's system user: every one of them
gets the user id that `/etc/passwd` holds afterwards (the suite's workers start their PostgreSQL
at the same moment, and `useradd` run side by side rewrites the file over itself)."""

from __future__ import annotations

import multiprocessing
import os
import pwd
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.local.embedded import system_user

pytestmark = [
    pytest.mark.process,  # runs `useradd` from several processes
    pytest.mark.skipif(os.geteuid() != 0, reason="only root creates the server's user"),
]

STARTS = 8


def uid_of(name: str) -> int:
    return system_user(name).pw_uid


@pytest.fixture
def new_name() -> Iterator[str]:
    """A system user name that does not exist yet, deleted again afterwards."""
    name = f"weelo-t{secrets.token_hex(3)}"
    yield name
    subprocess.run(["userdel", name], capture_output=True, check=False)


def test_concurrent_starts_create_one_user_and_all_get_its_id(new_name: str) -> None:
    """Eight processes ask for the missing user at once: one user exists afterwards, and each
    process was given its id (not the id of an entry another `useradd` overwrote)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(STARTS) as pool:
        got = pool.map(uid_of, [new_name] * STARTS)
    passwd = Path("/etc/passwd").read_text().splitlines()
    entries = [line for line in passwd if line.startswith(f"{new_name}:")]
    assert len(entries) == 1
    assert got == [pwd.getpwnam(new_name).pw_uid] * STARTS
