"""Logs are JSON lines when stdout is a pipe or a file, and readable lines (no JSON) when it is a
terminal; neither form ever holds a credential (`weelo up` in a terminal: tests/test_up.py)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest

from tests.processes import ROOT

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjMSJ9.c2lnbmF0dXJl"
PROGRAM = f"""
import logging
import structlog
from libs.runtime.logging import configure_logging
configure_logging("gateway", "gateway-test-1")
log = structlog.get_logger("t")
log.info("service_started", port=8000, url="/v1/ws?token=s3cret-value")
logging.getLogger("uvicorn.error").info("Bearer {JWT} seen")
try:
    raise ValueError("{JWT}")
except ValueError:
    log.exception("handler_failed")
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs a pty")


def run_logging(through_terminal: bool) -> str:
    """The output of PROGRAM with its stdout a pty (a terminal) or a pipe."""
    env = {**os.environ, "TERM": "xterm"}
    if not through_terminal:
        done = subprocess.run(
            [sys.executable, "-c", PROGRAM], cwd=ROOT, env=env, capture_output=True, check=True
        )
        return done.stdout.decode()
    leader, follower = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-c", PROGRAM], cwd=ROOT, env=env, stdout=follower
    ) as child:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert child.wait(30) == 0
    os.close(leader)
    return b"".join(chunks).decode()


def assert_no_credential(output: str) -> None:
    assert "s3cret-value" not in output and JWT not in output, output
    assert "c2lnbmF0dXJl" not in output, output


def test_a_pipe_gets_one_json_object_per_line() -> None:
    """Through a pipe every line is a JSON object naming the event, service and instance."""
    output = run_logging(through_terminal=False)
    lines = [json.loads(line) for line in output.splitlines()]
    assert lines[0]["event"] == "service_started"
    assert all(line["service"] == "gateway" for line in lines)
    assert lines[0]["port"] == 8000
    assert_no_credential(output)


def test_a_terminal_gets_readable_lines_without_credentials() -> None:
    """On a terminal no line is JSON; the event, its fields and the traceback read as text, and
    the token in a URL, a Bearer header and an exception's message are all redacted."""
    output = run_logging(through_terminal=True)
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, output
    assert not any(line.lstrip().startswith("{") for line in lines), output
    assert "service_started" in output and "port" in output and "8000" in output
    assert "handler_failed" in output and "ValueError" in output and "Traceback" in output
    assert "[redacted]" in output
    assert_no_credential(output)
