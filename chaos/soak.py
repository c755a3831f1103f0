"""One soak run, start to end: a scratch database and a private Redis, the cluster, the
workload and the faults until the time is up, a settle period with every socket still open,
then the checks and the report. Everything it started is stopped, whatever happens."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from chaos.api import Api, new_client
from chaos.checker import check
from chaos.cluster import Cluster, service_env
from chaos.config import SoakConfig
from chaos.faults import FaultContext, inject
from chaos.memory import Memory, judge_memory, measure, settle_memory
from chaos.monitor import watch_leases, watch_memory
from chaos.records import FACTS, STORE, RunFacts, RunLog
from chaos.redis_server import PrivateRedis
from chaos.report import render
from chaos.store import Store, dump_store, read_store
from chaos.supervise import supervise
from chaos.system_check import RoleMove
from chaos.verdicts import Verdicts
from chaos.workload import build
from libs.local.probes import scratch_database

IDLE_AFTER_S = 3.0
PREFIX = "chaos:"


@dataclass(frozen=True)
class SoakResult:
    verdicts: Verdicts
    moves: list[RoleMove]
    report: str
    run_dir: Path


@dataclass(frozen=True)
class Deployment:
    config: SoakConfig
    log: RunLog
    cluster: Cluster
    redis: PrivateRedis
    database_url: str
    secret: str  # JWT_SECRET: the workload signs its parties' tokens with it
    run_dir: Path


@dataclass(frozen=True)
class Loaded:
    closed_at: float  # when the sockets were closed
    transporter_of: dict[str, str]  # driver: its transporter


async def run_soak(config: SoakConfig) -> SoakResult:
    run_dir = config.run_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-seed{config.seed}"
    log = RunLog()
    print(f"chaos: seed {config.seed}, run directory {run_dir}", flush=True)
    with scratch_database(config.server_url, "weelo_chaos") as database_url:
        server = PrivateRedis(run_dir / "redis")
        server.start()
        try:
            env = service_env(config, database_url, server.url, run_dir / "state")
            cluster = Cluster.create(config, env, run_dir / "logs", log)
            deployment = Deployment(
                config, log, cluster, server, database_url, env["JWT_SECRET"], run_dir
            )
            try:
                verdicts, moves = await _run(deployment)
            finally:
                cluster.stop_all()
        finally:
            server.stop(save=False)
            log.dump(run_dir / "log")
    return SoakResult(verdicts, moves, render(config, log, verdicts, moves), run_dir)


async def _run(d: Deployment) -> tuple[Verdicts, list[RoleMove]]:
    await d.cluster.start()
    print(f"chaos: {len(d.cluster.slots)} processes healthy", flush=True)
    async with _watching(d):
        await asyncio.sleep(IDLE_AFTER_S)
        idle = await asyncio.to_thread(lambda: measure(d.redis.client(), PREFIX).used)
        loaded = await _load(d)
    return await _check(d, idle, loaded)


@contextlib.asynccontextmanager
async def _watching(d: Deployment) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(watch_leases(d.database_url, d.log, stop)),
        asyncio.create_task(watch_memory(d.redis.url, d.log, stop)),
        asyncio.create_task(supervise(d.cluster, stop)),
    ]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def _load(d: Deployment) -> Loaded:
    """Workload and faults for `config.seconds`, then the settle with every socket open."""
    config, log = d.config, d.log
    async with new_client() as client:
        workload = build(
            Api(client, d.cluster.gateways, log), log, d.secret, config.population, config.seed
        )
        await workload.register_fleet()
        await workload.open_sockets()
        until = (log.marks.setdefault("load_start", time.time())) + config.seconds
        faults = FaultContext(d.cluster, d.redis, d.database_url, log, random.Random(config.seed))
        print(f"chaos: load for {config.seconds:g} s", flush=True)
        await asyncio.gather(
            workload.run(until), inject(faults, config.fault_kinds, config.fault_interval_s, until)
        )
        log.marks["load_end"] = time.time()
        workload.calm.set()
        print(f"chaos: settling for {config.settle_s:g} s", flush=True)
        await asyncio.sleep(config.settle_s)
        closed_at = log.marks["sockets_closed"] = time.time()
        await workload.close_sockets()
    return Loaded(closed_at, {dr: t.party.sub for t in workload.transporters for dr in t.drivers})


def _keep(d: Deployment, store: Store, loaded: Loaded, idle: int, memory: Memory) -> None:
    """What `python -m chaos --recheck` needs to check this run again."""
    d.run_dir.mkdir(parents=True, exist_ok=True)
    dump_store(store, d.run_dir / STORE)
    facts = RunFacts(
        seconds=d.config.seconds,
        seed=d.config.seed,
        fault_interval_s=d.config.fault_interval_s,
        fault_kinds=d.config.fault_kinds,
        closed_at=loaded.closed_at,
        transporter_of=loaded.transporter_of,
        idle_memory=idle,
        end_memory=(memory.used, memory.allowed, memory.by_part),
    )
    (d.run_dir / FACTS).write_bytes(msgspec.json.encode(facts))


async def _check(d: Deployment, idle: int, loaded: Loaded) -> tuple[Verdicts, list[RoleMove]]:
    print("chaos: checking", flush=True)
    store = await asyncio.to_thread(read_store, d.database_url, d.redis.client(10.0), PREFIX)
    verdicts, moves = check(store, d.log, loaded.transporter_of, loaded.closed_at)
    long_run = d.config.long_run
    memory = await asyncio.to_thread(
        settle_memory, d.redis.client(10.0), PREFIX, idle, wait=long_run
    )
    _keep(d, store, loaded, idle, memory)
    peak = max((m.used_memory for m in d.log.memory), default=memory.used)
    judge_memory(verdicts, memory, idle, peak, strict=long_run)
    return verdicts, moves
