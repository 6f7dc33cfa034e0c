"""Plain HTTP routes: liveness, the demo page and its static files."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
VENDOR_FILES = {"socket.io.min.js": ROOT / "node_modules/socket.io-client/dist/socket.io.min.js"}


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def add_page_routes(app: web.Application, static_dir: Path | None) -> None:
    static = static_dir or ROOT / "static"

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(static / "index.html")

    async def vendor(request: web.Request) -> web.StreamResponse:
        path = VENDOR_FILES.get(request.match_info["name"])
        if path is None or not path.is_file():
            raise web.HTTPNotFound(
                text="vendor file missing: run `npm ci` (make run does it) to install socket.io-client"
            )
        return web.FileResponse(path)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", index)
    app.router.add_get("/static/vendor/{name}", vendor)
    app.router.add_static("/static/", static, name="static")
