"""The soak's figures: the targets (met or missed), then per minute each endpoint's latency and
errors and every process's memory, the PNGs, and how the city was set up."""

from __future__ import annotations

import os
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bench import soak_plots
from bench.common import REPORT, Figures, percentile, report_path, verdict
from bench.soak_load import (
    ACCEPT_AFTER_S,
    ASSIGN_AFTER_S,
    CANCEL_AFTER_S,
    CANCEL_EVERY,
    ENDPOINTS,
    REUSE_AFTER_S,
    mean_notified,
)

if TYPE_CHECKING:
    from bench.soak import Sample, Soak

MIB = 1024 * 1024
TOLERANCE = 0.10
Row = tuple[str, str]


def _period(soak: Soak, bucket: int) -> str:
    b = soak.sizes.bucket_s
    name = f"minute {bucket + 1}" if b == 60 else f"period {bucket + 1} of {b:g} s"
    return f"{name} ({bucket * b:g}-{(bucket + 1) * b:g} s)"


def _buckets(soak: Soak) -> int:
    """Whole buckets in the run (a trailing part of one is left out)."""
    return max(1, int(soak.sizes.seconds // soak.sizes.bucket_s))


def _in(soak: Soak, bucket: int) -> list[Sample]:
    b = soak.sizes.bucket_s
    return [s for s in soak.samples if bucket * b <= s.at < (bucket + 1) * b]


def _mean(values: Sequence[int]) -> float:
    return statistics.mean(values) if values else 0.0


def _memory(soak: Soak, bucket: int) -> dict[str, float]:
    """Each service process's RSS, the load generator's, Redis's `used_memory` and RSS and the
    database's size: the mean of the bucket's samples (bytes)."""
    samples = _in(soak, bucket)
    if not samples:
        return {}
    out = {name: _mean([s.rss[name] for s in samples]) for name in samples[0].rss}
    out["Redis used_memory"] = _mean([s.redis_used for s in samples])
    out["Redis RSS"] = _mean([s.redis_rss for s in samples])
    out["PostgreSQL database"] = _mean([s.database_bytes for s in samples])
    return out


def _errors(soak: Soak, bucket: int | None = None) -> Counter[str]:
    """Error kinds by endpoint (`endpoint: kind`) in one bucket, or in the whole run."""
    out: Counter[str] = Counter()
    for (endpoint, b), kinds in soak.recorder.errors.items():
        if bucket is None or b == bucket:
            for kind, n in kinds.items():
                out[f"{endpoint}: {kind}"] += n
    return out


def _socket_errors(soak: Soak, bucket: int | None = None) -> tuple[int, int]:
    """(sockets closed, openings failed) in one bucket, or over the run."""
    b = soak.sizes.bucket_s
    first, last = (0, _buckets(soak)) if bucket is None else (bucket, bucket + 1)
    start, end = soak.t0_wall + first * b, soak.t0_wall + last * b
    _, closed, failed, _ = soak.sockets.between(start, end)
    return closed, failed


def _latencies(soak: Soak, endpoint: str, bucket: int | None = None) -> list[float]:
    return [
        s * 1000
        for (e, b), values in soak.recorder.latencies.items()
        if e == endpoint and (bucket is None or b == bucket)
        for s in values
    ]


def _stats(ms: Sequence[float]) -> str:
    if not ms:
        return "none"
    return f"{statistics.median(ms):.1f} / {percentile(ms, 99):.1f} ms (n={len(ms):,})"


def _load_at(soak: Soak, bucket: int) -> str:
    samples = _in(soak, bucket)
    return f"load average {samples[-1].load:.2f}" if samples else "no sample"


# --- the rows ---------------------------------------------------------------------------------


def _error_target(soak: Soak) -> Row:
    errors = _errors(soak)
    closed, failed = _socket_errors(soak)
    seeding = sum(soak.seeded.failures.values())
    total = sum(errors.values()) + closed + failed + seeding
    detail = ", ".join(f"{n:,} x {k}" for k, n in errors.most_common(6)) or "no HTTP error"
    return (
        "target: no error (HTTP answers other than each endpoint's success, connection resets, "
        "sockets closed or refused, failed registrations)",
        f"{verdict(total == 0)}: {total:,} errors; {detail}; {closed:,} sockets closed, "
        f"{failed:,} openings refused; {seeding:,} registrations failed; "
        f"load average {soak.loads[0]:.2f} → {soak.loads[1]:.2f}",
    )


def _memory_target(soak: Soak) -> list[Row]:
    """Every service process's RSS and Redis memory: the last minute against the second."""
    last = _buckets(soak) - 1
    if last < 1:
        return [
            ("target: memory of the last minute within 10 % of the second's", "n/a: one minute")
        ]
    second, final = _memory(soak, 1), _memory(soak, last)
    services = _service_names(soak)
    changes = {n: final[n] / second[n] - 1 for n in [*services, "Redis used_memory"] if second[n]}
    worst = max(changes, key=lambda n: abs(changes[n]))
    ok = all(abs(c) <= TOLERANCE for c in changes.values())
    per = " · ".join(f"{n} {c * 100:+.1f} %" for n, c in changes.items())
    loads = f"{_load_at(soak, 1)} → {_load_at(soak, last).removeprefix('load average ')}"
    return [
        (
            f"target: last minute's RSS of every service process and Redis `used_memory` within "
            f"{TOLERANCE:.0%} of the second minute's (means of their samples)",
            f"{verdict(ok)}: largest change {worst} {changes[worst] * 100:+.1f} % "
            f"({second[worst] / MIB:.1f} → {final[worst] / MIB:.1f} MiB); {loads}",
        ),
        (f"{_period(soak, 1)} → {_period(soak, last)}, each", per),
    ]


def _service_names(soak: Soak) -> list[str]:
    first = soak.samples[0].rss if soak.samples else {}
    return [n for n in first if n != "load generator" and not n.startswith("socket clients")]


def _postgres_row(soak: Soak) -> Row:
    if not soak.samples:
        return ("PostgreSQL database size", "no sample")
    start, end = soak.samples[0], soak.samples[-1]
    grown = (end.database_bytes - start.database_bytes) / MIB
    minutes = max(1e-9, (end.at - start.at) / 60)
    return (
        "PostgreSQL: the scratch database's size (`pg_database_size`)",
        f"{start.database_bytes / MIB:,.1f} MiB at the start → {end.database_bytes / MIB:,.1f} "
        f"MiB at the end: +{grown:,.1f} MiB, {grown / minutes:,.1f} MiB/min; load average "
        f"{start.load:.2f} → {end.load:.2f}",
    )


def _cpu_row(soak: Soak) -> Row:
    """Each process's share of a core between the first sample and the last."""
    if len(soak.samples) < 2:
        return ("CPU per process", "fewer than two samples")
    start, end = soak.samples[0], soak.samples[-1]
    span = max(1e-9, end.at - start.at)
    used = {n: (end.cpu[n] - start.cpu.get(n, 0.0)) / span for n in end.cpu}
    used["PostgreSQL backends"] = _backends_cpu(soak) / span
    per = " · ".join(f"{n} {c:.2f}" for n, c in sorted(used.items(), key=lambda kv: -kv[1]))
    return (
        f"CPU (cores, {span:.0f} s from the first sample to the last; PostgreSQL's: its backends "
        "serving the scratch database)",
        f"{sum(used.values()):.2f} in all: {per}; load average {start.load:.2f} → {end.load:.2f}",
    )


def _backends_cpu(soak: Soak) -> float:
    """CPU seconds the database's backends used between the first sample and the last (a
    backend's time after its last sample, if it ended before the soak's, is not seen)."""
    first, seen = soak.samples[0].backends, {}
    for sample in soak.samples:
        seen.update(sample.backends)
    return sum(cpu - first.get(pid, 0.0) for pid, cpu in seen.items())


def _totals(soak: Soak) -> list[Row]:
    rows = []
    for endpoint, (route, status) in ENDPOINTS.items():
        ms = _latencies(soak, endpoint)
        errors = sum(n for k, n in _errors(soak).items() if k.startswith(f"{endpoint}:"))
        rate = len(ms) / soak.sizes.seconds
        rows.append(
            (
                f"{endpoint} (`{route}`, success {status}), whole run: p50 / p99",
                f"{_stats(ms)}, max {max(ms, default=0):.1f} ms; {rate:,.1f}/s; "
                f"{errors:,} errors; load average {soak.loads[0]:.2f} → {soak.loads[1]:.2f}",
            )
        )
    return rows


def _per_bucket(soak: Soak, bucket: int) -> list[Row]:
    parts = [f"{e} {_stats(_latencies(soak, e, bucket))}" for e in ENDPOINTS]
    errors = _errors(soak, bucket)
    b = soak.sizes.bucket_s
    frames, closed, failed, opened = soak.sockets.between(
        soak.t0_wall + bucket * b, soak.t0_wall + (bucket + 1) * b
    )
    rows = [
        (
            f"{_period(soak, bucket)}: p50 / p99; {_load_at(soak, bucket)}",
            " · ".join(parts) + f"; {sum(errors.values()):,} HTTP errors; sockets: "
            f"{opened:,} open, {frames:,} frames received, {closed:,} closed, {failed:,} refused",
        )
    ]
    if errors:
        rows.append(
            (
                f"{_period(soak, bucket)}: errors",
                ", ".join(f"{n:,} x {k}" for k, n in errors.most_common(6)),
            )
        )
    memory = _memory(soak, bucket)
    rows.append(
        (
            f"{_period(soak, bucket)}: memory (MiB, mean of its samples)",
            " · ".join(f"{k} {v / MIB:,.1f}" for k, v in memory.items()),
        )
    )
    return rows


def _setup(soak: Soak) -> list[Row]:
    s, seeded, tally = soak.sizes, soak.seeded, soak.workload.tally
    vehicles_rate = s.vehicles / max(seeded.vehicles_s, 1e-9)
    drained = (
        f"{soak.drained_s:.1f} s after the last answer"
        if soak.drained_s is not None
        else "**not within 10 minutes**"
    )
    return [
        (
            "city registered through the HTTP API (`PUT /v1/transporters/me/vehicles|drivers`)",
            f"{s.vehicles:,} vehicles of {s.transporters:,} transporters in "
            f"{seeded.vehicles_s:.0f} s ({vehicles_rate:,.0f}/s), {s.drivers:,} drivers in "
            f"{seeded.drivers_s:.0f} s, all online (`PUT /v1/drivers/me/availability`) in "
            f"{seeded.online_s:.0f} s",
        ),
        (
            "sockets held (customers, transporters, drivers: each one user's)",
            f"{len(soak.workload.fleet.customers):,} customers + "
            f"{len(soak.workload.fleet.socket_transporters):,} transporters + "
            f"{len(soak.workload.fleet.socket_drivers()):,} drivers, opened in "
            f"{soak.sockets.opened_in:.0f} s",
        ),
        (
            "journeys",
            f"{tally.journeys:,} searches; transporters notified per search "
            f"{mean_notified(tally)}; driver assignment planned for "
            f"{soak.workload.assign_share:.0%} of journeys ({tally.assignments_planned:,}), "
            f"{tally.no_free_driver:,} of them found no free driver; "
            f"{tally.customers_busy:,} waits for a free customer",
        ),
        (
            "drivers online at the end (read model), heartbeats working",
            f"{soak.online_at_end:,} of {s.drivers:,}",
        ),
        ("every event handled (outbox empty, every consumer group acknowledged all)", drained),
    ]


def _plots(soak: Soak, folder: Path) -> list[str]:
    """Write the two PNGs; the markdown lines that show them (links relative to the report)."""
    buckets = range(_buckets(soak))
    p99 = {
        e: [(b, percentile(ms, 99)) for b in buckets if (ms := _latencies(soak, e, b))]
        for e in ENDPOINTS
    }
    latency, memory = folder / "soak-latency.png", folder / "soak-memory.png"
    soak_plots.latency_png(latency, soak.sizes.bucket_s, p99)
    series = {n: [s.rss[n] for s in soak.samples] for n in _service_names(soak)}
    series["Redis used_memory"] = [s.redis_used for s in soak.samples]
    soak_plots.memory_png(memory, [s.at for s in soak.samples], series)
    base = report_path().parent
    return [
        f"![p99 latency per endpoint per minute]({os.path.relpath(latency, base)})",
        f"![RSS of every service process and Redis memory]({os.path.relpath(memory, base)})",
    ]


def report(figures: Figures, soak: Soak, png_dir: Path) -> None:
    figures.rows += [
        _error_target(soak),
        *_memory_target(soak),
        _postgres_row(soak),
        _cpu_row(soak),
    ]
    figures.rows += _totals(soak)
    figures.rows += _setup(soak)
    for bucket in range(_buckets(soak)):
        figures.rows += _per_bucket(soak, bucket)
    figures.notes += _plots(soak, png_dir)
    figures.notes.append(_how(soak))
    figures.notes.append(
        f"Load average (1 min) {soak.loads[0]:.2f} when the soak began and {soak.loads[1]:.2f} "
        f"at its end, on {os.cpu_count()} cores (each row gives its own); other work (other "
        "engineers' tests and benchmarks) shares this machine."
        + ("" if report_path() == REPORT else " A trial: figures kept out of the docs.")
    )


def _how(soak: Soak) -> str:
    s = soak.sizes
    return (
        "Two `weelo run` processes of every service (gateway, broadcast, acceptance, timer, "
        "presence, fan-out) on a scratch database (`DB_POOL_SIZE` 6 for gateways and fan-outs, "
        "5 for the rest, the fewest each accepts besides its dedicated connections: PostgreSQL's "
        "100 connections are shared) and a redis-server of the soak's own (no snapshots, as the "
        "machine's), every setting else at its default (`BROADCAST_TIMEOUT_SECONDS` 120, "
        "`BROADCAST_RADIUS_KM` 25, `PRESENCE_TTL_SECONDS` 30). Vehicles (10 types, 5 per "
        "transporter) at uniform points of a 100 x 100 km square; one driver for every second "
        f"transporter. A journey every {1 / s.search_rate * 1000:.0f} ms (open loop): a "
        "customer holding a socket searches one truck of the type of a chosen transporter's "
        "vehicle, picked up at that vehicle; that transporter accepts the slot "
        f"{ACCEPT_AFTER_S:g} s after the 201; on the planned share it assigns its driver and "
        f"that vehicle {ASSIGN_AFTER_S:g} s later (the share is set so the drivers last the "
        "run: the API has no end of trip, so an assigned driver stays busy); one journey in "
        f"{CANCEL_EVERY} is cancelled by its customer {CANCEL_AFTER_S:g} s after that (its "
        f"driver and vehicle are used again {REUSE_AFTER_S:g} s later). Half the drivers "
        f"heartbeat over HTTP every {s.heartbeat_s:g} s, the other half hold a socket. The "
        "search's latency counts from its scheduled time, a heartbeat's from its own; the "
        "other steps from when they were sent. Each user talks to one of the two gateways. The "
        "load generator (one asyncio process, raw keep-alive HTTP/1.1 connections) and the two "
        "socket-holder processes (`websockets` clients with their defaults) share the machine; "
        "their RSS is in the memory rows but not in the target."
    )
