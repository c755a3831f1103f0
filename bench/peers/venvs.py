"""Virtualenvs of their own for peers whose pins clash with this project's (arq needs redis<6),
made once under `.weelo/bench/` from a requirements file beside this module, remade when it
changes."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import ROOT

PEERS = Path(__file__).resolve().parent
HOME = ROOT / ".weelo" / "bench"


def peer_python(name: str) -> Path:
    """The interpreter of peer `name`'s virtualenv (`bench/peers/<name>.txt`), made if missing."""
    wanted = (PEERS / f"{name}.txt").read_bytes()
    venv = HOME / f"{name}-venv"
    stamp = venv / ".requirements-sha256"
    digest = hashlib.sha256(wanted).hexdigest()
    python = venv / "bin" / "python"
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    print(f"bench: installing {name} into {venv} (once)", flush=True)
    uv = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    if Path(uv).exists():
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
        install = [uv, "pip", "install", "-q", "--python", str(python)]
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        install = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*install, "-r", str(PEERS / f"{name}.txt")], check=True)
    stamp.write_text(digest)
    return python
