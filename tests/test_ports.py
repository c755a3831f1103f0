"""A port already taken stops `weelo up` and `weelo run` with one line naming the port and the
variable to set (no traceback), and `weelo up` never says "weelo is up" because another program
(another running instance) answered on its ports."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.processes import free_base_port, run_weelo

pytestmark = pytest.mark.process


@contextlib.contextmanager
def listening(port: int) -> Iterator[socket.socket]:
    """A socket listening on 127.0.0.1:`port` that never answers (a program in the way)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield sock


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_args: object) -> None:
        pass


@contextlib.contextmanager
def another_instance(port: int) -> Iterator[None]:
    """Something on `port` that answers 200 to every GET, /health included: another instance."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def assert_one_clear_line(output: str, port: int, variable: str) -> None:
    assert "Traceback" not in output, output
    assert "weelo is up" not in output, output
    lines = [line for line in output.splitlines() if str(port) in line and "in use" in line]
    assert len(lines) == 1, output
    assert variable in lines[0], lines[0]


def test_up_with_the_gateway_port_taken_says_which_and_what_to_set(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    """GATEWAY_PORT held by another program: `weelo up` exits non-zero at once, naming the port
    and GATEWAY_PORT in one line, with no traceback."""
    base = free_base_port()
    with listening(base):
        done = run_weelo({**service_env, "GATEWAY_PORT": str(base)}, "up", timeout=60)
    assert done.returncode != 0
    assert_one_clear_line(done.stderr + done.stdout, base, "GATEWAY_PORT")


def test_up_never_announces_another_instance_answering_on_its_ports(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    """A service port (GATEWAY_PORT+101) held by a process that answers /health with 200, as
    another running instance does: no "weelo is up", one line naming that port, exit non-zero."""
    base = free_base_port()
    with another_instance(base + 101):
        done = run_weelo({**service_env, "GATEWAY_PORT": str(base)}, "up", timeout=60)
    assert done.returncode != 0
    assert_one_clear_line(done.stderr + done.stdout, base + 101, "GATEWAY_PORT")


@pytest.mark.parametrize(
    ("service", "variable"), [("broadcast", "HEALTH_PORT"), ("gateway", "GATEWAY_PORT")]
)
def test_run_with_its_port_taken_names_the_port_and_the_variable(
    service_env: dict[str, str], service: str, variable: str
) -> None:
    """`weelo run SERVICE` whose port (HEALTH_PORT, or GATEWAY_PORT for the gateway) is taken
    exits 2 with one line naming the port and that variable, and no traceback."""
    base = free_base_port()
    with listening(base):
        done = run_weelo({**service_env, variable: str(base)}, "run", service, timeout=60)
    assert done.returncode == 2, done.stderr
    assert_one_clear_line(done.stderr + done.stdout, base, variable)
