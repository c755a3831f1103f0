"""Local state (`.weelo/`: generated keys, embedded servers) is the checkout's, whatever folder a
command runs from: `weelo token` from another folder signs with the key `weelo up` serves with."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from libs.runtime.settings import load_settings, local_secret, state_dir
from libs.runtime.tokens import verify
from tests.processes import ROOT

WEELO = ROOT / ".venv" / "bin" / "weelo"


def local_env() -> dict[str, str]:
    """The environment of a new user's shell: no keys, no state dir, no servers named."""
    drop = ("TEST_", "PYTEST_", "JWT_", "WEELO_", "DATABASE_URL", "REDIS_URL")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def test_state_dir_is_the_checkouts_whatever_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without WEELO_STATE_DIR the state dir is `.weelo` at the checkout's root, from any cwd;
    WEELO_STATE_DIR still wins."""
    monkeypatch.chdir(tmp_path)
    assert state_dir({}) == ROOT / ".weelo"
    assert state_dir({"WEELO_STATE_DIR": str(tmp_path / "s")}) == tmp_path / "s"
    assert load_settings({"DATABASE_URL": "x", "REDIS_URL": "y"}).state_dir == ROOT / ".weelo"


@pytest.mark.skipif(not WEELO.exists(), reason="needs the checkout's .venv")
@pytest.mark.parametrize("where", ["elsewhere", "subfolder"])
def test_token_from_another_folder_is_signed_with_the_checkouts_key(
    tmp_path: Path, where: str
) -> None:
    """`weelo token` run from a folder outside the checkout, or from one of its subfolders,
    creates no `.weelo` there and signs with the key under the checkout's `.weelo/`, the one
    `weelo up` (and the gateway it starts) reads."""
    cwd = tmp_path if where == "elsewhere" else ROOT / "docs"
    before = (cwd / ".weelo").exists()
    done = subprocess.run(
        [str(WEELO), "token", "--role", "customer", "--sub", "c1"],
        cwd=cwd,
        env=local_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert (cwd / ".weelo").exists() == before
    served = load_settings({"DATABASE_URL": "x", "REDIS_URL": "y"}).jwt_secret
    assert served == local_secret(ROOT / ".weelo", "jwt_secret")
    assert verify(done.stdout.strip(), [served]).sub == "c1"
