"""`chatsock serve` and `chatsock check`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from aiohttp import web

from chatsock.config import ConfigError, Settings, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatsock", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run a worker")
    serve.add_argument("--host", help="bind address (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: server.port, 8080)")
    serve.add_argument("--config", help="config file (default: $CHATSOCK_CONFIG or ./config.toml)")
    check = commands.add_parser("check", help="print the provider chain; --ping tries each")
    check.add_argument("--ping", action="store_true", help="send each provider a 1-token request")
    check.add_argument("--config", help="config file")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    server: dict[str, object] = {}
    if getattr(args, "host", None):
        server["host"] = args.host
    if getattr(args, "port", None) is not None:
        server["port"] = args.port
    if not server:
        return load_settings(args.config)
    base = load_settings(args.config)
    merged = base.server.model_dump() | server
    return load_settings(args.config, server=merged)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"chatsock: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.server.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "check":
        from chatsock.check import run_check

        code: int = asyncio.run(run_check(settings, args.ping))
        return code
    from chatsock.app import create_app

    try:
        app = create_app(settings)
    except Exception as exc:  # a bad provider chain, etc.
        print(f"chatsock: {exc}", file=sys.stderr)
        return 2
    web.run_app(
        app,
        host=settings.server.host,
        port=settings.server.port,
        shutdown_timeout=settings.server.shutdown_grace_s + 2,
        print=lambda msg: print(msg, flush=True),
    )
    return 0
