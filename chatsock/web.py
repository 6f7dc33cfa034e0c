"""Plain HTTP routes: liveness, the chat page and its static files.

The page's files ship inside the package (`chatsock/static/`), so a worker
installed from a wheel serves them whatever its working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web

# Liveness and readiness: open to probes whatever the Host (guards.py).
PROBES: Final = frozenset({"/healthz", "/readyz"})
STATIC_PREFIX: Final = "/static/"
PACKAGE_STATIC: Final = Path(__file__).resolve().parent / "static"
# The checkout, when chatsock runs from one (an editable install): its node_modules.
_CHECKOUT: Final = PACKAGE_STATIC.parent.parent

# The page's script: chatsock/static/page/*.js bundled with its npm libraries
# (scripts/build_page.mjs); built by `make deps` and the Dockerfile, not kept in git.
PAGE_BUNDLE: Final = Path("dist/page.js")
NOT_BUILT: Final = (
    "The chat page is not built: run `make deps` (or `node scripts/build_page.mjs` "
    "after building clients/js), or install chatsock from a wheel or image that has it.\n"
)

# Third-party client files, by the name the page asks for: under node_modules
# (`npm ci`), or copied into `<static>/vendor/` before a wheel is built (the
# Dockerfile does), since they are not kept in the repository.
VENDOR: Final = {"socket.io.min.js": Path("socket.io-client/dist/socket.io.min.js")}


def is_page(path: str) -> bool:
    """The demo page and its files: what a browser renders (its CSP applies)."""
    return path == "/" or path.startswith(STATIC_PREFIX)


def vendor_file(static: Path, name: str) -> Path | None:
    """Where the vendored client file `name` is: shipped beside the page's files,
    else in the checkout's node_modules, else in the working directory's."""
    relative = VENDOR.get(name)
    if relative is None:
        return None
    candidates = (
        static / "vendor" / name,
        _CHECKOUT / "node_modules" / relative,
        Path.cwd() / "node_modules" / relative,
    )
    return next((path for path in candidates if path.is_file()), None)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def add_page_routes(app: web.Application, static_dir: Path | None) -> None:
    """`/`, `/static/...` and `/healthz`; `static_dir` None = the package's own files."""
    static = static_dir or PACKAGE_STATIC

    async def index(request: web.Request) -> web.StreamResponse:
        if not (static / PAGE_BUNDLE).is_file():
            # Without its bundle the page would load blank: say what to run.
            return web.Response(status=503, text=NOT_BUILT, content_type="text/plain")
        return web.FileResponse(static / "index.html")

    async def vendor(request: web.Request) -> web.StreamResponse:
        path = vendor_file(static, request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound(
                text="vendor file missing: run `npm ci` (`make run` does it) to install "
                "socket.io-client, or build the package as the Dockerfile does"
            )
        return web.FileResponse(path)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", index)
    app.router.add_get(f"{STATIC_PREFIX}vendor/{{name}}", vendor)
    app.router.add_static(STATIC_PREFIX, static, name="static")
