"""The dashboard page of the admin port: `GET /` (HTML) and `GET /static/{name}` (JS, CSS).

The page is static; it reads everything from the admin JSON API with the operator's token, so
serving it needs no token. Files are read once when the routes are added (they ship inside the
wheel under admin/static/) and served with a strict CSP: no inline script or style anywhere.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).parent / "static"

# The CSP allows nothing but this origin: the page uses no inline script, style or handler.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

_CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(?:html|js|css|svg)$")


class _StaticFile:
    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type

    def response(self) -> web.Response:
        return web.Response(
            body=self.body,
            content_type=self.content_type,
            charset="utf-8",
            headers=SECURITY_HEADERS,
        )


def load_static(directory: Path = STATIC_DIR) -> dict[str, _StaticFile]:
    """Every servable file of `directory` by name; anything else is never served."""
    files: dict[str, _StaticFile] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and _NAME.match(path.name):
            files[path.name] = _StaticFile(path.read_bytes(), _CONTENT_TYPES[path.suffix])
    return files


def add_page_routes(app: web.Application) -> None:
    """Serve the dashboard at `/` and its assets at `/static/{name}`."""
    files = load_static()
    index = files["index.html"]

    async def page(request: web.Request) -> web.Response:
        return index.response()

    async def static(request: web.Request) -> web.Response:
        found = files.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        return found.response()

    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
