"""Plain HTTP routes: liveness, the demo page and its static files."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web

# Liveness and readiness: open to probes whatever the Host (guards.py).
PROBES: Final = frozenset({"/healthz", "/readyz"})
STATIC_PREFIX: Final = "/static/"


def _root() -> Path:
    """The checkout (editable install), else the working directory (installed package)."""
    checkout = Path(__file__).resolve().parent.parent
    return checkout if (checkout / "static").is_dir() else Path.cwd()


VENDOR = {"socket.io.min.js": Path("node_modules/socket.io-client/dist/socket.io.min.js")}


def is_page(path: str) -> bool:
    """The demo page and its files: what a browser renders (its CSP applies)."""
    return path == "/" or path.startswith(STATIC_PREFIX)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def add_page_routes(app: web.Application, static_dir: Path | None) -> None:
    root = _root()
    static = static_dir or root / "static"

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(static / "index.html")

    async def vendor(request: web.Request) -> web.StreamResponse:
        relative = VENDOR.get(request.match_info["name"])
        path = root / relative if relative else None
        if path is None or not path.is_file():
            raise web.HTTPNotFound(
                text="vendor file missing: run `npm ci` (`make run` does it) "
                "to install socket.io-client"
            )
        return web.FileResponse(path)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", index)
    app.router.add_get(f"{STATIC_PREFIX}vendor/{{name}}", vendor)
    app.router.add_static(STATIC_PREFIX, static, name="static")
