"""Small local helpers shared by `weelo up`, the tests and the benchmarks: a free port, whether a
port is free, a health probe, and a throwaway migrated database."""

from __future__ import annotations

import contextlib
import errno
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import psycopg
from psycopg import sql

from libs.schema.migrate import migrate


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    """Whether `host`:`port` is free of other listeners now (bound as `service.bind_socket`
    does: SO_REUSEADDR, so only a live listener or connection makes it taken). Any other failure
    to bind (an address not of this machine) is the service's to report."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e.errno != errno.EADDRINUSE
    return True


def healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether `url` answers 200, asked directly (never through an HTTP proxy from the env)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            status: int = response.status
    except (urllib.error.URLError, OSError):
        return False
    return status == 200


@contextlib.contextmanager
def scratch_database(server_url: str, name_prefix: str = "weelo_scratch") -> Iterator[str]:
    """A new migrated database on the server at `server_url`, dropped (forcefully) afterwards."""
    name = f"{name_prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(server_url, dbname=name)
    try:
        migrate(url)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
