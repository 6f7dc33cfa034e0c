"""`chatsock serve`, `chatsock check` and `chatsock token`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys

from chatsock.auth import admin_claims, make_token, parse_ttl, refuse_exposed_anonymous
from chatsock.config import ConfigError, Settings, load_settings
from chatsock.event_loop import new_event_loop
from chatsock.logsafe import configure_logging
from chatsock.store import StoreUnavailable


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
    token = commands.add_parser(
        "token", help="print a development token signed with auth.jwt_secret"
    )
    token.add_argument("--sub", required=True, help="the user the token names")
    token.add_argument(
        "--ttl", type=_ttl, default="1h", help="lifetime: 90s, 30m, 1h, 2d (default 1h)"
    )
    token.add_argument("--admin", action="store_true", help="add auth.admin_claim (role=admin)")
    token.add_argument("--config", help="config file")
    return parser


def _ttl(text: str) -> float:
    try:
        return parse_ttl(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _print_token(settings: Settings, args: argparse.Namespace) -> int:
    try:
        extra = admin_claims(settings.auth) if args.admin else None
        print(make_token(settings.auth, args.sub, args.ttl, extra))
    except ValueError as exc:
        print(f"chatsock: {exc}", file=sys.stderr)
        return 2
    return 0


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
    if args.command == "token":
        return _print_token(settings, args)
    server = settings.server
    configure_logging(server.log_level, server.log_format, server.worker_id)
    if args.command == "check":
        from chatsock.check import run_check

        code: int = asyncio.run(run_check(settings, args.ping))
        return code
    from chatsock.app import create_app
    from chatsock.serving import serve

    refusal = refuse_exposed_anonymous(settings)
    if refusal is not None:
        print(f"chatsock: {refusal}", file=sys.stderr)
        return 2
    if settings.auth.mode == "none":
        logging.getLogger("chatsock").warning(
            "auth.mode is none: every client is one anonymous user who can read and stop "
            'every session; set auth.mode = "jwt" before exposing this server '
            "(docs/security.md)"
        )
    try:
        app = create_app(settings)
    except Exception as exc:  # a bad provider chain, etc.
        print(f"chatsock: {exc}", file=sys.stderr)
        return 2
    try:
        loop = new_event_loop(settings.server.event_loop)
    except RuntimeError as exc:
        print(f"chatsock: {exc}", file=sys.stderr)
        return 2
    host, port = settings.server.host, settings.server.port
    try:
        # Bound here, before the app starts: a taken port is one line, never a
        # "ready" followed by a traceback.
        listener = socket.create_server((host, port), family=_family(host))
    except OSError as exc:
        loop.close()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(
            f"chatsock: cannot listen on {host}:{port}: {reason}; "
            "stop what holds it or choose another --port",
            file=sys.stderr,
        )
        return 2
    try:
        loop.run_until_complete(serve(app, listener))
    except StoreUnavailable as exc:  # at start-up: Redis unreachable, wrong password
        print(f"chatsock: {exc}", file=sys.stderr)
        return 2
    finally:
        listener.close()
        _close_loop(loop)
    return 0


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left on `loop` (as aiohttp's run_app does), then close it."""
    left = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in left:
        task.cancel()
    if left:
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
