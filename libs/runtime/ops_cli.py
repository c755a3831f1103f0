"""`weelo ops lag` and `weelo ops dead-letters` (CONTRACT.md section 1): open the clients the
ops functions take, print a table for people or JSON (`--json`) for machines.

They read `REDIS_URL`, `REDIS_KEY_PREFIX` and (`lag` only) `DATABASE_URL`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

import msgspec
import psycopg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.events import deadletter
from libs.events.deadletter import DeadLetter
from libs.events.streams import dead_letter_stream
from libs.runtime.ops import LagReport, lag_report
from libs.runtime.redis_client import redis_client
from libs.runtime.settings import SettingsError
from libs.runtime.table import shorten, table


async def run_ops(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    prefix = environ.get("REDIS_KEY_PREFIX", "weelo:")
    redis = redis_client(_required(environ, "REDIS_URL"))
    try:
        if args.ops == "lag":
            return await _lag(args, redis, _required(environ, "DATABASE_URL"), prefix)
        return await _dead_letters(args, redis, dead_letter_stream(prefix))
    except (psycopg.Error, RedisError, OSError) as e:
        print(f"weelo: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        await redis.aclose()


def _required(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name)
    if not value:
        raise SettingsError(f"{name} is not set")
    return value


async def _lag(args: argparse.Namespace, redis: Redis, database_url: str, prefix: str) -> int:
    connect = psycopg.AsyncConnection.connect
    async with await connect(database_url, autocommit=True, application_name="weelo-ops") as conn:
        report = await lag_report(redis, conn, prefix)
    print(msgspec.json.encode(report).decode() if args.json else render_lag(report))
    return 0


def render_lag(report: LagReport) -> str:
    groups = table(
        ("STREAM", "GROUP", "WAITING", "PENDING", "OLDEST PENDING S", "RETRYING", "CONSUMERS"),
        (
            (
                g.stream,
                g.group,
                g.waiting,
                g.pending,
                g.oldest_pending_age_s,
                g.retrying,
                g.consumers,
            )
            for g in report.groups
        ),
    )
    roles = table(
        ("ROLE", "HOLDER", "SINCE", "UNTIL", "TOKEN"),
        ((r.role, r.holder, r.since, r.until, r.token) for r in report.roles),
    )
    oldest = report.outbox.oldest_age_s
    return "\n".join(
        (
            groups,
            "",
            f"outbox: {report.outbox.events} committed events not yet on a stream"
            + (f", oldest {oldest:.1f} s" if oldest is not None else ""),
            f"dead letters: {report.dead_letters}",
            "",
            roles if report.roles else "no single-holder role is held",
        )
    )


async def _dead_letters(args: argparse.Namespace, redis: Redis, stream: str) -> int:
    if args.show:
        return await _show(args, redis, stream)
    if args.replay or args.replay_all:
        return await _replay(args, redis, stream)
    if args.purge:
        return await _purge(args, redis, stream)
    found = await deadletter.read(redis, stream)
    if args.json:
        _print_json([view(d) for d in found])
    else:
        print(render_dead_letters(found))
    return 0


def render_dead_letters(found: list[DeadLetter]) -> str:
    if not found:
        return "no dead letters"
    rows = (
        (d.id, d.stream, d.group, d.entry_id, d.deliveries, d.first_failure, shorten(d.error, 60))
        for d in found
    )
    heading = ("ID", "STREAM", "GROUP", "ENTRY", "ATTEMPTS", "FIRST FAILURE", "ERROR")
    count = f"{len(found)} dead letter" + ("" if len(found) == 1 else "s")
    return table(heading, rows) + f"\n\n{count}"


async def _show(args: argparse.Namespace, redis: Redis, stream: str) -> int:
    found = await deadletter.read_one(redis, stream, args.show)
    if found is None:
        return _missing(args.show)
    if args.json:
        _print_json(view(found))
        return 0
    shown = view(found)
    fields = shown.pop("fields")
    for name, value in shown.items():
        print(f"{name}: {value}")
    print("fields:")
    for name, value in fields.items():
        print(f"  {name}: {value}")
    return 0


async def _replay(args: argparse.Namespace, redis: Redis, stream: str) -> int:
    chosen = await _chosen(redis, stream, args.replay)
    done = []
    for found in (f for f in chosen.values() if f is not None):
        new_id = await deadletter.replay(redis, stream, found)
        done.append({"id": found.id, "stream": found.stream, "group": found.group, "newId": new_id})
        if not args.json:
            print(f"replayed {found.id} to {found.stream} for group {found.group} as {new_id}")
    if args.json:
        _print_json(done)
    return _report_missing(chosen)


async def _purge(args: argparse.Namespace, redis: Redis, stream: str) -> int:
    chosen = await _chosen(redis, stream, args.purge)
    present = [i for i, found in chosen.items() if found is not None]
    await deadletter.purge(redis, stream, present)
    if args.json:
        _print_json({"purged": present})
    else:
        for record_id in present:
            print(f"purged {record_id}")
    return _report_missing(chosen)


async def _chosen(redis: Redis, stream: str, ids: list[str] | None) -> dict[str, DeadLetter | None]:
    """The records named (all of them when `ids` is None), None for one that is not there."""
    if ids is None:
        return {d.id: d for d in await deadletter.read(redis, stream)}
    return {i: await deadletter.read_one(redis, stream, i) for i in ids}


def _report_missing(chosen: dict[str, DeadLetter | None]) -> int:
    missing = [i for i, found in chosen.items() if found is None]
    for record_id in missing:
        _missing(record_id)
    return 1 if missing else 0


def _missing(record_id: str) -> int:
    print(f"weelo: no dead letter {record_id}", file=sys.stderr)
    return 1


def view(found: DeadLetter) -> dict[str, Any]:
    """A dead letter as JSON-able text (its fields decoded as UTF-8)."""
    return {
        "id": found.id,
        "stream": found.stream,
        "group": found.group,
        "entryId": found.entry_id,
        "deliveries": found.deliveries,
        "firstFailure": found.first_failure,
        "consumer": found.consumer,
        "error": found.error,
        "fields": {
            k.decode(errors="replace"): v.decode(errors="replace") for k, v in found.fields.items()
        },
    }


def _print_json(value: Any) -> None:
    print(msgspec.json.encode(value).decode())
