"""The `weelo` command: up, run, migrate, token, ops, demo (CONTRACT.md section 1)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from libs.runtime.settings import PortInUse, SettingsError

SERVICES = ("gateway", "broadcast", "acceptance", "timer", "presence", "fanout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weelo", description="Weelo dispatch backend")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="migrate and run every service in the foreground")
    up.add_argument("--gateways", type=_positive, default=1, help="gateway processes (default 1)")
    run = commands.add_parser("run", help="run one service in the foreground")
    run.add_argument("service", choices=SERVICES)
    commands.add_parser("migrate", help="apply database migrations (safe to repeat)")
    token = commands.add_parser("token", help="print a signed access token")
    token.add_argument("--role", required=True, choices=("customer", "transporter", "driver"))
    token.add_argument("--sub", required=True)
    token.add_argument("--ttl", type=_positive, default=3600, help="lifetime in seconds")
    token.add_argument("--refresh", action="store_true", help="sign a refresh token instead")
    docs = commands.add_parser("docs", help="print generated documentation")
    docs.add_argument("page", choices=("events",))
    demo = commands.add_parser("demo", help="register a demo fleet, print signed-in screen links")
    demo.add_argument("--url", help="the gateway (default: GATEWAY_HOST and GATEWAY_PORT)")
    demo.add_argument("--ttl", type=_positive, default=1800, help="link lifetime in seconds")
    demo.add_argument("--start", action="store_true", help="start `weelo up` if nothing answers")
    _add_ops(commands)
    return parser


def _add_ops(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ops = commands.add_parser("ops", help="streams, consumer groups and dead letters")
    which = ops.add_subparsers(dest="ops", required=True)
    lag = which.add_parser("lag", help="what waits in each stream, group and the outbox")
    lag.add_argument("--json", action="store_true", help="JSON for machines")
    dead = which.add_parser("dead-letters", help="list, show, replay or purge dead letters")
    dead.add_argument("--json", action="store_true", help="JSON for machines")
    action = dead.add_mutually_exclusive_group()
    action.add_argument("--show", metavar="ID", help="one dead letter in full")
    action.add_argument("--replay", metavar="ID", nargs="+", help="put them back on their stream")
    action.add_argument("--replay-all", action="store_true", help="replay every dead letter")
    action.add_argument("--purge", metavar="ID", nargs="+", help="remove them")


def _positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except PortInUse as e:
        print(f"weelo: {e}", file=sys.stderr)
        return 2
    except SettingsError as e:
        print(f"weelo: configuration error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from libs.runtime.secrets import SecretsError, bootstrap_secrets

    if args.command == "docs":
        from libs.events.docs import render_events_doc

        sys.stdout.write(render_events_doc())
        return 0
    try:
        bootstrap_secrets(os.environ)
    except SecretsError as e:
        print(f"weelo: {e}", file=sys.stderr)
        return 3
    handler = {
        "up": _up,
        "run": _run,
        "migrate": _migrate,
        "token": _token,
        "ops": _ops,
        "demo": _demo,
    }[args.command]
    return handler(args)


def _up(args: argparse.Namespace) -> int:
    from libs.local.supervisor import run_system
    from libs.runtime.logging import configure_logging, instance_id

    # Its own lines (migrations) like the services': readable on a terminal, else JSON.
    configure_logging("up", instance_id("up"), os.environ.get("LOG_LEVEL", "INFO"))
    return run_system(os.environ, gateways=args.gateways)


def _run(args: argparse.Namespace) -> int:
    import uvloop

    from libs.runtime.logging import configure_logging, instance_id
    from libs.runtime.service import run_service
    from libs.runtime.settings import load_settings

    settings = load_settings()
    instance = instance_id(args.service)
    configure_logging(args.service, instance, os.environ.get("LOG_LEVEL", "INFO"))
    spec = importlib.import_module(f"services.{args.service}.main").SERVICE
    return uvloop.run(run_service(spec, settings, instance))


def _migrate(_args: argparse.Namespace) -> int:
    from libs.runtime.logging import configure_logging, instance_id
    from libs.runtime.postgres import application_name, conninfo
    from libs.runtime.settings import load_settings
    from libs.schema.migrate import migrate

    configure_logging("migrate", instance_id("migrate"))
    applied = migrate(conninfo(load_settings().database_url, application_name("migrate")))
    print(f"migrations applied: {len(applied)}" + (f" ({', '.join(applied)})" if applied else ""))
    return 0


def _token(args: argparse.Namespace) -> int:
    from libs.runtime.settings import local_secret, state_dir
    from libs.runtime.tokens import issue

    name = "JWT_REFRESH_SECRET" if args.refresh else "JWT_SECRET"
    secret = os.environ.get(name) or local_secret(state_dir(os.environ), name.lower())
    print(issue(secret, role=args.role, sub=args.sub, ttl_s=args.ttl))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from libs.local.demo import default_url, run_demo

    url = (args.url or default_url(os.environ)).rstrip("/")
    return run_demo(os.environ, url=url, ttl_s=args.ttl, start=args.start)


def _ops(args: argparse.Namespace) -> int:
    import asyncio

    from libs.runtime.ops_cli import run_ops

    return asyncio.run(run_ops(args, os.environ))


if __name__ == "__main__":
    raise SystemExit(main())
